#!/usr/bin/env python3
"""The three jobs end to end, through their real command lines, beside the network alone.

Writes photo-like PNGs at native size (KITTI-like stereo for adaptation, Cityscapes 1024x2048 and KITTI 2015
375x1242 for validation, GTA-5 1052x1914 with palette labels for training) and runs adapt.py (--adapt-batches x
--adapt-batch), evaluate.py (--eval-images), one epoch of train.py (--train-steps) and evaluate.py --online-method tent
over a stream of 4 domains (Cityscapes, KITTI 2015, twice) x --stream-rounds at --stream-size, batch 1. For each
job: wall time, seconds from process start to the first batch, images/s after it (overall, and over the loop's
second half: the steady state, without cuDNN's start and autotuning or the batches decoded before the first), and
the pipeline efficiency = job images/s / network-alone images/s (bench.py's measurement of the same step on random
tensors). Defaults follow the device: VGG16-bn at the paper's sizes on a GPU, ResNet-18 at small sizes on a CPU.
With --reference DIR, the reference's adapt.py and eval_segmentation.py run on the same data, checkpoint and
flags, and the speed and memory ratios are printed.
With --train-from-copy, train.py reads the copy data_download/resize_dataset.py writes at the training resize size.
adapt.py runs with its default --adaptation-pixel-work auto (resize and jitter on the device on a GPU, in the workers
on the CPU); with --adapt-both-pixel-works, also with the other one.
Run: python bench/bench_jobs.py [--device cpu|cuda] [--precision fp32|bf16|fp16] [--train-from-copy] [--keep DIR]
     [--reference DIR] [--adapt-both-pixel-works]
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from bench.bench import MODELS, measure  # noqa: E402
from bench.bench_loaders import photo_like, write_resized_copy  # noqa: E402
from dataloader.loaders import pixel_work_on_device  # noqa: E402
from models.backbones import BACKBONES  # noqa: E402
from data_download.tiny_datasets import id_label, palette_label, write_image, write_json  # noqa: E402

DISTINCT_FILES = 6  # decoded again and again: what counts is the decode cost, not the variety
SUMMARY = re.compile(r'first batch ([\d.]+) s after start; then (\d+) images in ([\d.]+) s \(([\d.na]+) images/s'
                     r'(?:; ([\d.na]+) in the second half)?\)')
# the job's own torch.cuda.max_memory_allocated: ours in its timing line, the reference's in its _log_gpu_memory
ALLOCATED = (re.compile(r'peak (\d+) MiB on the GPU'), re.compile(r'Maximum bytes of GPU memory used:\s*(\d+)'))
DEFAULTS = {  # GPU: the targets; CPU: sizes a 2-core machine runs in minutes
    'cuda': {'model': 'vgg16', 'adapt_size': '512x1024', 'adapt_native': '1024x2048', 'eval_images': 100,
             'train_steps': 200, 'train_batch': 12, 'workers': min(8, os.cpu_count()), 'stream_size': '544x960'},
    'cpu': {'model': 'resnet18', 'adapt_size': '160x512', 'adapt_native': '375x1242', 'eval_images': 10,
            'train_steps': 10, 'train_batch': 6, 'workers': min(2, os.cpu_count()), 'stream_size': '128x256'},
}


def size(text: str) -> tuple[int, int]:
    height, width = text.lower().split('x')
    return int(height), int(width)


def write_indexed(root: str, dataset: str, categories: dict, count: int, split: str | None = None,
                  split_file: str = 'train', labels: str = 'cityscapes', labels_mode: str = 'fromid') -> None:
    """A dataset whose split lists `count` samples over a few files per category (spec §2 layout)."""
    folder = os.path.join(root, dataset)
    names, files = list(categories), []
    for category, images in categories.items():
        paths = [f'{category}/{split_file}_{i}.png' for i in range(len(images))]
        for path, image in zip(paths, images):
            write_image(os.path.join(folder, path), image)
        files.append([paths[i % len(paths)] for i in range(count)])
    positions = [[[i, 0, 0, i] for i in range(count)] for _ in names]
    content = {'names': names, 'types': ['.png'] * len(names), 'folders': names, 'files': files,
               'positions': positions}
    write_json(os.path.join(folder, 'parameters.json'), {  # all keys of spec §2, so that the reference reads it too
        'K': None, 'stereo_T': None, 'labels': labels, 'labels_mode': labels_mode, 'depth_mode': None,
        'flow_mode': None, 'splits': [split] if split else []})
    write_json(os.path.join(folder, 'basic_files.json'), content)
    write_json(os.path.join(folder if split is None else f'{folder}_{split}', f'{split_file}.json'), content)


def write_datasets(root: str, args) -> None:
    rng = np.random.default_rng(0)
    n = DISTINCT_FILES
    adapt_h, adapt_w = size(args.adapt_native)
    write_indexed(root, 'kitti', {camera: [photo_like(rng, adapt_h, adapt_w) for _ in range(n)]
                                  for camera in ('color', 'color_right')},
                  args.adapt_batches * args.adapt_batch, split='kitti_split', labels='other')
    write_indexed(root, 'cityscapes', {'color': [photo_like(rng, 1024, 2048) for _ in range(n)],
                                       'segmentation': [id_label(rng, 1024, 2048) for _ in range(n)]},
                  args.eval_images, split_file='validation')
    write_indexed(root, 'kitti_2015', {'color': [photo_like(rng, 375, 1242) for _ in range(n)],
                                       'segmentation': [id_label(rng, 375, 1242) for _ in range(n)]},
                  args.eval_images, split_file='train')
    write_indexed(root, 'gta5', {'color': [photo_like(rng, 1052, 1914) for _ in range(n)],
                                 'segmentation': [palette_label(rng, 1052, 1914) for _ in range(n)]},
                  args.train_steps * args.train_batch, split='full_split', labels='gta5', labels_mode='fromrgb')


def write_training_copy(datasets: str, output: str, workers: int) -> str:
    """The one-time copy of gta5_train (and cityscapes_validation, unchanged) at the training resize size."""
    started = time.perf_counter()
    for loader in ('gta5_train', 'cityscapes_validation'):
        write_resized_copy(loader, datasets, output, '--workers', max(1, workers))
    print(f'resized copy written in {time.perf_counter() - started:.0f} s', flush=True)
    return output


class GpuMemoryPoller(threading.Thread):
    """The job's peak GPU memory, CUDA context included: the GPU's used memory as nvidia-smi reports it, polled
    every 0.1 s, less what was used before the job started (the jobs run one at a time)."""

    QUERY = ['nvidia-smi', '--query-gpu=memory.used', '--format=csv,noheader,nounits', '--id=0']

    def __init__(self):
        super().__init__(daemon=True)
        self.baseline, self.peak, self.stopped = self.used(), None, threading.Event()

    def used(self) -> float | None:
        try:
            text = subprocess.run(self.QUERY, capture_output=True, text=True, timeout=5).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return None
        return float(text) if text.isdigit() else None

    def run(self) -> None:
        while self.baseline is not None and not self.stopped.wait(0.1):
            used = self.used()
            if used is not None:
                self.peak = max(self.peak or 0.0, used - self.baseline)


def run_job(script: str, flags: list, dataset_root: str, checkpoint_root: str, cwd: str = REPO,
            device: str = 'cpu') -> dict:
    """Wall seconds, the job's own timing line (ours only), its peak resident memory (largest process) and, on
    a GPU, its peak GPU memory as nvidia-smi sees it and as the job reports it (torch's peak of allocated tensor
    memory, the reference's own measure); all None, with its output printed, when the job fails."""
    env = {**os.environ, 'UBNA_DIR_DATASET': dataset_root, 'UBNA_DIR_CHECKPOINT': checkpoint_root}
    name = script if cwd == REPO else os.path.join(cwd, script)
    poller = GpuMemoryPoller() if device == 'cuda' and shutil.which('nvidia-smi') else None
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, script, *map(str, flags)], cwd=cwd, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if poller:
        poller.start()
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    if poller:
        poller.stopped.set()
        poller.join()
    result = dict.fromkeys(('wall', 'first', 'rate', 'steady', 'rss', 'gpu', 'allocated'))
    if status != 0:  # reported, and the other jobs still run: one broken path should not hide the other figures
        print(f'{name} failed:\n{output}', file=sys.stderr, flush=True)
        return result
    result.update(wall=wall, rss=usage.ru_maxrss / 1024, gpu=poller.peak if poller else None)
    timing = SUMMARY.search(output)
    if timing:
        result['first'], result['rate'] = float(timing.group(1)), float(timing.group(4))
        result['steady'] = float(timing.group(5)) if timing.group(5) else None
    ours, theirs = (pattern.findall(output) for pattern in ALLOCATED)  # cumulative peaks: the last is the peak
    if ours or theirs:
        result['allocated'] = float(ours[-1]) if ours else int(theirs[-1]) / 2 ** 20
    print(f'{name}: {wall:.1f} s', flush=True)  # progress
    return result


def _cell(value: float | None, width: int, digits: int = 1) -> str:
    return f'{value:{width}.{digits}f}' if value is not None else f'{"-":>{width}}'


def reference_flags(flags: list) -> list:
    """Our flags without those the reference lacks (ours: --sys-precision)."""
    cut = flags.index('--sys-precision')
    return flags[:cut] + flags[cut + 2:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu', choices=DEFAULTS)
    parser.add_argument('--precision', default='fp32', choices=('fp32', 'bf16', 'fp16'))
    parser.add_argument('--model', choices=MODELS)
    parser.add_argument('--adapt-size', help='adaptation network input HxW (kitti_kitti_train resize)')
    parser.add_argument('--adapt-native', help='HxW of the adaptation PNGs')
    parser.add_argument('--adapt-batches', type=int, default=50)
    parser.add_argument('--adapt-batch', type=int, default=6)
    parser.add_argument('--eval-images', type=int, help='validation images (1024x2048 PNGs, resized to 512x1024)')
    parser.add_argument('--train-steps', type=int, help='training steps (gta5_train, crops 192x640)')
    parser.add_argument('--train-batch', type=int)
    parser.add_argument('--workers', type=int, help='--sys-num-workers of the jobs')
    parser.add_argument('--stream-size', help='network input HxW of every domain of the online stream')
    parser.add_argument('--stream-rounds', type=int, default=2, help='rounds of the online stream')
    parser.add_argument('--train-from-copy', action='store_true',
                        help='train.py reads a copy resized by data_download/resize_dataset.py (time to write it '
                             'printed) instead of the native-size PNGs')
    parser.add_argument('--adapt-both-pixel-works', action='store_true',
                        help='also run adapt.py with the --adaptation-pixel-work that auto does not pick here')
    parser.add_argument('--repeats', type=int, default=3, help='repeats of the network-alone measurements')
    parser.add_argument('--keep', help='write the data and checkpoints here instead of a temporary folder')
    parser.add_argument('--reference', metavar='DIR',
                        help='a checkout of the reference code (github.com/ifnspaml/UBNA): also run its adapt.py and '
                             'eval_segmentation.py on the same data, checkpoint and flags')
    args = parser.parse_args()
    for key, value in DEFAULTS[args.device].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    model_type, depth = MODELS[args.model]
    common = ['--model-type', model_type, BACKBONES[model_type].depth_flag, depth, '--sys-num-workers', args.workers,
              '--sys-precision', args.precision, '--experiment-class', 'bench']
    common += ['--sys-cpu'] if args.device == 'cpu' else []
    adapt_h, adapt_w = size(args.adapt_size)
    on_device = pixel_work_on_device('auto', args.device == 'cuda')
    pixel_work, other_pixel_work = ('device', 'workers') if on_device else ('workers', 'device')  # auto's choice first
    print(f'jobs end to end: device {args.device}, {args.model}, {args.precision}, {args.workers} workers, '
          f'{os.cpu_count()} cores', flush=True)
    with tempfile.TemporaryDirectory() as temporary:
        root = args.keep or temporary
        datasets, checkpoints = os.path.join(root, 'datasets'), os.path.join(root, 'checkpoints')
        started = time.perf_counter()
        write_datasets(datasets, args)
        print(f'data written in {time.perf_counter() - started:.0f} s', flush=True)
        train_root = datasets
        if args.train_from_copy:
            train_root = write_training_copy(datasets, os.path.join(root, 'resized'), args.workers)
        train = run_job('train.py', common + [
            '--model-name', 'source', '--train-weights-init', 'scratch', '--segmentation-training-loaders',
            'gta5_train', '--segmentation-training-batch-size', args.train_batch, '--train-batches-per-epoch',
            args.train_steps, '--train-num-epochs', 1, '--train-tb-frequency', 10 ** 6,
            '--train-print-frequency', 10 ** 6], train_root, checkpoints, device=args.device)
        source = 'bench/source/checkpoints/epoch_1'
        adapt_flags = common + [
            '--model-name', 'adapted', '--model-load', source, '--adaptation-training-loaders', 'kitti_kitti_train',
            '--adaptation-training-batch-size', args.adapt_batch, '--adaptation-num-batches', args.adapt_batches,
            '--adaptation-resize-height', adapt_h, '--adaptation-resize-width', adapt_w,
            '--adaptation-mode-sequential', 'batch_shrinking']
        evaluate_flags = common + ['--model-name', 'evaluated', '--model-load', source,
                                   '--segmentation-eval-num-images', 0]
        adapt = run_job('adapt.py', adapt_flags, datasets, checkpoints, device=args.device)
        if args.adapt_both_pixel_works:
            adapt_other = run_job('adapt.py', adapt_flags + ['--model-name', f'adapted_{other_pixel_work}',
                                                             '--adaptation-pixel-work', other_pixel_work],
                                  datasets, checkpoints, device=args.device)
        evaluate = run_job('evaluate.py', evaluate_flags, datasets, checkpoints, device=args.device)
        stream_h, stream_w = size(args.stream_size)
        stream = run_job('evaluate.py', common + [
            '--model-name', 'streamed', '--model-load', source, '--segmentation-eval-num-images', 0,
            '--segmentation-validation-loaders', ','.join(['cityscapes_validation', 'kitti_2015_train'] * 2),
            '--segmentation-validation-resize-height', stream_h, '--segmentation-validation-resize-width', stream_w,
            '--online-method', 'tent', '--online-rounds', args.stream_rounds], datasets, checkpoints,
            device=args.device)
        if args.reference:  # same data, checkpoint and flags; scratch init: the checkpoint replaces ImageNet's
            reference = {
                'adapt': run_job('adapt.py', reference_flags(adapt_flags) + ['--train-weights-init', 'scratch'],
                                 datasets, checkpoints, cwd=args.reference, device=args.device),
                'evaluate': run_job('eval_segmentation.py', reference_flags(evaluate_flags), datasets, checkpoints,
                                    cwd=args.reference, device=args.device)}
    network = {
        'adapt': measure('adaptation', args.model, (adapt_h, adapt_w), args.adapt_batch, args.device, args.repeats,
                         args.precision)[0],
        'evaluate': measure('evaluation', args.model, (512, 1024), 1, args.device, args.repeats, args.precision)[0],
        'train': measure('training', args.model, (192, 640), args.train_batch, args.device, args.repeats,
                         args.precision)[0],
        'stream': measure('stream', args.model, (stream_h, stream_w), 1, args.device, args.repeats,
                          args.precision)[0],
    }
    jobs = [('adapt', adapt, f'adapt.py {args.adapt_batches}x{args.adapt_batch} at {adapt_h}x{adapt_w} '
                             f'from {args.adapt_native} ({pixel_work})'),
            ('evaluate', evaluate, f'evaluate.py {args.eval_images} images 512x1024 from 1024x2048'),
            ('train', train, f'train.py {args.train_steps}x{args.train_batch} crops 192x640 from '
                             f'{"the 512x1024 copy" if args.train_from_copy else "1052x1914"}'),
            ('stream', stream, f'tent stream 4 domains x {args.stream_rounds} rounds at {stream_h}x{stream_w}')]
    if args.adapt_both_pixel_works:
        jobs.insert(1, ('adapt', adapt_other, f'the same ({other_pixel_work})'))
    if args.reference:
        jobs += [('adapt', reference['adapt'], 'reference adapt.py, the same flags'),
                 ('evaluate', reference['evaluate'], 'reference eval_segmentation.py, the same flags')]
    print(f'\n{"job":52} | {"wall s":>6} | {"first batch s":>13} | {"images/s":>8} | {"2nd half":>8} | '
          f'{"network images/s":>16} | '
          f'{"efficiency":>10} | {"peak RSS MiB":>12} | {"peak GPU MiB":>12} | {"GPU tensors MiB":>15}')
    for key, result, label in jobs:
        efficiency = result['rate'] / network[key] if result['rate'] is not None else None
        print(f'{label:52} | {_cell(result["wall"], 6)} | {_cell(result["first"], 13)} | {_cell(result["rate"], 8)} | '
              f'{_cell(result["steady"], 8)} | '
              f'{network[key]:16.1f} | {_cell(efficiency, 10, 2)} | {_cell(result["rss"], 12, 0)} | '
              f'{_cell(result["gpu"], 12, 0)} | {_cell(result["allocated"], 15, 0)}', flush=True)
    if args.reference:
        for key, ours in (('adapt', adapt), ('evaluate', evaluate)):
            theirs = reference[key]
            if ours['wall'] is None or theirs['wall'] is None:
                continue
            gpu = (f', peak GPU memory {ours["gpu"] / theirs["gpu"]:.2f} of the reference\'s (nvidia-smi)'
                   if ours['gpu'] and theirs['gpu'] else '')
            if ours['allocated'] and theirs['allocated']:
                gpu += f', {ours["allocated"] / theirs["allocated"]:.2f} (peak of allocated tensors)'
            print(f'{key}: {theirs["wall"] / ours["wall"]:.2f}x the reference\'s speed end to end, peak RSS '
                  f'{ours["rss"] / theirs["rss"]:.2f} of the reference\'s{gpu}', flush=True)


if __name__ == '__main__':
    main()
