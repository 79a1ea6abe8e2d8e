#!/usr/bin/env python3
"""Evaluate a checkpoint: mIoU and mean class accuracy on the segmentation validation sets (spec §8)."""
import os

import cv2
import numpy as np

from arguments import encoder_depth, online_settings_given, parse_evaluation_arguments, run_seed
from dataloader.loaders import StartedLoader
from dataloader.paths import check_environment
from errors import UserError, run_cli
from experiment_lock import lock_experiment
from runtime import LoopTimer, exit_process, setup_runtime, teardown_runtime
from state_manager import StateManager, experiment_dir, save_options, write_atomically, write_json
from validation import (AgainstNone, class_table, evaluate_model, results_dict, summary_table,
                        validation_loaders_from)


def write_png(path: str, rgb: np.ndarray) -> None:
    """Write an H×W×3 uint8 RGB array as PNG, atomically."""
    def encode(temporary):
        if not cv2.imwrite(temporary, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
            raise UserError(f'could not write image {path}')
    write_atomically(path, encode)


def save_strips(folder: str, strips) -> None:
    """eval_images/<domain>/img_<i>.png."""
    for domain, pictures in strips.items():
        domain_dir = os.path.join(folder, 'eval_images', domain)
        os.makedirs(domain_dir, exist_ok=True)
        for i, picture in enumerate(pictures):
            write_png(os.path.join(domain_dir, f'img_{i}.png'), picture.permute(1, 2, 0).numpy())


def main(argv=None) -> dict:
    opt = parse_evaluation_arguments(argv)
    check_environment()
    runtime = setup_runtime(opt.sys_cpu, run_seed(opt), opt.sys_precision, opt.sys_memory_format)
    folder = experiment_dir(opt.experiment_class, opt.model_name)
    lock_experiment(folder)
    save_options(opt, folder)
    validation = [(name, StartedLoader(loader))  # data first: its errors come first, and its workers start now
                  for name, loader in validation_loaders_from(opt, runtime.device)]
    state = StateManager(opt.model_type, encoder_depth(opt), 'checkpoint', device=runtime.device,
                         memory_format=runtime.memory_format)
    state.load(opt.model_load, weights_only=True)
    model = state.model
    remaps = opt.segmentation_eval_remaps.split(',')
    online = None if opt.online_method == 'none' else AgainstNone(opt.online_method, model, opt.online_reset,
                                                                  **online_settings_given(opt))
    print(f'Evaluating {opt.model_load} on {opt.segmentation_validation_loaders}'
          + ('' if online is None else f', adapting online with {opt.online_method}'), flush=True)
    timer = LoopTimer(runtime)
    scores, strips = evaluate_model(model, validation, remaps, runtime, opt.segmentation_eval_num_images,
                                    skip_unused_class=opt.segmentation_eval_skip_unused_class, timer=timer,
                                    online=online)
    print(timer.summary('evaluate'), flush=True)
    if online is not None:
        print(online.summary(), flush=True)
    print(summary_table(opt.model_name, scores))
    print(class_table(scores))
    results = results_dict(opt.model_name, scores)
    if online is not None:
        results['online'] = online.report()
    write_json(os.path.join(folder, 'results.json'), results)
    save_strips(folder, strips)
    teardown_runtime(runtime)
    return results


if __name__ == '__main__':
    exit_process(run_cli(main))
