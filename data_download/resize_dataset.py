"""Write a copy of the dataset a named loader reads, already resized to the loader's first resize size.

Usage: UBNA_DIR_DATASET=<datasets> python data_download/resize_dataset.py LOADER [--resize-height H]
       [--resize-width W] --output ROOT [--workers N] [--compress]
The copy, ROOT/<dataset folder>, has the same relative file paths and JSON files (parameters.json, basic_files.json,
the loader's split file, in the `<dataset>_<split>` folder where the loader uses one) but only the files of the
loader's categories and split: colour images after the loader's first resize (PIL antialiased bilinear), labels
of training loaders after its nearest resize. With UBNA_DIR_DATASET=ROOT the same loader with the same resize flags
reads the copy and gives the same samples, decoding far fewer pixels. Images are PNG-encoded (lossless, colour
8-bit) under their original names (OpenCV reads by content); colour images are stored without compression unless
--compress (see png_parameters). Validation loaders are copied unchanged, so that ROOT
also serves the jobs' validation: their metric is computed at native label size, and they require image and label
of one size. <dataset folder>/resized_copy.json records each loader written, so that the loaders refuse a copy that
is partial, stale or made for another loader or size (dataloader/resized_copy.py).
"""
import argparse
import io
import os
import sys
import time
from dataclasses import dataclass
from functools import partial
from multiprocessing import Pool

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

if __package__ in (None, ''):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from arguments import MAX_WORKERS  # noqa: E402
from dataloader import datasets  # noqa: E402
from dataloader.dataset import read_image, split_path  # noqa: E402
from dataloader.labels import PaletteLabel  # noqa: E402
from dataloader.loaders import adaptation_dataset, training_dataset, validation_dataset  # noqa: E402
from dataloader.paths import dataset_root  # noqa: E402
from dataloader.resized_copy import MANIFEST, fingerprint, read_manifest, write_manifest  # noqa: E402
from dataloader.transforms import nearest_indices, resize_color  # noqa: E402
from errors import UserError, run_cli  # noqa: E402
from experiment.folder import LOCK_NAME, lock_folder, write_bytes  # noqa: E402

DEFAULT_RESIZE = {'training': (512, 1024), 'adaptation': (192, 640)}  # the defaults of arguments.py
LABEL_CATEGORY = 'segmentation'


@dataclass(frozen=True)
class FileTask:
    """One image to write: its path relative to the dataset roots, 'color', 'label' or 'copy', and the size."""
    path: str
    mode: str
    hw: tuple[int, int] | None


@dataclass(frozen=True)
class CopyPlan:
    """Everything one loader's copy holds: its dataset folder, the size written (None: unchanged), the images and
    the JSON files."""
    dataset: str
    written_hw: tuple[int, int] | None
    tasks: list[FileTask]
    json_files: list[str]


def a_kind(kind: str) -> str:
    """'a training', 'an adaptation', 'a validation'."""
    return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}"


def loader_kind(loader: str, kind: str | None = None) -> str:
    """'training', 'adaptation' or 'validation': the loader's kind, or the one --kind picks for a name of two."""
    kinds = datasets.loader_kinds(loader)
    if kind is not None and kind not in kinds:
        raise UserError(f"{loader} is not {a_kind(kind)} loader but {' and '.join(map(a_kind, kinds))} loader")
    if kind is None and len(kinds) > 1:
        raise UserError(f"{loader} is both {' and '.join(map(a_kind, kinds))} loader; give "
                        f"{' or '.join(f'--kind {known}' for known in kinds)}")
    return kind or kinds[0]


def resize_size(args: argparse.Namespace, kind: str) -> tuple[int, int] | None:
    """The job's resize size the copy is made for (flags, else their defaults); None for a validation loader."""
    if kind != 'validation':
        return args.resize_height or DEFAULT_RESIZE[kind][0], args.resize_width or DEFAULT_RESIZE[kind][1]
    if args.resize_height or args.resize_width:
        raise UserError(f'{args.loader} is a validation loader, copied unchanged (its labels stay native and its image '
                        f'and label must have one size), so --resize-height/-width do not apply')
    return None


def loader_dataset(loader: str, kind: str, resize_hw: tuple[int, int] | None):
    """The loader's own dataset on the source (its files and transforms say what to write)."""
    if kind == 'training':
        return training_dataset(loader, resize_hw, (1, 1))  # the random crop does not touch the first resize
    if kind == 'adaptation':
        return adaptation_dataset(loader, resize_hw, resize_hw)  # the adaptation crop flags are not used
    return validation_dataset(loader, datasets.loader(loader, kind)[1].size)  # any size: the copy is unchanged


def relative(path: str, source_root: str) -> str:
    """A listed file's path relative to the dataset root; a file outside it cannot be copied."""
    found = os.path.relpath(path, source_root)
    if found.split(os.sep)[0] == '..':
        raise UserError(f'the file {path} lies outside UBNA_DIR_DATASET={source_root} and cannot be copied')
    return found


def copy_plan(loader: str, kind: str, resize_hw: tuple[int, int] | None, source_root: str) -> CopyPlan:
    """The files a loader reads and how each is written, from the loader's dataset built on the source."""
    dataset = loader_dataset(loader, kind, resize_hw)
    tasks = {}
    written_hw = None if kind == 'validation' else dataset.transform.resize_hw
    for category, paths in dataset.files.items():
        mode = 'copy' if written_hw is None else 'label' if category == LABEL_CATEGORY else 'color'
        for path in map(partial(relative, source_root=source_root), paths):
            tasks[path] = FileTask(path, mode, written_hw)
    entry, source = datasets.loader(loader, kind)
    json_paths = [os.path.join(source_root, entry.name, name) for name in ('parameters.json', 'basic_files.json')]
    json_paths.append(split_path(entry.name, source.split, source.split_file))
    return CopyPlan(entry.name, written_hw, [tasks[path] for path in sorted(tasks)],
                    [relative(path, source_root) for path in json_paths])


def png_parameters(mode: str, compress: bool) -> list[int]:
    """cv2.imencode parameters for a 'color' or 'label' task.

    Colour images are stored (no deflate, no row filter) unless compress: they then decode several times faster,
    at a few times the size. Labels, mostly flat, use level 1 with the up filter: smaller and faster to decode than
    OpenCV's default. OpenCV versions without the row-filter flag use their own."""
    if mode == 'color' and compress:
        return []
    level, row_filter = (0, 'IMWRITE_PNG_FILTER_NONE') if mode == 'color' else (1, 'IMWRITE_PNG_FILTER_UP')
    parameters = [cv2.IMWRITE_PNG_COMPRESSION, level]
    if hasattr(cv2, 'IMWRITE_PNG_FILTER'):
        parameters += [cv2.IMWRITE_PNG_FILTER, getattr(cv2, row_filter)]
    return parameters


def palette_png(label: PaletteLabel) -> bytes:
    """A palette label written as one (level 1): read back as indices, it stays quick to crop and convert."""
    image = Image.fromarray(label.indices, 'P')
    image.putpalette(label.colors[:, ::-1].tobytes())
    buffer = io.BytesIO()
    image.save(buffer, 'PNG', compress_level=1)
    return buffer.getvalue()


def encoded(task: FileTask, source: str, compress: bool) -> bytes:
    """The bytes to write for one task: a resized colour image or label as PNG, or the file unchanged."""
    if task.mode == 'copy':
        with open(source, 'rb') as file:
            return file.read()
    if task.mode == 'color':
        rgb = np.asarray(resize_color(Image.fromarray(read_image(source, 'color')), task.hw))
        image = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    else:
        label = read_image(source, LABEL_CATEGORY)
        label = label.take(nearest_indices(label.shape[0], task.hw[0]), axis=0).take(
            nearest_indices(label.shape[1], task.hw[1]), axis=1)
        if isinstance(label, PaletteLabel):
            return palette_png(label)
        image = label
    ok, png = cv2.imencode('.png', image, png_parameters(task.mode, compress))
    if not ok:
        raise UserError(f'the resized image of {source} cannot be encoded as PNG')
    return png.tobytes()


def write_file(source_root: str, output_root: str, compress: bool, task: FileTask) -> None:
    """Write one file of the copy (in a pool worker), atomically."""
    write_bytes(os.path.join(output_root, task.path),
                     encoded(task, os.path.join(source_root, task.path), compress))


def check_output(source_root: str, output_root: str, folder: str) -> None:
    """Refuse to write over the source datasets or into a dataset folder that is not a resized copy."""
    if os.path.isdir(output_root) and os.path.samefile(source_root, output_root):
        raise UserError(f'--output {output_root} is the source UBNA_DIR_DATASET; give another folder for the copy')
    if (os.path.isdir(folder) and set(os.listdir(folder)) - {LOCK_NAME}
            and not os.path.isfile(os.path.join(folder, MANIFEST))):
        raise UserError(f'{folder} exists and is not a resized copy (it has no {MANIFEST}); give another --output')


def record(folder: str, loader: str, entry: dict) -> None:
    """Put a loader's entry into the folder's manifest; entries of other loaders sharing images are dropped."""
    entries = read_manifest(folder) if os.path.isfile(os.path.join(folder, MANIFEST)) else {}
    images = set(entry['images'])
    for other in [name for name, found in entries.items() if name != loader and images & set(found['images'])]:
        print(f'note: {other} is dropped from {os.path.join(folder, MANIFEST)}: its files are rewritten for {loader}',
              file=sys.stderr)
        del entries[other]
    entries[loader] = entry
    write_manifest(folder, entries)


def write_copy(loader: str, resize_hw: tuple[int, int] | None, plan: CopyPlan, source_root: str, output_root: str,
               workers: int, compress: bool = False) -> None:
    """With the copy's lock: record the entry as partial, write the JSON files and the images (in a pool), then
    record it complete."""
    folder = os.path.join(output_root, plan.dataset)
    check_output(source_root, output_root, folder)
    os.makedirs(folder, exist_ok=True)
    lock_folder(folder, 'the resized copy', 'another --output')  # and remove what a killed run of the tool left
    images = [task.path for task in plan.tasks]
    entry = {'resize_hw': resize_hw, 'written_hw': plan.written_hw,
             'source_folder': os.path.join(source_root, plan.dataset),
             'fingerprint': fingerprint(source_root, images, plan.json_files),
             'num_files': len(images) + len(plan.json_files), 'images': images, 'json_files': plan.json_files,
             'complete': False}
    record(folder, loader, entry)
    for path in plan.json_files:
        with open(os.path.join(source_root, path), 'rb') as file:
            write_bytes(os.path.join(output_root, path), file.read())
    with Pool(workers, initializer=cv2.setNumThreads, initargs=(0,)) as pool:  # sequential OpenCV (see loaders)
        writes = pool.imap_unordered(partial(write_file, source_root, output_root, compress), plan.tasks, chunksize=4)
        for _ in tqdm(writes, total=len(plan.tasks), desc=loader, unit='file'):
            pass
    record(folder, loader, {**entry, 'complete': True})


def positive(text: str) -> int:
    """An integer >= 1 (argparse type)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f'{text} is not a positive integer')
    return value


def workers(text: str) -> int:
    """A process count, 1 to MAX_WORKERS (argparse type): more is a typo."""
    value = positive(text)
    if value > MAX_WORKERS:
        raise argparse.ArgumentTypeError(f'must be at most {MAX_WORKERS}, got {value}')
    return value


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Write a copy of a loader's dataset resized to its resize size.")
    parser.add_argument('loader', choices=list(dict.fromkeys(name for kind in datasets.KINDS
                                                             for name in datasets.loader_names(kind))))
    parser.add_argument('--kind', choices=datasets.KINDS, default=None,
                        help='the kind to copy a loader name of two kinds as (e.g. acdc_fog_train: adaptation or '
                             'validation)')
    parser.add_argument('--resize-height', type=positive, default=None,
                        help="the job's resize height flag (default: its default; not for validation loaders)")
    parser.add_argument('--resize-width', type=positive, default=None,
                        help="the job's resize width flag (default: its default; not for validation loaders)")
    parser.add_argument('--output', required=True, help='the folder that becomes UBNA_DIR_DATASET for the copy')
    parser.add_argument('--workers', type=workers, default=min(os.cpu_count() or 1, MAX_WORKERS),
                        help='processes (default: all CPUs)')
    parser.add_argument('--compress', action='store_true',
                        help='compress the colour images: 1.5-3x smaller files, 5x slower to decode (default: stored)')
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    kind = loader_kind(args.loader, args.kind)
    resize_hw = resize_size(args, kind)
    source_root, output_root = os.path.abspath(dataset_root()), os.path.abspath(args.output)
    start = time.perf_counter()
    plan = copy_plan(args.loader, kind, resize_hw, source_root)
    try:
        write_copy(args.loader, resize_hw, plan, source_root, output_root, args.workers, args.compress)
    except OSError as exc:  # e.g. a full disk, no permission, --output naming a file
        raise UserError(f'the copy of {args.loader} stopped at {exc.filename or output_root} ({exc.strerror})') \
            from None
    seconds = time.perf_counter() - start
    size = 'unchanged' if resize_hw is None else f'at {plan.written_hw[0]}x{plan.written_hw[1]}'
    flags = '' if resize_hw is None else f' and the resize size {resize_hw[0]}x{resize_hw[1]}'
    print(f'{args.loader}: {len(plan.tasks)} files written {size} to {os.path.join(output_root, plan.dataset)} in '
          f'{seconds:.1f} s ({len(plan.tasks) / seconds:.1f} files/s); use them with UBNA_DIR_DATASET={output_root}'
          f'{flags}')


if __name__ == '__main__':
    sys.exit(run_cli(main))
