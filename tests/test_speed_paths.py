"""The fast paths keep the numbers: persistent and early-started workers, networks allocated for a checkpoint,
mixed precision through the real command lines, and the timing line of each job."""
import os
import re
import signal
import subprocess
import sys
import time
import weakref
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import Dataset, get_worker_info

from dataloader.labels import TRAIN_ID_COLORS
from dataloader.loaders import CyclingLoaders, StartedLoader, make_loader
from experiment.runtime import seed_loaders
from models.ubna import build_model
from experiment.runtime import LoopTimer, Runtime, setup_runtime
from state_manager import StateManager
from tests.support import ADAPT, REPO, SMALL_MODEL, TRAIN, WorkerSetup, run_script
from evaluation.scoring import evaluate_model
from evaluation.pictures import strip

TIMING_LINE = (r'{}: first batch [\d.]+ s after start; then \d+ images in [\d.]+ s \([\d.]+ images/s'
               r'(; [\d.]+ in the second half)?\)')


class WorkerIds(Dataset):
    """Sample i is (i, the process id of the worker that produced it)."""

    def __len__(self) -> int:
        return 6

    def __getitem__(self, index: int) -> dict:
        return {'index': torch.tensor(index), 'pid': torch.tensor(os.getpid() if get_worker_info() else -1)}


def test_workers_persist_across_passes_and_cycling_restarts():
    loader = make_loader(WorkerIds(), 2, shuffle=True, drop_last=True, num_workers=2, on_gpu=False)
    cycling = CyclingLoaders([loader], 7)  # 3 batches per pass: restarts within each iteration
    pids = [set(batches[0]['pid'].tolist()) for _ in range(2) for batches in cycling]
    assert len(pids) == 14 and -1 not in set.union(*pids)
    assert len(set.union(*pids)) == 2, 'new worker processes were started'


@pytest.mark.filterwarnings('ignore:.*pin_memory')  # the GPU case on a machine without one: nothing to pin
def test_workers_run_opencv_sequentially_share_by_name_and_yield_the_cores_to_a_network_on_the_cpu():
    base = os.nice(0)
    for on_gpu, expected in ((False, min(19, base + 19)), (True, base)):
        batches = list(make_loader(WorkerSetup(), 2, False, False, 2, on_gpu))
        assert {value for batch in batches for value in batch['nice'].tolist()} == {expected}
        assert {value for batch in batches for value in batch['cv2_threads'].tolist()} == {1}
        assert {value for batch in batches for value in batch['strategy']} == {'file_system'}
    assert os.nice(0) == base  # the job's own process keeps its priority
    assert torch.multiprocessing.get_sharing_strategy() == 'file_descriptor'  # the main process is left alone


WORKERS_AFTER_OPENCV_THREADS = """
import cv2, numpy as np
from tests.support import WorkerSetup
from dataloader.loaders import make_loader
cv2.setNumThreads(2)
cv2.cvtColor(np.zeros((1000, 1000, 3), np.uint8), cv2.COLOR_BGR2RGB)  # OpenCV's threads start in this process
print(sum(len(batch['nice']) for batch in make_loader(WorkerSetup(), 2, False, False, 2, False)))
"""


@pytest.mark.slow  # a fresh interpreter
def test_workers_forked_after_opencv_started_its_threads_do_not_hang():
    process = subprocess.Popen([sys.executable, '-c', WORKERS_AFTER_OPENCV_THREADS], cwd=REPO, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the hung workers too
        process.communicate()
        pytest.fail('the loader hung: a worker deadlocked in OpenCV')
    assert process.returncode == 0 and out.split() == ['4'], err


JOB_END = """
import atexit, sys, threading, time
from dataloader.loaders import make_loader
from experiment.runtime import exit_process
from tests.support import WorkerSetup
batches = iter(make_loader(WorkerSetup(), 2, False, False, 2, False))
next(batches)  # persistent workers are alive at the end
print(' '.join(str(worker.pid) for worker in batches._workers))
atexit.register(lambda: open(sys.argv[1], 'w').write('clean-up ran'))
if sys.argv[2] == 'thread':
    threading.Thread(target=lambda: (time.sleep(1), print('thread done'))).start()
print('unflushed', end='')
exit_process(3)
"""


@pytest.mark.slow  # a fresh interpreter each
@pytest.mark.parametrize('thread', ['daemons only', 'thread'])
def test_a_job_ends_after_its_clean_up_and_its_threads(tmp_path, thread):
    marker = tmp_path / 'marker'
    process = subprocess.run([sys.executable, '-c', JOB_END, str(marker), thread], cwd=REPO, capture_output=True,
                             text=True, timeout=60)
    assert process.returncode == 3 and marker.read_text() == 'clean-up ran', process.stderr
    workers, rest = process.stdout.split('\n', 1)
    assert rest == ('unflushedthread done\n' if thread == 'thread' else 'unflushed')
    for pid in map(int, workers.split()):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # the workers ended with the job


@pytest.mark.slow  # a fresh interpreter
def test_nothing_a_job_started_holds_its_output_open_after_it_ends(tmp_path):
    """No process that the job started holds its output open after it ends (a worker's shared-memory manager lives
    2 s longer), so that `| tee` or a caller reading the output through a pipe is not kept waiting."""
    process = subprocess.Popen([sys.executable, '-c', JOB_END, str(tmp_path / 'marker'), 'daemons only'], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert process.wait(timeout=60) == 3  # its few lines fit in the pipe
    output = process.stdout.fileno()
    os.set_blocking(output, False)
    try:
        while os.read(output, 1 << 16):  # b'': end of file, no writer left
            pass
    except BlockingIOError:
        pytest.fail("a process that the job started still holds the job's output open")
    finally:
        process.stdout.close()


class Clock:
    """time, with perf_counter reading the given times."""

    def __init__(self, times):
        self.times = iter(times)

    def perf_counter(self) -> float:
        return next(self.times)

    def __getattr__(self, name):
        return getattr(time, name)


def test_the_loop_timer_gives_the_rate_of_the_loop_s_second_half_on_its_own(monkeypatch):
    # 8 batches arrive, then the end
    monkeypatch.setattr('experiment.runtime.time', Clock([0, 1, 2, 3, 5, 7, 9, 11, 15]))
    timer = LoopTimer(SimpleNamespace(synchronize=lambda: None, device=torch.device('cpu')))
    assert len(list(timer.wrap([torch.zeros(2, 1)] * 8))) == 8
    # after the first batch 14 images in 15 s; from the fifth batch's arrival (at 5 s, 8 images counted) 6 in 10 s
    line = timer.summary('adapt')
    assert re.fullmatch(TIMING_LINE.format('adapt'), line), line
    assert line.endswith('then 14 images in 15.0 s (0.9 images/s; 0.6 in the second half)'), line


def test_a_network_on_the_gpu_leaves_the_cpu_to_the_workers(monkeypatch):
    threads = torch.get_num_threads()
    monkeypatch.delenv('OMP_NUM_THREADS', raising=False)
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    try:
        runtime = setup_runtime(use_cpu=False, seed=None)  # no CUDA call: the context is made at first use
        assert runtime.device == torch.device('cuda', 0) and torch.get_num_threads() == 1
        torch.set_num_threads(threads)
        monkeypatch.setenv('OMP_NUM_THREADS', str(threads))  # the user's choice stands
        setup_runtime(use_cpu=False, seed=None)
        assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(threads)


class Indices(Dataset):
    """Sample i is i."""

    def __init__(self, size: int):
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict:
        return {'index': torch.tensor(index)}


@pytest.mark.parametrize('needed', [6, 20])
def test_a_loader_limited_to_the_samples_needed_yields_the_same_ones(needed):
    """Adaptation reads num_batches x batch size samples: the same as the start of each whole pass, no more."""
    def passes(samples_needed):
        seed_loaders(3)
        dataset = Indices(16)
        loader = make_loader(dataset, 2, True, True, 0, False, samples_needed=samples_needed)
        batches = [batch['index'].tolist() for batches in CyclingLoaders([loader], needed // 2) for batch in batches]
        return batches, len(loader)
    whole, whole_pass = passes(None)
    limited, limited_pass = passes(needed)
    assert limited == whole
    assert (whole_pass, limited_pass) == (8, min(needed, 16) // 2)


def test_a_started_loader_yields_the_same_passes_as_the_loader():
    expected = [batch['index'].tolist() for batch in make_loader(WorkerIds(), 4, False, False, 2, False)]
    started = StartedLoader(make_loader(WorkerIds(), 4, shuffle=False, drop_last=False, num_workers=2,
                                        on_gpu=False))
    assert len(started) == 2
    for _ in range(3):
        assert [batch['index'].tolist() for batch in started] == expected


@pytest.mark.parametrize('num_workers', [0, 2])
def test_started_cycling_loaders_begin_with_the_first_pass(num_workers):
    started = CyclingLoaders([make_loader(WorkerIds(), 2, False, True, num_workers, False)], 5).start()
    assert [b[0]['index'].tolist() for b in started] == [[0, 1], [2, 3], [4, 5], [0, 1], [2, 3]]


@pytest.mark.parametrize('model_type, depth', [('resnet', 18), ('vgg', 11)])
def test_a_network_allocated_for_a_checkpoint_equals_the_checkpoint(tmp_path, monkeypatch, model_type, depth):
    monkeypatch.setenv('UBNA_DIR_CHECKPOINT', str(tmp_path))
    torch.manual_seed(0)
    saved = StateManager(model_type, depth, 'scratch')
    saved.save(str(tmp_path / 'run'), 'epoch_1')
    loaded = StateManager(model_type, depth, 'checkpoint')
    loaded.load('run/checkpoints/epoch_1', weights_only=True)
    expected = saved.model.state_dict()
    assert all(torch.equal(value, expected[key]) for key, value in loaded.model.state_dict().items())
    assert not any(p.is_meta for p in loaded.model.parameters())


def test_a_network_built_for_a_checkpoint_draws_nothing_from_the_seeded_generator():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    build_model('resnet', 18, 'checkpoint')
    assert torch.equal(torch.rand(3), expected)


def test_the_encoder_statistics_pass_refuses_sizes_the_network_cannot_take():
    with pytest.raises(Exception, match='multiples of 32 and at least 64'):
        build_model('resnet', 18, 'checkpoint').statistics_pass(torch.zeros(1, 3, 64, 100))


def test_evaluation_frees_a_batch_before_the_next_forward_pass():
    """The last batch's logits and labels must not live through the next forward pass (its memory peak)."""
    model = build_model('resnet', 18, 'scratch')
    earlier_outputs = []

    def forward(x):
        assert all(output() is None for output in earlier_outputs), 'an earlier batch\'s logits are still alive'
        logits = model(x)
        earlier_outputs.append(weakref.ref(logits))
        return logits

    batches = [{'input': torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8),
                'label': torch.randint(0, 19, (1, 64, 64), dtype=torch.uint8), 'domain': ['d']} for _ in range(3)]
    scores, strips = evaluate_model(model, [('d', batches)], ['none'], Runtime(torch.device('cpu')), num_images=2,
                                    show_progress=False, skip_unused_class=True, online=forward)
    assert len(earlier_outputs) == 3 and len(strips['d']) == 2
    assert scores['d']['none'].matrix.sum().item() == 3 * 64 * 64


def test_strips_are_kept_as_the_uint8_pictures_they_become():
    """image | prediction | label in the palette's colours, the label at twice the size sampled to the image's."""
    image = torch.randint(0, 256, (3, 4, 6), dtype=torch.uint8)
    prediction = torch.randint(0, 19, (4, 6))
    label = torch.full((8, 12), 255, dtype=torch.uint8)
    label[::2, ::2] = torch.randint(0, 19, (4, 6), dtype=torch.uint8)
    picture = strip(image, prediction, label)
    palette = torch.as_tensor(TRAIN_ID_COLORS)
    assert picture.dtype == torch.uint8 and picture.shape == (3, 4, 18)
    assert torch.equal(picture[:, :, :6], image)
    assert torch.equal(picture[:, :, 6:12], palette[prediction].permute(2, 0, 1))
    assert torch.equal(picture[:, :, 12:], palette[label[::2, ::2].long()].permute(2, 0, 1))


@pytest.fixture(scope='module')
def source(synthetic_root, tmp_path_factory):
    checkpoints = str(tmp_path_factory.mktemp('checkpoints'))
    run_script('train.py', SMALL_MODEL + TRAIN + ['--model-name', 'source', '--train-num-epochs', '1'],
               synthetic_root, checkpoints)
    return checkpoints


@pytest.mark.slow  # train.py, adapt.py and evaluate.py
def test_bf16_adaptation_and_evaluation_run_and_keep_float32_statistics(source, synthetic_root):
    common = SMALL_MODEL + ['--sys-precision', 'bf16', '--model-load', 'e2e/source/checkpoints/epoch_1']
    adapted = run_script('adapt.py', common + ADAPT + ['--model-name', 'bf16', '--adaptation-num-batches', '2',
                                                       '--adaptation-mode-sequential', 'batch_shrinking'],
                         synthetic_root, source)
    assert re.search(TIMING_LINE.format('adapt'), adapted.stdout), adapted.stdout
    state = torch.load(os.path.join(source, 'e2e', 'bf16', 'checkpoints', 'batch_2', 'model.pth'), weights_only=True)
    assert {value.dtype for key, value in state.items() if 'running' in key} == {torch.float32}
    evaluated = run_script('evaluate.py', common + ['--model-name', 'bf16_eval'], synthetic_root, source)
    assert re.search(TIMING_LINE.format('evaluate'), evaluated.stdout), evaluated.stdout
    assert 'eval_name    | domain' in evaluated.stdout
