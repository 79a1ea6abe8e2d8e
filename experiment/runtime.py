"""The run around a job: device, precision, seeding, torchrun processes, the timing of its loop, and its end."""
import atexit
import contextlib
import os
import random
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

PRECISIONS = {'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}
_IMPORTED = time.perf_counter()
_LOADER_SEEDS = torch.Generator()  # each new loader draws the seed of its own generator here
_LOADER_SEEDS.seed()  # a random start: unseeded runs differ


MEMORY_FORMATS = ('auto', 'channels_last', 'contiguous')


@dataclass
class Runtime:
    """Where this process runs: its device, precision and memory format, its rank among `world_size` torchrun
    processes."""
    device: torch.device
    rank: int = 0
    world_size: int = 1
    precision: str = 'fp32'
    memory_format: torch.memory_format = torch.contiguous_format

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self):
        """bf16/fp16 autocast for --sys-precision (parameters and BatchNorm statistics stay fp32); none for fp32."""
        if PRECISIONS[self.precision] is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=PRECISIONS[self.precision])

    def synchronize(self) -> None:
        """Wait for the device's queued work (for honest timings)."""
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)


def seed_everything(seed: int = 1) -> None:
    """Best-effort determinism as in the reference: seed every generator, the loaders' (their order and their
    workers' seeds) included, and make cuDNN deterministic."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    seed_loaders(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def seed_loaders(seed: int) -> None:
    """The k-th loader made after this call gets the same seed in every run seeded with `seed`; torch's global
    generator is left alone, so what draws from it (a method, an initialisation) repeats its draws too."""
    _LOADER_SEEDS.manual_seed(seed)


def next_loader_seed() -> int:
    """The seed of the next generator a loader makes for itself (see seed_loaders)."""
    return int(torch.randint(2 ** 62, (), generator=_LOADER_SEEDS))


def choose_memory_format(choice: str, training: bool, precision: str, device: torch.device) -> torch.memory_format:
    """channels_last where it is faster (docs/performance.md): the forward passes of adaptation and evaluation, and
    mixed-precision training on a GPU (tensor cores read NHWC). fp32 training stays contiguous (on the CPU
    channels_last is no faster for ResNet, slower for VGG)."""
    if choice == 'auto':
        faster = not training or (precision != 'fp32' and device.type == 'cuda')
        return torch.channels_last if faster else torch.contiguous_format
    return torch.channels_last if choice == 'channels_last' else torch.contiguous_format


def setup_runtime(use_cpu: bool, seed: int | None, precision: str = 'fp32', memory_format: str = 'auto',
                  training: bool = False) -> Runtime:
    """Pick the device and memory format, join the torchrun process group when launched by torchrun, seed when a
    seed is given.

    training: also let cuDNN time its kernels on the first batches; it pays only over many steps of one size, not
    for 50 adaptation batches or one pass over the validation images.
    """
    use_cuda = torch.cuda.is_available() and not use_cpu
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    rank = int(os.environ.get('RANK', '0'))
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    device = torch.device('cuda', local_rank) if use_cuda else torch.device('cpu')
    if use_cuda and 'OMP_NUM_THREADS' not in os.environ:
        # the network runs on the GPU: the CPU is the loader workers'. Intra-op threads here only contend with them
        torch.set_num_threads(1)
    if use_cuda and world_size > 1:
        torch.cuda.set_device(local_rank)  # for NCCL; alone, the context is made on first use, after the workers start
    if world_size > 1:
        dist.init_process_group('nccl' if use_cuda else 'gloo')
    if seed is not None:
        seed_everything(seed)
    elif use_cuda:
        torch.backends.cudnn.benchmark = training
    memory_format = choose_memory_format(memory_format, training, precision, device)
    return Runtime(device, rank, world_size, precision, memory_format)


def teardown_runtime(runtime: Runtime) -> None:
    """Leave the process group cleanly (a barrier first: gloo can abort when a peer exits early)."""
    if runtime.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def exit_process(code: int) -> None:
    """End a job's process with status `code` once its Python clean-up has run (the atexit handlers, as a normal
    exit runs them: experiment locks released, loader workers stopped and joined) and its output is flushed,
    skipping the interpreter's teardown and the libraries' static destructors. Those are what a normal exit adds
    with the CUDA build of torch: its libraries page their memory back in for their destructors, a noticeable part
    of a short job. While a non-daemon thread still runs, the exit is the normal one, which waits for it."""
    if any(thread.is_alive() and not thread.daemon and thread is not threading.main_thread()
           for thread in threading.enumerate()):
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe or stream has nothing left to flush
            stream.flush()
    os._exit(code)


def seconds_since_process_start() -> float:
    """Wall seconds since this process started (from /proc on Linux; since this module's import elsewhere)."""
    try:
        with open('/proc/self/stat') as file:
            start_ticks = int(file.read().rsplit(')', 1)[1].split()[19])  # field 22: start time in clock ticks
        return time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf('SC_CLK_TCK')
    except (OSError, ValueError, IndexError, AttributeError):
        return time.perf_counter() - _IMPORTED


class LoopTimer:
    """Times a job's loop: seconds from process start to its first batch, then images per second after it, overall
    and over the loop's second half, which start-up costs (cuDNN's first calls and autotuning, the batches the
    workers decoded in advance) no longer reach: the steady state."""

    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.first_batch_s = None
        self.images = 0
        self._arrivals = []  # (time, images counted after the first batch so far) at each batch

    def wrap(self, batches, count=len):
        """Yield from `batches`, counting count(batch) images after the first batch."""
        for batch in batches:
            if not self._arrivals:
                self.first_batch_s = seconds_since_process_start()
            else:
                self.images += count(batch)
            self._arrivals.append((time.perf_counter(), self.images))
            yield batch

    def summary(self, job: str) -> str:
        """One log line, e.g. 'adapt: first batch 3.1 s after start; then 294 images in 5.2 s (56.5 images/s;
        60.1 in the second half)'."""
        if not self._arrivals:
            return f'{job}: no batch'
        self.runtime.synchronize()
        ended = time.perf_counter()
        seconds = ended - self._arrivals[0][0]
        rate = self.images / seconds if seconds > 0 else float('nan')
        half_started, images_before = self._arrivals[len(self._arrivals) // 2]
        second_half = (f'; {(self.images - images_before) / (ended - half_started):.1f} in the second half'
                       if len(self._arrivals) >= 4 and ended > half_started else '')
        memory = (f', peak {torch.cuda.max_memory_allocated(self.runtime.device) / 2 ** 20:.0f} MiB on the GPU'
                  if self.runtime.device.type == 'cuda' else '')
        return (f'{job}: first batch {self.first_batch_s:.1f} s after start; then {self.images} images in '
                f'{seconds:.1f} s ({rate:.1f} images/s{second_half}){memory}')
