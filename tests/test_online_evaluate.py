"""evaluate.py --online-method through the real command line on the synthetic data: every method, the default left
unchanged, a start from an adapt.py checkpoint, and bad input refused in one sentence before any work."""
import json
import math
import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from arguments import parse_evaluation_arguments
from models.adaptation import ONLINE_METHODS, check_online_settings
from tests.support import run_script

SMALL_MODEL = ['--model-type', 'resnet', '--model-num-layers', '18', '--sys-cpu', '--sys-num-workers', '0',
               '--experiment-class', 'online', '--segmentation-validation-resize-height', '64',
               '--segmentation-validation-resize-width', '128', '--sys-best-effort-determinism']
TRAIN = ['--train-weights-init', 'scratch', '--segmentation-training-loaders', 'gta5_train',
         '--segmentation-training-batch-size', '2', '--segmentation-resize-height', '96',
         '--segmentation-resize-width', '192', '--segmentation-crop-height', '64', '--segmentation-crop-width', '128',
         '--train-batches-per-epoch', '2', '--train-num-epochs', '1', '--train-checkpoint-frequency', '1']
SOURCE = 'online/source/checkpoints/epoch_1'
# cityscapes_sequence_train crops (h*320//512, w): h = 103 gives a 64-row network input
ADAPT = ['--adaptation-mode-sequential', 'batch_shrinking', '--adaptation-training-loaders',
         'cityscapes_sequence_train', '--adaptation-training-batch-size', '2', '--adaptation-num-batches', '3',
         '--adaptation-resize-height', '103', '--adaptation-resize-width', '128']
METHODS = [name for name in ONLINE_METHODS if name != 'none']
# name -> evaluate.py flags; dua with 8 augmented copies instead of 64, to stay quick
RUNS = {'default': [], 'explicit_none': ['--online-method', 'none']} | {
    method: ['--online-method', method] + (['--online-augmentations', '8'] if method == 'dua' else [])
    for method in METHODS}


@pytest.fixture(scope='module')
def checkpoints(synthetic_root, tmp_path_factory) -> str:
    """A checkpoint root holding a source model trained for two steps."""
    root = str(tmp_path_factory.mktemp('checkpoints'))
    run_script('train.py', SMALL_MODEL + TRAIN + ['--model-name', 'source'], synthetic_root, root)
    return root


def evaluate(checkpoints: str, dataset_root: str, name: str, flags: list, model_load: str = SOURCE) -> tuple:
    """Run evaluate.py; returns (its stdout, the bytes of its results.json)."""
    result = run_script('evaluate.py', SMALL_MODEL + ['--model-name', name, '--model-load', model_load,
                                                      '--segmentation-eval-num-images', '0', *flags],
                        dataset_root, checkpoints)
    with open(os.path.join(checkpoints, 'online', name, 'results.json'), 'rb') as file:
        return result.stdout, file.read()


def adapt_then_evaluate(checkpoints: str, dataset_root: str) -> tuple:
    """UBNA offline with adapt.py, then cbna online from its checkpoint."""
    run_script('adapt.py', SMALL_MODEL + ADAPT + ['--model-name', 'ubna', '--model-load', SOURCE], dataset_root,
               checkpoints)
    return evaluate(checkpoints, dataset_root, 'ubna_then_cbna',
                    ['--online-method', 'cbna', '--online-reset', 'continual', '--online-momentum', '0.1'],
                    model_load='online/ubna/checkpoints/batch_3')


@pytest.fixture(scope='module')
def evaluations(checkpoints, synthetic_root) -> dict:
    """Every run of RUNS and adapt_then_evaluate, side by side: {name: (stdout, results.json bytes)}."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        runs = {name: pool.submit(evaluate, checkpoints, synthetic_root, name, flags) for name, flags in RUNS.items()}
        runs['ubna_then_cbna'] = pool.submit(adapt_then_evaluate, checkpoints, synthetic_root)
        return {name: run.result() for name, run in runs.items()}


@pytest.mark.slow  # evaluations: train.py, adapt.py, evaluate.py
def test_an_explicit_none_gives_the_default_results_byte_for_byte(evaluations):
    default, explicit = evaluations['default'][1], evaluations['explicit_none'][1]
    assert explicit == default.replace(b'"default"', b'"explicit_none"')  # the eval_name differs, nothing else
    assert 'online' not in json.loads(default)


@pytest.mark.slow  # evaluations: train.py, adapt.py, evaluate.py
@pytest.mark.parametrize('method', METHODS)
def test_every_online_method_is_scored_and_reported_with_its_settings_and_cost(evaluations, method):
    stdout, raw = evaluations[method]
    results = json.loads(raw)
    online = results['online']
    settings = {'augmentations': 8} if method == 'dua' else {}
    assert online['method'] == method and online['settings'] == check_online_settings(method, **settings)
    assert online['ms_per_image_none'] > 0 and math.isfinite(online['ms_per_image_adapting'])
    assert f'online {method} (' in stdout and 'ms per image adapting' in stdout
    assert 0 <= results['domains']['cityscapes']['none']['miou'] <= 1


@pytest.mark.slow  # evaluations: train.py, adapt.py, evaluate.py
def test_online_adaptation_starts_from_an_offline_adapted_checkpoint(evaluations):
    stdout, raw = evaluations['ubna_then_cbna']
    assert 'Evaluating online/ubna/checkpoints/batch_3 on cityscapes_validation, adapting online with cbna' in stdout
    assert json.loads(raw)['online']['settings'] == {'momentum': 0.1, 'reset': 'continual'}


@pytest.mark.parametrize('flags, message', [
    (['--online-method', 'nope'], "argument --online-method: invalid choice: 'nope'"),
    (['--online-method', 'cbna', '--online-momentum', '0'], '--online-momentum must be in (0, 1], got 0.0'),
    (['--online-method', 'ubna_online', '--online-momentum', '1.5'], '--online-momentum must be in (0, 1], got 1.5'),
    (['--online-method', 'tent', '--online-learning-rate', 'nan'],
     '--online-learning-rate must be a finite number, got nan'),
    (['--online-method', 'tent', '--online-learning-rate', '-1'],
     '--online-learning-rate must be a positive finite number, got -1.0'),
    (['--online-method', 'cbna', '--online-learning-rate', '0.01'],
     '--online-learning-rate does not apply to --online-method cbna (it takes --online-momentum)'),
    (['--online-method', 'test_batch', '--online-momentum', '0.1'],
     '--online-momentum does not apply to --online-method test_batch (it takes no setting but --online-reset)'),
    (['--online-reset', 'episodic'], '--online-reset does not apply to --online-method none, which never adapts'),
    (['--online-method', 'dua', '--online-momentum', '1', '--online-min-momentum', '0.5'],
     '--online-min-momentum plus momentum × decay must be at most 1, got 1.44'),
    (['--online-method', 'dua', '--online-augmentations', '0'], '--online-augmentations must be at least 1, got 0'),
])
def test_bad_online_flags_get_one_sentence_naming_the_flag(capsys, flags, message):
    with pytest.raises(SystemExit):
        parse_evaluation_arguments(['--model-load', SOURCE, *flags])
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f'evaluate.py: error: {message}')


@pytest.mark.slow  # evaluate.py
def test_bad_online_flags_are_refused_before_any_work(synthetic_root, tmp_path):
    result = run_script('evaluate.py', SMALL_MODEL + ['--model-load', SOURCE, '--online-method', 'bn_ema',
                                                      '--online-momentum', '2'],
                        synthetic_root, str(tmp_path / 'checkpoints'), check=False)
    assert result.returncode == 2 and 'Traceback' not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == 'evaluate.py: error: --online-momentum must be in (0, 1], got 2.0'
    assert not os.path.exists(tmp_path / 'checkpoints')
