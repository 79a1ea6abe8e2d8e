"""The dataset registry: one entry per dataset (its folder, label table, named loaders and index builder), each
registered by its own file in this package. The loaders (dataloader/loaders.py), the flag checks (arguments.py),
data_download/build_index.py and data_download/resize_dataset.py read it, so adding a dataset is one new file here:

    register(DatasetEntry('mydata', 'cityscapes', (Loader('mydata_train', 'training', 'train'),), build_mydata))
"""
import importlib
import pkgutil
from dataclasses import dataclass
from typing import Callable

KINDS = ('training', 'adaptation', 'validation')


@dataclass(frozen=True)
class Loader:
    """A named loader (a `--*-loaders` value) of a dataset."""
    name: str
    kind: str  # one of KINDS
    split_file: str  # it reads <split_file>.json
    split: str | None = None  # a named split: the split file is in <dataset>_<split>/; None: in <dataset>/
    size: tuple[int, int] | None = None  # validation: its resize when several validation loaders are given
    # adaptation: (resize_hw, crop_at_offsets) -> (resize_hw, output_hw, crop offset); None: it only resizes
    geometry: Callable | None = None


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
    taken = {known.name for known in all_loaders()}
    if entry.name in DATASETS:
        raise ValueError(f'dataset {entry.name} is registered twice')
    for known in entry.loaders:
        if known.kind not in KINDS:
            raise ValueError(f"loader {known.name} has kind '{known.kind}', not one of {', '.join(KINDS)}")
        if known.name in taken:
            raise ValueError(f'loader {known.name} of dataset {entry.name} is registered twice')
        taken.add(known.name)
        if known.kind != 'adaptation' and entry.labels is None:
            raise ValueError(f'{known.kind} loader {known.name} needs a label table, which {entry.name} lacks')
        if (known.kind == 'validation') != (known.size is not None):
            raise ValueError(f'loader {known.name}: a default size is for validation loaders, which need one')
        if known.geometry is not None and known.kind != 'adaptation':
            raise ValueError(f'loader {known.name}: only adaptation loaders have a geometry')
    DATASETS[entry.name] = entry
    return entry


def all_loaders() -> list[Loader]:
    """Every registered loader, in registration order."""
    return [known for entry in DATASETS.values() for known in entry.loaders]


def loader_names(kind: str) -> tuple[str, ...]:
    """The names of the loaders of a kind, in registration order (the order help texts and errors list them)."""
    return tuple(known.name for known in all_loaders() if known.kind == kind)


def loader(name: str) -> tuple[DatasetEntry, Loader]:
    """The dataset and the loader of a loader name; a KeyError for a name no dataset registers."""
    for entry in DATASETS.values():
        for known in entry.loaders:
            if known.name == name:
                return entry, known
    raise KeyError(name)


# Every dataset's file registers its entry when imported, in file-name order: the order of loader_names.
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f'{__name__}.{_module.name}')
