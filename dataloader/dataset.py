"""Reading a dataset folder (spec §2): parameters.json, split files, image files, and the torch Dataset."""
import json
import os
import sys
from typing import Callable

import cv2
import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from dataloader.labels import PaletteLabel
from dataloader.paths import dataset_root
from errors import UserError

PARAMETER_KEYS = ('labels', 'labels_mode')
SPLIT_KEYS = ('names', 'files', 'positions')


def _is_color(category: str) -> bool:
    return 'color' in category  # 'color', 'color_right': converted to RGB; labels stay as stored


def load_json(path: str, what: str) -> dict:
    """A JSON object from a file; a missing or malformed file is a UserError naming it."""
    if not os.path.isfile(path):
        raise UserError(f'the {what} {path} does not exist')
    try:
        with open(path, encoding='utf-8') as file:
            content = json.load(file)
    except json.JSONDecodeError as exc:
        raise UserError(f'the {what} {path} is not valid JSON ({exc.msg} at line {exc.lineno}, '
                        f'column {exc.colno})') from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f'the {what} {path} cannot be read ({exc})') from None
    if not isinstance(content, dict):
        raise UserError(f'the {what} {path} must hold a JSON object')
    return content


def _require_keys(content: dict, keys, path: str) -> None:
    missing = [key for key in keys if key not in content]
    if missing:
        raise UserError(f"{path} has no key '{missing[0]}'")


def dataset_folder(dataset: str) -> str:
    """The existing folder of a dataset under UBNA_DIR_DATASET."""
    folder = os.path.join(dataset_root(), dataset)
    if not os.path.isdir(folder):
        raise UserError(f"the dataset folder {folder} of dataset '{dataset}' does not exist")
    return folder


def read_parameters(dataset: str) -> dict:
    """The content of <dataset>/parameters.json (must hold 'labels' and 'labels_mode')."""
    path = os.path.join(dataset_folder(dataset), 'parameters.json')
    parameters = load_json(path, 'parameters file')
    _require_keys(parameters, PARAMETER_KEYS, path)
    return parameters


def split_path(dataset: str, split: str | None, split_file: str) -> str:
    """The path of <dataset>/<split_file>.json, or <dataset>_<split>/<split_file>.json for a named split."""
    read_parameters(dataset)  # every dataset folder holds a valid parameters.json, as in the reference
    folder = dataset_folder(dataset)
    if not os.path.isfile(os.path.join(folder, 'basic_files.json')):
        raise UserError(f'the dataset folder {folder} has no basic_files.json')
    if split is not None:
        folder = f'{folder}_{split}'
        if not os.path.isdir(folder):
            raise UserError(f"the folder {folder} of split '{split}' of dataset '{dataset}' does not exist")
    return os.path.join(folder, f'{split_file}.json')


def read_split(dataset: str, split: str | None, split_file: str, categories: list[str]) -> dict[str, list[str]]:
    """Absolute file paths per category, for the global indices present in every category, sorted by index."""
    path = split_path(dataset, split, split_file)
    content = load_json(path, 'split file')
    _require_keys(content, SPLIT_KEYS, path)
    names, files, positions = content['names'], content['files'], content['positions']
    if not (isinstance(names, list) and len(names) == len(files) == len(positions)):
        raise UserError(f"{path} must hold lists 'names', 'files' and 'positions' of equal length")
    by_index = {}
    for category in categories:
        if category not in names:
            raise UserError(f"{path} has no data category '{category}' (it has: {', '.join(map(str, names))})")
        i = names.index(category)
        if len(files[i]) != len(positions[i]):
            raise UserError(f"{path} lists {len(files[i])} files but {len(positions[i])} positions "
                            f"for category '{category}'")
        try:
            by_index[category] = {int(position[0]): file for position, file in zip(positions[i], files[i])}
        except (TypeError, ValueError, IndexError):
            raise UserError(f"{path} has a position of category '{category}' that does not start with "
                            f'a global index') from None
    common = sorted(set.intersection(*(set(found) for found in by_index.values())))
    if not common:
        raise UserError(f"{path} has no sample present in all of the categories {', '.join(categories)}")
    root = dataset_folder(dataset)
    return {category: [_absolute(root, found[index]) for index in common] for category, found in by_index.items()}


def _absolute(root: str, relative: str) -> str:
    return os.path.join(root, *str(relative).replace('\\', '/').split('/'))


def check_files_exist(files: dict[str, list[str]]) -> None:
    """Fail before any worker starts when a listed file is missing (cheap stat calls)."""
    missing = [path for paths in files.values() for path in paths if not os.path.isfile(path)]
    if missing:
        more = f' (and {len(missing) - 1} more listed files are missing)' if len(missing) > 1 else ''
        raise UserError(f'the image file {missing[0]} does not exist{more}')


def read_palette_label(path: str) -> PaletteLabel | None:
    """A palette PNG as its indices and colours, or None for any other file (and for palettes with transparency or
    with indices beyond their end, which OpenCV reads its own way). PIL decodes the indices, several times faster
    than OpenCV expands them to colours."""
    try:
        with Image.open(path) as image:
            if image.format != 'PNG' or image.mode != 'P' or 'transparency' in image.info:
                return None
            indices, palette = np.asarray(image), image.getpalette()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):  # PIL failed: OpenCV reads or names it
        return None
    rgb = np.asarray(palette, np.uint8).reshape(-1, 3)
    if indices.max(initial=0) >= len(rgb):
        return None
    colors = np.zeros((256, 3), np.uint8)
    colors[:len(rgb)] = rgb[:, ::-1]
    return PaletteLabel(indices, colors)


def read_image(path: str, category: str, sample: int | None = None) -> np.ndarray | PaletteLabel:
    """An image as stored (cv2 unchanged), a label with a palette as a PaletteLabel; colour categories become 8-bit
    RGB (16-bit divided by 256).

    `sample`, the dataset index being read, is named in the error of a missing, corrupt or unreadable file."""
    named = path if sample is None else f'{path} (sample {sample})'
    if not _is_color(category):
        palette_label = read_palette_label(path)
        if palette_label is not None:
            return palette_label
    try:
        image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    except cv2.error:
        image = None
    if image is None:
        raise UserError(f'the image file {named} cannot be read (missing, empty, truncated or not an image)')
    if not _is_color(category):
        return image
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise UserError(f'the colour image {named} has unsupported pixel type {image.dtype}')
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class ImageDataset(Dataset):
    """The samples of one split: reads one image per category, applies a transform, adds domain and purposes."""

    def __init__(self, files: dict[str, list[str]], transform: Callable[[dict], dict], domain: str,
                 purposes: tuple[str, ...], strict_sizes: bool = True):
        lengths = {len(paths) for paths in files.values()}
        if len(lengths) != 1:
            raise ValueError(f'every category needs the same number of files, got {lengths}')
        check_files_exist(files)
        self.files = files
        self.transform = transform
        self.domain = domain
        self.purposes = purposes
        self.strict_sizes = strict_sizes  # False: a size mismatch is only reported (the transform resizes both)

    def __len__(self) -> int:
        return len(next(iter(self.files.values())))

    def __getitem__(self, item: int | tuple[int, object]) -> dict:
        """The sample at an index; given (index, draw), the transform applies the random parameters `draw` (drawn by
        the main process: loaders.DrawingSampler) instead of drawing its own."""
        index, draw = item if isinstance(item, tuple) else (item, None)
        paths = {category: paths[index] for category, paths in self.files.items()}
        raw = {category: read_image(path, category, index) for category, path in paths.items()}
        mismatch = _size_mismatch(raw, paths)
        if mismatch and self.strict_sizes:
            raise UserError(mismatch)
        if mismatch:
            print(f'warning: {mismatch}; both are resized to the training size, as in the reference',
                  file=sys.stderr)
        try:
            sample = self.transform(raw) if draw is None else self.transform.apply(raw, draw)
        except UserError as exc:
            raise UserError(f"{exc} (sample {', '.join(paths.values())})") from None
        sample['domain'] = self.domain
        sample['purposes'] = self.purposes
        return sample


def _size_mismatch(raw: dict[str, np.ndarray | PaletteLabel], paths: dict[str, str]) -> str | None:
    """The sentence describing images of one sample with different sizes, or None."""
    sizes = {category: image.shape[:2] for category, image in raw.items()}
    first, *others = sizes
    for other in others:
        if sizes[other] != sizes[first]:
            (h1, w1), (h2, w2) = sizes[first], sizes[other]
            return (f'the image {paths[first]} is {h1}x{w1} but {paths[other]} is {h2}x{w2}; '
                    f'all images of a sample must have the same size')
    return None
