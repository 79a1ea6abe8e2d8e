"""A write that fails (a full disk, a quota, a file size limit) ends a run in one sentence, exit status 2, and loses
nothing; a stopped run's leftovers are removed; opt.json waits for success; the counts have upper bounds.

The full disk is made two ways, in the job's own process, the moment it opens a file whose path holds a pattern:
a file size limit (RLIMIT_FSIZE with SIGXFSZ ignored: every later write past it fails with EFBIG, no privileges
needed), and, where the tests may mount one, a small tmpfs filled to its last byte (the real ENOSPC).
Self-contained: its own data, runner and wrapper.
"""
import errno
import json
import os
import re
import subprocess
import sys
import uuid

import pytest
import torch

from arguments import parse_adaptation_arguments, parse_evaluation_arguments, parse_training_arguments
from data_download.make_synthetic import make_synthetic
from errors import UserError
from experiment import folder as experiment_folder
from experiment.events import EventWriter
from experiment.folder import PARTIAL_NAME, lock_folder, write_atomically, write_bytes, write_failure
from state_manager import StateManager

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ['--model-type', 'resnet', '--sys-cpu', '--sys-num-workers', '0', '--experiment-class', 'e2e',
         '--segmentation-validation-resize-height', '64', '--segmentation-validation-resize-width', '128']
TRAIN = ['--train-weights-init', 'scratch', '--segmentation-training-loaders', 'gta5_train',
         '--segmentation-training-batch-size', '2', '--segmentation-resize-height', '96',
         '--segmentation-resize-width', '192', '--segmentation-crop-height', '64', '--segmentation-crop-width', '128',
         '--train-batches-per-epoch', '1', '--train-checkpoint-frequency', '1', '--train-tb-frequency', '1',
         '--train-print-frequency', '1']
ADAPT = ['--adaptation-training-loaders', 'cityscapes_sequence_train', '--adaptation-training-batch-size', '2',
         '--adaptation-num-batches', '2', '--adaptation-resize-height', '103', '--adaptation-resize-width', '128',
         '--adaptation-mode-sequential', 'batch_shrinking']
SWEEP = ADAPT[:4] + ADAPT[6:10] + ['--methods', 'no_adaptation']  # the baseline alone: no adaptation
LIMIT = 100  # bytes: every file the job writes after the trigger is larger
FILLER = 'filler'

# Run a job's script as `python <script>` would, after an audit hook that makes the disk full when the job opens the
# (`after` + 1)-th file whose path holds `pattern`: a file size limit, or a tmpfs filled to its last byte.
WRAPPER = r'''
import os, resource, runpy, signal, sys
mode, pattern, after, fill_folder, script = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
seen = set()

def fill(folder):
    descriptor = os.open(os.path.join(folder, 'filler'), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    size = 1 << 20
    while size:
        try:
            os.write(descriptor, bytes(size))
        except OSError:
            size //= 2
    os.close(descriptor)

def hook(event, args):
    if event == 'open' and isinstance(args[0], str) and pattern in args[0] and args[0] not in seen:
        seen.add(args[0])
        if len(seen) > after:
            if mode == 'limit':
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
                resource.setrlimit(resource.RLIMIT_FSIZE, (int(os.environ['FULL_LIMIT']), resource.RLIM_INFINITY))
            else:
                fill(fill_folder)

sys.addaudithook(hook)
sys.argv = sys.argv[5:]
sys.path[0] = os.path.dirname(os.path.abspath(script))  # as `python script` has it
runpy.run_path(script, run_name='__main__')
'''


def run(script: str, args: list, data: str, root: str, full: tuple | None = None) -> subprocess.CompletedProcess:
    """Run `python <script> <args>` from the repository root with the UBNA folders set; full = (mode, pattern,
    after, fill folder) runs it in WRAPPER."""
    env = {**os.environ, 'UBNA_DIR_DATASET': data, 'UBNA_DIR_CHECKPOINT': root, 'OMP_NUM_THREADS': '1',
           'PYTHONUNBUFFERED': '1', 'FULL_LIMIT': str(LIMIT)}
    wrapper = [] if full is None else ['-c', WRAPPER, *map(str, full)]
    return subprocess.run([sys.executable, *wrapper, script, *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=240)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one sentence of a failed run, once its exit status and the absence of a traceback are checked."""
    assert result.returncode == 2, result.stdout + result.stderr
    assert 'Traceback' not in result.stderr and 'Exception' not in result.stderr, result.stderr
    return result.stderr.strip().splitlines()[-1]


def stray_entries(folder: str) -> list:
    """Hidden files and folders under `folder` but the lock: temporary files and staging folders."""
    return [os.path.join(parent, name) for parent, folders, files in os.walk(folder) for name in folders + files
            if name.startswith('.') and name != '.lock']


def lock_released(folder: str) -> bool:
    """A run that ended empties its lock file (one a live run holds names it)."""
    path = os.path.join(folder, '.lock')
    return not os.path.exists(path) or not open(path).read().strip()


def loads(root: str, checkpoint: str, monkeypatch) -> tuple:
    """(step, epoch) of a checkpoint folder, read with the real StateManager.load."""
    monkeypatch.setenv('UBNA_DIR_CHECKPOINT', root)
    manager = StateManager('resnet', 18, 'scratch')
    manager.load(checkpoint)
    return manager.step, manager.epoch


@pytest.fixture(scope='module')
def data(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp('data'))
    make_synthetic(root, height=64, width=128, num_source=4, num_target_train=4, num_target_val=2, seed=0)
    return root


@pytest.fixture(scope='module')
def tmpfs(tmp_path_factory):
    """A 1 GB tmpfs (a few ResNet-18 checkpoints; memory only as far as filled), or a skip where mounting is not
    allowed."""
    mount = str(tmp_path_factory.mktemp('tmpfs'))
    if os.geteuid() != 0 or subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=1g', 'tmpfs', mount],
                                           capture_output=True).returncode:
        pytest.skip('mounting a tmpfs needs root')
    yield mount
    subprocess.run(['umount', mount], check=False)


class Disk:
    """Where a test's jobs write, and how the disk becomes full: 'limit' (EFBIG) or 'fill' (ENOSPC)."""

    def __init__(self, mode: str, root: str):
        self.mode, self.root = mode, root  # root: the jobs' output; on the tmpfs for 'fill', which fills there
        self.strerror = os.strerror(errno.EFBIG if mode == 'limit' else errno.ENOSPC)
        self.advice = 'raise the file size limit (ulimit -f)' if mode == 'limit' else 'free some space there'

    def full(self, pattern: str, after: int = 0) -> tuple:
        return self.mode, pattern, after, self.root

    def free(self) -> None:
        """The space freed (the limit is per process: the next run has none)."""
        if os.path.exists(os.path.join(self.root, FILLER)):
            os.remove(os.path.join(self.root, FILLER))


def make_disk(mode: str, request, tmp_path_factory, name: str) -> Disk:
    """A Disk whose output folder is new: a temporary folder ('limit') or one on the tmpfs ('fill')."""
    base = str(tmp_path_factory.mktemp(name)) if mode == 'limit' else request.getfixturevalue('tmpfs')
    root = os.path.join(base, name)
    os.makedirs(root)
    return Disk(mode, root)


@pytest.fixture(scope='module', params=['limit', 'fill'])
def training(request, data, tmp_path_factory):
    """train.py for 2 epochs, a checkpoint after each, its disk full when the second checkpoint is written."""
    disk = make_disk(request.param, request, tmp_path_factory, 'checkpoints')
    result = run('train.py', SMALL + TRAIN + ['--train-num-epochs', '2', '--model-name', 'full'], data, disk.root,
                 disk.full('.epoch_2.'))
    disk.free()  # the failed run's folder stays as it left it; the next jobs (any test, any order) find space
    return disk, result


def check_training(disk, result, data, monkeypatch) -> None:
    folder = os.path.join(disk.root, 'e2e', 'full')
    sentence = error_line(result)
    assert re.fullmatch(
        rf'error: could not write the checkpoint epoch_2 to {re.escape(folder)}/checkpoints '
        rf'\({disk.strerror}; it needed about \d+\.\d MB\); the last intact checkpoint is '
        rf'e2e/full/checkpoints/epoch_1; {re.escape(disk.advice)} and rerun', sentence), sentence
    assert sorted(os.listdir(os.path.join(folder, 'checkpoints'))) == ['epoch_1']
    assert not stray_entries(folder) and lock_released(folder)
    assert loads(disk.root, 'e2e/full/checkpoints/epoch_1', monkeypatch) == (1, 1)
    ok(run('train.py', SMALL + TRAIN + ['--train-num-epochs', '2', '--model-name', 'full', '--model-load',
                                        'e2e/full/checkpoints/epoch_1'], data, disk.root))
    assert loads(disk.root, 'e2e/full/checkpoints/epoch_2', monkeypatch) == (2, 2)


@pytest.mark.slow
def test_training_stops_at_a_full_disk_in_one_sentence_and_resumes(training, data, monkeypatch):
    check_training(*training, data, monkeypatch)


@pytest.mark.slow
def test_adaptation_stops_at_its_checkpoint_and_at_tensorboard(training, data, monkeypatch):
    disk, _ = training
    folder = os.path.join(disk.root, 'e2e', 'adapt_full')
    argv = SMALL + ADAPT + ['--model-name', 'adapt_full', '--model-load', 'e2e/full/checkpoints/epoch_1']
    sentence = error_line(run('adapt.py', argv, data, disk.root, disk.full('.batch_2.')))
    assert sentence.startswith(f'error: could not write the checkpoint batch_2 to {folder}/checkpoints '
                               f'({disk.strerror}; it needed about ')
    assert '; the last intact checkpoint is none yet; ' in sentence
    assert not os.path.exists(os.path.join(folder, 'checkpoints', 'batch_2'))
    assert not os.path.exists(os.path.join(folder, 'momenta.csv'))
    assert not stray_entries(folder) and lock_released(folder)
    disk.free()
    sentence = error_line(run('adapt.py', argv, data, disk.root, disk.full('tfevents')))  # a background thread writes
    assert sentence == (f'error: could not write the tensorboard events to {folder}/train ({disk.strerror}); the last '
                        f'intact checkpoint is e2e/adapt_full/checkpoints/batch_2; '
                        f'{disk.advice} and rerun')
    assert loads(disk.root, 'e2e/adapt_full/checkpoints/batch_2', monkeypatch) == (1, 1)
    assert not stray_entries(folder) and lock_released(folder)
    disk.free()
    assert 'Adaptation of 2 batches completed' in ok(run('adapt.py', argv, data, disk.root)).stdout


@pytest.mark.slow
def test_evaluation_stops_at_results_json_and_at_its_images(training, data):
    disk, _ = training
    folder = os.path.join(disk.root, 'e2e', 'eval_full')
    argv = SMALL + ['--model-name', 'eval_full', '--model-load', 'e2e/full/checkpoints/epoch_1',
                    '--segmentation-eval-num-images', '2']
    sentence = error_line(run('evaluate.py', argv, data, disk.root, disk.full('.results.json.')))
    assert re.fullmatch(rf'error: could not write results\.json to {re.escape(folder)} \({disk.strerror}; it needed '
                        rf'about \d+\.\d kB\); {re.escape(disk.advice)} and rerun', sentence), sentence  # no checkpoints
    assert not os.path.exists(os.path.join(folder, 'results.json'))
    disk.free()
    sentence = error_line(run('evaluate.py', argv, data, disk.root, disk.full('img_', after=1)))
    assert sentence.startswith(f'error: could not write img_1.png to {folder}/eval_images/cityscapes '
                               f'({disk.strerror}; it needed about ')
    assert os.listdir(os.path.join(folder, 'eval_images', 'cityscapes')) == ['img_0.png']
    assert not stray_entries(folder) and lock_released(folder)
    disk.free()
    ok(run('evaluate.py', argv, data, disk.root))
    assert sorted(os.listdir(os.path.join(folder, 'eval_images', 'cityscapes'))) == ['img_0.png', 'img_1.png']
    assert json.load(open(os.path.join(folder, 'results.json')))['domains']['cityscapes']


@pytest.mark.slow
def test_sweep_stops_at_runs_csv_and_resumes(training, data):
    disk, _ = training
    folder = os.path.join(disk.root, 'e2e', 'sweep_full')
    argv = SMALL + SWEEP + ['--model-name', 'sweep_full', '--model-load', 'e2e/full/checkpoints/epoch_1']
    sentence = error_line(run('sweep.py', argv, data, disk.root, disk.full('.runs.csv.')))
    assert sentence.startswith(f'error: could not write runs.csv to {folder} ({disk.strerror}; it needed about ')
    assert 'intact checkpoint' not in sentence  # a sweep's folder keeps none of its own
    assert not os.path.exists(os.path.join(folder, 'runs.csv'))
    assert not stray_entries(folder) and lock_released(folder)
    disk.free()
    ok(run('sweep.py', argv, data, disk.root))
    assert open(os.path.join(folder, 'runs.csv')).read().count('\n') == 2  # the header and the run's row


@pytest.mark.slow
@pytest.mark.parametrize('mode', ['limit', 'fill'])
def test_resized_copy_stops_mid_way_and_is_rewritten(mode, data, tmp_path, request, tmp_path_factory):
    disk = make_disk(mode, request, tmp_path_factory, 'copy')
    argv = ['gta5_train', '--resize-height', '96', '--resize-width', '192', '--output', disk.root, '--workers', '1']
    script = os.path.join('data_download', 'resize_dataset.py')
    sentence = error_line(run(script, argv, data, str(tmp_path / 'unused'), disk.full('.partial.png', after=3)))
    assert re.fullmatch(rf'error: could not write \S+\.png to {re.escape(disk.root)}/gta5/\S+ \({disk.strerror}; it '
                        rf'needed about \d+\.\d kB\); {re.escape(disk.advice)} and '
                        rf'rerun', sentence), sentence
    manifest = json.load(open(os.path.join(disk.root, 'gta5', 'resized_copy.json')))
    assert manifest['loaders']['gta5_train']['complete'] is False  # the loaders refuse it as partial
    assert not stray_entries(disk.root)
    disk.free()
    ok(run(script, argv, data, str(tmp_path / 'unused')))
    manifest = json.load(open(os.path.join(disk.root, 'gta5', 'resized_copy.json')))
    assert manifest['loaders']['gta5_train']['complete'] is True


# ------------------------------------------------------------------------------------------------------------------
# Fast: the sentence, the atomic writer, tensorboard's thread, the leftovers, opt.json's timing, the bounds.


def torch_style(number: int) -> RuntimeError:
    """What torch.save raises on a failed write: a RuntimeError over the OSError."""
    try:
        try:
            raise OSError(number, os.strerror(number))
        except OSError:
            raise RuntimeError('[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598')
    except RuntimeError as exc:
        return exc


@pytest.mark.parametrize('number', [errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES])
def test_each_failed_write_becomes_one_sentence(number):
    for exc in (OSError(number, os.strerror(number)), torch_style(number),
                RuntimeError(f'writing failed: {os.strerror(number)}')):
        error = write_failure(exc, 'opt.json', '/x/e', needed=1_234_567)
        assert str(error).startswith(f'could not write opt.json to /x/e ({os.strerror(number)}; it needed about '
                                     f'1.2 MB); ')
        assert str(error).endswith(' and rerun') and '\n' not in str(error)
    assert write_failure(OSError(errno.ENOENT, 'No such file or directory'), 'opt.json', '/x/e') is None
    assert write_failure(RuntimeError('unexpected pos'), 'opt.json', '/x/e') is None


def test_the_atomic_writer_leaves_nothing_half_written(tmp_path):
    path = str(tmp_path / 'results.json')
    write_bytes(path, b'old')

    def half(temporary):
        assert PARTIAL_NAME.fullmatch(os.path.basename(temporary))  # a name the leftover cleaning recognises
        with open(temporary, 'wb') as file:
            file.write(b'ne')
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(UserError, match=r'could not write results\.json .* \(No space left on device; it needed '
                                        r'about 10 bytes\)'):
        write_atomically(path, half, needed=10)
    assert os.listdir(tmp_path) == ['results.json'] and open(path, 'rb').read() == b'old'


def test_a_failed_checkpoint_names_the_last_intact_one(tmp_path, monkeypatch):
    monkeypatch.setenv('UBNA_DIR_CHECKPOINT', str(tmp_path))
    folder = str(tmp_path / 'e2e' / 'x')
    os.makedirs(folder)
    lock_folder(folder)
    state = StateManager('resnet', 18, 'scratch')
    state.save(folder, 'epoch_1')

    def full(obj, path):
        with open(path, 'wb') as file:
            file.write(b'half')
        raise torch_style(errno.EDQUOT)

    monkeypatch.setattr('state_manager._save_synced', full)
    with pytest.raises(UserError) as raised:
        state.save(folder, 'epoch_2')
    assert re.fullmatch(rf'could not write the checkpoint epoch_2 to {re.escape(folder)}/checkpoints \(Disk quota '
                        rf'exceeded; it needed about \d+\.\d MB\); the last intact checkpoint is '
                        rf'e2e/x/checkpoints/epoch_1; free some of your disk quota '
                        rf'and rerun', str(raised.value)), str(raised.value)
    assert os.listdir(os.path.join(folder, 'checkpoints')) == ['epoch_1']
    experiment_folder._release(os.path.join(folder, '.lock'))


def test_a_failed_tensorboard_write_in_its_thread_ends_in_one_sentence(tmp_path):
    writer = EventWriter(str(tmp_path / 'train'))

    def full(data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    writer.writer.file_writer.event_writer._ev_writer._py_recordio_writer.write = full
    for step in range(20):  # more than the queue holds: nothing blocks after the failure
        writer.add_scalar('loss', 1.0, step)
    with pytest.raises(UserError, match=rf'^could not write the tensorboard events to {tmp_path}/train \(No space '
                                        rf'left on device\); free some space there and rerun$'):
        writer.close()


def test_a_failed_last_flush_of_the_events_ends_in_one_sentence_and_exits_quietly(tmp_path):
    writer = EventWriter(str(tmp_path / 'train'))
    writer.add_scalar('loss', 1.0, 0)

    def too_large():
        raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))

    writer.writer.file_writer.event_writer._ev_writer._py_recordio_writer.close = too_large
    writer.writer.file_writer.event_writer.close()  # what tensorboardX's atexit clean-up calls: it must not raise
    with pytest.raises(UserError, match=rf'^could not write the tensorboard events to {tmp_path}/train \(File too '
                                        rf'large\); raise the file size limit \(ulimit -f\) and rerun$'):
        writer.close()


def test_a_run_that_takes_the_lock_removes_what_a_stopped_run_left(tmp_path, capsys):
    folder = tmp_path / 'e'
    kept = ['opt.json', '.mynotes.json', 'notes.partial.txt', '.a.b.partial', 'eval_images/cityscapes/img_0.png',
            'checkpoints/epoch_1/model.pth', 'nested/.lock', 'nested/.opt.json.abcd1234.partial.json']
    left = ['.opt.json.k2x_9q7w.partial.json', 'eval_images/cityscapes/.img_1.png.a1b2c3d4.partial.png',
            f'checkpoints/.epoch_2.{uuid.uuid4().hex}.tmp/model.pth']
    only_copy = f'checkpoints/.epoch_3.{uuid.uuid4().hex}.tmp.old/model.pth'  # a swap stopped between its renames
    for name in kept + left + [only_copy]:
        os.makedirs(os.path.dirname(folder / name), exist_ok=True)
        (folder / name).write_text(name)
    lock_folder(str(folder))
    note = capsys.readouterr().err
    assert (f'note: removed 2 temporary files and 1 checkpoint staging folder left by a run that stopped in {folder}'
            in note)
    assert f'note: put the checkpoint epoch_3 back in place in {folder}' in note
    for name in kept:
        assert (folder / name).read_text() == name
    assert (folder / 'checkpoints' / 'epoch_3' / 'model.pth').read_text() == only_copy  # restored, not deleted
    assert sorted(os.listdir(folder / 'checkpoints')) == ['epoch_1', 'epoch_3']
    assert not (folder / left[0]).exists() and not (folder / left[1]).exists()
    lock_folder(str(folder))  # again: nothing left, nothing said
    assert 'note:' not in capsys.readouterr().err
    experiment_folder._release(str(folder / '.lock'))


@pytest.fixture(scope='module')
def poisoned(data, tmp_path_factory):
    """A checkpoint whose weights make every activation non-finite."""
    root = str(tmp_path_factory.mktemp('poisoned'))
    state = StateManager('resnet', 18, 'scratch')
    state.save(os.path.join(root, 'poisoned'), 'c')
    model = os.path.join(root, 'poisoned', 'checkpoints', 'c', 'model.pth')
    weights = torch.load(model, weights_only=True)
    weights['common.encoder.encoder.conv1.weight'].fill_(float('inf'))
    torch.save(weights, model)
    return root


@pytest.mark.parametrize('load, message', [('poisoned/checkpoints/c', 'became non-finite'),
                                           ('missing/checkpoints/c', 'does not exist')])
@pytest.mark.parametrize('existed', [True, False])
def test_a_failed_adaptation_leaves_the_folder_as_it_was(poisoned, data, load, message, existed, monkeypatch):
    import adapt
    monkeypatch.setenv('UBNA_DIR_DATASET', data)
    monkeypatch.setenv('UBNA_DIR_CHECKPOINT', poisoned)
    name = f'{load.split("/")[0]}_{existed}'
    folder = os.path.join(poisoned, 'e2e', name)
    if existed:  # a folder of an earlier run
        os.makedirs(folder)
        open(os.path.join(folder, 'opt.json'), 'w').write('{"earlier": 1}\n')
    with pytest.raises(UserError, match=message):
        adapt.main(SMALL + ADAPT + ['--model-name', name, '--model-load', load, '--model-disable-lr-loading'])
    experiment_folder._release_all()  # what the run's exit does
    if existed:
        assert sorted(os.listdir(folder)) == ['.lock', 'opt.json']
        assert open(os.path.join(folder, 'opt.json')).read() == '{"earlier": 1}\n'
    else:
        assert not os.path.exists(folder)


BOUNDS = [  # (parser, flag, the largest value accepted)
    (parse_training_arguments, '--sys-num-workers', 256),
    (parse_training_arguments, '--segmentation-training-batch-size', 4096),
    (parse_training_arguments, '--segmentation-validation-batch-size', 4096),
    (parse_training_arguments, '--train-num-epochs', 100_000),
    (parse_training_arguments, '--train-batches-per-epoch', 1_000_000_000),
    (parse_training_arguments, '--train-checkpoint-frequency', 100_000),
    (parse_training_arguments, '--train-tb-frequency', 1_000_000_000),
    (parse_training_arguments, '--train-print-frequency', 1_000_000_000),
    (parse_training_arguments, '--train-scheduler-step-size', 100_000),
    (parse_adaptation_arguments, '--adaptation-training-batch-size', 4096),
    (parse_adaptation_arguments, '--adaptation-num-batches', 100_000),
    (parse_evaluation_arguments, '--segmentation-eval-num-images', 100_000),
]


@pytest.mark.parametrize('parse, flag, most', BOUNDS)
def test_counts_past_their_bound_are_refused_in_one_sentence(parse, flag, most, capsys):
    extra = ['--model-load', 'a/b'] if parse is parse_evaluation_arguments else []
    assert getattr(parse(extra + [flag, str(most)]), flag[2:].replace('-', '_')) == most
    with pytest.raises(SystemExit) as exit_info:
        parse(extra + [flag, str(most + 1)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
        f': error: {flag} must be at most {most}, got {most + 1}')
