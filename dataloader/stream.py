"""A stream of validation domains for online adaptation: the plan (which batch belongs to which round and position
of the domain list, in stream order) and ONE loader over all domains' datasets that yields the plan's batches, so
that its workers decode ahead across domain and round boundaries."""
import random
from dataclasses import dataclass

import torch
from torch.utils.data import ConcatDataset, DataLoader, Sampler

from dataloader import datasets, loaders
from experiment.runtime import next_loader_seed

ORDERS = ('sequential', 'mixed')


@dataclass(frozen=True)
class Cell:
    """One pass over one listed domain: round and position count from 1; name is the loader's."""
    round: int
    position: int
    name: str


class StreamPlan:
    """The stream's cells (round-major) and its batches in stream order, each (cell index, dataset indices).

    names: the loaders in stream order (repeats allowed); lengths: {name: samples}. sequential: cell after cell;
    mixed: each round's single-domain batches shuffled together by a generator seeded with `seed`."""

    def __init__(self, names: list[str], lengths: dict, batch_size: int, rounds: int = 1,
                 order: str = 'sequential', seed: int | None = None):
        self.names = list(names)
        self.offsets, start = {}, 0
        for name in dict.fromkeys(names):  # one dataset per distinct loader, in order of appearance
            self.offsets[name], start = start, start + lengths[name]
        self.cells = [Cell(r, p, name) for r in range(1, rounds + 1) for p, name in enumerate(names, 1)]
        draws = random.Random(seed)
        self.batches = []
        for r in range(rounds):
            batches = []
            for p, name in enumerate(names):
                indices = range(self.offsets[name], self.offsets[name] + lengths[name])
                batches += [(r * len(names) + p, list(indices[i:i + batch_size]))
                            for i in range(0, lengths[name], batch_size)]
            if order == 'mixed':
                draws.shuffle(batches)
            self.batches += batches

    def __len__(self) -> int:
        return len(self.batches)

    def distinct_batches(self) -> list[list[int]]:
        """Every batch of indices once, in order of first appearance (what a replay needs decoded)."""
        return [list(key) for key in dict.fromkeys(tuple(indices) for _, indices in self.batches)]


class IndexBatches(Sampler):
    """A batch sampler that yields given lists of dataset indices in order."""

    def __init__(self, batches: list[list[int]]):
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


def stream_size(name: str, resize_hw) -> tuple[int, int]:
    """A domain's network input: the size given for the whole stream, else its loader's default."""
    return tuple(resize_hw) if resize_hw else datasets.loader(name, 'validation')[1].size


def stream_dataset(names: list[str], resize_hw) -> tuple[ConcatDataset, dict]:
    """One dataset over the distinct loaders of `names` (in order of appearance), and {name: samples}."""
    loaders.check_loader_names(names, 'validation')
    parts = {name: loaders.validation_dataset(name, stream_size(name, resize_hw)) for name in dict.fromkeys(names)}
    return ConcatDataset(list(parts.values())), {name: len(part) for name, part in parts.items()}


def batches_loader(dataset, batches: list[list[int]], num_workers: int, on_gpu: bool) -> DataLoader:
    """A loader of `batches` (lists of indices) in order, with make_loader's workers: low priority on the CPU,
    pinned batches for a GPU, PREFETCH_BATCHES in flight per worker."""
    return DataLoader(dataset, batch_sampler=IndexBatches(batches), collate_fn=loaders.collate,
                      num_workers=num_workers, pin_memory=on_gpu,
                      generator=torch.Generator().manual_seed(next_loader_seed()),
                      **loaders.worker_options(num_workers, on_gpu))


def stream_loader(names: list[str], batch_size: int, resize_hw, num_workers: int, on_gpu: bool, rounds: int = 1,
                  order: str = 'sequential', seed: int | None = None) -> tuple[StreamPlan, DataLoader]:
    """The plan of a stream and one loader that yields its batches in stream order.
    resize_hw: every domain's network input, or None for each loader's default size."""
    dataset, lengths = stream_dataset(names, resize_hw)
    plan = StreamPlan(names, lengths, batch_size, rounds, order, seed)
    return plan, batches_loader(dataset, [indices for _, indices in plan.batches], num_workers, on_gpu)
