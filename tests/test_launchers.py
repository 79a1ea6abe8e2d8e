"""sweep.py --launcher local and slurm: the serial sweep's rows, whatever runs the tasks; a killed worker's tasks run
again on a rerun; runs.csv merged under its lock; bad launcher input refused before anything starts."""
import csv
import fcntl
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import sweep
import train
from errors import run_cli
from sweeps import records
from sweeps.grid import make_run
from sweeps.launchers import _slurm_parameters
from sweeps.options import parse_sweep_arguments, slurm_minutes
from tests.support import ADAPT, REPO, SMALL_MODEL, TRAIN, job_environment, run_script

SOURCE = 'e2e/source/checkpoints/epoch_1'
SIZES = ADAPT[:ADAPT.index('--adaptation-num-batches')] + ADAPT[ADAPT.index('--adaptation-resize-height'):][:4]
GRID = SMALL_MODEL + SIZES + ['--model-load', SOURCE, '--methods', 'no_adaptation,batch_shrinking,target_only,cbna',
                              '--num-batches', '1,2', '--alpha-batch', '0.08', '--seeds', '1,2']
RUNS = 12  # per seed: the baseline, cbna, and UBNA and AdaBN at N = 1, 2 (8 tasks)


@pytest.fixture(scope='module')
def checkpoints(synthetic_root, tmp_path_factory) -> str:
    """A checkpoint root holding a source model trained for one step."""
    root = str(tmp_path_factory.mktemp('launcher_checkpoints'))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv('UBNA_DIR_DATASET', synthetic_root)
        patch.setenv('UBNA_DIR_CHECKPOINT', root)
        train.main(SMALL_MODEL + TRAIN + ['--model-name', 'source', '--train-num-epochs', '1',
                                          '--train-batches-per-epoch', '1'])
    return root


def numbers(folder: str) -> list[tuple]:
    """runs.csv's rows in a fixed order, every column but the seconds."""
    with open(os.path.join(folder, records.RUNS_FILE), newline='') as file:
        rows = list(csv.DictReader(file))
    return sorted(tuple(value for key, value in row.items() if key != 'seconds') for row in rows)


@pytest.fixture(scope='module')
def serial_rows(checkpoints, synthetic_root) -> list[tuple]:
    result = run_script('sweep.py', GRID + ['--model-name', 'serial'], synthetic_root, checkpoints)
    assert f'{RUNS}/{RUNS}' in result.stderr
    rows = numbers(os.path.join(checkpoints, 'e2e', 'serial'))
    assert len(rows) == RUNS
    return rows


@pytest.mark.slow  # sweep.py and its worker processes
def test_a_local_pool_of_two_gives_the_serial_rows_and_report_rewrites_the_summary(checkpoints, synthetic_root,
                                                                                   serial_rows):
    command = GRID + ['--model-name', 'local', '--launcher', 'local', '--jobs', '2']
    result = run_script('sweep.py', command, synthetic_root, checkpoints)
    assert 'local pool of 2 workers, 1 threads each' in result.stdout and f'{RUNS}/{RUNS}' in result.stderr
    folder = os.path.join(checkpoints, 'e2e', 'local')
    assert numbers(folder) == serial_rows
    summary = open(os.path.join(folder, 'summary.md')).read()
    os.remove(os.path.join(folder, 'summary.md'))
    again = run_script('sweep.py', command[:-4] + ['--report'], synthetic_root, checkpoints)
    assert open(os.path.join(folder, 'summary.md')).read() == summary and 'sweep of' not in again.stdout


@pytest.mark.slow  # sweep.py and submitit's job processes
def test_slurm_through_submitits_local_executor_gives_the_serial_rows(checkpoints, synthetic_root, serial_rows,
                                                                      tmp_path):
    seed_1 = GRID[:-1] + ['1']  # submitit's local executor starts all jobs at once: 4 here
    result = subprocess.run(  # from another folder: the jobs still find the project
        [sys.executable, os.path.join(REPO, 'sweep.py'), *seed_1, '--model-name', 'slurm', '--launcher', 'slurm',
         '--slurm-cluster', 'local', '--slurm-cpus-per-task', '1', '--slurm-time', '0:10:00'], cwd=tmp_path,
        env=job_environment(synthetic_root, checkpoints), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    folder = os.path.join(checkpoints, 'e2e', 'slurm')
    assert numbers(folder) == [row for row in serial_rows if row[records.SETTINGS.index('seed')] == '1']
    assert 'submitted 4 tasks (local)' in result.stdout and os.listdir(os.path.join(folder, 'slurm'))


def worker_pids(pid: int) -> list[int]:
    """The pool's worker processes among the children of `pid` (not multiprocessing's resource tracker)."""
    with open(f'/proc/{pid}/task/{pid}/children') as file:
        children = [int(child) for child in file.read().split()]
    return [child for child in children if b'spawn_main' in open(f'/proc/{child}/cmdline', 'rb').read()]


@pytest.mark.slow  # sweep.py and its worker processes
def test_a_killed_worker_ends_the_sweep_in_one_sentence_and_a_rerun_completes_it(checkpoints, synthetic_root,
                                                                                serial_rows):
    command = [sys.executable, 'sweep.py', *GRID, '--model-name', 'killed', '--launcher', 'local', '--jobs', '2']
    runs = os.path.join(checkpoints, 'e2e', 'killed', records.RUNS_FILE)
    process = subprocess.Popen(command, cwd=REPO, env=job_environment(synthetic_root, checkpoints),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not os.path.exists(runs) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(worker_pids(process.pid)[0], signal.SIGKILL)  # the other tasks are queued or running
    _, err = process.communicate(timeout=120)
    assert process.returncode == 2 and [line for line in err.splitlines() if line.startswith('error:')] == [
        'error: a worker process of the local pool died (killed, or out of memory); the finished tasks are in '
        'runs.csv: rerun the same command to run the others'], err
    assert err.strip().splitlines()[-1].startswith('error:') and 'decode' not in err, err  # workers draw no bars
    done = len(numbers(os.path.dirname(runs)))
    assert 0 < done < RUNS
    result = run_script('sweep.py', command[2:], synthetic_root, checkpoints)
    assert f'{done} done before, {RUNS - done} to run' in result.stdout
    assert numbers(os.path.dirname(runs)) == serial_rows


def test_tasks_writing_at_once_keep_each_others_rows(tmp_path):
    path = str(tmp_path / records.RUNS_FILE)
    first, second = records.RunsTable(path, 1), records.RunsTable(path, 1)  # two processes' views of runs.csv
    row = {column: '' for column in records.COLUMNS}
    for table, seed in ((first, 1), (second, 2), (first, 3)):
        run = make_run('target_only', 1, 0.0, 0.0, seed)
        table.add(run, [{**row, **dict(zip(records.SETTINGS, run.key))}])
    assert records.RunsTable(path, 1).finished() == {make_run('target_only', 1, 0.0, 0.0, seed).key
                                                     for seed in (1, 2, 3)}


@pytest.mark.parametrize('text, minutes', [('90', 90), ('1:30', 2), ('01:00:00', 60), ('2-3', 3060),
                                           ('1-00:01', 1441), ('1-0:0:30', 1441), ('1:2:3:4', None), ('1-', None),
                                           ('1h', None), ('', None)])
def test_slurm_times_in_every_format_slurm_takes(text, minutes):
    assert slurm_minutes(text) == minutes


def test_slurm_flags_become_submitits_parameters():
    opt = parse_sweep_arguments(['--model-load', 'a/b', '--launcher', 'slurm', '--slurm-partition', 'gpu',
                                 '--slurm-time', '2-00', '--slurm-gpus-per-task', '1', '--slurm-mem', '32G',
                                 '--slurm-extra', 'account=abc', '--slurm-extra', 'qos=high'])
    parameters = _slurm_parameters(opt, '/x/sweep')
    assert opt.slurm_cluster == 'slurm' and {key: value for key, value in parameters.items() if 'setup' not in key} \
        == {'name': 'sweep_sweep', 'timeout_min': 2880, 'slurm_partition': 'gpu', 'slurm_gpus_per_task': 1,
            'local_gpus_per_node': 1, 'slurm_mem': '32G', 'slurm_additional_parameters': {'account': 'abc',
                                                                                          'qos': 'high'}}


@pytest.mark.parametrize('argv, message', [
    (['--launcher', 'local', '--jobs', '0'], '--jobs must be at least 1, got 0'),
    (['--jobs', '2'], '--jobs applies to --launcher local only'),
    (['--slurm-partition', 'gpu'], '--slurm-partition applies to --launcher slurm only'),
    (['--launcher', 'local', '--slurm-extra', 'a=b'], '--slurm-extra applies to --launcher slurm only'),
    (['--launcher', 'slurm', '--slurm-time', '1:2:3:4'], "--slurm-time '1:2:3:4' is not a Slurm time"),
    (['--launcher', 'slurm', '--slurm-time', '0'], "--slurm-time '0' is not a Slurm time"),
    (['--launcher', 'slurm', '--slurm-extra', 'account'], "--slurm-extra 'account' is not KEY=VALUE"),
    (['--launcher', 'slurm', '--slurm-array-parallelism', '0'], '--slurm-array-parallelism must be at least 1'),
])
def test_bad_launcher_input_ends_with_one_sentence(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse_sweep_arguments(['--model-load', 'a/b'] + argv)
    errors = [line for line in capsys.readouterr().err.splitlines() if 'error:' in line]
    assert len(errors) == 1 and errors[0].startswith(f'sweep.py: error: {message}'), errors


def test_slurm_without_submitit_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, 'submitit', None)  # as if not installed
    with pytest.raises(SystemExit):
        parse_sweep_arguments(['--model-load', 'a/b', '--launcher', 'slurm'])
    assert capsys.readouterr().err.splitlines()[-1] == ('sweep.py: error: --launcher slurm needs submitit, which is '
                                                        'not installed; install it with `pip install submitit`')


def test_a_local_pool_is_refused_on_a_folder_a_serial_sweep_is_writing(ubna_env, capsys):
    folder = os.path.join(os.environ['UBNA_DIR_CHECKPOINT'], 'e2e', 'busy')
    os.makedirs(folder)
    with open(os.path.join(folder, '.lock'), 'w') as lock:  # the serial sweep's lock, as another process holds it
        fcntl.flock(lock, fcntl.LOCK_EX)
        lock.write(json.dumps({'pid': 4242, 'host': 'here', 'started': 'now'}))
        lock.flush()
        status = run_cli(sweep.main, GRID + ['--model-name', 'busy', '--launcher', 'local', '--jobs', '2'])
    err = capsys.readouterr().err
    assert status == 2 and err == (f'error: the experiment folder {folder} is in use by another run (process 4242 '
                                   f'on host here, started now), which is still running; wait for it to end or '
                                   f'choose another --experiment-class/--model-name\n')
    assert os.listdir(folder) == ['.lock']
