"""train.py, adapt.py, evaluate.py and sweep.py through their main(argv) in this process, on the synthetic data: the
fast tier's run of the jobs whose command lines test_end_to_end, test_online_evaluate and test_sweep start (slow)."""
import csv
import json
import os

import pytest
import torch

import adapt
import evaluate
import sweep
import train
from errors import run_cli
from tests.support import ADAPT, SMALL_MODEL, TRAIN

pytestmark = pytest.mark.usefixtures('one_thread')  # conftest.py: as run_script gives its processes

SOURCE = 'e2e/source/checkpoints/epoch_1'
STATISTICS = ('running_mean', 'running_var', 'num_batches_tracked')


@pytest.fixture(scope='module')
def checkpoints(synthetic_root, tmp_path_factory) -> str:
    """A checkpoint root holding a source model that train.main trained for one step; the stdout of that run is
    in <root>/train_stdout.txt."""
    root = str(tmp_path_factory.mktemp('checkpoints'))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv('UBNA_DIR_DATASET', synthetic_root)
        patch.setenv('UBNA_DIR_CHECKPOINT', root)
        state = train.main(SMALL_MODEL + TRAIN + ['--model-name', 'source', '--train-num-epochs', '1',
                                                  '--train-batches-per-epoch', '1'])
    assert (state.step, state.epoch) == (1, 1)
    return root


@pytest.fixture
def roots(checkpoints, synthetic_root, monkeypatch) -> str:
    monkeypatch.setenv('UBNA_DIR_DATASET', synthetic_root)
    monkeypatch.setenv('UBNA_DIR_CHECKPOINT', checkpoints)
    return checkpoints


def load(path):
    return torch.load(path, map_location='cpu', weights_only=True)


def test_train_main_writes_a_checkpoint_options_and_logs(roots):
    folder = os.path.join(roots, 'e2e', 'source')
    assert sorted(os.listdir(os.path.join(folder, 'checkpoints', 'epoch_1'))) == ['model.pth', 'optim.pth',
                                                                                  'scheduler.pth', 'train.pth']
    assert load(os.path.join(folder, 'checkpoints', 'epoch_1', 'train.pth')) == {'step': 1, 'epoch': 1}
    options = json.load(open(os.path.join(folder, 'opt.json')))
    assert options['train_batches_per_epoch'] == 1 and options['model_name'] == 'source'
    for part in ('train', 'validation', 'images'):
        assert any(name.startswith('events.out.tfevents.') for name in os.listdir(os.path.join(folder, part))), part


def test_adapt_main_changes_only_encoder_batchnorm_statistics(roots, capsys):
    adapt.main(SMALL_MODEL + ADAPT + ['--model-name', 'adapted', '--model-load', SOURCE, '--adaptation-num-batches',
                                      '2', '--adaptation-mode-sequential', 'layer_shrinking'])
    out = capsys.readouterr().out
    assert 'resized and jittered in the workers' in out and 'Adaptation of 2 batches completed' in out
    source = load(os.path.join(roots, 'e2e', 'source', 'checkpoints', 'epoch_1', 'model.pth'))
    adapted = load(os.path.join(roots, 'e2e', 'adapted', 'checkpoints', 'batch_2', 'model.pth'))
    changed = {key for key in source if not torch.equal(source[key], adapted[key])}
    assert changed and all(key.startswith('common.encoder.') and key.endswith(STATISTICS) for key in changed)
    with open(os.path.join(roots, 'e2e', 'adapted', 'momenta.csv')) as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 2 * 20  # 2 batches x 20 BatchNorm layers of ResNet-18
    assert float(rows[-1]['momentum']) == pytest.approx(0.1 * 2.718281828 ** (-0.08 * 1 - 0.03 * 20), rel=1e-6)


def test_evaluate_main_scores_and_writes_results_and_images(roots, capsys):
    results = evaluate.main(SMALL_MODEL + ['--model-name', 'evaluated', '--model-load', SOURCE,
                                           '--segmentation-eval-remaps', 'none,synthia_16',
                                           '--segmentation-eval-num-images', '1'])
    out = capsys.readouterr().out
    folder = os.path.join(roots, 'e2e', 'evaluated')
    assert json.load(open(os.path.join(folder, 'results.json'))) == results
    scores = results['domains']['cityscapes']
    assert sorted(scores) == ['none', 'synthia_16'] and len(scores['synthia_16']['iou']) == 16
    assert 0 <= scores['none']['miou'] <= 1 and 'eval_name    | domain' in out
    assert os.listdir(os.path.join(folder, 'eval_images', 'cityscapes')) == ['img_0.png']


def test_evaluate_main_adapts_online(roots, capsys):
    results = evaluate.main(SMALL_MODEL + ['--model-name', 'online', '--model-load', SOURCE, '--online-method',
                                           'cbna', '--segmentation-eval-num-images', '0'])
    assert results['online']['method'] == 'cbna' and results['online']['ms_per_image_none'] > 0
    assert 'adapting online with cbna' in capsys.readouterr().out


def test_a_missing_checkpoint_is_one_sentence_with_status_2(roots, capsys):
    assert run_cli(evaluate.main, SMALL_MODEL + ['--model-name', 'missing', '--model-load', 'nothing/here']) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: the checkpoint folder nothing/here does not exist') and err.count('\n') == 1


def test_sweep_main_writes_runs_summary_and_plot_and_resumes(roots, capsys):
    sizes = ADAPT[:ADAPT.index('--adaptation-num-batches')] + ADAPT[ADAPT.index('--adaptation-resize-height'):][:4]
    command = SMALL_MODEL + sizes + ['--model-name', 'swept', '--model-load', SOURCE, '--methods',
                                     'no_adaptation,batch_shrinking,tent', '--num-batches', '1,2',
                                     '--alpha-batch', '0.08', '--seeds', '1']
    folder = sweep.main(command)
    out = capsys.readouterr().out
    assert folder == os.path.join(roots, 'e2e', 'swept')
    assert 'sweep of 4 runs' in out and '0 done before, 4 to run' in out
    with open(os.path.join(folder, 'runs.csv'), newline='') as file:
        rows = list(csv.DictReader(file))
    assert sorted((row['method'], row['num_batches']) for row in rows) == [
        ('batch_shrinking', '1'), ('batch_shrinking', '2'), ('no_adaptation', '0'), ('tent', '0')]
    summary = open(os.path.join(folder, 'summary.md')).read()
    for line in ('| no adaptation | 0 | – | – | 1 |', '| UBNA | 2 | 0.08 | – | 1 |', '| tent | 0 | – | – | 1 |'):
        assert line in summary and line in out
    assert os.path.isfile(os.path.join(folder, 'miou_vs_batches.png'))
    written = open(os.path.join(folder, 'runs.csv')).read()
    assert sweep.main(command) == folder
    assert '4 done before, 0 to run' in capsys.readouterr().out
    assert open(os.path.join(folder, 'runs.csv')).read() == written
