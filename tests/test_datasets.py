"""The dataset registry (dataloader/datasets/): one entry per dataset file, and a new entry's loaders reach the
loaders, the flag checks, build_index.py and resize_dataset.py with no other file touched."""
import os
import pkgutil

import numpy as np
import pytest

from arguments import add_adaptation_flags, build_parser, parse_adaptation_arguments, parse_training_arguments
from data_download import build_index as bi
from data_download.resize_dataset import main as resize_main
from dataloader import datasets
from dataloader.datasets import DATASETS, DatasetEntry, IndexOption, Loader, loader_names, register
from dataloader.index import Category, list_files, parameters, require_dir, single_frames, write_index
from dataloader.loaders import (adaptation_dataset, adaptation_input_size, check_loader_names, training_dataset,
                                validation_dataset, validation_loaders)
from errors import UserError, run_cli
from data_download.tiny_datasets import id_label, noise_image, write_image

COUNT = 5  # toy images


def test_every_dataset_file_registers_its_dataset():
    files = {module.name for module in pkgutil.iter_modules(datasets.__path__)}
    assert set(DATASETS) == files == {'cityscapes', 'cityscapes_sequence', 'gta5', 'synthia', 'kitti', 'kitti_2015',
                                      'acdc', 'bdd100k', 'dark_zurich', 'foggy_cityscapes'}


def test_register_refuses_an_entry_the_loaders_cannot_use():
    build = DATASETS['gta5'].build_index
    with pytest.raises(ValueError, match='registered twice'):
        register(DatasetEntry('gta5', 'gta5', (), build))
    with pytest.raises(ValueError, match='loader gta5_train of dataset other is registered twice'):
        register(DatasetEntry('other', 'gta5', (Loader('gta5_train', 'training', 'train'),), build))
    with pytest.raises(ValueError, match="kind 'testing'"):
        register(DatasetEntry('other', 'gta5', (Loader('other_test', 'testing', 'test'),), build))
    with pytest.raises(ValueError, match='needs a label table'):
        register(DatasetEntry('other', None, (Loader('other_train', 'training', 'train'),), build))
    with pytest.raises(ValueError, match='default size'):
        register(DatasetEntry('other', 'gta5', (Loader('other_validation', 'validation', 'train'),), build))
    assert 'other' not in DATASETS


def build_toy(root: str, toy_validation_count: str | None = None) -> dict:
    """toy/{left,right,labels}/<n>.png; the last toy_validation_count images (default 1) form the validation
    split, the others train."""
    dataset_dir = os.path.join(root, 'toy')
    require_dir(os.path.join(dataset_dir, 'left'))
    categories = [Category('color', single_frames(list_files(dataset_dir, 'left', '.png'))),
                  Category('color_right', single_frames(list_files(dataset_dir, 'right', '.png'))),
                  Category('segmentation', single_frames(list_files(dataset_dir, 'labels', '.png')))]
    validation = {frame.key for frame in categories[0].frames[-int(toy_validation_count or 1):]}
    return write_index(dataset_dir, parameters('cityscapes', 'fromid', []), categories,
                       lambda frame: 'validation' if frame.key in validation else 'train')


def top_half(resize_hw: tuple[int, int], crop_at_offsets: bool) -> tuple:
    """Resize, then keep the top half."""
    return resize_hw, (resize_hw[0] // 2, resize_hw[1]), (0, 0)


TOY = DatasetEntry(
    name='toy', labels='cityscapes',
    loaders=(Loader('toy_train', 'training', 'train'),
             Loader('toy_adaptation', 'adaptation', 'train', geometry=top_half),
             Loader('toy_validation', 'validation', 'validation', size=(32, 64))),
    build_index=build_toy,
    index_options=(IndexOption('--toy-validation-count', 'images of the validation split', metavar='N'),))


@pytest.fixture
def toy(named_datasets):
    """The toy dataset's images in the dataset root (with every named loader's folder) and its entry registered."""
    rng = np.random.default_rng(0)
    for index in range(COUNT):
        for folder in ('left', 'right'):
            write_image(os.path.join(named_datasets, 'toy', folder, f'{index:03d}.png'), noise_image(rng, 48, 96))
        write_image(os.path.join(named_datasets, 'toy', 'labels', f'{index:03d}.png'), id_label(rng, 48, 96))
    register(TOY)
    yield named_datasets
    del DATASETS['toy']


def test_a_registered_dataset_is_indexed_by_build_index(toy, capsys):
    assert bi.parse_args(['toy']).dataset == 'toy'
    assert run_cli(bi.main, ['toy', '--root', toy, '--toy-validation-count', '2']) == 0
    assert capsys.readouterr().out == 'toy: train split with 3 samples\ntoy: validation split with 2 samples\n'
    assert run_cli(bi.main, ['gta5', '--root', toy, '--toy-validation-count', '2']) == 2
    assert capsys.readouterr().err == 'error: --toy-validation-count options apply to the dataset toy only, not to ' \
                                      'gta5.\n'
    assert run_cli(bi.main, ['toy', '--root', toy, '--kitti-split-train', 'x.txt']) == 2
    assert capsys.readouterr().err == 'error: --kitti-split-* options apply to the dataset kitti only, not to toy.\n'


def test_a_registered_dataset_serves_its_loaders(toy):
    assert run_cli(bi.main, ['toy', '--root', toy]) == 0
    assert loader_names('training')[-1] == 'toy_train' and loader_names('validation')[-1] == 'toy_validation'
    check_loader_names(['toy_train'], 'training')
    with pytest.raises(UserError, match="unknown validation loader 'toy_train'; valid names: .*cityscapes_validation, "
                                        ".*kitti_2015_train, toy_validation$"):
        check_loader_names(['toy_train'], 'validation')
    training = training_dataset('toy_train', (48, 96), (16, 32))
    assert len(training) == COUNT - 1 and training[0]['domain'] == 'toy'
    assert tuple(training[0]['label'].shape) == (16, 32)
    adaptation = adaptation_dataset('toy_adaptation', (64, 128), (64, 128))
    assert len(adaptation) == 2 * (COUNT - 1) and tuple(adaptation[0]['input'].shape) == (3, 32, 128)
    assert adaptation_input_size('toy_adaptation', (64, 128)) == (32, 128)
    assert len(validation_dataset('toy_validation', (32, 64))) == 1
    # several validation loaders: each at its own default size
    (_, cityscapes), (_, own) = validation_loaders(['cityscapes_validation', 'toy_validation'], 1, (64, 128), 0, False)
    assert own.dataset.transform.resize_hw == (32, 64) and cityscapes.dataset.transform.resize_hw == (512, 1024)


def test_a_registered_dataset_reaches_the_flags(toy, capsys):
    opt = parse_training_arguments(['--segmentation-training-loaders', 'cityscapes_train,toy_train',
                                    '--segmentation-validation-loaders', 'toy_validation'])
    assert opt.segmentation_training_loaders == 'cityscapes_train,toy_train'
    assert 'toy_adaptation' in build_parser('adapt', '', (add_adaptation_flags,)).format_help()
    with pytest.raises(SystemExit):
        parse_adaptation_arguments(['--adaptation-training-loaders', 'kitti_kitti_train,toy_adaptation',
                                    '--adaptation-resize-height', '128', '--adaptation-resize-width', '256'])
    assert 'give network inputs of 128x256 (kitti_kitti_train) and 64x256 (toy_adaptation)' in capsys.readouterr().err


def test_a_registered_dataset_gets_resized_copies(toy, tmp_path, monkeypatch):
    assert run_cli(bi.main, ['toy', '--root', toy]) == 0
    copy = str(tmp_path / 'copy')
    resize_main(['toy_train', '--resize-height', '24', '--resize-width', '48', '--output', copy, '--workers', '1'])
    assert sorted(os.listdir(os.path.join(copy, 'toy', 'left'))) == [f'{index:03d}.png' for index in range(COUNT - 1)]
    monkeypatch.setenv('UBNA_DIR_DATASET', copy)
    assert len(training_dataset('toy_train', (24, 48), (8, 16))) == COUNT - 1
    with pytest.raises(UserError, match='resized copy made for toy_train, not for toy_validation'):
        validation_dataset('toy_validation', (32, 64))
