"""make_synthetic.py: layout, determinism and the domain shift of the synthetic two-domain data."""
import glob
import json
import os

import cv2
import numpy as np
import pytest

from data_download import make_synthetic as ms
from errors import UserError, run_cli

DRAWN_IDS = {ms.ROAD, ms.SIDEWALK, ms.BUILDING, ms.POLE, ms.SIGN, ms.VEGETATION, ms.TERRAIN, ms.SKY, ms.PERSON,
             ms.CAR}
CITYSCAPES_TO_TRAIN = {7: 0, 8: 1, 11: 2, 17: 5, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 26: 13}


@pytest.fixture(scope='module')
def synthetic(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('synthetic'))
    counts = ms.make_synthetic(root, 64, 128, num_source=24, num_target_train=24, num_target_val=3, seed=5)
    return root, counts


def files_under(root):
    return {os.path.relpath(p, root): open(p, 'rb').read()
            for p in sorted(glob.glob(os.path.join(root, '**', '*'), recursive=True)) if os.path.isfile(p)}


def label_ids_from_palette_png(path):
    """Cityscapes ids of a GTA-5 style colour label read the way the dataset layer reads it (cv2, BGR)."""
    bgr = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    ids = np.full(bgr.shape[:2], 255, np.uint8)
    for label in DRAWN_IDS:
        ids[(bgr[:, :, ::-1] == ms.PALETTE[label]).all(2)] = label
    return ids


def test_layout_and_counts(synthetic):
    root, counts = synthetic
    assert counts == {'gta5_full_split': {'train': 24}, 'cityscapes': {'train': 24, 'validation': 3},
                      'cityscapes_sequence': {'train': 24, 'validation': 3}}
    assert len(glob.glob(os.path.join(root, 'gta5', 'images', '*.png'))) == 24
    assert len(glob.glob(os.path.join(root, 'gta5', 'labels', '*.png'))) == 24
    for kind in ('leftImg8bit', 'rightImg8bit', 'gtFine'):
        assert len(glob.glob(os.path.join(root, 'cityscapes', kind, 'val', '*', '*.png'))) == 3
    for kind in ('leftImg8bit_sequence', 'rightImg8bit_sequence'):
        assert len(glob.glob(os.path.join(root, 'cityscapes_sequence', kind, 'train', '*', '*.png'))) == 24
    for name in ('gta5/parameters.json', 'gta5_full_split/train.json', 'cityscapes/validation.json',
                 'cityscapes_sequence/train.json'):
        assert os.path.isfile(os.path.join(root, name))
    params = json.load(open(os.path.join(root, 'gta5', 'parameters.json')))
    assert (params['labels'], params['labels_mode']) == ('gta5', 'fromrgb')
    names = json.load(open(os.path.join(root, 'cityscapes', 'train.json')))['names']
    assert names == ['color', 'color_right', 'segmentation']


def test_images_and_labels(synthetic):
    root, _ = synthetic
    image = cv2.imread(os.path.join(root, 'gta5', 'images', '00000.png'), cv2.IMREAD_UNCHANGED)
    assert image.shape == (64, 128, 3) and image.dtype == np.uint8
    source_ids = np.concatenate([label_ids_from_palette_png(p).ravel()
                                 for p in sorted(glob.glob(os.path.join(root, 'gta5', 'labels', '*.png')))])
    assert set(np.unique(source_ids)) <= DRAWN_IDS  # every label pixel has a palette colour
    assert {ms.ROAD, ms.SKY, ms.BUILDING, ms.CAR, ms.SIDEWALK} <= set(np.unique(source_ids))
    target = sorted(glob.glob(os.path.join(root, 'cityscapes', 'gtFine', 'train', '*', '*_labelIds.png')))
    target_label = cv2.imread(target[0], cv2.IMREAD_UNCHANGED)
    assert target_label.shape == (64, 128) and target_label.dtype == np.uint8
    target_ids = np.concatenate([cv2.imread(p, cv2.IMREAD_UNCHANGED).ravel() for p in target])
    assert set(np.unique(target_ids)) <= DRAWN_IDS
    left = cv2.imread(glob.glob(os.path.join(root, 'cityscapes', 'leftImg8bit', 'val', '*', '*.png'))[0])
    right = cv2.imread(glob.glob(os.path.join(root, 'cityscapes', 'rightImg8bit', 'val', '*', '*.png'))[0])
    assert left.shape == right.shape == (64, 128, 3) and not np.array_equal(left, right)


def test_same_layout_distribution_but_shifted_appearance(synthetic):
    root, _ = synthetic
    source_ids = np.stack([label_ids_from_palette_png(p)
                           for p in sorted(glob.glob(os.path.join(root, 'gta5', 'labels', '*.png')))])
    target_ids = np.stack([cv2.imread(p, cv2.IMREAD_UNCHANGED) for p in
                           sorted(glob.glob(os.path.join(root, 'cityscapes', 'gtFine', 'train', '*', '*.png')))])
    for label in (ms.ROAD, ms.SKY, ms.BUILDING):
        assert abs((source_ids == label).mean() - (target_ids == label).mean()) < 0.08
    source = np.stack([cv2.imread(p) for p in sorted(glob.glob(os.path.join(root, 'gta5', 'images', '*.png')))])
    target = np.stack([cv2.imread(p) for p in
                       sorted(glob.glob(os.path.join(root, 'cityscapes', 'leftImg8bit', 'train', '*', '*.png')))])
    source_mean, target_mean = source.reshape(-1, 3).mean(0), target.reshape(-1, 3).mean(0)
    assert np.abs(source_mean - target_mean).max() > 25  # a clear colour cast
    assert target.reshape(-1, 3).std(0).mean() < 0.75 * source.reshape(-1, 3).std(0).mean()  # lower contrast


def test_same_seed_gives_identical_files_and_another_seed_differs(tmp_path):
    for folder, seed in (('a', 1), ('b', 1), ('c', 2)):
        ms.make_synthetic(str(tmp_path / folder), 32, 64, num_source=2, num_target_train=2, num_target_val=1, seed=seed)
    first, second, third = (files_under(str(tmp_path / f)) for f in 'abc')
    assert first == second
    assert first.keys() == third.keys() and first != third


@pytest.mark.parametrize('size', [(60, 128), (64, 100), (0, 64)])
def test_size_must_be_a_multiple_of_32(tmp_path, size):
    with pytest.raises(UserError, match='multiples of 32'):
        ms.make_synthetic(str(tmp_path), *size, num_source=1, num_target_train=1, num_target_val=1)


def test_cli(tmp_path, capsys):
    out = str(tmp_path / 'data')
    assert run_cli(ms.main, ['--out', out, '--height', '32', '--width', '64', '--num-source', '2',
                    '--num-target-train', '1', '--num-target-val', '1']) == 0
    assert 'gta5_full_split: train 2' in capsys.readouterr().out
    assert run_cli(ms.main, ['--out', out, '--height', '33']) == 2
    assert 'multiples of 32' in capsys.readouterr().err


def test_loaders_read_the_synthetic_domains(synthetic, monkeypatch):
    from dataloader.loaders import adaptation_dataset, training_dataset, validation_dataset
    root, _ = synthetic
    monkeypatch.setenv('UBNA_DIR_DATASET', root)
    drawn_train_ids = {CITYSCAPES_TO_TRAIN[label] for label in DRAWN_IDS}
    source = training_dataset('gta5_train', (64, 128), (32, 64))
    assert len(source) == 24
    for index in range(3):
        # every palette colour decodes to a drawn class, none to 'ignore'
        assert set(source[index]['label'].unique().tolist()) <= drawn_train_ids
    validation = validation_dataset('cityscapes_validation', (64, 128))
    assert len(validation) == 3
    stored = cv2.imread(sorted(glob.glob(os.path.join(root, 'cityscapes', 'gtFine', 'val', '*', '*.png')))[0],
                        cv2.IMREAD_UNCHANGED)
    expected = np.vectorize(CITYSCAPES_TO_TRAIN.get)(stored)
    np.testing.assert_array_equal(validation[0]['label'].numpy(), expected)
    target = adaptation_dataset('cityscapes_sequence_train', (64, 128), (64, 128))
    assert len(target) == 2 * 24 and tuple(target[30]['input'].shape) == (3, 40, 128)


def test_source_look_keeps_layout_and_drops_the_shift(synthetic, tmp_path):
    root, _ = synthetic
    plain = str(tmp_path / 'plain')
    ms.make_synthetic(plain, 64, 128, num_source=24, num_target_train=24, num_target_val=3, seed=5, shifted=False)
    label = os.path.join('cityscapes', 'gtFine', 'val', 'velden', 'velden_000000_000019_gtFine_labelIds.png')
    assert open(os.path.join(root, label), 'rb').read() == open(os.path.join(plain, label), 'rb').read()

    def mean_and_contrast(folder, pattern):
        pixels = np.stack([cv2.imread(p) for p in sorted(glob.glob(os.path.join(folder, pattern)))]).astype(float)
        return pixels.mean((0, 1, 2)), pixels.std((0, 1, 2)).mean()  # mean per-channel contrast

    source_mean, source_std = mean_and_contrast(root, 'gta5/images/*.png')
    plain_mean, plain_std = mean_and_contrast(plain, 'cityscapes/leftImg8bit/train/*/*.png')
    shifted_mean, shifted_std = mean_and_contrast(root, 'cityscapes/leftImg8bit/train/*/*.png')
    assert np.abs(plain_mean - source_mean).max() < 10 < np.abs(shifted_mean - source_mean).max()
    assert abs(plain_std - source_std) < 0.1 * source_std and shifted_std < 0.8 * source_std
