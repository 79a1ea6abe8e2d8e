#!/usr/bin/env python3
"""Unsupervised BatchNorm adaptation (UBNA, spec §7): update only the encoder's BatchNorm statistics
on unlabelled target images, with a momentum that decays per batch (UBNA) and per layer (UBNA+)."""
import csv
import io
import os

from arguments import parse_adaptation_arguments, run_seed
from dataloader import loaders
from errors import run_cli
from experiment.events import EventWriter
from experiment.folder import write_text
from experiment.runtime import LoopTimer, exit_process, teardown_runtime
from jobs import open_job, record_options, training_state
from models.adaptation import adapt_batchnorm, check_finite_statistics


def write_momenta(path: str, rows) -> None:
    """The momentum of every encoder BatchNorm layer for every batch, as CSV (empty: cumulative average)."""
    text = io.StringIO(newline='')
    writer = csv.writer(text)
    writer.writerow(('batch', 'layer', 'name', 'momentum'))
    writer.writerows((k, l, name, '' if m is None else f'{m:.10g}') for k, l, name, m in rows)
    write_text(path, text.getvalue())


def log_momenta(folder: str, rows) -> None:
    """Tensorboard: the momentum of every layer against the batch index."""
    with EventWriter(os.path.join(folder, 'train')) as writer:
        for k, l, _, m in rows:
            if m is not None:
                writer.add_scalar(f'momentum/layer_{l:02d}', m, k)


def main(argv=None):
    opt = parse_adaptation_arguments(argv)
    runtime, folder = open_job(opt, run_seed(opt))
    batches = loaders.adaptation_batches(  # data first: its errors are the common ones, and its workers start now
        opt.adaptation_training_loaders.split(','), opt.adaptation_training_batch_size, opt.adaptation_num_batches,
        (opt.adaptation_resize_height, opt.adaptation_resize_width),
        (opt.adaptation_crop_height, opt.adaptation_crop_width), opt.sys_num_workers, runtime.device,
        runtime.memory_format, crop_at_offsets=opt.adaptation_crop_at_offsets,
        pixel_work=opt.adaptation_pixel_work)
    state = training_state(opt, runtime)
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
    record_options(opt, runtime, folder)  # every check has passed: opt.json, then the results it describes
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
