"""Shared fixtures: synthetic two-domain data on disk and a runner for the real command lines."""
import os
import subprocess
import sys

import pytest

from data_download.make_synthetic import make_synthetic

pytest_plugins = ('tests.dataset_fixtures',)  # the ubna_env and named_datasets fixtures

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='session')
def synthetic_root(tmp_path_factory) -> str:
    """A small seeded source (gta5) + target (cityscapes, cityscapes_sequence) dataset folder, 64×128 images."""
    root = str(tmp_path_factory.mktemp('datasets'))
    make_synthetic(root, height=64, width=128, num_source=8, num_target_train=8, num_target_val=4, seed=0)
    return root


def run_script(script: str, args: list, dataset_root: str, checkpoint_root: str, timeout: int = 300,
               check: bool = True) -> subprocess.CompletedProcess:
    """Run `python <script> <args>` from the repository root, as a user would, with the UBNA folders set."""
    env = {**os.environ, 'UBNA_DIR_DATASET': dataset_root, 'UBNA_DIR_CHECKPOINT': checkpoint_root,
           'OMP_NUM_THREADS': '1', 'PYTHONUNBUFFERED': '1'}
    result = subprocess.run([sys.executable, script, *map(str, args)], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f'{script} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}')
    return result
