"""Shared fixtures: synthetic two-domain data on disk, tiny named-loader datasets, one thread and no network for the
network tests; and the test tiers (pytest.ini): `slow` (subprocess end to end, `make test` only) and `gpu` (needs
CUDA, skipped without it). Helpers that are not fixtures are in tests/support.py."""
import urllib.error

import pytest
import torch

from data_download.make_synthetic import make_synthetic
from data_download.tiny_datasets import write_named_loader_datasets
from experiment.folder import experiment_dir
from state_manager import StateManager


def pytest_collection_modifyitems(config, items):
    """Tests marked gpu are skipped on a machine without CUDA."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason='needs a CUDA GPU (marked gpu)')
    for item in items:
        if 'gpu' in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope='session')
def synthetic_root(tmp_path_factory) -> str:
    """A small seeded source (gta5) + target (cityscapes, cityscapes_sequence) dataset folder, 64×128 images."""
    root = str(tmp_path_factory.mktemp('datasets'))
    make_synthetic(root, height=64, width=128, num_source=8, num_target_train=8, num_target_val=4, seed=0)
    return root


@pytest.fixture
def ubna_env(tmp_path, monkeypatch) -> str:
    """An empty dataset root (UBNA_DIR_DATASET) plus a checkpoint root, both under tmp_path."""
    root = tmp_path / 'datasets'
    root.mkdir()
    monkeypatch.setenv('UBNA_DIR_DATASET', str(root))
    monkeypatch.setenv('UBNA_DIR_CHECKPOINT', str(tmp_path / 'checkpoints'))
    return str(root)


@pytest.fixture
def named_datasets(ubna_env) -> str:
    """The dataset root with every folder the named loaders read (64x128 images, 4 samples per split)."""
    write_named_loader_datasets(ubna_env)
    return ubna_env


@pytest.fixture(scope='module')
def one_thread():
    """One intra-op thread, as run_script gives its processes: the small tensors of the tests run fastest on one
    thread, which also cannot stall when another process is busy (two threads on two shared cores are several
    times slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to download weights fails as it would offline."""
    def refuse(url, *args, **kwargs):
        raise urllib.error.URLError(f'no network in tests ({url})')
    monkeypatch.setattr(torch.hub, 'download_url_to_file', refuse)


@pytest.fixture(scope='module')
def untrained_roots(tmp_path_factory):
    """The tiny named-loader datasets and an untrained, seeded ResNet-18 saved as tiny/source/checkpoints/epoch_0,
    with the jobs' folder variables set for the module; yields the checkpoint root."""
    data, checkpoints = tmp_path_factory.mktemp('datasets'), tmp_path_factory.mktemp('checkpoints')
    write_named_loader_datasets(str(data))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv('UBNA_DIR_DATASET', str(data))
        patch.setenv('UBNA_DIR_CHECKPOINT', str(checkpoints))
        torch.manual_seed(0)
        StateManager('resnet', 18, 'scratch').save(experiment_dir('tiny', 'source'), 'epoch_0')
        yield str(checkpoints)
