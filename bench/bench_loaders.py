"""Samples per second of a training, an adaptation and a validation loader, 0 and 2 workers, and the ms of each
sample spent reading its files.

Writes photo-like synthetic PNGs at native size (GTA-5 1052x1914 with palette labels; Cityscapes 1024x2048)
to a temporary folder and times the named loaders on them (steady state: the first batch is not counted), then
the training and adaptation loaders on the copy data_download/resize_dataset.py writes at their resize size.
Run: python bench/bench_loaders.py [--samples 48]
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPOSITORY)

from dataloader.dataset import read_image  # noqa: E402
from dataloader.loaders import adaptation_dataset, make_loader, training_dataset, validation_dataset  # noqa: E402
from data_download.tiny_datasets import id_label, palette_label, write_dataset  # noqa: E402

FILES_PER_CATEGORY = 4


def photo_like(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth shading, texture and sensor noise, so the PNG compresses about like a real photo."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = [80 + 60 * np.sin(x / (90 + 30 * c) + c) * np.cos(y / (70 + 20 * c)) + 30 * np.sin(x / 3 + y / 7 * c)
                for c in range(3)]
    image = np.stack(channels, -1) + rng.normal(0, 4, (height, width, 3))
    return image.clip(0, 255).astype(np.uint8)


def write_benchmark_datasets(root: str) -> None:
    rng = np.random.default_rng(0)
    indices = range(FILES_PER_CATEGORY)
    write_dataset(root, 'gta5', {'color': {i: photo_like(rng, 1052, 1914) for i in indices},
                                 'segmentation': {i: palette_label(rng, 1052, 1914) for i in indices}},
                  labels='gta5', labels_mode='fromrgb', split='full_split')
    write_dataset(root, 'cityscapes_sequence', {'color': {i: photo_like(rng, 1024, 2048) for i in indices},
                                                'color_right': {i: photo_like(rng, 1024, 2048) for i in indices}})
    write_dataset(root, 'cityscapes', {'color': {i: photo_like(rng, 1024, 2048) for i in indices},
                                       'segmentation': {i: id_label(rng, 1024, 2048) for i in indices}},
                  split_file='validation')


def decode_milliseconds(path: str, repeats: int = 15) -> dict:
    """Median ms to decode one PNG to an RGB array with OpenCV, PIL and torchvision.io (one thread each), the three
    taking turns so that the machine's slow and fast moments reach each of them alike."""
    import cv2
    import torchvision.io
    from PIL import Image
    cv2.setNumThreads(1)
    decoders = {'OpenCV': lambda: cv2.cvtColor(cv2.imread(path, cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB),
                'PIL': lambda: np.asarray(Image.open(path).convert('RGB')),
                'torchvision.io': lambda: torchvision.io.decode_png(torchvision.io.read_file(path))}
    samples = {name: [] for name in decoders}
    for decode in decoders.values():
        decode()
    for _ in range(repeats):
        for name, decode in decoders.items():
            start = time.perf_counter()
            decode()
            samples[name].append(1000 * (time.perf_counter() - start))
    return {name: sorted(times)[len(times) // 2] for name, times in samples.items()}


def write_resized_copy(loader: str, datasets: str, output: str, *flags) -> None:
    """Run the real data_download/resize_dataset.py: `loader` read from `datasets`, its copy written to `output`."""
    tool = os.path.join(REPOSITORY, 'data_download', 'resize_dataset.py')
    written = subprocess.run([sys.executable, tool, loader, '--output', output, *map(str, flags)],
                             capture_output=True, text=True, env={**os.environ, 'UBNA_DIR_DATASET': datasets})
    if written.returncode:
        raise SystemExit(f'{tool} {loader} failed:\n{written.stderr}')


def samples_per_second(dataset, batch_size: int, num_workers: int, num_samples: int) -> float:
    sampler = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=num_samples)
    loader = make_loader(dataset, batch_size, shuffle=False, drop_last=True, num_workers=num_workers,
                         on_gpu=False, sampler=sampler)
    iterator = iter(loader)
    next(iterator)  # worker start-up and first batch are not counted
    start = time.perf_counter()
    counted = sum(len(batch['domain']) for batch in iterator)
    return counted / (time.perf_counter() - start)


def reading_milliseconds(dataset) -> float:
    """Median ms to read one sample's files (every category, as its loader reads them) over the first samples."""
    files = dataset.files
    times = []
    for index in range(FILES_PER_CATEGORY):
        start = time.perf_counter()
        for category, paths in files.items():
            read_image(paths[index], category)
        times.append(1000 * (time.perf_counter() - start))
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--samples', type=int, default=48, help='samples drawn per measurement')
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as root:
        os.environ['UBNA_DIR_DATASET'] = root
        write_benchmark_datasets(root)
        cases = [
            ('gta5_train 1052x1914 -> 512x1024, crop 192x640',
             training_dataset('gta5_train', (512, 1024), (192, 640)), 6),
            ('cityscapes_sequence_train 1024x2048 -> 512x1024',
             adaptation_dataset('cityscapes_sequence_train', (512, 1024), (192, 640)), 6),
            ('cityscapes_validation 1024x2048 -> 512x1024',
             validation_dataset('cityscapes_validation', (512, 1024)), 1),
        ]
        copy = os.path.join(root, 'resized')
        for loader in ('gta5_train', 'cityscapes_sequence_train'):
            write_resized_copy(loader, root, copy, '--resize-height', 512, '--resize-width', 1024)
        os.environ['UBNA_DIR_DATASET'] = copy
        cases += [
            ('gta5_train from the 512x1024 copy',
             training_dataset('gta5_train', (512, 1024), (192, 640)), 6),
            ('cityscapes_sequence_train from the 512x1024 copy',
             adaptation_dataset('cityscapes_sequence_train', (512, 1024), (192, 640)), 6),
        ]
        print(f'{"loader":52} {"batch":>5} {"workers":>7} {"samples/s":>9} {"ms/sample":>9} {"reading":>8}')
        for name, dataset, batch_size in cases:
            reading = f'{reading_milliseconds(dataset):8.1f}'
            for workers in (0, 2):
                rate = samples_per_second(dataset, batch_size, workers, args.samples)
                print(f'{name:52} {batch_size:5d} {workers:7d} {rate:9.1f} {1000 / rate:9.1f} '
                      f'{reading if workers == 0 else "":>8}', flush=True)
        decoding = decode_milliseconds(os.path.join(root, 'cityscapes', 'color', 'validation_00000.png'))
        print('decoding one 1024x2048 PNG (ms, median): ' + ', '.join(f'{k} {v:.1f}' for k, v in decoding.items()))


if __name__ == '__main__':
    main()
