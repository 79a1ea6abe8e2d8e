"""Hardening through the real command lines: finite values and confined names, one writer per experiment folder,
finite adapted statistics, SIGKILL at random moments, and a corrupt image found in the middle of an epoch."""
import glob
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time

import pytest
import torch

from state_manager import StateManager
from tests.support import ADAPT, REPO, SMALL_MODEL, TRAIN, job_environment, lock_held_elsewhere, run_script

pytestmark = pytest.mark.slow  # every test starts the real command lines

EPOCHS, BATCHES = 4, 1  # the SIGKILLed training: 4 epochs of 1 batch, a checkpoint after each
KILLED_TRAIN = TRAIN + ['--train-num-epochs', str(EPOCHS), '--train-batches-per-epoch', str(BATCHES)]
KILL_SEED = 7
KILLS = 3


def start_script(script: str, args: list, dataset_root: str, checkpoint_root: str, log: str, **popen):
    """Start `python <script> <args>` from the repository root; stderr (and stdout unless given) go to `log`."""
    with open(log, 'w') as file:
        return subprocess.Popen([sys.executable, script, *map(str, args)], cwd=REPO,
                                env=job_environment(dataset_root, checkpoint_root), stderr=file,
                                **({'stdout': file} | popen))


def run_and_kill(script: str, args: list, roots: tuple, log: str, after: str, delay: float) -> bool:
    """Run a script; `delay` seconds after its output first matches `after`, SIGKILL it unless it has ended.
    Returns whether it was killed."""
    process = start_script(script, args, *roots, log)
    deadline = time.monotonic() + 300
    while not re.search(after, open(log).read()) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        process.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        process.kill()  # SIGKILL
        process.wait()
        return True


def error_line(stderr: str) -> str:
    """The last line of stderr, which holds the one-sentence error of a failed run."""
    return stderr.strip().splitlines()[-1]


def lock_holder(folder: str) -> int | None:
    """The pid written into an experiment folder's lock file (None when the file is missing or empty)."""
    try:
        text = open(os.path.join(folder, '.lock')).read()
    except FileNotFoundError:
        return None
    return json.loads(text)['pid'] if text.strip() else None


def checkpoint_names(checkpoints: str, prefix: str) -> list:
    """The checkpoint folders `prefix`<n> present, by n (staging folders start with a dot and are not listed)."""
    if not os.path.isdir(checkpoints):
        return []
    return sorted((name for name in os.listdir(checkpoints) if name.startswith(prefix)),
                  key=lambda name: int(name[len(prefix):]))


def load_counters(checkpoint_root: str, relative_folders: list, monkeypatch) -> list:
    """Load each checkpoint folder with the real StateManager.load; the (step, epoch) of each."""
    monkeypatch.setenv('UBNA_DIR_CHECKPOINT', checkpoint_root)
    manager = StateManager('resnet', 18, 'scratch')
    counters = []
    for folder in relative_folders:
        manager.load(folder)
        counters.append((manager.step, manager.epoch))
    return counters


def load_every_checkpoint(checkpoint_root: str, relative_checkpoints: str, prefix: str, monkeypatch) -> dict:
    """Load every checkpoint folder `prefix`<n> present with the real StateManager.load; {name: (step, epoch)}."""
    names = checkpoint_names(os.path.join(checkpoint_root, relative_checkpoints), prefix)
    return dict(zip(names, load_counters(checkpoint_root, [f'{relative_checkpoints}/{n}' for n in names],
                                         monkeypatch)))


@pytest.fixture(scope='module')
def killed_training(synthetic_root, tmp_path_factory):
    """train.py SIGKILLed at seeded random moments, each run resuming from the last checkpoint the previous one
    left, then a last run to the end. Returns the checkpoint root and one record per run."""
    root = str(tmp_path_factory.mktemp('killed'))
    folder = os.path.join(root, 'e2e', 'killed')
    delays = random.Random(KILL_SEED)
    records = []
    for run in range(KILLS + 1):
        done = checkpoint_names(os.path.join(folder, 'checkpoints'), 'epoch_')
        resume = ['--model-load', f'e2e/killed/checkpoints/{done[-1]}'] if done else []
        log = os.path.join(root, f'run_{run}.log')
        delay = delays.uniform(0, 3.5) if run < KILLS else 300  # seconds after the first epoch started
        killed = run_and_kill('train.py', SMALL_MODEL + KILLED_TRAIN + ['--model-name', 'killed'] + resume,
                              (synthetic_root, root), log, r'epoch \d+/\d+', delay)
        records.append({'resumed_from': done[-1] if done else None, 'killed': killed, 'log': open(log).read(),
                        'lock_holder': lock_holder(folder)})
    return root, records


def test_sigkilled_training_leaves_loadable_checkpoints_and_resumes_to_the_end(killed_training, monkeypatch):
    root, records = killed_training
    assert sum(record['killed'] for record in records) >= 2, 'the seeded delays should kill most runs'
    assert not records[-1]['killed'] and 'Traceback' not in records[-1]['log']
    counters = load_every_checkpoint(root, 'e2e/killed/checkpoints', 'epoch_', monkeypatch)
    assert counters == {f'epoch_{e}': (e * BATCHES, e) for e in range(1, EPOCHS + 1)}
    for previous, record in zip(records, records[1:]):
        start = int(record['resumed_from'][len('epoch_'):]) if record['resumed_from'] else 0
        stored = [int(e) for e in re.findall(r'stored .*epoch_(\d+)', record['log'])]
        assert stored == list(range(start + 1, start + 1 + len(stored)))  # continues after the loaded epoch
        if previous['killed'] and previous['lock_holder'] is not None:  # the killed run held the lock
            assert f"left by process {previous['lock_holder']} " in record['log']
    final = torch.load(os.path.join(root, 'e2e', 'killed', 'checkpoints', f'epoch_{EPOCHS}', 'train.pth'),
                       weights_only=True)
    assert final == {'step': EPOCHS * BATCHES, 'epoch': EPOCHS}


def test_sigkilled_adaptation_never_leaves_a_broken_checkpoint(killed_training, synthetic_root, monkeypatch):
    root, _ = killed_training
    argv = SMALL_MODEL + ADAPT + ['--model-name', 'adapt_killed', '--model-load',
                                  f'e2e/killed/checkpoints/epoch_{EPOCHS}', '--adaptation-mode-sequential',
                                  'batch_shrinking']
    run_script('adapt.py', argv, synthetic_root, root)  # a finished run: the rerun below replaces batch_5
    log = os.path.join(root, 'adapt_killed.log')
    delay = random.Random(KILL_SEED).uniform(0, 1.5)  # seconds after the adaptation loop started
    run_and_kill('adapt.py', argv, (synthetic_root, root), log, 'Adapting with', delay)
    assert 'in use' not in open(log).read()  # rerunning a finished experiment is allowed
    assert 'took over' not in open(log).read()  # and quiet: the finished run released its lock
    # whole and loadable after the kill (a replacement stopped between its two renames loads its copy)
    assert load_counters(root, ['e2e/adapt_killed/checkpoints/batch_5'], monkeypatch) == [(EPOCHS * BATCHES, EPOCHS)]
    assert set(load_every_checkpoint(root, 'e2e/adapt_killed/checkpoints', 'batch_', monkeypatch)) <= {'batch_5'}
    result = run_script('adapt.py', argv, synthetic_root, root)
    assert 'Adaptation of 5 batches completed' in result.stdout
    assert os.listdir(os.path.join(root, 'e2e', 'adapt_killed', 'checkpoints')) == ['batch_5']  # leftovers tidied


def test_second_writer_is_refused_and_a_dead_lock_is_taken_over(killed_training, synthetic_root):
    root, _ = killed_training
    folder = os.path.join(root, 'e2e', 'busy')
    os.makedirs(folder)
    evaluate = SMALL_MODEL + ['--model-name', 'busy', '--model-load', f'e2e/killed/checkpoints/epoch_{EPOCHS}',
                              '--segmentation-eval-num-images', '0']
    with lock_held_elsewhere(folder) as holder:  # another run holding the experiment folder
        refused = run_script('train.py', SMALL_MODEL + TRAIN + ['--model-name', 'busy'], synthetic_root, root,
                             check=False)
        assert refused.returncode == 2 and 'Traceback' not in refused.stderr
        assert error_line(refused.stderr).startswith(f'error: the experiment folder {folder} is in use by another '
                                                     f'run (process {holder.pid} on host ')
        assert 'which is still running' in error_line(refused.stderr)
        assert os.listdir(folder) == ['.lock']  # nothing written, opt.json included
    taken_over = run_script('evaluate.py', evaluate, synthetic_root, root)
    assert f'took over the lock of the experiment folder {folder} left by process {holder.pid} ' in taken_over.stderr
    assert os.path.isfile(os.path.join(folder, 'results.json'))


def test_non_finite_adapted_statistics_are_never_saved(killed_training, synthetic_root):
    root, _ = killed_training
    state = torch.load(os.path.join(root, 'e2e', 'killed', 'checkpoints', f'epoch_{EPOCHS}', 'model.pth'),
                       weights_only=True)
    state['common.encoder.encoder.conv1.weight'].fill_(float('inf'))  # every activation after it is inf or nan
    os.makedirs(os.path.join(root, 'poisoned'))
    torch.save(state, os.path.join(root, 'poisoned', 'model.pth'))
    result = run_script('adapt.py', SMALL_MODEL + ADAPT + ['--model-name', 'adapt_poisoned', '--model-load',
                                                           'poisoned', '--model-disable-lr-loading'],
                        synthetic_root, root, check=False)
    assert result.returncode == 2 and 'Traceback' not in result.stderr
    assert re.fullmatch(r'error: the running statistics of \d+ encoder BatchNorm layers became non-finite '
                        r'\(first: common\.encoder\.encoder\.bn1\), so nothing was saved; .*',
                        error_line(result.stderr))
    folder = os.path.join(root, 'e2e', 'adapt_poisoned')
    assert not os.path.exists(os.path.join(folder, 'checkpoints'))
    assert not os.path.exists(os.path.join(folder, 'momenta.csv'))


def test_corrupt_image_mid_epoch_names_file_and_sample_and_keeps_the_last_checkpoint(synthetic_root, tmp_path,
                                                                                      monkeypatch):
    data, root = str(tmp_path / 'data'), str(tmp_path / 'checkpoints')
    shutil.copytree(synthetic_root, data)
    images = sorted(glob.glob(os.path.join(data, 'gta5', 'images', '*.png')))
    argv = SMALL_MODEL + TRAIN + ['--model-name', 'corrupt', '--train-batches-per-epoch', '4',  # 4 x 2: every image
                                  '--train-num-epochs', '2']
    process = start_script('train.py', argv, data, root, str(tmp_path / 'stderr.log'), stdout=subprocess.PIPE,
                           text=True)
    corrupted = False
    for line in process.stdout:
        if line.startswith('stored ') and not corrupted:  # epoch 1 is stored; epoch 2 reads batch after batch
            corrupted = True
            for image in images:  # truncated PNG files, as a copy interrupted half-way leaves them
                data_bytes = open(image, 'rb').read()
                with open(image, 'wb') as file:
                    file.write(data_bytes[:len(data_bytes) // 2])
    assert process.wait() == 2
    stderr = open(tmp_path / 'stderr.log').read()
    assert 'Traceback' not in stderr
    found = re.fullmatch(r'error: the image file (\S+) \(sample (\d+)\) cannot be read '
                         r'\(missing, empty, truncated or not an image\)', error_line(stderr))
    assert found and found[1] in images
    assert int(found[2]) == images.index(found[1])  # the index of that file in the split
    assert load_every_checkpoint(root, 'e2e/corrupt/checkpoints', 'epoch_', monkeypatch) == {'epoch_1': (4, 1)}


REFUSED = [  # the command lines: (script, flags, start of the one error sentence)
    ('adapt.py', ['--adaptation-alpha-batch', 'nan'], '--adaptation-alpha-batch must be a finite number, got nan'),
    ('train.py', ['--train-learning-rate', 'inf'], '--train-learning-rate must be a finite number, got inf'),
    ('train.py', ['--experiment-class', '/somewhere/else'], "--experiment-class '/somewhere/else' is an absolute path"),
    ('evaluate.py', ['--model-name', '../../x', '--model-load', 'a/checkpoints/epoch_1'],
     "--model-name '../../x' has an empty, '.' or '..' part"),
]


def test_bad_values_and_escaping_names_are_refused_before_any_work(synthetic_root, tmp_path):
    checkpoints, logs = str(tmp_path / 'checkpoints'), tmp_path / 'logs'
    logs.mkdir()
    processes = [start_script(script, argv, synthetic_root, checkpoints, str(logs / f'{i}.log'))  # side by side
                 for i, (script, argv, _) in enumerate(REFUSED)]
    for i, ((script, _, message), process) in enumerate(zip(REFUSED, processes)):
        assert process.wait(timeout=120) == 2
        assert error_line((logs / f'{i}.log').read_text()).startswith(f'{script}: error: {message}')
    assert os.listdir(tmp_path) == ['logs'] and not os.path.exists('/somewhere')  # nothing written anywhere
