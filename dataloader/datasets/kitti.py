"""KITTI raw data (stereo video, no labels): the adaptation loader kitti_kitti_train."""
import os
from typing import Callable, Optional

from dataloader.datasets import DatasetEntry, IndexOption, Loader, register
from dataloader.index import Category, Frame, list_files, parameters, require_dir, stem, write_index
from errors import UserError

KITTI_STEREO_BASELINE_M = 0.54  # distance between KITTI's colour cameras
SPLITS = ('train', 'validation', 'test')


def kitti_frames(dataset_dir: str, camera: str) -> list:
    """Frames of Raw_data/<date>/<drive>/<camera>/data/<number>.png; the sequence is '<date>/<drive>'."""
    frames = []
    for path in list_files(dataset_dir, 'Raw_data', '.png'):
        parts = path.split('/')
        if len(parts) == 6 and parts[3] == camera and parts[4] == 'data':
            if not stem(path).isdigit():
                raise UserError(f"file {os.path.join(dataset_dir, path)} is not named <frame number>.png.")
            frames.append(Frame(f'{parts[1]}/{parts[2]}', int(stem(path)), path))
    return frames


def read_kitti_split_file(path: str) -> set:
    """(sequence, number) keys from a split file with lines '<date>/<drive> <frame> [l|r]' (Monodepth format)."""
    if not os.path.isfile(path):
        raise UserError(f"KITTI split file {path} does not exist.")
    keys = set()
    with open(path) as file:
        for line_number, line in enumerate(file, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) < 2 or not fields[1].isdigit():
                raise UserError(f"line {line_number} of KITTI split file {path} is not "
                                f"'<date>/<drive> <frame> [l|r]'.")
            keys.add((fields[0].strip('/'), int(fields[1])))
    return keys


def kitti_file_rule(split_files: dict) -> Callable:
    """Split from split files: a frame listed in the file of split s belongs to s, unlisted frames to none."""
    split_by_key = {}
    for split, path in split_files.items():
        split_by_key.update({key: split for key in read_kitti_split_file(path)})
    return lambda frame: split_by_key.get(frame.key)


def kitti_drive_rule(frames: list) -> Callable:
    """Default split without split files: drives in sorted order, position % 10 == 8 → validation,
    == 9 → test, otherwise train (whole drives, so no drive is in two splits)."""
    drives = sorted({f.sequence for f in frames})
    split_of_drive = {d: {8: 'validation', 9: 'test'}.get(i % 10, 'train') for i, d in enumerate(drives)}
    return lambda frame: split_of_drive[frame.sequence]


def build_kitti(root: str, split_files: Optional[dict] = None) -> dict:
    """KITTI raw data in <root>/kitti: Raw_data/<date>/<date>_drive_<NNNN>_sync/image_02/data/<frame>.png
    (left colour) and .../image_03/data/<frame>.png (right colour), as download_kitti.py unpacks it.
    Split files go to kitti_kitti_split/. split_files maps 'train'/'validation'/'test' to text files with
    lines '<date>/<drive> <frame> [l|r]' (e.g. the Eigen split lists); without them kitti_drive_rule decides.
    """
    dataset_dir = os.path.join(root, 'kitti')
    require_dir(os.path.join(dataset_dir, 'Raw_data'))
    categories = [Category('color', kitti_frames(dataset_dir, 'image_02')),
                  Category('color_right', kitti_frames(dataset_dir, 'image_03'))]
    if split_files:
        split_of = kitti_file_rule(split_files)
    else:
        split_of = kitti_drive_rule(categories[0].frames)
    params = parameters('cityscapes', 'fromid', ['kitti_split'], KITTI_STEREO_BASELINE_M)
    return write_index(dataset_dir, params, categories, split_of,
                       split_dir=os.path.join(root, 'kitti_kitti_split'))


def build_kitti_index(root: str, kitti_split_train: str | None = None, kitti_split_validation: str | None = None,
                      kitti_split_test: str | None = None) -> dict:
    """build_kitti with the split files of build_index.py's --kitti-split-train/-validation/-test (None: not
    given)."""
    given = {'train': kitti_split_train, 'validation': kitti_split_validation, 'test': kitti_split_test}
    return build_kitti(root, {split: path for split, path in given.items() if path is not None})


register(DatasetEntry(
    name='kitti', labels=None,
    loaders=(Loader('kitti_kitti_train', 'adaptation', 'train', split='kitti_split'),),
    build_index=build_kitti_index,
    index_options=tuple(IndexOption(f'--kitti-split-{split}', f"kitti only: lines '<date>/<drive> <frame> [l|r]' "
                                                               f"of the {split} split") for split in SPLITS)))
