#!/usr/bin/env python3
"""Unsupervised BatchNorm adaptation (UBNA, spec §7): update only the encoder's BatchNorm statistics
on unlabelled target images, with a momentum that decays per batch (UBNA) and per layer (UBNA+)."""
import csv
import os

from arguments import encoder_depth, parse_adaptation_arguments, run_seed
from dataloader import loaders
from dataloader.paths import check_environment
from errors import run_cli
from experiment_lock import lock_experiment
from models.adaptation import adapt_batchnorm, check_finite_statistics
from runtime import LoopTimer, exit_process, setup_runtime, teardown_runtime
from state_manager import StateManager, experiment_dir, save_options, write_atomically


def write_momenta(path: str, rows) -> None:
    """The momentum of every encoder BatchNorm layer for every batch, as CSV (empty: cumulative average)."""
    def write(temporary):
        with open(temporary, 'w', newline='') as file:
            writer = csv.writer(file)
            writer.writerow(('batch', 'layer', 'name', 'momentum'))
            writer.writerows((k, l, name, '' if m is None else f'{m:.10g}') for k, l, name, m in rows)
    write_atomically(path, write)


def log_momenta(folder: str, rows) -> None:
    """Tensorboard: the momentum of every layer against the batch index."""
    from tensorboardX import SummaryWriter  # imported when needed: it adds a second to every start
    with SummaryWriter(os.path.join(folder, 'train')) as writer:
        for k, l, _, m in rows:
            if m is not None:
                writer.add_scalar(f'momentum/layer_{l:02d}', m, k)


def main(argv=None):
    opt = parse_adaptation_arguments(argv)
    check_environment()
    runtime = setup_runtime(opt.sys_cpu, run_seed(opt), opt.sys_precision, opt.sys_memory_format)
    folder = experiment_dir(opt.experiment_class, opt.model_name)
    lock_experiment(folder)
    save_options(opt, folder)
    batches = loaders.adaptation_batches(  # data first: its errors are the common ones, and its workers start now
        opt.adaptation_training_loaders.split(','), opt.adaptation_training_batch_size, opt.adaptation_num_batches,
        (opt.adaptation_resize_height, opt.adaptation_resize_width),
        (opt.adaptation_crop_height, opt.adaptation_crop_width), opt.sys_num_workers, runtime.device,
        runtime.memory_format, crop_at_offsets=opt.adaptation_crop_at_offsets,
        pixel_work=opt.adaptation_pixel_work)
    weights_init = 'checkpoint' if opt.model_load else opt.train_weights_init  # loaded weights replace any init
    state = StateManager(opt.model_type, encoder_depth(opt), weights_init, opt.train_learning_rate,
                         opt.train_weight_decay, opt.train_scheduler_step_size, opt.train_scheduler_gamma,
                         device=runtime.device, memory_format=runtime.memory_format)
    if opt.model_load:
        state.load(opt.model_load, weights_only=opt.model_disable_lr_loading)
    where = 'on the device' if loaders.pixel_work_on_device(opt.adaptation_pixel_work, runtime.device.type == 'cuda') \
        else 'in the workers'
    print(f'Adapting with {opt.adaptation_mode_sequential} for {opt.adaptation_num_batches} batches of '
          f'{opt.adaptation_training_loaders}, resized and jittered {where}', flush=True)
    timer = LoopTimer(runtime)
    rows = adapt_batchnorm(state.model, timer.wrap(batches), opt.adaptation_mode_sequential,
                           opt.adaptation_batchnorm_momentum, opt.adaptation_alpha_batch, opt.adaptation_alpha_layer,
                           num_batches=opt.adaptation_num_batches, autocast=runtime.autocast)
    print(timer.summary('adapt'), flush=True)
    check_finite_statistics(state.model)
    name = f'batch_{opt.adaptation_num_batches}'
    state.save(folder, name)
    write_momenta(os.path.join(folder, 'momenta.csv'), rows)
    log_momenta(folder, rows)
    print(f'Adaptation of {opt.adaptation_num_batches} batches completed; stored '
          f'{os.path.join(folder, "checkpoints", name)}', flush=True)
    teardown_runtime(runtime)
    return state


if __name__ == '__main__':
    exit_process(run_cli(main))
