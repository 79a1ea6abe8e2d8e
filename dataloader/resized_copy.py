"""Resized copies of datasets (data_download/resize_dataset.py): their manifest, and the check that a loader may
use one.

A copied dataset folder holds resized_copy.json, {"loaders": {loader: entry}}, one entry per loader written into
it: the resize size the loader was run with and the size written (both null for a validation loader, copied
unchanged for any size), the source dataset folder, the files copied (relative to the dataset root), a fingerprint
of the source (path, size and mtime of every image copied, content of every JSON file copied) and whether the
writing finished. A folder without the manifest is an ordinary dataset.
"""
import hashlib
import json
import os
import sys

from dataloader import datasets
from dataloader.dataset import load_json
from dataloader.paths import dataset_root
from errors import UserError
from experiment.folder import write_bytes

MANIFEST = 'resized_copy.json'
TOOL = 'data_download/resize_dataset.py'
ENTRY_KEYS = ('resize_hw', 'written_hw', 'source_folder', 'fingerprint', 'num_files', 'images', 'json_files',
              'complete')
SIZE_FLAGS = {'training': '--segmentation-resize-height/-width', 'adaptation': '--adaptation-resize-height/-width'}


def fingerprint(source_root: str, images: list[str], json_files: list[str]) -> str:
    """sha256 over the path, size and mtime of each image and the content of each JSON file (paths relative to
    source_root); a missing file raises FileNotFoundError."""
    digest = hashlib.sha256()
    for path in images:
        status = os.stat(os.path.join(source_root, path))
        digest.update(f'{path}\t{status.st_size}\t{status.st_mtime_ns}\n'.encode())
    for path in json_files:
        with open(os.path.join(source_root, path), 'rb') as file:
            digest.update(f'{path}\n'.encode() + file.read())
    return digest.hexdigest()


def read_manifest(folder: str) -> dict[str, dict]:
    """The entries per loader of <folder>/resized_copy.json; a malformed manifest is a UserError naming it."""
    path = os.path.join(folder, MANIFEST)
    entries = load_json(path, 'resized-copy manifest').get('loaders')
    if not isinstance(entries, dict):
        raise UserError(f"the resized-copy manifest {path} must hold an object 'loaders'")
    for loader, entry in entries.items():
        missing = [key for key in ENTRY_KEYS if not isinstance(entry, dict) or key not in entry]
        if missing:
            raise UserError(f"the resized-copy manifest {path} has no key '{missing[0]}' for loader {loader}")
    return entries


def write_manifest(folder: str, entries: dict[str, dict]) -> None:
    """Write <folder>/resized_copy.json atomically."""
    write_bytes(os.path.join(folder, MANIFEST), json.dumps({'loaders': entries}).encode())


def rebuild_command(loader: str, resize_hw, source_root: str, copy_root: str) -> str:
    """The shell command that writes the copy of a loader at a resize size (None: a validation loader's copy); for
    a name of two kinds (one of them validation) it names the kind."""
    size = '' if resize_hw is None else f' --resize-height {resize_hw[0]} --resize-width {resize_hw[1]}'
    kinds = datasets.loader_kinds(loader)
    if len(kinds) > 1:
        size += ' --kind ' + ('validation' if resize_hw is None else next(k for k in kinds if k != 'validation'))
    return f'UBNA_DIR_DATASET={source_root} python {TOOL} {loader}{size} --output {copy_root}'


def check_resized_copy(dataset: str, loader: str, resize_hw: tuple[int, int], kind: str) -> None:
    """Nothing for an ordinary dataset folder; for a resized copy, a UserError unless it was completely written for
    this loader and resize size (an unchanged copy, a validation loader's, serves any size) from a source that has
    not changed since (a vanished source is only a warning)."""
    copy_root = dataset_root()
    folder = os.path.join(copy_root, dataset)
    if not os.path.isfile(os.path.join(folder, MANIFEST)):
        return
    entries = read_manifest(folder)
    entry = entries.get(loader)
    job_hw = None if kind == 'validation' else tuple(resize_hw)
    if entry is None:
        raise UserError(f"the dataset folder {folder} is a resized copy made for {', '.join(sorted(entries))}, not "
                        f'for {loader}; add it with: {rebuild_command(loader, job_hw, "<datasets>", copy_root)}')
    source_root = os.path.dirname(entry['source_folder'])
    written_for = None if entry['resize_hw'] is None else tuple(entry['resize_hw'])
    if not entry['complete']:
        raise UserError(f'the resized copy of {loader} in {folder} is partial (its writing did not finish); '
                        f'rerun: {rebuild_command(loader, written_for, source_root, copy_root)}')
    if written_for is not None and job_hw is None:  # a name of two kinds, copied resized for the other kind
        raise UserError(f'the dataset folder {folder} holds {loader} resized for {written_for[0]}x{written_for[1]}, '
                        f'but as a validation loader it reads its files unchanged; write an unchanged copy: '
                        f'{rebuild_command(loader, None, source_root, copy_root)}')
    if written_for is not None and written_for != job_hw:  # an unchanged copy serves any resize
        raise UserError(f'the dataset folder {folder} holds {loader} resized for {written_for[0]}x{written_for[1]}, '
                        f'but this job resizes to {resize_hw[0]}x{resize_hw[1]} ({SIZE_FLAGS[kind]}); use '
                        f'{written_for[0]}x{written_for[1]} there or write a copy for this size: '
                        f'{rebuild_command(loader, job_hw, source_root, copy_root)}')
    _check_source(entry, loader, folder, copy_root)


def _check_source(entry: dict, loader: str, folder: str, copy_root: str) -> None:
    """UserError when the source changed since the copy was written; a warning when the source is gone."""
    source_root = os.path.dirname(entry['source_folder'])
    if not os.path.isdir(entry['source_folder']):
        print(f"warning: the resized copy {folder} cannot be checked against its source {entry['source_folder']}, "
              f'which no longer exists; it is used as it is', file=sys.stderr)
        return
    try:
        changed = fingerprint(source_root, entry['images'], entry['json_files']) != entry['fingerprint']
        reason = f"its source {entry['source_folder']} changed"
    except FileNotFoundError as exc:
        changed, reason = True, f'the source file {exc.filename} was removed'
    if changed:
        raise UserError(f'the resized copy of {loader} in {folder} is stale: {reason} since it was written; '
                        f"rebuild it: {rebuild_command(loader, entry['resize_hw'], source_root, copy_root)}")
