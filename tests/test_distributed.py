"""train.py under torchrun: two CPU processes (gloo) end with identical weights; only rank 0 writes."""
import os

import pytest
import torch

from tests.support import SMALL_MODEL, TRAIN, run_script


@pytest.mark.slow
def test_two_gloo_processes_end_with_identical_weights(synthetic_root, tmp_path):
    checkpoints = str(tmp_path / 'checkpoints')
    weights = tmp_path / 'weights'
    weights.mkdir()
    torchrun = ['torch.distributed.run', '--standalone', '--nproc-per-node', '2', 'tests/ddp_train.py']
    result = run_script('-m', torchrun + [str(weights)] + SMALL_MODEL + TRAIN + ['--model-name', 'ddp'],
                        synthetic_root, checkpoints, timeout=400)
    ranks = [torch.load(weights / f'rank_{rank}.pth', map_location='cpu', weights_only=True) for rank in (0, 1)]
    parameters = [key for key in ranks[0] if not key.endswith(('running_mean', 'running_var', 'num_batches_tracked'))]
    assert all(torch.equal(ranks[0][key], ranks[1][key]) for key in parameters)
    initial = torch.load(os.path.join(checkpoints, 'e2e', 'ddp', 'checkpoints', 'epoch_1', 'model.pth'),
                         map_location='cpu', weights_only=True)
    assert any(not torch.equal(initial[key], ranks[0][key]) for key in parameters)  # epoch 2 trained further
    final = torch.load(os.path.join(checkpoints, 'e2e', 'ddp', 'checkpoints', 'epoch_2', 'model.pth'),
                       map_location='cpu', weights_only=True)
    assert all(torch.equal(final[key], ranks[0][key]) for key in final)
    assert result.stdout.count('eval_name    | domain') == 2  # rank 0 alone validates and prints
