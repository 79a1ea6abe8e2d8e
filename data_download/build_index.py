"""Index builders: write parameters.json, basic_files.json and split files (spec §2) for each dataset.

Usage: python data_download/build_index.py <dataset> --root $UBNA_DIR_DATASET
"""
import argparse
import json
import os
import sys
from dataclasses import dataclass
from typing import Callable, Optional

if __package__ in (None, ''):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dataloader.paths import dataset_root  # noqa: E402
from errors import UserError, run_cli  # noqa: E402

CITYSCAPES_SPLITS = {'train': 'train', 'val': 'validation', 'test': 'test'}
KITTI_STEREO_BASELINE_M = 0.54  # distance between KITTI's colour cameras


@dataclass(frozen=True)
class Frame:
    """One file of a data category, placed in its video sequence by (sequence, number)."""
    sequence: str
    number: int
    path: str  # relative to the dataset folder, '/'-separated

    @property
    def key(self):
        return self.sequence, self.number


@dataclass
class Category:
    """A data category of a dataset (e.g. 'color') with its files."""
    name: str
    frames: list


def require_dir(path: str) -> str:
    """The folder itself, or a UserError naming it when it is missing."""
    if not os.path.isdir(path):
        raise UserError(f"expected folder {path} does not exist.")
    return path


def list_files(dataset_dir: str, sub_dir: str, suffix: str) -> list:
    """Paths (relative to dataset_dir, '/'-separated, sorted) of all files under sub_dir ending in suffix."""
    found = []
    for folder, _, names in os.walk(os.path.join(dataset_dir, sub_dir)):
        rel_folder = os.path.relpath(folder, dataset_dir).replace(os.sep, '/')
        found.extend(f'{rel_folder}/{name}' for name in names if name.endswith(suffix))
    return sorted(found)


def stem(path: str) -> str:
    return os.path.splitext(path.rsplit('/', 1)[-1])[0]


def single_frames(paths: list) -> list:
    """Frames of a dataset without video: every file is its own sequence, keyed by its file stem."""
    return [Frame(stem(path), 0, path) for path in paths]


def sequence_rows(frames: list, global_index: dict) -> list:
    """[global_index, frames_before, frames_after, index_in_list] per sorted frame; a sequence is a run of
    consecutive numbers in the same sequence."""
    starts = [i for i, frame in enumerate(frames)
              if i == 0 or frames[i - 1].sequence != frame.sequence or frames[i - 1].number != frame.number - 1]
    bounds = starts + [len(frames)]
    return [[global_index[frames[i].key], i - start, end - 1 - i, i]
            for start, end in zip(bounds[:-1], bounds[1:]) for i in range(start, end)]


def index_categories(categories: list) -> tuple:
    """Sorted frames and position rows per category; global indices follow the first category.

    Frames whose key the first category lacks are dropped.
    """
    main_keys = sorted({frame.key for frame in categories[0].frames})
    global_index = {key: i for i, key in enumerate(main_keys)}
    frames_per_category, rows_per_category = [], []
    for category in categories:
        frames = sorted((f for f in category.frames if f.key in global_index), key=lambda f: f.key)
        for previous, frame in zip(frames, frames[1:]):
            if previous.key == frame.key:
                raise UserError(f"files {previous.path} and {frame.path} are the same frame of category "
                                f"'{category.name}'; keep only one of them.")
        frames_per_category.append(frames)
        rows_per_category.append(sequence_rows(frames, global_index))
    return frames_per_category, rows_per_category


def folders_of(paths: list) -> list:
    return sorted({path.rsplit('/', 1)[0] for path in paths})


def write_json(path: str, content: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as file:
        json.dump(content, file)


def parameters(labels: str, labels_mode: str, splits: list, stereo_t: Optional[float] = None) -> dict:
    """The content of parameters.json (no camera matrix, depth or flow data are indexed)."""
    return {'K': None, 'stereo_T': stereo_t, 'labels': labels, 'labels_mode': labels_mode,
            'depth_mode': None, 'flow_mode': None, 'splits': splits}


def write_index(dataset_dir: str, params: dict, categories: list, split_of: Callable,
                split_dir: Optional[str] = None) -> dict:
    """Write parameters.json, basic_files.json and one <split>.json per split; returns samples per split.

    split_of(frame of the first category) -> split name or None (left out of every split).
    Split files go to split_dir (a `<dataset>_<split>` sibling folder) or to dataset_dir.
    """
    if not categories[0].frames:
        raise UserError(f"no image files found under {dataset_dir}.")
    categories = [c for c in categories if c.frames]
    frames_per_category, rows_per_category = index_categories(categories)
    names = [c.name for c in categories]
    types = ['.png'] * len(categories)
    files = [[f.path for f in frames] for frames in frames_per_category]
    write_json(os.path.join(dataset_dir, 'parameters.json'), params)
    write_json(os.path.join(dataset_dir, 'basic_files.json'), {
        'names': names, 'types': types, 'folders': [folders_of(paths) for paths in files], 'files': files,
        'positions': rows_per_category,
        'numerical_values': [None] * len(categories)})

    split_by_key = {f.key: split_of(f) for f in frames_per_category[0]}
    counts = {}
    for split in sorted({s for s in split_by_key.values() if s is not None}):
        split_files, positions = [], []
        for frames, rows in zip(frames_per_category, rows_per_category):
            keep = [i for i, f in enumerate(frames) if split_by_key[f.key] == split]
            split_files.append([frames[i].path for i in keep])
            positions.append([rows[i] for i in keep])
        write_json(os.path.join(split_dir or dataset_dir, f'{split}.json'), {
            'names': names, 'types': types, 'folders': [folders_of(paths) for paths in split_files],
            'files': split_files, 'positions': positions})
        counts[split] = len(split_files[0])
    return counts


def cityscapes_frames(dataset_dir: str, sub_dir: str, suffix: str) -> list:
    """Frames of <sub_dir>/<split>/<city>/<city>_<seq>_<frame>_<suffix>; the sequence names split, city and seq."""
    frames = []
    for path in list_files(dataset_dir, sub_dir, suffix):
        parts = path.split('/')
        fields = parts[-1][:-len(suffix)].split('_')
        if len(parts) != 4 or len(fields) != 3 or not fields[2].isdigit():
            raise UserError(f"file {os.path.join(dataset_dir, path)} does not follow the Cityscapes pattern "
                            f"<split>/<city>/<city>_<seq>_<frame>_{suffix}.")
        frames.append(Frame(f'{parts[1]}/{fields[0]}_{fields[1]}', int(fields[2]), path))
    return frames


def cityscapes_split(frame: Frame) -> Optional[str]:
    return CITYSCAPES_SPLITS.get(frame.sequence.split('/', 1)[0])


def build_cityscapes(root: str) -> dict:
    """Cityscapes (fine annotations) in <root>/cityscapes:
    leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png,
    gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png and optionally
    rightImg8bit/{train,val,test}/<city>/..._rightImg8bit.png. Splits train/validation/test.
    """
    dataset_dir = os.path.join(root, 'cityscapes')
    require_dir(os.path.join(dataset_dir, 'leftImg8bit'))
    require_dir(os.path.join(dataset_dir, 'gtFine'))
    categories = [Category('color', cityscapes_frames(dataset_dir, 'leftImg8bit', '_leftImg8bit.png')),
                  Category('color_right', cityscapes_frames(dataset_dir, 'rightImg8bit', '_rightImg8bit.png')),
                  Category('segmentation', cityscapes_frames(dataset_dir, 'gtFine', '_gtFine_labelIds.png'))]
    return write_index(dataset_dir, parameters('cityscapes', 'fromid', []), categories, cityscapes_split)


def build_cityscapes_sequence(root: str) -> dict:
    """Cityscapes video sequences in <root>/cityscapes_sequence:
    leftImg8bit_sequence/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png and
    rightImg8bit_sequence/{train,val,test}/<city>/<city>_<seq>_<frame>_rightImg8bit.png.
    Splits train/validation/test (those present).
    """
    dataset_dir = os.path.join(root, 'cityscapes_sequence')
    require_dir(os.path.join(dataset_dir, 'leftImg8bit_sequence'))
    require_dir(os.path.join(dataset_dir, 'rightImg8bit_sequence'))
    categories = [
        Category('color', cityscapes_frames(dataset_dir, 'leftImg8bit_sequence', '_leftImg8bit.png')),
        Category('color_right', cityscapes_frames(dataset_dir, 'rightImg8bit_sequence', '_rightImg8bit.png'))]
    return write_index(dataset_dir, parameters('cityscapes', 'fromid', []), categories, cityscapes_split)


def build_gta5(root: str) -> dict:
    """GTA-5 in <root>/gta5: images/<name>.png and labels/<name>.png (palette/colour labels, read `fromrgb`).
    Every image goes to gta5_full_split/train.json.
    """
    dataset_dir = os.path.join(root, 'gta5')
    require_dir(os.path.join(dataset_dir, 'images'))
    require_dir(os.path.join(dataset_dir, 'labels'))
    categories = [Category('color', single_frames(list_files(dataset_dir, 'images', '.png'))),
                  Category('segmentation', single_frames(list_files(dataset_dir, 'labels', '.png')))]
    return write_index(dataset_dir, parameters('gta5', 'fromrgb', ['full_split']), categories,
                       lambda frame: 'train', split_dir=os.path.join(root, 'gta5_full_split'))


def build_synthia(root: str) -> dict:
    """SYNTHIA-RAND-CITYSCAPES in <root>/synthia: RAND_CITYSCAPES/RGB/<name>.png and
    RAND_CITYSCAPES/GT_1_channel/LABELS/<name>.png (made from GT/LABELS by convert_segmentation_synthia.py).
    Every image goes to synthia/train.json (the split synthia_train reads).
    """
    dataset_dir = os.path.join(root, 'synthia')
    base = os.path.join(dataset_dir, 'RAND_CITYSCAPES')
    require_dir(os.path.join(base, 'RGB'))
    if not os.path.isdir(os.path.join(base, 'GT_1_channel', 'LABELS')):
        raise UserError(f"expected folder {os.path.join(base, 'GT_1_channel', 'LABELS')} does not exist; "
                        f"run data_download/convert_segmentation_synthia.py first.")
    categories = [
        Category('color', single_frames(list_files(dataset_dir, 'RAND_CITYSCAPES/RGB', '.png'))),
        Category('segmentation', single_frames(list_files(dataset_dir, 'RAND_CITYSCAPES/GT_1_channel/LABELS',
                                                          '.png')))]
    return write_index(dataset_dir, parameters('synthia', 'fromid', []), categories, lambda frame: 'train')


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


def kitti_2015_frames(paths: list) -> list:
    """Frames named <scene>_<frame>.png; the scene is the sequence."""
    frames = []
    for path in paths:
        fields = stem(path).split('_')
        if len(fields) != 2 or not fields[1].isdigit():
            raise UserError(f"file {path} is not named <scene>_<frame>.png like KITTI 2015.")
        frames.append(Frame(fields[0], int(fields[1]), path))
    return frames


def build_kitti_2015(root: str) -> dict:
    """KITTI 2015 semantics (data_semantics.zip unpacked) in <root>/kitti_2015:
    training/image_2/<scene>_10.png and training/semantic/<scene>_10.png (Cityscapes label ids).
    Every labelled image goes to kitti_2015/train.json (the split kitti_2015_train reads).
    """
    dataset_dir = os.path.join(root, 'kitti_2015')
    require_dir(os.path.join(dataset_dir, 'training', 'image_2'))
    require_dir(os.path.join(dataset_dir, 'training', 'semantic'))
    categories = [Category('color', kitti_2015_frames(list_files(dataset_dir, 'training/image_2', '.png'))),
                  Category('segmentation', kitti_2015_frames(list_files(dataset_dir, 'training/semantic', '.png')))]
    return write_index(dataset_dir, parameters('cityscapes', 'fromid', []), categories, lambda frame: 'train')


BUILDERS = {'cityscapes': build_cityscapes, 'cityscapes_sequence': build_cityscapes_sequence,
            'gta5': build_gta5, 'synthia': build_synthia, 'kitti': build_kitti, 'kitti_2015': build_kitti_2015}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Write the JSON index files of a dataset (spec §2).')
    parser.add_argument('dataset', choices=sorted(BUILDERS))
    parser.add_argument('--root', default=None,
                        help='folder holding one sub-folder per dataset (default: $UBNA_DIR_DATASET)')
    for split in ('train', 'validation', 'test'):
        parser.add_argument(f'--kitti-split-{split}', default=None, metavar='FILE',
                            help=f"kitti only: lines '<date>/<drive> <frame> [l|r]' of the {split} split")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.root is None:
        args.root = dataset_root()
    split_files = {split: getattr(args, f'kitti_split_{split}') for split in ('train', 'validation', 'test')}
    split_files = {split: path for split, path in split_files.items() if path is not None}
    if args.dataset == 'kitti':
        counts = build_kitti(args.root, split_files)
    elif split_files:
        raise UserError(f"--kitti-split-* options apply to the dataset kitti only, not to {args.dataset}.")
    else:
        counts = BUILDERS[args.dataset](args.root)
    for split, count in counts.items():
        print(f'{args.dataset}: {split} split with {count} samples')


if __name__ == '__main__':
    sys.exit(run_cli(main))
