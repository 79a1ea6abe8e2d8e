"""Helpers the test modules share that are not fixtures (those live in conftest.py): the repository root, a runner
for the real command lines, the small model and its flags, the published checkpoint layouts, and a dataset whose
samples describe the loader worker that made them. No test module imports another test module; they import this."""
import contextlib
import os
import subprocess
import sys

import cv2
import pytest
import torch
import torch.nn as nn
from torch.utils.data import Dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The small model and job sizes of the end-to-end tests (test_end_to_end, test_distributed, test_hardening,
# test_speed_paths, test_jobs_in_process).
SMALL_MODEL = ['--model-type', 'resnet', '--model-num-layers', '18', '--sys-cpu', '--sys-num-workers', '0',
               '--experiment-class', 'e2e', '--segmentation-validation-resize-height', '64',
               '--segmentation-validation-resize-width', '128']
TRAIN = ['--train-weights-init', 'scratch', '--segmentation-training-loaders', 'gta5_train',
         '--segmentation-training-batch-size', '2', '--segmentation-resize-height', '96',
         '--segmentation-resize-width', '192', '--segmentation-crop-height', '64', '--segmentation-crop-width', '128',
         '--train-batches-per-epoch', '2', '--train-num-epochs', '2', '--train-checkpoint-frequency', '1',
         '--train-tb-frequency', '1', '--train-print-frequency', '1']
# cityscapes_sequence_train crops (h*320//512, w): h = 103 gives a 64-row network input
ADAPT = ['--adaptation-training-loaders', 'cityscapes_sequence_train', '--adaptation-training-batch-size', '4',
         '--adaptation-num-batches', '5', '--adaptation-resize-height', '103', '--adaptation-resize-width', '128',
         '--adaptation-alpha-batch', '0.08', '--adaptation-alpha-layer', '0.03']


def job_environment(dataset_root: str, checkpoint_root: str) -> dict:
    """The variables of a job started by run_script: the UBNA folders, one intra-op thread, unbuffered output."""
    return {**os.environ, 'UBNA_DIR_DATASET': dataset_root, 'UBNA_DIR_CHECKPOINT': checkpoint_root,
            'OMP_NUM_THREADS': '1', 'PYTHONUNBUFFERED': '1'}


@contextlib.contextmanager
def lock_held_elsewhere(folder: str):
    """Another live process holding the folder's lock (yielded, for its pid); killed with SIGKILL at the end, so
    the lock file keeps its pid while no process holds the lock any more, as a killed run leaves it."""
    holder = subprocess.Popen(
        [sys.executable, '-c', 'import sys, time; from experiment.folder import lock_folder; '
                               'lock_folder(sys.argv[1]); print("locked", flush=True); time.sleep(120)', folder],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == 'locked\n'
        yield holder
    finally:
        holder.kill()
        holder.wait()


def run_script(script: str, args: list, dataset_root: str, checkpoint_root: str, timeout: int = 300,
               check: bool = True) -> subprocess.CompletedProcess:
    """Run `python <script> <args>` from the repository root, as a user would, with the UBNA folders set."""
    result = subprocess.run([sys.executable, script, *map(str, args)], cwd=REPO,
                            env=job_environment(dataset_root, checkpoint_root), capture_output=True, text=True,
                            timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f'{script} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}')
    return result


# The published checkpoint layouts (key, shape; BatchNorm order) of the spec.
KEYS_DIR = '/work/shared/spec/checkpoint_keys'
# every backbone, for parametrize; ResNet-101 and -152 (a second or more each to build and run on the CPU) in the
# slow tier only: ResNet-50 has their bottleneck blocks
ALL_BACKBONES = [('vgg', 11), ('vgg', 13), ('vgg', 16), ('vgg', 19), ('resnet', 18), ('resnet', 34), ('resnet', 50),
                 pytest.param('resnet', 101, marks=pytest.mark.slow),
                 pytest.param('resnet', 152, marks=pytest.mark.slow)]


def published_shapes(name: str) -> dict:
    """key -> shape tuple from checkpoint_keys/<name>.txt."""
    shapes = {}
    with open(os.path.join(KEYS_DIR, f'{name}.txt')) as file:
        for line in file:
            key, shape = line.split()
            shapes[key] = () if shape == 'scalar' else tuple(int(n) for n in shape.split('x'))
    return shapes


def published_bn_order(name: str) -> list:
    """(first module name, num_features) per line of checkpoint_keys/<name>_bn_order.txt."""
    with open(os.path.join(KEYS_DIR, f'{name}_bn_order.txt')) as file:
        rows = [line.split() for line in file if not line.startswith('#')]
    return [(names.split(',')[0], int(features)) for _, names, features in rows]


class WorkerSetup(Dataset):
    """Every sample is the niceness, the OpenCV thread count and the tensor sharing strategy of its process (also
    imported by test_speed_paths' child processes, which cannot import a test module's fixtures)."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> dict:
        return {'nice': torch.tensor(os.nice(0)), 'cv2_threads': torch.tensor(cv2.getNumThreads()),
                'strategy': torch.multiprocessing.get_sharing_strategy()}


class SmallNet(nn.Module):
    """conv-BN-ReLU twice and a 1×1 conv to 5 classes: a BatchNorm network that is not a UBNA network."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Conv2d(8, 5, 1)

    def forward(self, x):
        return self.head(self.features(x))


def with_source_statistics(model: nn.Module, seed: int | None = 0) -> nn.Module:
    """Non-trivial running statistics and affine parameters, as a trained network has (drawn after seeding with
    `seed`; None: from the generator as it stands); the model in eval mode."""
    if seed is not None:
        torch.manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    return model.eval()
