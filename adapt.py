#!/usr/bin/env python3
"""Unsupervised BatchNorm adaptation (UBNA, spec §7): update only the encoder's BatchNorm statistics
on unlabelled target images, with a momentum that decays per batch (UBNA) and per layer (UBNA+)."""
import csv
import os
import sys

import torch
from tensorboardX import SummaryWriter
from tqdm import tqdm

from arguments import encoder_depth, parse_adaptation_arguments
from dataloader import loaders
from dataloader.errors import run_cli
from dataloader.paths import check_environment
from dataloader.transforms import to_network_input
from models.adaptation import layer_momenta, prepare_batchnorm, set_momenta
from models.ubna import encoder_batchnorm_layers
from state_manager import (StateManager, experiment_dir, save_options, setup_runtime, teardown_runtime,
                           write_atomically)


@torch.no_grad()
def adapt_batchnorm(model, batches, mode, momentum, alpha_batch, alpha_layer, device, show_progress=True,
                    num_batches=None, after_batch=None):
    """Forward passes in train mode that refresh the encoder's BatchNorm running statistics.

    `batches` yields network inputs (N×3×H×W), `num_batches` of them if known. Before batch k every
    encoder BatchNorm layer l gets the momentum of `mode`; `after_batch(k)` is called after batch k
    (e.g. to evaluate). Returns the momenta used: one (batch, layer, name, momentum) row each.
    """
    batchnorm_layers = encoder_batchnorm_layers(model)
    prepare_batchnorm(mode, batchnorm_layers)
    model.train()
    rows = []
    for k, images in enumerate(tqdm(batches, desc='adapt', total=num_batches, disable=not show_progress)):
        momenta = layer_momenta(mode, k, len(batchnorm_layers), momentum, alpha_batch, alpha_layer)
        set_momenta(batchnorm_layers, momenta)
        rows += [(k, l, name, m) for l, ((name, _), m) in enumerate(zip(batchnorm_layers, momenta), start=1)]
        model(images.to(device, non_blocking=True))
        if after_batch is not None:
            after_batch(k)
    return rows


def write_momenta(path: str, rows) -> None:
    """The momentum of every encoder BatchNorm layer for every batch, as CSV (empty: cumulative average)."""
    def write(temporary):
        with open(temporary, 'w', newline='') as file:
            writer = csv.writer(file)
            writer.writerow(('batch', 'layer', 'name', 'momentum'))
            writer.writerows((k, l, name, '' if m is None else f'{m:.10g}') for k, l, name, m in rows)
    write_atomically(path, write)


def log_momenta(writer: SummaryWriter, rows) -> None:
    """Tensorboard: the momentum of every layer against the batch index."""
    for k, l, _, m in rows:
        if m is not None:
            writer.add_scalar(f'momentum/layer_{l:02d}', m, k)


def target_inputs(loader_names, batch_size: int, num_batches: int, resize_hw, crop_hw, num_workers: int,
                  device, crop_at_offsets: bool = False):
    """The network inputs on `device` of `num_batches` target batches (loaders cycle); several loaders are
    concatenated."""
    datasets = [loaders.adaptation_dataset(name, resize_hw, crop_hw, crop_at_offsets) for name in loader_names]
    cycling = loaders.CyclingLoaders(
        [loaders.make_loader(dataset, batch_size, shuffle=True, drop_last=True, num_workers=num_workers,
                             pin_memory=torch.device(device).type == 'cuda') for dataset in datasets], num_batches)
    return (to_network_input(torch.cat([batch['input'] for batch in batches]), device) for batches in cycling)


def main(argv=None):
    opt = parse_adaptation_arguments(argv)
    check_environment()
    runtime = setup_runtime(opt.sys_cpu, opt.sys_best_effort_determinism)
    folder = experiment_dir(opt.experiment_class, opt.model_name)
    save_options(opt, folder)
    batches = target_inputs(opt.adaptation_training_loaders.split(','), opt.adaptation_training_batch_size,
                            opt.adaptation_num_batches, (opt.adaptation_resize_height, opt.adaptation_resize_width),
                            (opt.adaptation_crop_height, opt.adaptation_crop_width), opt.sys_num_workers,
                            runtime.device, crop_at_offsets=opt.adaptation_crop_at_offsets)
    weights_init = 'scratch' if opt.model_load else opt.train_weights_init  # loaded weights replace ImageNet's
    state = StateManager(opt.model_type, encoder_depth(opt), weights_init, opt.train_learning_rate,
                         opt.train_weight_decay, opt.train_scheduler_step_size, opt.train_scheduler_gamma,
                         device=runtime.device)
    if opt.model_load:
        state.load(opt.model_load, weights_only=opt.model_disable_lr_loading)
    print(f'Adapting with {opt.adaptation_mode_sequential} for {opt.adaptation_num_batches} batches '
          f'of {opt.adaptation_training_loaders}', flush=True)
    rows = adapt_batchnorm(state.model, batches, opt.adaptation_mode_sequential, opt.adaptation_batchnorm_momentum,
                           opt.adaptation_alpha_batch, opt.adaptation_alpha_layer, runtime.device,
                           num_batches=opt.adaptation_num_batches)
    name = f'batch_{opt.adaptation_num_batches}'
    state.save(folder, name)
    write_momenta(os.path.join(folder, 'momenta.csv'), rows)
    with SummaryWriter(os.path.join(folder, 'train')) as writer:
        log_momenta(writer, rows)
    print(f'Adaptation of {opt.adaptation_num_batches} batches completed; stored '
          f'{os.path.join(folder, "checkpoints", name)}', flush=True)
    teardown_runtime(runtime)
    return state


if __name__ == '__main__':
    sys.exit(run_cli(main))
