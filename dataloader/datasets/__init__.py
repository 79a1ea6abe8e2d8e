"""The dataset registry: one entry per dataset (its folder, label table, named loaders and index builder), each
registered by its own file in this package. The loaders (dataloader/loaders.py), the flag checks (arguments.py),
data_download/build_index.py and data_download/resize_dataset.py read it, so adding a dataset is one new file here:

    register(DatasetEntry('mydata', 'cityscapes', (Loader('mydata_train', 'training', 'train'),), build_mydata))
"""
import importlib
import pkgutil
from dataclasses import dataclass
from typing import Callable

from dataloader.labels import LABELS_MODES

KINDS = ('training', 'adaptation', 'validation')


@dataclass(frozen=True)
class Loader:
    """A named loader (a `--*-loaders` value) of a dataset; a name is unique per kind, and may serve two kinds."""
    name: str
    kind: str  # one of KINDS
    split_file: str  # it reads <split_file>.json
    split: str | None = None  # a named split: the split file is in <dataset>_<split>/; None: in <dataset>/
    size: tuple[int, int] | None = None  # validation: its resize when several validation loaders are given
    # adaptation: (resize_hw, crop_at_offsets) -> (resize_hw, output_hw, crop offset); None: it only resizes
    geometry: Callable | None = None
    # validation: how its labels are read (a mode of dataloader/labels.py); training loaders take parameters.json's
    labels_mode: str = 'fromid'
    # adaptation: the colour categories it reads, each one's images after the previous one's
    cameras: tuple[str, ...] = ('color', 'color_right')
    domain: str | None = None  # the domain its samples are scored as; None: the dataset's name


@dataclass(frozen=True)
class IndexOption:
    """An extra flag of data_download/build_index.py, passed to its dataset's index builder as `keyword`."""
    flag: str  # '--<words>'
    help: str
    metavar: str = 'FILE'

    @property
    def keyword(self) -> str:
        return self.flag[2:].replace('-', '_')


@dataclass(frozen=True)
class DatasetEntry:
    """A dataset: its folder under $UBNA_DIR_DATASET, label table, loaders and index builder."""
    name: str
    labels: str | None  # a label table of dataloader/labels.py; None: the dataset has no labels
    loaders: tuple[Loader, ...]
    build_index: Callable  # (root, **{option.keyword: value}) -> {split: samples}; writes the files of spec §2
    index_options: tuple[IndexOption, ...] = ()


DATASETS: dict[str, DatasetEntry] = {}


def register(entry: DatasetEntry) -> DatasetEntry:
    """Add a dataset; a ValueError for an entry the loaders could not use."""
    taken = {(known.name, known.kind) for known in all_loaders()}
    if entry.name in DATASETS:
        raise ValueError(f'dataset {entry.name} is registered twice')
    for known in entry.loaders:
        if known.kind not in KINDS:
            raise ValueError(f"loader {known.name} has kind '{known.kind}', not one of {', '.join(KINDS)}")
        if (known.name, known.kind) in taken:
            raise ValueError(f'loader {known.name} of dataset {entry.name} is registered twice')
        taken.add((known.name, known.kind))
        if known.kind != 'adaptation' and entry.labels is None:
            raise ValueError(f'{known.kind} loader {known.name} needs a label table, which {entry.name} lacks')
        if (known.kind == 'validation') != (known.size is not None):
            raise ValueError(f'loader {known.name}: a default size is for validation loaders, which need one')
        if known.geometry is not None and known.kind != 'adaptation':
            raise ValueError(f'loader {known.name}: only adaptation loaders have a geometry')
        if known.labels_mode not in LABELS_MODES:
            raise ValueError(f"loader {known.name} has labels mode '{known.labels_mode}', not one of "
                             f"{', '.join(LABELS_MODES)}")
        if known.labels_mode != 'fromid' and known.kind != 'validation':
            raise ValueError(f'loader {known.name}: only validation loaders have a labels mode')
    DATASETS[entry.name] = entry
    return entry


def all_loaders() -> list[Loader]:
    """Every registered loader, in registration order."""
    return [known for entry in DATASETS.values() for known in entry.loaders]


def loader_names(kind: str) -> tuple[str, ...]:
    """The names of the loaders of a kind, in registration order (the order help texts and errors list them)."""
    return tuple(known.name for known in all_loaders() if known.kind == kind)


def loader_kinds(name: str) -> tuple[str, ...]:
    """The kinds a loader name is registered for, in registration order (empty for an unknown name)."""
    return tuple(dict.fromkeys(known.kind for known in all_loaders() if known.name == name))


def loader(name: str, kind: str | None = None) -> tuple[DatasetEntry, Loader]:
    """The dataset and the loader of a loader name of a kind; a KeyError for a name no dataset registers (for that
    kind). Without a kind the name must be registered for one kind only (a ValueError otherwise)."""
    found = [(entry, known) for entry in DATASETS.values() for known in entry.loaders
             if known.name == name and kind in (None, known.kind)]
    if not found:
        raise KeyError(name)
    if len(found) > 1:
        raise ValueError(f"loader {name} is registered for the kinds {', '.join(loader_kinds(name))}; give its kind")
    return found[0]


# Every dataset's file registers its entry when imported, in file-name order: the order of loader_names.
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f'{__name__}.{_module.name}')
