#!/usr/bin/env python3
"""Evaluate a checkpoint: mIoU and mean class accuracy on the segmentation validation sets (spec §8)."""
import os

from arguments import online_settings_given, parse_evaluation_arguments, run_seed
from dataloader.loaders import StartedLoader
from errors import run_cli
from evaluation.pictures import save_strips
from evaluation.scoring import AgainstNone, evaluate_model
from evaluation.tables import class_table, results_dict, summary_table
from experiment.folder import write_json
from experiment.runtime import LoopTimer, exit_process, teardown_runtime
from jobs import loaded_model, open_job, record_options, validation_loaders_from


def main(argv=None) -> dict:
    opt = parse_evaluation_arguments(argv)
    runtime, folder = open_job(opt, run_seed(opt))
    validation = [(name, StartedLoader(loader))  # data first: its errors come first, and its workers start now
                  for name, loader in validation_loaders_from(opt, runtime.device)]
    model = loaded_model(opt, runtime)
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
    record_options(opt, runtime, folder)  # every check has passed: opt.json, then the results it describes
    write_json(os.path.join(folder, 'results.json'), results)
    save_strips(folder, strips)
    teardown_runtime(runtime)
    return results


if __name__ == '__main__':
    exit_process(run_cli(main))
