"""The index files of spec §2 (parameters.json, basic_files.json, one <split>.json per split), written from the
frames a dataset's index builder finds (dataloader/datasets/), and the helpers those builders share."""
import os
from dataclasses import dataclass
from typing import Callable, Optional

from errors import UserError
from experiment.folder import write_json

CITYSCAPES_SPLITS = {'train': 'train', 'val': 'validation', 'test': 'test'}  # folder name -> split name


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
    types = [os.path.splitext(c.frames[0].path)[1] for c in categories]  # '.png', or '.jpg' for JPEG datasets
    files = [[f.path for f in frames] for frames in frames_per_category]
    # indent=None: each file is one line, json.dump's own layout
    write_json(os.path.join(dataset_dir, 'parameters.json'), params, indent=None)
    write_json(os.path.join(dataset_dir, 'basic_files.json'), {
        'names': names, 'types': types, 'folders': [folders_of(paths) for paths in files], 'files': files,
        'positions': rows_per_category,
        'numerical_values': [None] * len(categories)}, indent=None)

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
            'files': split_files, 'positions': positions}, indent=None)
        counts[split] = len(split_files[0])
    return counts


def cityscapes_frames(dataset_dir: str, sub_dir: str, suffix: str) -> list:
    """Frames of <sub_dir>/<split>/<city>/<city>_<seq>_<frame>_<suffix> (the Cityscapes file names, shared by the
    cityscapes and cityscapes_sequence datasets); the sequence names split, city and seq."""
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
    """The split of a frame of cityscapes_frames, from its split folder (train, val, test)."""
    return CITYSCAPES_SPLITS.get(frame.sequence.split('/', 1)[0])


def numbered_frames(dataset_dir: str, sub_dir: str, suffix: str) -> list:
    """Frames of <sub_dir>/<folders>/<seq>_frame_<n><suffix> (ACDC's and Dark Zurich's file names); the sequence
    names the folders below sub_dir and seq, so that images and labels of one frame share a key."""
    frames = []
    for path in list_files(dataset_dir, sub_dir, suffix):
        folders, _, name = path[len(sub_dir) + 1:].rpartition('/')
        sequence, _, number = name[:-len(suffix)].rpartition('_frame_')
        if not sequence or not number.isdigit():
            raise UserError(f"file {os.path.join(dataset_dir, path)} is not named <seq>_frame_<number>{suffix}.")
        frames.append(Frame(f'{folders}/{sequence}', int(number), path))
    return frames


def write_rgb_anon_index(dataset_dir: str, split_of: Callable) -> dict:
    """ACDC's and Dark Zurich's layout: colour images rgb_anon/<folders>/<seq>_frame_<n>_rgb_anon.png and Cityscapes
    label ids (read fromid) gt/<folders>/<seq>_frame_<n>_gt_labelIds.png, indexed by write_index with split_of."""
    categories = [Category('color', numbered_frames(dataset_dir, 'rgb_anon', '_rgb_anon.png')),
                  Category('segmentation', numbered_frames(dataset_dir, 'gt', '_gt_labelIds.png'))]
    return write_index(dataset_dir, parameters('cityscapes', 'fromid', []), categories, split_of)
