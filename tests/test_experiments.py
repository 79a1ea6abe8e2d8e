"""experiments/gta_to_cs/*.sh and cs_to_acdc/*.sh run from any working directory (paper flags, small sizes
appended)."""
import csv
import os
import subprocess
import sys

import pytest

from tests.support import REPO

SMALL = ['--model-type', 'resnet', '--model-num-layers', '18', '--sys-cpu', '--sys-num-workers', '0',
         '--segmentation-validation-resize-height', '64', '--segmentation-validation-resize-width', '128']
OVERRIDES = {
    'pretrain.sh': SMALL + ['--train-weights-init', 'scratch', '--train-num-epochs', '20',
                            '--train-batches-per-epoch', '1', '--train-checkpoint-frequency', '20',
                            '--segmentation-training-batch-size', '2', '--segmentation-resize-height', '96',
                            '--segmentation-resize-width', '192', '--segmentation-crop-height', '64',
                            '--segmentation-crop-width', '128'],
    'adapt_ubna.sh': SMALL + ['--adaptation-resize-height', '103', '--adaptation-resize-width', '128',
                              '--adaptation-training-batch-size', '2', '--adaptation-num-batches', '50'],
    'evaluate.sh': SMALL,
}
OVERRIDES['adapt_ubna_plus.sh'] = OVERRIDES['adapt_ubna.sh']


@pytest.mark.slow
def test_gta_to_cs_scripts_chain_from_another_directory(synthetic_root, tmp_path):
    checkpoints = tmp_path / 'checkpoints'
    env = {**os.environ, 'UBNA_DIR_DATASET': synthetic_root, 'UBNA_DIR_CHECKPOINT': str(checkpoints),
           'PYTHON': sys.executable, 'OMP_NUM_THREADS': '1'}
    outputs = {}
    for script in ('pretrain.sh', 'adapt_ubna.sh', 'adapt_ubna_plus.sh', 'evaluate.sh'):
        result = subprocess.run(['bash', os.path.join(REPO, 'experiments', 'gta_to_cs', script), *OVERRIDES[script]],
                                cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f'{script}:\n{result.stdout}\n{result.stderr}'
        outputs[script] = result.stdout
    assert (checkpoints / 'ubna_pretrained_models' / 'ubna_pretrained_seg_gta_vgg16' / 'checkpoints' /
            'epoch_20' / 'model.pth').is_file()
    adapted = checkpoints / 'ubna_adapted_models'
    assert sorted(os.listdir(adapted)) == ['ubna_adaption_gta_to_cs_vgg16_BS6_alpha_batch=0.08_alpha_layer=0',
                                           'ubna_adaption_gta_to_cs_vgg16_BS6_alpha_batch=0.08_alpha_layer=0.03']
    assert outputs['evaluate.sh'].count('eval_name    | domain') == 3
    for name in ('source', 'ubna', 'ubna_plus'):
        assert (checkpoints / 'iccv_experiments' / f'eval_gta_to_cs_{name}' / 'results.json').is_file()


@pytest.mark.slow
def test_cs_to_acdc_scripts_run_the_continual_protocol_from_another_directory(synthetic_root, tmp_path):
    """pretrain.sh on Cityscapes, then reproduce.sh's stream over the four conditions in rounds (small sizes and two
    rounds appended); the summary holds each method's stream mIoU."""
    checkpoints = tmp_path / 'checkpoints'
    env = {**os.environ, 'UBNA_DIR_DATASET': synthetic_root, 'UBNA_DIR_CHECKPOINT': str(checkpoints),
           'PYTHON': sys.executable, 'OMP_NUM_THREADS': '1'}
    pretrain = OVERRIDES['pretrain.sh'] + ['--segmentation-training-loaders', 'cityscapes_train']
    reproduce = SMALL + ['--methods', 'no_adaptation,bn_ema,tent', '--online-rounds', '2']
    for script, flags in (('pretrain.sh', pretrain), ('reproduce.sh', reproduce)):
        result = subprocess.run(['bash', os.path.join(REPO, 'experiments', 'cs_to_acdc', script), *flags],
                                cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f'{script}:\n{result.stdout}\n{result.stderr}'
    sweep = checkpoints / 'ubna_sweeps' / 'cs_to_acdc'
    with open(sweep / 'runs.csv') as file:
        rows = list(csv.DictReader(file))
    domains = ['acdc_fog', 'acdc_night', 'acdc_rain', 'acdc_snow']
    for method in ('no_adaptation', 'bn_ema', 'tent'):
        assert sorted(row['domain'] for row in rows if row['method'] == method) == domains
        streamed = {row['stream_miou'] for row in rows if row['method'] == method}
        assert (streamed == {''}) == (method == 'no_adaptation')  # online runs carry the stream's mIoU
    assert 'stream' in (sweep / 'summary.md').read_text()
