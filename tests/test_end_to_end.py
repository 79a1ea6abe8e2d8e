"""Train a few steps → adapt with every mode → evaluate, through the real command lines on synthetic data."""
import csv
import glob
import json
import os
import re

import cv2
import pytest
import torch

from tests.support import ADAPT, SMALL_MODEL, TRAIN, run_script

pytestmark = pytest.mark.slow  # every test starts the real command lines

MODES = ('none', 'batch_shrinking', 'layer_shrinking', 'target_only')


@pytest.fixture(scope='module')
def trained(synthetic_root, tmp_path_factory):
    checkpoints = str(tmp_path_factory.mktemp('checkpoints'))
    # seeded: an unseeded model may predict no kept class for a remap, whose mIoU is then nan (null in results.json)
    result = run_script('train.py', SMALL_MODEL + TRAIN + ['--model-name', 'source', '--sys-seed', '1'],
                        synthetic_root, checkpoints)
    return checkpoints, result


def load(path):
    return torch.load(path, map_location='cpu', weights_only=True)


def test_training_writes_checkpoints_logs_and_options(trained):
    checkpoints, result = trained
    folder = os.path.join(checkpoints, 'e2e', 'source')
    for epoch in (1, 2):
        names = sorted(os.listdir(os.path.join(folder, 'checkpoints', f'epoch_{epoch}')))
        assert names == ['model.pth', 'optim.pth', 'scheduler.pth', 'train.pth']
    assert load(os.path.join(folder, 'checkpoints', 'epoch_2', 'train.pth')) == {'step': 4, 'epoch': 2}
    # the reference's quirk: StepLR gamma = learning rate
    assert load(os.path.join(folder, 'checkpoints', 'epoch_2', 'scheduler.pth'))['gamma'] == pytest.approx(1e-4)
    options = json.load(open(os.path.join(folder, 'opt.json')))
    assert options['train_batches_per_epoch'] == 2 and options['model_name'] == 'source'
    for part in ('train', 'validation', 'images'):
        assert glob.glob(os.path.join(folder, part, 'events.out.tfevents.*')), part
    assert result.stdout.count('eval_name    | domain') == 2  # validation after each epoch
    assert 'source       | cityscapes' in result.stdout


@pytest.mark.parametrize('mode', MODES)
def test_adaptation_changes_only_encoder_batchnorm_statistics(trained, synthetic_root, mode):
    checkpoints, _ = trained
    name = f'adapt_{mode}'
    result = run_script('adapt.py', SMALL_MODEL + ADAPT + [
        '--model-name', name, '--model-load', 'e2e/source/checkpoints/epoch_2', '--adaptation-mode-sequential', mode],
        synthetic_root, checkpoints)
    folder = os.path.join(checkpoints, 'e2e', name)
    assert 'Adaptation of 5 batches completed' in result.stdout
    assert 'resized and jittered in the workers' in result.stdout  # --adaptation-pixel-work auto on the CPU
    source = load(os.path.join(checkpoints, 'e2e', 'source', 'checkpoints', 'epoch_2', 'model.pth'))
    adapted = load(os.path.join(folder, 'checkpoints', 'batch_5', 'model.pth'))
    assert source.keys() == adapted.keys()
    changed = {key for key in source if not torch.equal(source[key], adapted[key])}
    assert changed, 'no statistic changed'
    assert all(key.startswith('common.encoder.') and key.endswith(('running_mean', 'running_var',
                                                                     'num_batches_tracked')) for key in changed)
    with open(os.path.join(folder, 'momenta.csv')) as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 5 * 20  # 5 batches × 20 BatchNorm layers of ResNet-18
    last = rows[-1]
    assert (last['batch'], last['layer'], last['name']) == ('4', '20', 'common.encoder.encoder.layer4.1.bn2')
    expected = {'none': 0.1, 'batch_shrinking': 0.1 * 2.718281828 ** (-0.08 * 4),
                'layer_shrinking': 0.1 * 2.718281828 ** (-0.08 * 4 - 0.03 * 20)}
    if mode == 'target_only':
        assert last['momentum'] == ''
    else:
        assert float(last['momentum']) == pytest.approx(expected[mode], rel=1e-6)
    assert glob.glob(os.path.join(folder, 'train', 'events.out.tfevents.*'))


def test_evaluation_prints_tables_and_writes_results_and_images(trained, synthetic_root):
    checkpoints, _ = trained
    result = run_script('evaluate.py', SMALL_MODEL + [
        '--model-name', 'eval_source', '--model-load', 'e2e/source/checkpoints/epoch_2',
        '--segmentation-eval-remaps', 'none,synthia_16,synthia_13', '--segmentation-eval-num-images', '2'],
        synthetic_root, checkpoints)
    lines = result.stdout.splitlines()
    header = lines.index('eval_name    | domain               | remap    |     miou | accuracy')
    rows = [line.split('|') for line in lines[header + 1:header + 4]]
    assert [row[2].strip() for row in rows] == ['none', 'synthia_16', 'synthia_13']
    folder = os.path.join(checkpoints, 'e2e', 'eval_source')
    results = json.load(open(os.path.join(folder, 'results.json')))
    for row in rows:
        remap = results['domains']['cityscapes'][row[2].strip()]
        assert float(row[3]) == pytest.approx(remap['miou'], abs=5e-4)
        assert len(remap['iou']) == {'none': 19, 'synthia_16': 16, 'synthia_13': 13}[row[2].strip()]
    assert 'road' in result.stdout and 'bicycle' in result.stdout  # the per-class table
    images = sorted(os.listdir(os.path.join(folder, 'eval_images', 'cityscapes')))
    assert images == ['img_0.png', 'img_1.png']
    strip = cv2.imread(os.path.join(folder, 'eval_images', 'cityscapes', 'img_0.png'))
    assert strip.shape == (64, 3 * 128, 3)  # image | prediction | label


def test_adapt_and_evaluate_are_deterministic_with_workers(trained, synthetic_root):
    checkpoints, _ = trained
    outputs = []
    for run in range(2):
        common = SMALL_MODEL[:-6] + ['--sys-num-workers', '2', '--sys-best-effort-determinism',
                                     '--experiment-class', 'determinism'] + SMALL_MODEL[-4:]
        run_script('adapt.py', common + ADAPT + [
            '--model-name', f'adapt_{run}', '--model-load', 'e2e/source/checkpoints/epoch_2',
            '--adaptation-mode-sequential', 'layer_shrinking'], synthetic_root, checkpoints)
        run_script('evaluate.py', common + [
            '--model-name', f'eval_{run}', '--model-load', f'determinism/adapt_{run}/checkpoints/batch_5'],
            synthetic_root, checkpoints)
        folder = os.path.join(checkpoints, 'determinism')
        outputs.append((load(os.path.join(folder, f'adapt_{run}', 'checkpoints', 'batch_5', 'model.pth')),
                        json.load(open(os.path.join(folder, f'eval_{run}', 'results.json')))['domains']))
    (first_model, first_results), (second_model, second_results) = outputs
    assert all(torch.equal(first_model[key], second_model[key]) for key in first_model)
    assert first_results == second_results


def test_adaptation_with_the_pixel_work_on_the_device_is_the_same_for_any_worker_count(trained, synthetic_root):
    """--adaptation-pixel-work device: the main process draws the order, flips and jitters, so 0 and 2 workers give
    the same statistics; as always, only the encoder's BatchNorm statistics change."""
    checkpoints, _ = trained
    adapted = {}
    for workers in (0, 2):
        result = run_script('adapt.py', SMALL_MODEL + ADAPT + [
            '--sys-num-workers', workers, '--sys-best-effort-determinism', '--model-name', f'pixels_{workers}',
            '--model-load', 'e2e/source/checkpoints/epoch_2', '--adaptation-mode-sequential', 'batch_shrinking',
            '--adaptation-pixel-work', 'device'], synthetic_root, checkpoints)
        assert 'resized and jittered on the device' in result.stdout
        adapted[workers] = load(os.path.join(checkpoints, 'e2e', f'pixels_{workers}', 'checkpoints', 'batch_5',
                                             'model.pth'))
    assert all(torch.equal(adapted[0][key], value) for key, value in adapted[2].items())
    source = load(os.path.join(checkpoints, 'e2e', 'source', 'checkpoints', 'epoch_2', 'model.pth'))
    changed = {key for key in source if not torch.equal(source[key], adapted[0][key])}
    assert changed and all(key.startswith('common.encoder.') and key.endswith(
        ('running_mean', 'running_var', 'num_batches_tracked')) for key in changed)


def test_missing_environment_and_checkpoint_give_one_sentence(synthetic_root, tmp_path):
    result = run_script('evaluate.py', SMALL_MODEL + ['--model-load', 'nothing/here'], synthetic_root,
                        str(tmp_path), check=False)
    assert result.returncode == 2
    assert result.stderr.startswith('error: the checkpoint folder nothing/here does not exist')
    assert result.stderr.count('\n') == 1
    result = run_script('evaluate.py', SMALL_MODEL + ['--model-load', 'x'], str(tmp_path / 'missing'),
                        str(tmp_path), check=False)
    assert result.returncode == 2 and 'export UBNA_DIR_DATASET=' in result.stderr
    assert 'Traceback' not in result.stderr


def test_diverging_loss_stops_training_and_keeps_the_last_good_checkpoint(synthetic_root, tmp_path):
    checkpoints = str(tmp_path)
    argv = SMALL_MODEL + TRAIN + ['--model-name', 'diverge', '--train-learning-rate', '1e30',
                                  '--train-batches-per-epoch', '1', '--train-num-epochs', '3']
    result = run_script('train.py', argv, synthetic_root, checkpoints, check=False)
    assert result.returncode == 2, result.stderr
    folder = os.path.join(checkpoints, 'e2e', 'diverge', 'checkpoints')
    assert 'training stopped, the last good checkpoint is ' + os.path.join(folder, 'epoch_1') in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith('error: the loss became ')  # after the progress bars
    assert sorted(os.listdir(folder)) == ['epoch_1']
    assert load(os.path.join(folder, 'epoch_1', 'train.pth')) == {'step': 1, 'epoch': 1}


def test_a_loss_diverging_within_an_epoch_is_reported_at_its_step_and_nothing_is_saved(synthetic_root, tmp_path):
    """The check is read one step late (no wait for the GPU): it must still name the step and stop the epoch."""
    argv = SMALL_MODEL + TRAIN + ['--model-name', 'diverge', '--train-learning-rate', '1e30',
                                  '--train-batches-per-epoch', '4', '--train-num-epochs', '1']
    result = run_script('train.py', argv, synthetic_root, str(tmp_path), check=False)
    assert result.returncode == 2, result.stderr
    assert re.search(r'error: the loss became \S+ at epoch 1, step 2; training stopped, the last good checkpoint '
                     r'is \(none yet\)$', result.stderr.strip()), result.stderr
    assert not os.path.exists(os.path.join(str(tmp_path), 'e2e', 'diverge', 'checkpoints'))


def test_training_resumes_weights_optimiser_scheduler_and_counters(trained, synthetic_root):
    checkpoints, _ = trained
    run_script('train.py', SMALL_MODEL + TRAIN + ['--model-name', 'resumed', '--train-num-epochs', '3',
                                                  '--model-load', 'e2e/source/checkpoints/epoch_1'],
               synthetic_root, checkpoints)
    folder = os.path.join(checkpoints, 'e2e', 'resumed', 'checkpoints')
    assert sorted(os.listdir(folder)) == ['epoch_2', 'epoch_3']  # epoch 1 was done before the resume
    assert load(os.path.join(folder, 'epoch_3', 'train.pth')) == {'step': 6, 'epoch': 3}
    optimiser = load(os.path.join(folder, 'epoch_3', 'optim.pth'))
    assert optimiser['state'][0]['step'].item() == 6  # Adam's moments continued from the checkpoint
    assert load(os.path.join(folder, 'epoch_3', 'scheduler.pth'))['last_epoch'] == 3
