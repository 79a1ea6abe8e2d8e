"""Tiny on-disk datasets in the spec §2 layout (real PNG and JSON files), written for the tests and the benchmarks
(tests/conftest.py's named_datasets fixture, bench/bench_loaders.py, bench/bench_jobs.py)."""
import json
import os

import cv2
import numpy as np
from PIL import Image

from dataloader.labels import CITYSCAPES_LABELS

CITYSCAPES_IDS = tuple(label.id for label in CITYSCAPES_LABELS if label.id >= 0)
PALETTE_COLORS = tuple(dict.fromkeys(label.color for label in CITYSCAPES_LABELS))  # distinct, first-seen order


def write_json(path: str, content) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w', encoding='utf-8') as file:
        json.dump(content, file)


def write_image(path: str, image) -> None:
    """A numpy array is written with cv2 (so given in the file's BGR order), a PIL image with PIL (palettes)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if isinstance(image, Image.Image):
        image.save(path)
    else:
        assert cv2.imwrite(path, image), path


def write_dataset(root: str, dataset: str, images: dict, *, labels: str = 'cityscapes',
                  labels_mode: str = 'fromid', split: str | None = None, split_file: str = 'train') -> dict:
    """Write images {category: {global_index: image}} and the JSON files; returns {category: [relative paths]}.

    Files go to <root>/<dataset>/<category>/<split_file>_<index>.png; the split file to
    <root>/<dataset>[_<split>]/<split_file>.json. Categories may list different global indices.
    """
    folder = os.path.join(root, dataset)
    write_json(os.path.join(folder, 'parameters.json'), {
        'K': None, 'stereo_T': None, 'labels': labels, 'labels_mode': labels_mode,
        'depth_mode': None, 'flow_mode': None, 'splits': [split] if split else []})
    names, files, positions = [], [], []
    for category, by_index in images.items():
        relative = {index: f'{category}/{split_file}_{index:05d}.png' for index in by_index}
        for index, image in by_index.items():
            write_image(os.path.join(folder, relative[index]), image)
        names.append(category)
        files.append(list(relative.values()))
        positions.append([[index, 0, 0, j] for j, index in enumerate(relative)])
    split_content = {'names': names, 'types': ['.png'] * len(names), 'folders': names, 'files': files,
                     'positions': positions}
    basic_files = os.path.join(folder, 'basic_files.json')
    if not os.path.exists(basic_files):
        write_json(basic_files, {**split_content, 'numerical_values': [None] * len(names)})
    split_folder = folder if split is None else f'{folder}_{split}'
    write_json(os.path.join(split_folder, f'{split_file}.json'), split_content)
    return dict(zip(names, files))


def noise_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def _blocks(rng: np.random.Generator, count: int, height: int, width: int) -> np.ndarray:
    """Indices below count, constant over 8x8 blocks like the regions of real annotations."""
    blocks = rng.integers(0, count, (height // 8 + 1, width // 8 + 1), dtype=np.uint8)
    return np.repeat(np.repeat(blocks, 8, 0), 8, 1)[:height, :width]


def id_label(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Cityscapes label ids (plus the unknown id 40)."""
    return np.array(CITYSCAPES_IDS + (40,), np.uint8)[_blocks(rng, len(CITYSCAPES_IDS) + 1, height, width)]


def palette_label(rng: np.random.Generator, height: int, width: int) -> Image.Image:
    """A GTA-5 style palette PNG in Cityscapes colours."""
    image = Image.fromarray(_blocks(rng, len(PALETTE_COLORS), height, width), 'P')
    image.putpalette([channel for color in PALETTE_COLORS for channel in color])
    return image


def write_named_loader_datasets(root: str, height: int = 64, width: int = 128, count: int = 4,
                                seed: int = 0) -> None:
    """Every dataset folder the named loaders read, with `count` samples per split."""
    rng = np.random.default_rng(seed)

    def colour_and(make_label, h=height, w=width):
        return {'color': {i: noise_image(rng, h, w) for i in range(count)},
                'segmentation': {i: make_label(rng, h, w) for i in range(count)}}

    def stereo():
        return {'color': {i: noise_image(rng, height, width) for i in range(count)},
                'color_right': {i: noise_image(rng, height, width) for i in range(count)}}

    write_dataset(root, 'cityscapes', colour_and(id_label))
    write_dataset(root, 'cityscapes', colour_and(id_label), split_file='validation')
    write_dataset(root, 'gta5', colour_and(palette_label), labels='gta5', labels_mode='fromrgb',
                  split='full_split')
    write_dataset(root, 'synthia', colour_and(id_label), labels='synthia')
    write_dataset(root, 'cityscapes_sequence', stereo(), labels='cityscapes', labels_mode='fromid')
    write_dataset(root, 'kitti', stereo(), labels='other', labels_mode='fromid', split='kitti_split')
    write_dataset(root, 'kitti_2015', colour_and(id_label, height - 16, width + 32))
