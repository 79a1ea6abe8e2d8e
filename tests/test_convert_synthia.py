"""convert_segmentation_synthia.py: 16-bit three-channel SYNTHIA labels → single-channel uint8 ids."""
import os

import cv2
import numpy as np
import pytest

from data_download import convert_segmentation_synthia as cs
from errors import UserError, run_cli


def write_synthia_label(path, ids, seed=0):
    """A SYNTHIA-style label PNG: uint16, class ids in the file's R channel, instance ids in G, B zero."""
    rng = np.random.default_rng(seed)
    image = np.zeros(ids.shape + (3,), np.uint16)
    image[:, :, 2] = ids
    image[:, :, 1] = rng.integers(0, 4000, ids.shape)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(str(path), image)


def test_converter_writes_the_r_channel_ids_as_uint8_single_channel(tmp_path):
    labels = tmp_path / 'synthia' / 'RAND_CITYSCAPES' / 'GT' / 'LABELS'
    ids = np.random.default_rng(1).integers(0, 23, (6, 10)).astype(np.uint16)
    write_synthia_label(labels / '0000000.png', ids)
    write_synthia_label(labels / '0000001.png', ids[::-1].copy())
    assert cs.convert_synthia_labels(str(tmp_path / 'synthia')) == 2
    out = cv2.imread(str(tmp_path / 'synthia' / 'RAND_CITYSCAPES' / 'GT_1_channel' / 'LABELS' / '0000000.png'),
                     cv2.IMREAD_UNCHANGED)
    assert out.dtype == np.uint8 and out.shape == ids.shape
    np.testing.assert_array_equal(out, ids)


def test_missing_label_folder_is_a_user_error_naming_it(tmp_path):
    with pytest.raises(UserError, match=os.path.join('GT', 'LABELS')):
        cs.convert_synthia_labels(str(tmp_path / 'synthia'))


def test_single_channel_input_is_a_user_error_naming_the_file(tmp_path):
    labels = tmp_path / 'synthia' / 'RAND_CITYSCAPES' / 'GT' / 'LABELS'
    labels.mkdir(parents=True)
    cv2.imwrite(str(labels / 'grey.png'), np.zeros((4, 4), np.uint8))
    with pytest.raises(UserError, match='grey.png'):
        cs.convert_synthia_labels(str(tmp_path / 'synthia'))


def test_ids_above_255_are_a_user_error(tmp_path):
    labels = tmp_path / 'synthia' / 'RAND_CITYSCAPES' / 'GT' / 'LABELS'
    write_synthia_label(labels / 'big.png', np.full((3, 3), 300, np.uint16))
    with pytest.raises(UserError, match='above 255'):
        cs.convert_synthia_labels(str(tmp_path / 'synthia'))


def test_cli_converts_under_root(tmp_path, capsys):
    write_synthia_label(tmp_path / 'synthia' / 'RAND_CITYSCAPES' / 'GT' / 'LABELS' / 'a.png',
                        np.ones((2, 2), np.uint16))
    assert run_cli(cs.main, ['--root', str(tmp_path)]) == 0
    assert 'converted 1' in capsys.readouterr().out
    assert run_cli(cs.main, ['--root', str(tmp_path / 'nowhere')]) == 2
