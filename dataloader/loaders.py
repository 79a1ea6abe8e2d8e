"""The named loaders of spec §4 (`--*-loaders` values, registered with their datasets in dataloader/datasets/),
batching, and combining several loaders."""
import functools
import os
import random

import cv2
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, default_collate

from dataloader import datasets, device_transforms
from dataloader.dataset import ImageDataset, read_parameters, read_split
from dataloader.labels import label_converter
from dataloader.resized_copy import check_resized_copy
from dataloader.transforms import (RESCALE_RANGE, AdaptationTransform, SegmentationTrainTransform,
                                   ValidationTransform, to_network_input)
from errors import UserError
from experiment.runtime import next_loader_seed

SEGMENTATION_PURPOSES = ('segmentation',)
ADAPTATION_PURPOSES = ('adaptation',)
PIXEL_WORK = ('auto', 'workers', 'device')  # where adaptation images are resized and jittered
PREFETCH_BATCHES = 4  # per worker
WORKER_NICENESS = 19  # low-priority workers (CPU runs): they decode while the network's threads do not run


def check_loader_names(names: list[str], kind: str) -> None:
    """UserError for a name that is not a loader of this kind ('training', 'adaptation', 'validation')."""
    valid = datasets.loader_names(kind)
    for name in names:
        if name not in valid:
            raise UserError(f"unknown {kind} loader '{name}'; valid names: {', '.join(valid)}")


def _registered(name: str, kind: str, resize_hw: tuple[int, int]) -> tuple[datasets.DatasetEntry, datasets.Loader]:
    """The dataset and loader of a name of this kind, after the check that a resized copy suits them."""
    check_loader_names([name], kind)
    entry, loader = datasets.loader(name, kind)
    check_resized_copy(entry.name, name, resize_hw, kind)
    return entry, loader


def training_dataset(name: str, resize_hw: tuple[int, int], crop_hw: tuple[int, int]) -> Dataset:
    """Segmentation training samples: labels_mode from parameters.json; flip, resize, rescale, crop, jitter."""
    entry, loader = _registered(name, 'training', resize_hw)
    smallest = tuple(int(size // RESCALE_RANGE[1]) for size in resize_hw)
    if crop_hw[0] > smallest[0] or crop_hw[1] > smallest[1]:
        raise UserError(f'the segmentation crop {crop_hw[0]}x{crop_hw[1]} does not fit into the smallest random '
                        f'rescale {smallest[0]}x{smallest[1]} of the resize {resize_hw[0]}x{resize_hw[1]}')
    labels_mode = read_parameters(entry.name)['labels_mode']
    convert = label_converter(entry.labels, labels_mode)
    files = read_split(entry.name, loader.split, loader.split_file, ['color', 'segmentation'])
    # real GTA-5 has a few labels whose size differs from their image: both are resized anyway, so only warn
    return ImageDataset(files, SegmentationTrainTransform(resize_hw, crop_hw, convert), entry.name,
                        SEGMENTATION_PURPOSES, strict_sizes=False)


def _adaptation_geometry(name: str, resize_hw: tuple[int, int], crop_at_offsets: bool) -> tuple:
    """(resize, crop or None, crop offset) of an adaptation loader: its entry's geometry, else only the resize."""
    geometry = datasets.loader(name, 'adaptation')[1].geometry
    return (resize_hw, None, (0, 0)) if geometry is None else geometry(resize_hw, crop_at_offsets)


def adaptation_input_size(name: str, resize_hw: tuple[int, int]) -> tuple[int, int]:
    """The network input (height, width) of an adaptation loader for --adaptation-resize-height/-width."""
    _, output_hw, _ = _adaptation_geometry(name, resize_hw, False)
    return output_hw or resize_hw


def adaptation_dataset(name: str, resize_hw: tuple[int, int], crop_hw: tuple[int, int],
                       crop_at_offsets: bool = False, on_device: bool = False) -> Dataset:
    """The images of the loader's cameras (left, then right, by default), one camera's after the other's; no labels.

    As in the reference, crop_hw is not used: a loader resizes to resize_hw, or as its entry's geometry says
    (which may crop, at offsets with crop_at_offsets).
    on_device: its samples leave the resize and the jitter to the device (see AdaptationTransform).
    """
    entry, loader = _registered(name, 'adaptation', resize_hw)
    transform = AdaptationTransform(*_adaptation_geometry(name, resize_hw, crop_at_offsets), on_device)
    files = read_split(entry.name, loader.split, loader.split_file, list(loader.cameras))
    return ImageDataset({'color': [path for camera in loader.cameras for path in files[camera]]}, transform,
                        entry.name, ADAPTATION_PURPOSES)


def validation_dataset(name: str, resize_hw: tuple[int, int]) -> Dataset:
    """Validation samples: image resized, label at native size (read with the loader's labels mode, fromid unless
    it says otherwise), no flip, no jitter."""
    entry, loader = _registered(name, 'validation', resize_hw)
    files = read_split(entry.name, loader.split, loader.split_file, ['color', 'segmentation'])
    transform = ValidationTransform(resize_hw, label_converter(entry.labels, loader.labels_mode))
    return ImageDataset(files, transform, validation_domain(name), SEGMENTATION_PURPOSES)


def validation_domain(name: str) -> str:
    """The domain a validation loader's samples are scored as: its own, else its dataset's name."""
    entry, loader = datasets.loader(name, 'validation')
    return loader.domain or entry.name


def collate(samples: list[dict]) -> dict:
    """Tensors stacked (in shared memory inside workers); every other field becomes a list, one per sample."""
    batch = {}
    for key in samples[0]:
        values = [sample[key] for sample in samples]
        if not isinstance(values[0], torch.Tensor):
            batch[key] = values
            continue
        shapes = {tuple(value.shape) for value in values}
        if len(shapes) > 1:
            raise UserError(f"cannot batch '{key}' tensors of different sizes {sorted(shapes)}; "
                            f'use batch size 1 for this loader')
        batch[key] = default_collate(values)
    return batch


def _init_worker(low_priority: bool, worker_id: int) -> None:
    """Set up a worker process.

    Its tensors reach the main process as named shared memory ('file_system'). With the default file descriptors,
    each tensor costs a socket round trip served by a thread of the worker, which waits for the worker's GIL while
    it decodes, many times slower per batch.
    OpenCV runs sequentially: the workers are the parallelism, and N workers with a thread per core each
    oversubscribe the cores. 0, not 1: setNumThreads(1) deadlocks in a child forked from a process whose OpenCV
    threads had started.
    Low priority: see make_loader."""
    torch.multiprocessing.set_sharing_strategy('file_system')
    _start_shared_memory_manager()
    cv2.setNumThreads(0)
    if low_priority:
        try:
            os.nice(WORKER_NICENESS)
        except OSError:  # a priority that cannot be lowered costs speed only
            pass


def _start_shared_memory_manager() -> None:
    """Start this worker's torch_shm_manager, which serves its 'file_system' tensors, with /dev/null as stderr.
    torch starts it at the first shared tensor, and it outlives the worker by its 2 s shutdown timeout, holding the
    worker's stderr: whoever reads a job's output through a pipe (tee, a subprocess) would wait 2 s after the job."""
    stderr, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        torch.empty(1).share_memory_()  # the first shared tensor: the manager starts now, inheriting fd 2
    finally:
        os.dup2(stderr, 2)
        os.close(stderr)
        os.close(devnull)


def _unchanged(sample: dict) -> dict:
    return sample


class DrawingSampler(Sampler):
    """(index, draw) for each index of an order: the main process draws the transform's random parameters, sample by
    sample in the order's sequence, from a generator of its own, so no sample depends on the worker that makes it."""

    def __init__(self, order: Sampler, transform, seed: int):
        self.order = order
        self.transform = transform
        self.draws = random.Random(seed)

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self):
        for index in self.order:
            yield index, self.transform.draw(self.draws)


def worker_options(num_workers: int, on_gpu: bool, persistent: bool = False) -> dict:
    """A DataLoader's worker settings: PREFETCH_BATCHES in flight per worker, each set up by _init_worker (low
    priority unless the batches feed a GPU); persistent: kept across passes. {} without workers."""
    if num_workers == 0:
        return {}
    return {'persistent_workers': persistent, 'prefetch_factor': PREFETCH_BATCHES,
            'worker_init_fn': functools.partial(_init_worker, not on_gpu)}


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, drop_last: bool, num_workers: int,
                on_gpu: bool, sampler=None, samples_needed: int | None = None, drawing=None,
                single_samples: bool = False) -> DataLoader:
    """A DataLoader with our collate; a given sampler (e.g. distributed) replaces shuffling.
    drawing (shuffled): the dataset's transform, whose random parameters the main process draws (DrawingSampler), in
    an order from a generator of its own: samples and order are the same for any number of workers (the loader's
    generator also draws the workers' base seed, once with persistent workers, once per pass without workers).
    single_samples: it yields the samples one by one, which its caller batches (see DeviceBatches).
    on_gpu: the batches feed a network on a GPU, so they are pinned. Otherwise the network's threads share the
    CPU with the workers, which then run at low priority: they decode in the network's gaps, while at equal
    priority a worker that takes a core stalls every thread of a layer at its barrier.
    samples_needed (shuffled): each pass yields the first samples_needed of its shuffled order, the samples a
    whole pass begins with, so that no worker decodes batches that the job will not use.

    Workers persist across passes (no fork and warm-up per epoch or restart) and each keeps PREFETCH_BATCHES
    batches in flight. Its order and its workers' seeds, for every pass, come from its own generator, seeded here
    (see experiment.runtime.seed_loaders): what draws random numbers after this call does not change them.
    """
    num_samples = len(dataset) if sampler is None else len(sampler)
    if drop_last and num_samples < batch_size:
        raise UserError(f'a loader has {num_samples} samples, fewer than its batch size {batch_size}')
    generator = torch.Generator().manual_seed(next_loader_seed())
    if shuffle and sampler is None and (samples_needed is not None or drawing is not None):
        order = torch.Generator().manual_seed(next_loader_seed()) if drawing is not None else generator
        sampler = RandomSampler(dataset, num_samples=min(samples_needed or len(dataset), len(dataset)), generator=order)
        if drawing is not None:
            sampler = DrawingSampler(sampler, drawing, next_loader_seed())
    batching = {'batch_size': None, 'collate_fn': _unchanged} if single_samples else \
        {'batch_size': batch_size, 'drop_last': drop_last, 'collate_fn': collate}
    return DataLoader(dataset, shuffle=shuffle and sampler is None, sampler=sampler, num_workers=num_workers,
                      pin_memory=on_gpu, generator=generator, **batching,
                      **worker_options(num_workers, on_gpu, persistent=True))


class StartedLoader:
    """A loader whose first pass starts now, so that its workers decode while the job builds its network."""

    def __init__(self, loader: DataLoader):
        self.loader = loader
        self._first_pass = iter(loader)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        first_pass, self._first_pass = self._first_pass, None
        return first_pass if first_pass is not None else iter(self.loader)


class DeviceBatches:
    """Batches made on the device (device_transforms.adaptation_images) from a loader of single decoded samples
    (make_loader with single_samples). The workers decode the samples of a batch at once, so the first batch comes
    after one decode instead of batch_size in one worker. A batch holds a list per field (its native images may
    differ in size, and the device transforms each on its own) and 'input', its images as the workers' batches hold
    them, but on the device."""

    def __init__(self, loader: DataLoader, batch_size: int, transform: AdaptationTransform,
                 device: torch.device | str):
        self.loader = loader
        self.batch_size = batch_size
        self.transform = transform
        self.device = torch.device(device)

    @property
    def sampler(self):
        return self.loader.sampler

    def __len__(self) -> int:
        return len(self.loader) // self.batch_size

    def __iter__(self):
        return self._batches(iter(self.loader))  # the workers start on this pass now

    def _batches(self, samples):
        batch = []
        for sample in samples:
            batch.append(sample)
            if len(batch) == self.batch_size:  # the rest of a pass is dropped, as drop_last does
                fields = {key: [sample[key] for sample in batch] for key in batch[0]}
                yield {**fields, 'input': device_transforms.adaptation_images(fields, self.transform.output_hw,
                                                                               self.device)}
                batch = []


class CyclingLoaders:
    """Exactly num_batches items per iteration, each a list with one batch per loader; loaders restart when done."""

    def __init__(self, loaders: list[DataLoader], num_batches: int):
        self.loaders = list(loaders)
        self.num_batches = num_batches
        self._passes = [0] * len(self.loaders)
        self._started = None

    def __len__(self) -> int:
        return self.num_batches

    def start(self) -> 'CyclingLoaders':
        """Start the loaders' workers on the first pass now (they decode while the job builds its network)."""
        self._started = [self._restart(i) for i in range(len(self.loaders))]
        return self

    def __iter__(self):
        iterators, self._started = self._started or [self._restart(i) for i in range(len(self.loaders))], None
        for _ in range(self.num_batches):
            yield [self._next(i, iterators) for i in range(len(self.loaders))]

    def _restart(self, i: int):
        sampler = self.loaders[i].sampler
        if hasattr(sampler, 'set_epoch'):
            sampler.set_epoch(self._passes[i])
        self._passes[i] += 1
        return iter(self.loaders[i])

    def _next(self, i: int, iterators: list):
        try:
            return next(iterators[i])
        except StopIteration:
            iterators[i] = self._restart(i)
            try:
                return next(iterators[i])
            except StopIteration:
                raise UserError(f'training loader {i + 1} yields no batch (fewer samples than its batch size)') \
                    from None


def joined(loader_batches: list[dict], key: str) -> torch.Tensor:
    """`key` of one CyclingLoaders item: one loader's tensor as it came (pinned, it is copied to the GPU
    asynchronously; made on the device by DeviceBatches), several loaders' concatenated."""
    tensors = [batch[key] for batch in loader_batches]
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


def pixel_work_on_device(choice: str, on_gpu: bool) -> bool:
    """Whether adaptation's resize and jitter run on the device: 'auto' picks the faster one, the device on a GPU
    (its many workers then only decode) and the workers on the CPU (docs/performance.md)."""
    return choice == 'device' or (choice == 'auto' and on_gpu)


def adaptation_batches(names: list[str], batch_size: int, num_batches: int, resize_hw: tuple[int, int],
                       crop_hw: tuple[int, int], num_workers: int, device: torch.device | str,
                       memory_format: torch.memory_format = torch.contiguous_format, crop_at_offsets: bool = False,
                       pixel_work: str = 'auto'):
    """`num_batches` normalised network inputs on `device` from the adaptation loaders `names` (each cycled; one
    batch of each, concatenated); the workers start decoding now. The main process draws each sample's flip and
    jitter, so the batches are the same for any number of workers. pixel_work 'device': the workers only decode, and
    the device resizes and jitters (device_transforms); 'auto': the device on a GPU, the workers on the CPU (see
    pixel_work_on_device)."""
    on_gpu = torch.device(device).type == 'cuda'
    on_device = pixel_work_on_device(pixel_work, on_gpu)
    datasets = [adaptation_dataset(name, resize_hw, crop_hw, crop_at_offsets, on_device) for name in names]
    batch_loaders = []
    for dataset in datasets:
        loader = make_loader(dataset, batch_size, shuffle=True, drop_last=True, num_workers=num_workers,
                             on_gpu=on_gpu, samples_needed=num_batches * batch_size, drawing=dataset.transform,
                             single_samples=on_device)
        batch_loaders.append(DeviceBatches(loader, batch_size, dataset.transform, device) if on_device else loader)
    cycling = CyclingLoaders(batch_loaders, num_batches).start()
    return (to_network_input(joined(batches, 'input'), device, memory_format) for batches in cycling)


def validation_loaders(names: list[str], batch_size: int, resize_hw: tuple[int, int], num_workers: int,
                       on_gpu: bool) -> list[tuple[str, DataLoader]]:
    """One loader per name, in order; with more than one name each uses its default size (spec §4)."""
    check_loader_names(names, 'validation')
    loaders = []
    for name in names:
        size = resize_hw if len(names) == 1 else datasets.loader(name, 'validation')[1].size
        loaders.append((name, make_loader(validation_dataset(name, size), batch_size, shuffle=False,
                                          drop_last=False, num_workers=num_workers, on_gpu=on_gpu)))
    return loaders
