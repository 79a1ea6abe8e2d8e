#!/usr/bin/env python3
"""Throughput and peak memory of the three hot paths, on synthetic data at the paper's sizes.

  data loading     samples/s of a training, an adaptation and a validation loader, 0 and 2 workers
                   (bench_loaders.py; peak memory = the largest process)
  network alone    on random tensors, each in its own process (so that its peak memory is its own):
    adaptation     one UBNA batch: the encoder in train mode under no_grad (batch 6, 512×1024 by default)
    training       one step: forward, weighted cross entropy, backward, Adam (crops 192×640)
    evaluation     forward + argmax + nearest upsampling to 1024×2048 labels + confusion matrix,
                   against the naive order (upsample 20 logit channels, then argmax)
    stream         what evaluate.py --online-method tent runs per image: none's forward, then TENT's forward,
                   backward, Adam step and prediction (batch 1)
  jobs             adapt.py, evaluate.py, train.py and an online stream end to end on PNGs at native size
                   (bench_jobs.py)

Usage: python bench/bench.py [--size 512x1024] [--batch 6] [--device cpu|cuda] [--precision fp32|bf16|fp16]
                             [--repeats 3] [--skip-loaders] [--skip-jobs]
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

from evaluation.metrics import ConfusionMatrix, remapped_prediction  # noqa: E402
from evaluation.scoring import AgainstNone  # noqa: E402
from losses.segmentation import segmentation_loss  # noqa: E402
from models.adaptation import adapt_batchnorm  # noqa: E402
from models.ubna import build_model  # noqa: E402
from experiment.runtime import Runtime, choose_memory_format  # noqa: E402
from evaluation.metrics import upsample_labels  # noqa: E402

LABEL_SIZE = (1024, 2048)
MODELS = {'resnet18': ('resnet', 18), 'vgg16': ('vgg', 16)}


def _timed(function, runtime, repeats):
    """Median seconds of `repeats` calls after one warm-up call."""
    function()
    times = []
    for _ in range(repeats):
        runtime.synchronize()
        started = time.perf_counter()
        function()
        runtime.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _peak_memory_mb(device):
    if device.type == 'cuda':
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def _case(case, runtime, model, size, batch):
    """(function running one step of `case`, images per step)."""
    device = runtime.device
    if case == 'adaptation':  # what adapt.py runs per batch: the encoder in train mode
        images = torch.randn(batch, 3, *size, device=device).to(memory_format=runtime.memory_format)
        return (lambda: adapt_batchnorm(model, [images], 'batch_shrinking', 0.1, 0.08, 0.0, show_progress=False,
                                        autocast=runtime.autocast)), batch
    if case == 'training':  # what train.py runs per step: forward, weighted cross entropy, backward, Adam
        images = torch.randn(batch, 3, *size, device=device).to(memory_format=runtime.memory_format)
        labels = torch.randint(0, 19, (batch, *size), device=device)
        optimizer, loss_fn = torch.optim.Adam(model.parameters(), 1e-4), segmentation_loss().to(device)
        scaler = torch.amp.GradScaler(device.type, enabled=runtime.precision == 'fp16')

        def step():
            with runtime.autocast():
                loss = loss_fn(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        return step, batch
    model.eval()
    images = torch.randn(1, 3, *size, device=device).to(memory_format=runtime.memory_format)
    if case == 'stream':
        online = AgainstNone('tent', model)
        return (lambda: online(images)), 1
    label = torch.randint(0, 19, (1, *LABEL_SIZE), device=device)
    matrix = ConfusionMatrix(19, device)

    @torch.no_grad()
    def ours():  # what evaluate.py runs per image: argmax at the network size, then nearest upsampling
        with runtime.autocast():
            logits = model(images)
        matrix.update(label, upsample_labels(remapped_prediction(logits, 'none'), LABEL_SIZE))

    @torch.no_grad()
    def naive():
        with runtime.autocast():
            logits = torch.nn.functional.interpolate(model(images), size=LABEL_SIZE, mode='nearest')
        matrix.update(label, logits.argmax(1))
    return (ours if case == 'evaluation' else naive), 1


def _measure(case, model_name, size, batch, device_name, precision, repeats, queue):
    torch.manual_seed(0)
    device = torch.device(device_name)
    runtime = Runtime(device, precision=precision,
                      memory_format=choose_memory_format('auto', case == 'training', precision, device))
    model = build_model(*MODELS[model_name], 'scratch', runtime.device, runtime.memory_format)
    step, count = _case(case, runtime, model, size, batch)
    seconds = _timed(step, runtime, repeats)
    queue.put((count / seconds, _peak_memory_mb(runtime.device)))


def measure(case, model_name, size, batch, device, repeats, precision='fp32'):
    """(images per second, peak memory in MiB) of one case, in a fresh process."""
    context = multiprocessing.get_context('spawn')
    queue = context.Queue()
    process = context.Process(target=_measure,
                              args=(case, model_name, size, batch, device, precision, repeats, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--size', default='512x1024', help='network input HxW (multiples of 32)')
    parser.add_argument('--batch', type=int, default=6, help='adaptation batch size')
    parser.add_argument('--train-batch', type=int, default=12, help='training batch size (crops 192x640)')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--precision', default='fp32', choices=('fp32', 'bf16', 'fp16'))
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--skip-loaders', action='store_true', help='no data-loading measurement')
    parser.add_argument('--skip-jobs', action='store_true', help='no end-to-end measurement of the jobs')
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.lower().split('x'))
    here = os.path.dirname(os.path.abspath(__file__))
    print(f'device {args.device}, {args.precision}, {torch.get_num_threads()} threads, input {size[0]}x{size[1]}, '
          f'adaptation batch {args.batch}, labels {LABEL_SIZE[0]}x{LABEL_SIZE[1]}', flush=True)
    if not args.skip_loaders:  # first, so that the children's peak memory is the loaders' own
        subprocess.run([sys.executable, os.path.join(here, 'bench_loaders.py')], check=True)
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f'data loading peak memory (largest process): {peak:.0f} MiB\n', flush=True)
    print(f'{"network alone":36} | {"model":8} | {"images/s":>9} | {"peak MiB":>9}')
    for model_name in MODELS:
        for case, label, case_size, batch in (
                ('adaptation', f'adaptation batch {args.batch} (encoder)', size, args.batch),
                ('training', f'training step {args.train_batch}x192x640', (192, 640), args.train_batch),
                ('evaluation', 'evaluation (argmax first)', size, 1),
                ('evaluation_naive', 'evaluation (naive)', size, 1)):
            rate, memory = measure(case, model_name, case_size, batch, args.device, args.repeats, args.precision)
            print(f'{label:36} | {model_name:8} | {rate:9.2f} | {memory:9.0f}', flush=True)
    if not args.skip_jobs:
        subprocess.run([sys.executable, os.path.join(here, 'bench_jobs.py'), '--device', args.device,
                        '--precision', args.precision, '--repeats', str(args.repeats)], check=True)


if __name__ == '__main__':
    main()
