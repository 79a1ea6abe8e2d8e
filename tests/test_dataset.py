"""Folders, JSON files, image reading and the Dataset class (spec §1, §2)."""
import os

import cv2
import numpy as np
import pytest

from dataloader.dataset import ImageDataset, read_image, read_parameters, read_split
from experiment.folder import checkpoint_root
from dataloader.paths import dataset_root
from errors import UserError
from data_download.tiny_datasets import noise_image, write_dataset, write_json

RNG = np.random.default_rng(0)


def small(value: int) -> np.ndarray:
    return np.full((4, 6, 3), value, np.uint8)


def test_paths_missing_variable_shows_export_lines(monkeypatch):
    monkeypatch.delenv('UBNA_DIR_DATASET', raising=False)
    with pytest.raises(UserError) as error:
        dataset_root()
    message = str(error.value)
    assert 'UBNA_DIR_DATASET is not set' in message
    assert 'export UBNA_DIR_DATASET=' in message and 'export UBNA_DIR_CHECKPOINT=' in message


def test_paths_wrong_folder_and_checkpoint_creation(tmp_path, monkeypatch):
    monkeypatch.setenv('UBNA_DIR_DATASET', str(tmp_path / 'nowhere'))
    with pytest.raises(UserError, match='(?s)nowhere is not an existing folder.*export UBNA_DIR_DATASET='):
        dataset_root()
    monkeypatch.setenv('UBNA_DIR_CHECKPOINT', str(tmp_path / 'out' / 'runs'))
    assert checkpoint_root() == str(tmp_path / 'out' / 'runs')
    assert os.path.isdir(tmp_path / 'out' / 'runs')
    monkeypatch.delenv('UBNA_DIR_CHECKPOINT')
    with pytest.raises(UserError, match='UBNA_DIR_CHECKPOINT is not set'):
        checkpoint_root()


def test_read_split_keeps_common_indices_in_index_order(ubna_env):
    images = {'color': {7: small(7), 1: small(1), 5: small(5), 3: small(3)},
              'segmentation': {9: small(9), 3: small(3), 1: small(1), 5: small(5)}}
    write_dataset(ubna_env, 'toy', images)
    files = read_split('toy', None, 'train', ['segmentation', 'color'])
    assert list(files) == ['segmentation', 'color']
    root = os.path.join(ubna_env, 'toy')
    assert files['color'] == [os.path.join(root, 'color', f'train_{i:05d}.png') for i in (1, 3, 5)]
    assert files['segmentation'] == [os.path.join(root, 'segmentation', f'train_{i:05d}.png') for i in (1, 3, 5)]
    assert read_split('toy', None, 'train', ['color'])['color'][-1].endswith('train_00007.png')


def test_read_split_named_split_and_category_subset(ubna_env):
    images = {'color': {0: small(1)}, 'color_right': {0: small(2)}, 'depth': {0: small(3)}}
    write_dataset(ubna_env, 'kitti', images, split='kitti_split', split_file='validation')
    files = read_split('kitti', 'kitti_split', 'validation', ['color_right'])
    assert files == {'color_right': [os.path.join(ubna_env, 'kitti', 'color_right', 'validation_00000.png')]}


def test_read_parameters(ubna_env):
    write_dataset(ubna_env, 'gta5', {'color': {0: small(1)}}, labels='gta5', labels_mode='fromrgb')
    parameters = read_parameters('gta5')
    assert parameters['labels'] == 'gta5' and parameters['labels_mode'] == 'fromrgb'


@pytest.mark.parametrize('damage, message', [
    (lambda d: os.rename(d, d + '_gone'), r"dataset folder .*toy of dataset 'toy' does not exist"),
    (lambda d: os.remove(os.path.join(d, 'basic_files.json')), 'has no basic_files.json'),
    (lambda d: os.remove(os.path.join(d, 'train.json')), r'split file .*train\.json does not exist'),
    (lambda d: os.remove(os.path.join(d, 'parameters.json')), r'parameters file .*parameters\.json does not exist'),
    (lambda d: open(os.path.join(d, 'train.json'), 'w').write('{"names": ['),
     r'train\.json is not valid JSON \(.* at line 1'),
    (lambda d: write_json(os.path.join(d, 'train.json'), {'names': [], 'files': []}),
     r"train\.json has no key 'positions'"),
    (lambda d: write_json(os.path.join(d, 'parameters.json'), {'labels': 'cityscapes'}),
     r"parameters\.json has no key 'labels_mode'"),
])
def test_read_split_bad_input(ubna_env, damage, message):
    write_dataset(ubna_env, 'toy', {'color': {0: small(1)}, 'segmentation': {0: small(1)}})
    damage(os.path.join(ubna_env, 'toy'))
    with pytest.raises(UserError, match=message):
        read_split('toy', None, 'train', ['color', 'segmentation'])


def test_read_split_missing_category_split_and_no_common_sample(ubna_env):
    write_dataset(ubna_env, 'toy', {'color': {0: small(1)}, 'segmentation': {1: small(1)}})
    with pytest.raises(UserError, match=r"has no data category 'color_right' \(it has: color, segmentation\)"):
        read_split('toy', None, 'train', ['color', 'color_right'])
    with pytest.raises(UserError, match=r"folder .*toy_full_split of split 'full_split' of dataset 'toy'"):
        read_split('toy', 'full_split', 'train', ['color'])
    with pytest.raises(UserError, match='no sample present in all of the categories color, segmentation'):
        read_split('toy', None, 'train', ['color', 'segmentation'])


def test_read_image_colour_conversions(tmp_path):
    stored = noise_image(RNG, 5, 7)
    cv2.imwrite(str(tmp_path / 'c.png'), stored)
    assert np.array_equal(read_image(str(tmp_path / 'c.png'), 'color_right'), stored[..., ::-1])
    assert np.array_equal(read_image(str(tmp_path / 'c.png'), 'segmentation'), stored)  # labels stay BGR
    deep = RNG.integers(0, 65536, (5, 7, 3), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / 'd.png'), deep)
    converted = read_image(str(tmp_path / 'd.png'), 'color')
    assert converted.dtype == np.uint8 and np.array_equal(converted, (deep[..., ::-1] // 256).astype(np.uint8))


def test_read_image_unreadable(tmp_path):
    (tmp_path / 'broken.png').write_bytes(b'not a png')
    with pytest.raises(UserError, match=r'broken\.png cannot be read'):
        read_image(str(tmp_path / 'broken.png'), 'color')


def test_dataset_reads_and_checks_files(ubna_env):
    images = {'color': {0: small(10), 1: small(20)}, 'segmentation': {0: small(1)[..., 0], 1: small(2)[..., 0]}}
    write_dataset(ubna_env, 'toy', images)
    files = read_split('toy', None, 'train', ['color', 'segmentation'])
    dataset = ImageDataset(files, lambda raw: dict(raw), 'toy', ('segmentation',))
    assert len(dataset) == 2
    sample = dataset[1]
    assert sample['domain'] == 'toy' and sample['purposes'] == ('segmentation',)
    assert (sample['color'] == 20).all() and sample['segmentation'].shape == (4, 6)

    os.remove(files['color'][1])
    with pytest.raises(UserError, match=r'color/train_00001\.png does not exist'):
        ImageDataset(files, dict, 'toy', ('segmentation',))


def test_dataset_size_mismatch_names_both_files(ubna_env):
    images = {'color': {0: small(10)}, 'segmentation': {0: np.zeros((4, 5), np.uint8)}}
    write_dataset(ubna_env, 'toy', images)
    dataset = ImageDataset(read_split('toy', None, 'train', ['color', 'segmentation']), dict, 'toy', ())
    with pytest.raises(UserError, match=r'color/train_00000\.png is 4x6 but .*segmentation/train_00000\.png is 4x5'):
        dataset[0]


def test_training_tolerates_a_size_mismatch_with_a_warning(ubna_env, capsys):
    """Real GTA-5 has labels of another size than their image; training resizes both, as the reference."""
    images = {'color': {0: small(10)}, 'segmentation': {0: np.zeros((4, 5), np.uint8)}}
    write_dataset(ubna_env, 'toy', images)
    dataset = ImageDataset(read_split('toy', None, 'train', ['color', 'segmentation']), dict, 'toy', (),
                           strict_sizes=False)
    assert dataset[0]['segmentation'].shape == (4, 5)
    assert 'warning: the image' in capsys.readouterr().err
