#!/usr/bin/env python3
"""Throughput and peak memory of the three hot paths, on synthetic data at the paper's sizes.

  data loading     samples/s of a training, an adaptation and a validation loader, 0 and 2 workers
                   (bench_loaders.py; peak memory = the largest process)
  adaptation       one UBNA batch: forward in train mode under no_grad (batch 6, 512×1024 by default)
  evaluation       forward + argmax + nearest upsampling to 1024×2048 labels + confusion matrix,
                   against the naive order (upsample 20 logit channels, then argmax)

Each measurement runs in its own process so that its peak memory is its own.
Usage: python bench/bench.py [--size 512x1024] [--batch 6] [--device cpu|cuda] [--repeats 3] [--skip-loaders]
"""
import argparse
import multiprocessing
import os
import resource
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from adapt import adapt_batchnorm  # noqa: E402
from dataloader.metrics import ConfusionMatrix, remapped_prediction  # noqa: E402
from evaluate import upsample_labels  # noqa: E402
from models.ubna import build_model  # noqa: E402

LABEL_SIZE = (1024, 2048)


def _synchronize(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _timed(function, device, repeats):
    """Median seconds of `repeats` calls after one warm-up call."""
    function()
    times = []
    for _ in range(repeats):
        _synchronize(device)
        started = time.perf_counter()
        function()
        _synchronize(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _peak_memory_mb(device):
    if device.type == 'cuda':
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def _measure(case, model_name, size, batch, device_name, repeats, queue):
    torch.manual_seed(0)
    device = torch.device(device_name)
    model_type, depth = ('vgg', 16) if model_name == 'vgg16' else ('resnet', 18)
    model = build_model(model_type, depth, 'scratch').to(device)
    if case == 'adaptation':
        images = torch.randn(batch, 3, *size, device=device)
        seconds = _timed(lambda: adapt_batchnorm(model, [images], 'batch_shrinking', 0.1, 0.08, 0.0, device,
                                                 show_progress=False), device, repeats)
        count = batch
    else:
        model.eval()
        images = torch.randn(1, 3, *size, device=device)
        label = torch.randint(0, 19, (1, *LABEL_SIZE), device=device)
        matrix = ConfusionMatrix(19, device)

        @torch.no_grad()
        def ours():
            prediction = remapped_prediction(model(images), 'none')
            matrix.update(label, upsample_labels(prediction, LABEL_SIZE))

        @torch.no_grad()
        def naive():
            logits = torch.nn.functional.interpolate(model(images), size=LABEL_SIZE, mode='nearest')
            matrix.update(label, logits.argmax(1))

        seconds = _timed(ours if case == 'evaluation' else naive, device, repeats)
        count = 1
    queue.put((count / seconds, _peak_memory_mb(device)))


def measure(case, model_name, size, batch, device, repeats):
    """(images per second, peak memory in MiB) of one case, in a fresh process."""
    context = multiprocessing.get_context('spawn')
    queue = context.Queue()
    process = context.Process(target=_measure, args=(case, model_name, size, batch, device, repeats, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--size', default='512x1024', help='network input HxW (multiples of 32)')
    parser.add_argument('--batch', type=int, default=6, help='adaptation batch size')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--skip-loaders', action='store_true', help='only the model measurements')
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.lower().split('x'))
    print(f'device {args.device}, {torch.get_num_threads()} threads, input {size[0]}x{size[1]}, '
          f'adaptation batch {args.batch}, labels {LABEL_SIZE[0]}x{LABEL_SIZE[1]}', flush=True)
    if not args.skip_loaders:  # first, so that the children's peak memory is the loaders' own
        subprocess.run([sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), 'bench_loaders.py')],
                       check=True)
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f'data loading peak memory (largest process): {peak:.0f} MiB\n', flush=True)
    print(f'{"case":28} | {"model":8} | {"images/s":>9} | {"peak MiB":>9}')
    for model_name in ('resnet18', 'vgg16'):
        for case, label in (('adaptation', f'adaptation batch {args.batch}'),
                            ('evaluation', 'evaluation (argmax first)'),
                            ('evaluation_naive', 'evaluation (naive)')):
            rate, memory = measure(case, model_name, size, args.batch, args.device, args.repeats)
            print(f'{label:28} | {model_name:8} | {rate:9.2f} | {memory:9.0f}', flush=True)


if __name__ == '__main__':
    main()
