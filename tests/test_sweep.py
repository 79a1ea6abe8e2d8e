"""sweep.py: the numbers of adapt.py + evaluate.py run by hand, resumable, one command per folder, bad input refused;
--sys-seed; experiments/<pair>/reproduce.sh."""
import csv
import json
import os
import subprocess
import sys

import cv2
import pytest

from errors import UserError, run_cli
import sweep
from arguments import parse_adaptation_arguments, run_seed
from sweeps.options import parse_sweep_arguments, sweep_defaults
from sweeps import records
from sweeps.runner import rows_per_run
from tests.support import REPO, run_script

MODEL = ['--model-type', 'resnet', '--model-num-layers', '18', '--sys-cpu', '--experiment-class', 'sweeps',
         '--segmentation-validation-resize-height', '64', '--segmentation-validation-resize-width', '128',
         '--segmentation-validation-batch-size', '2']
TRAIN = ['--sys-num-workers', '0', '--train-weights-init', 'scratch', '--segmentation-training-loaders', 'gta5_train',
         '--segmentation-training-batch-size', '4', '--segmentation-resize-height', '96',
         '--segmentation-resize-width', '192', '--segmentation-crop-height', '64', '--segmentation-crop-width', '128',
         '--train-batches-per-epoch', '6', '--train-num-epochs', '1', '--train-learning-rate', '1e-3']
SOURCE = 'sweeps/source/checkpoints/epoch_1'
# cityscapes_sequence_train crops (h*320//512, w): h = 103 gives a 64-row network input
ADAPT = ['--model-load', SOURCE, '--adaptation-training-loaders', 'cityscapes_sequence_train',
         '--adaptation-training-batch-size', '4', '--adaptation-resize-height', '103',
         '--adaptation-resize-width', '128']
REMAPS = ['--segmentation-eval-remaps', 'none,synthia_16']


@pytest.fixture(scope='module')
def checkpoints(synthetic_root, tmp_path_factory) -> str:
    """A checkpoint root holding a source model trained for a few seeded steps: unseeded, some draws gave a model
    whose predictions two seeds' target batches could not tell apart."""
    root = str(tmp_path_factory.mktemp('sweep_checkpoints'))
    run_script('train.py', MODEL + TRAIN + ['--model-name', 'source', '--sys-seed', '0'], synthetic_root, root)
    return root


def read_runs(folder) -> list[dict]:
    with open(os.path.join(folder, 'runs.csv'), newline='') as file:
        return list(csv.DictReader(file))


def scores_of(rows, method, num_batches, seed) -> dict:
    """{remap: row} of one run."""
    return {row['remap']: row for row in rows
            if (row['method'], row['num_batches'], row['seed']) == (method, str(num_batches), str(seed))}


def assert_same_scores(row: dict, results: dict) -> None:
    """A runs.csv row holds exactly the numbers of evaluate.py's results.json for its domain and remap."""
    expected = results['domains'][row['domain']][row['remap']]
    assert float(row['miou']) == expected['miou'] and float(row['mean_accuracy']) == expected['mean_accuracy']
    for name, iou in expected['iou'].items():
        assert row['iou_' + name.replace(' ', '_')] == ('' if iou is None else repr(iou))


@pytest.mark.slow  # checkpoints: train.py
def test_sweep_gives_the_numbers_of_adapt_and_evaluate_run_by_hand(checkpoints, synthetic_root):
    workers = ['--sys-num-workers', '1']  # one loader worker: its seeding is part of what must match
    result = run_script('sweep.py', MODEL + ADAPT + REMAPS + workers + [
        '--model-name', 'equal', '--methods', 'no_adaptation,layer_shrinking,target_only,dua', '--num-batches', '1,3',
        '--alpha-batch', '0.08', '--alpha-layer', '0.03', '--seeds', '1,2', '--online-augmentations', '4'],
        synthetic_root, checkpoints)
    assert 'sweep of 12 runs' in result.stdout and '0 done before, 12 to run' in result.stdout
    assert '12/12' in result.stderr  # the progress bar over the runs
    folder = os.path.join(checkpoints, 'sweeps', 'equal')
    rows = read_runs(folder)
    assert len(rows) == 12 * 2 and {row['classes'] for row in rows} == {'19', '16'}
    first, second = scores_of(rows, 'target_only', 3, 1), scores_of(rows, 'target_only', 3, 2)
    assert first['none']['miou'] != second['none']['miou']  # the seed changes the target batches

    # by hand: target_only at N = 1 (evaluated on the way to N = 3) on seed 2 (batches replayed for the 2nd method)
    hand = MODEL + REMAPS + workers + ['--sys-seed', '2']
    run_script('adapt.py', hand + ADAPT + ['--model-name', 'hand_adapt', '--adaptation-mode-sequential',
                                           'target_only', '--adaptation-num-batches', '1'], synthetic_root, checkpoints)
    run_script('evaluate.py', hand + ['--model-name', 'hand_eval', '--model-load',
                                      'sweeps/hand_adapt/checkpoints/batch_1'], synthetic_root, checkpoints)
    run_script('evaluate.py', hand + ['--model-name', 'hand_dua', '--model-load', SOURCE, '--online-method', 'dua',
                                      '--online-augmentations', '4'], synthetic_root, checkpoints)
    for name, (method, num_batches) in (('hand_eval', ('target_only', 1)), ('hand_dua', ('dua', 0))):
        with open(os.path.join(checkpoints, 'sweeps', name, 'results.json')) as file:
            results = json.load(file)
        run = scores_of(rows, method, num_batches, 2)
        assert sorted(run) == ['none', 'synthia_16']
        for row in run.values():
            assert_same_scores(row, results)

    summary = open(os.path.join(folder, 'summary.md')).read()
    header = '| method | batches | α_batch | α_layer | seeds | cityscapes 19 classes | cityscapes 16 classes |'
    assert header in summary
    for line in ('| no adaptation | 0 | – | – | 2 |', '| UBNA+ | 1 | 0.08 | 0.03 | 2 |',
                 '| target_only (AdaBN) | 3 | – | – | 2 |', '| dua | 0 | – | – | 2 |'):
        assert line in summary and line in result.stdout
    mean = (float(first['none']['miou']) + float(second['none']['miou'])) / 2
    assert f'| target_only (AdaBN) | 3 | – | – | 2 | {100 * mean:.1f} ± ' in summary
    image = cv2.imread(os.path.join(folder, 'miou_vs_batches.png'))
    assert image is not None and image.shape[1] > 2 * image.shape[0]  # one panel per remap


def run_sweep_here(argv: list, capsys) -> tuple[int, str, str]:
    """sweep.py's entry point in this process (no interpreter start-up): exit status, stdout, stderr."""
    status = run_cli(sweep.main, argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.mark.slow  # checkpoints: train.py
def test_rerun_skips_finished_runs_refills_a_deleted_row_and_refuses_another_command(checkpoints, synthetic_root,
                                                                                      monkeypatch, capsys,
                                                                                      one_thread):
    monkeypatch.setenv('UBNA_DIR_DATASET', synthetic_root)
    monkeypatch.setenv('UBNA_DIR_CHECKPOINT', checkpoints)
    command = MODEL + ADAPT + ['--sys-num-workers', '0', '--model-name', 'resume', '--methods', 'batch_shrinking',
                               '--num-batches', '1,2', '--alpha-batch', '0,0.5']
    assert run_sweep_here(command, capsys)[0] == 0
    folder = os.path.join(checkpoints, 'sweeps', 'resume')
    path = os.path.join(folder, 'runs.csv')
    written = open(path).read()
    assert cv2.imread(os.path.join(folder, 'miou_vs_alpha_batch.png')) is not None  # α_batch varies

    status, out, _ = run_sweep_here(command, capsys)
    assert status == 0 and 'sweep of 4 runs' in out and '4 done before, 0 to run' in out
    assert open(path).read() == written
    command[command.index('--sys-num-workers') + 1] = '2'  # the worker count changes no number, so it may change

    lines = written.splitlines(keepends=True)
    deleted = next(line for line in lines if line.startswith('batch_shrinking,2,0.5,,1,'))
    with open(path, 'w') as file:
        file.writelines(line for line in lines if line != deleted)
    status, out, _ = run_sweep_here(command, capsys)
    assert status == 0 and '3 done before, 1 to run' in out
    refilled = open(path).read().splitlines(keepends=True)
    assert refilled[:-1] == [line for line in lines if line != deleted]  # the others untouched
    cut = records.COLUMNS.index('seconds')  # the same numbers from 2 workers as from none, other seconds
    assert refilled[-1].split(',')[:cut] == deleted.split(',')[:cut]

    status, _, err = run_sweep_here(command + ['--adaptation-training-batch-size', '2'], capsys)
    assert status == 2 and err.count('\n') == 1
    assert err.startswith(f'error: the sweep folder {folder} holds runs made with '
                          '--adaptation-training-batch-size 4, not 2')
    assert open(path).read() == ''.join(refilled)


def test_a_folder_takes_other_lists_and_worker_counts_but_not_other_settings_nor_a_job_folder(tmp_path):
    options = vars(parse_sweep_arguments(['--model-load', 'a/b', '--seeds', '1,2']))

    def claim(folder, changes):
        records.claim_folder(str(folder), {**options, **changes}, sweep_defaults(), on_gpu=False)
    claim(tmp_path, {})
    claim(tmp_path, {'seeds': [1, 2, 3], 'num_batches': [1, 50]})  # more runs
    claim(tmp_path, {'sys_num_workers': 7})  # another machine
    with pytest.raises(UserError, match="--model-load 'a/b', not 'a/c'"):
        claim(tmp_path, {'model_load': 'a/c'})
    job = tmp_path / 'job'
    job.mkdir()
    (job / 'opt.json').write_text('{}')
    with pytest.raises(UserError, match='holds opt.json but no sweep.json'):
        claim(job, {})


def test_a_folder_recorded_before_an_option_existed_takes_the_value_its_runs_had(tmp_path):
    options = vars(parse_sweep_arguments(['--model-load', 'a/b']))
    recorded = {key: value for key, value in options.items() if key != 'adaptation_pixel_work'}
    (tmp_path / records.COMMAND_FILE).write_text(json.dumps(recorded))  # a sweep made before the option existed
    records.claim_folder(str(tmp_path), options, sweep_defaults(), on_gpu=False)
    assert json.loads((tmp_path / records.COMMAND_FILE).read_text())['adaptation_pixel_work'] == 'workers'
    (tmp_path / records.COMMAND_FILE).write_text(json.dumps(recorded))
    with pytest.raises(UserError, match="--adaptation-pixel-work 'workers', not 'device'"):
        records.claim_folder(str(tmp_path), options, sweep_defaults(), on_gpu=True)  # auto: the device here


def test_a_folder_records_the_pixel_work_as_done_so_auto_resumes_what_it_would_do(tmp_path):
    """'auto' is the workers on a CPU and the device on a GPU, whose hues differ: a folder holds the choice made."""
    def asked(choice):
        return vars(parse_sweep_arguments(['--model-load', 'a/b', '--adaptation-pixel-work', choice]))

    def recorded():
        return json.loads((tmp_path / records.COMMAND_FILE).read_text())['adaptation_pixel_work']
    assert [records.pixel_work_as_done(asked(choice), on_gpu)['adaptation_pixel_work']
            for on_gpu in (False, True) for choice in ('auto', 'workers', 'device')] == \
        ['workers', 'workers', 'device', 'device', 'workers', 'device']
    records.claim_folder(str(tmp_path), asked('workers'), sweep_defaults(), on_gpu=True)
    records.claim_folder(str(tmp_path), asked('auto'), sweep_defaults(), on_gpu=False)
    assert recorded() == 'workers'
    with pytest.raises(UserError, match="--adaptation-pixel-work 'workers', not 'device'"):
        records.claim_folder(str(tmp_path), asked('auto'), sweep_defaults(), on_gpu=True)
    (tmp_path / records.COMMAND_FILE).write_text(json.dumps(asked('auto')))  # as the release before recorded it
    records.claim_folder(str(tmp_path), asked('device'), sweep_defaults(), on_gpu=True)
    assert recorded() == 'device'


@pytest.mark.parametrize('argv, message', [
    (['--methods', ''], '--methods is an empty list'),
    (['--seeds', '1,x'], "--seeds: 'x' is not an integer"),
    (['--seeds', '1,2.5'], "--seeds: '2.5' is not an integer"),
    (['--num-batches', '1,5,1'], '--num-batches lists 1 twice'),
    (['--alpha-batch', '0.1,0.10'], '--alpha-batch lists 0.10 twice'),
    (['--alpha-layer', '0.1,,0.3'], "--alpha-layer '0.1,,0.3' has an empty item"),
    (['--methods', 'batch_shrinking,ubna'], "--methods lists an unknown method 'ubna'"),
    (['--num-batches', '0,5'], '--num-batches must be at least 1, got 0'),
    (['--seeds', '-1'], '--seeds must be from 0 to 4294967295, got -1'),
    (['--alpha-batch', 'nan'], '--alpha-batch must be 0 or more, got nan'),
    (['--num-batches', '5', '--adaptation-num-batches', '5'], 'give --num-batches or --adaptation-num-batches'),
    (['--adaptation-num-batches', '0'], '--adaptation-num-batches must be at least 1, got 0'),
    (['--online-method', 'tent'], '--online-method names one method; list the online methods of a sweep in --methods'),
    (['--methods', 'dua', '--online-learning-rate', '0.1'], '--online-learning-rate applies to none of the methods'),
    (['--methods', 'cbna,dua', '--online-momentum', '2'], '--online-momentum must be in (0, 1], got 2.0 (for cbna)'),
])
def test_bad_sweep_input_ends_with_one_sentence_naming_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_sweep_arguments(['--model-load', 'a/b'] + argv)
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if 'error:' in line]
    assert len(errors) == 1 and errors[0].startswith(f'sweep.py: error: {message}'), errors


@pytest.mark.slow  # sweep.py
def test_bad_input_stops_the_entry_point_before_any_work(tmp_path):
    result = run_script('sweep.py', ['--model-load', 'a/b', '--seeds', '1,x'], str(tmp_path), str(tmp_path),
                        check=False)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == "sweep.py: error: --seeds: 'x' is not an integer"
    assert os.listdir(tmp_path) == []


def test_sys_seed_defaults_to_the_reference_seed_and_is_checked(capsys):
    assert run_seed(parse_adaptation_arguments([])) is None
    assert run_seed(parse_adaptation_arguments(['--sys-best-effort-determinism'])) == 1
    assert run_seed(parse_adaptation_arguments(['--sys-best-effort-determinism', '--sys-seed', '7'])) == 7
    for value, message in (('x', "argument --sys-seed: invalid int value: 'x'"),
                           ('-3', '--sys-seed must be an integer from 0 to 4294967295, got -3')):
        with pytest.raises(SystemExit):
            parse_adaptation_arguments(['--sys-seed', value])
        assert message in capsys.readouterr().err
    sweep = parse_sweep_arguments(['--model-load', 'a/b', '--sys-seed', '5'])  # a one-seed sweep
    assert sweep.seeds == [5] and sweep.sys_seed is None


@pytest.mark.slow  # checkpoints: train.py
def test_reproduce_script_runs_the_table_from_another_directory(checkpoints, synthetic_root, tmp_path):
    env = {**os.environ, 'UBNA_DIR_DATASET': synthetic_root, 'UBNA_DIR_CHECKPOINT': checkpoints,
           'PYTHON': sys.executable, 'OMP_NUM_THREADS': '1'}
    small = [flag for flag in MODEL if flag not in ('--experiment-class', 'sweeps')] + [
        '--sys-num-workers', '0', '--model-load', SOURCE, '--adaptation-resize-height', '103',
        '--adaptation-resize-width', '128', '--adaptation-training-batch-size', '2', '--num-batches', '1,2',
        '--seeds', '1', '--online-augmentations', '2']
    result = subprocess.run(['bash', os.path.join(REPO, 'experiments', 'gta_to_cs', 'reproduce.sh'), *small],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = open(os.path.join(checkpoints, 'ubna_sweeps', 'gta_to_cs', 'summary.md')).read()
    for label in ('no adaptation', 'UBNA', 'UBNA+', 'target_only (AdaBN)', 'test_batch', 'cbna', 'bn_ema',
                  'ubna_online', 'dua', 'tent'):
        assert f'| {label} | ' in summary
    assert '| UBNA+ | 2 | 0.08 | 0.03 | 1 |' in summary


def test_a_run_has_one_row_per_domain_and_remap_whatever_loaders_share_a_domain():
    """acdc_fog_train and acdc_fog_validation both score as acdc_fog: one domain, so a run of them is complete
    with one row per remap (two rows would never come, and the sweep would call the run missing)."""
    def rows(loaders):
        return rows_per_run(parse_sweep_arguments(['--model-load', 'a/b', '--segmentation-validation-loaders', loaders,
                                                   '--segmentation-eval-remaps', 'none,synthia_16']))

    assert rows('acdc_fog_train,acdc_fog_validation') == 2
    assert rows('cityscapes_validation,kitti_2015_train,cityscapes_validation') == 4


def test_a_sweep_refuses_fisher_loaders_it_would_not_use(capsys):
    with pytest.raises(SystemExit):
        parse_sweep_arguments(['--model-load', 'a/b', '--methods', 'eata,tent', '--online-fisher-loaders',
                               'cityscapes_validation'])
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "sweep.py: error: --online-fisher-loaders is an evaluate.py flag; a sweep's eata runs take their Fisher "
        'information from the first test batch')


def test_a_folder_of_other_stream_sizes_is_refused_naming_the_resize_flags(tmp_path):
    """online_stream_resize is no flag of its own: the refusal names the flags it comes from."""
    folder = str(tmp_path)
    options = {**sweep_defaults(), 'online_stream_resize': [64, 128]}
    records.claim_folder(folder, {**options, 'online_stream_resize': None}, sweep_defaults(), on_gpu=False)
    with pytest.raises(UserError, match=r"holds runs made with the online stream's size "
                                        r"\(--segmentation-validation-resize-height/-width as given\) None, "
                                        r"not \[64, 128\]"):
        records.claim_folder(folder, options, sweep_defaults(), on_gpu=False)
