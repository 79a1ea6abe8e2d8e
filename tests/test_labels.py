"""Label tables and lookup-table conversion (spec §3, §2 label modes)."""
import time

import cv2
import numpy as np
import pytest

from dataloader.dataset import read_image
from dataloader.labels import (CITYSCAPES_LABELS, CLASS_NAMES, TRAIN_ID_COLORS, PaletteLabel, colorize,
                               label_converter)
from errors import UserError
from data_download.tiny_datasets import PALETTE_COLORS, palette_label

CITYSCAPES_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
                        25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
SYNTHIA_TRAIN_IDS = {3: 0, 14: 0, 22: 0, 4: 1, 13: 255, 2: 2, 21: 3, 5: 4, 15: 6, 9: 7, 7: 5, 6: 8, 16: 9, 1: 10,
                     10: 11, 17: 12, 8: 13, 18: 14, 19: 15, 20: 16, 12: 17, 11: 18, 0: 255}


def bgr(*rgb_colors) -> np.ndarray:
    """A 1×N label image holding the given RGB colours in OpenCV's BGR order."""
    return np.array([[color[::-1] for color in rgb_colors]], np.uint8)


def test_class_names_and_colors():
    assert len(CLASS_NAMES) == 19
    assert CLASS_NAMES[0] == 'road' and CLASS_NAMES[5] == 'pole' and CLASS_NAMES[18] == 'bicycle'
    assert TRAIN_ID_COLORS.shape == (256, 3) and TRAIN_ID_COLORS.dtype == np.uint8
    assert tuple(TRAIN_ID_COLORS[0]) == (128, 64, 128)
    assert tuple(TRAIN_ID_COLORS[13]) == (0, 0, 142)
    assert tuple(TRAIN_ID_COLORS[19]) == (0, 0, 0) and tuple(TRAIN_ID_COLORS[255]) == (0, 0, 0)


def test_colorize():
    ids = np.array([[0, 13], [19, 255]], np.int64)
    out = colorize(ids)
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8
    assert tuple(out[0, 0]) == (128, 64, 128) and tuple(out[0, 1]) == (0, 0, 142)
    assert not out[1].any()
    assert not colorize(np.array([[-1, 300]])).any()


@pytest.mark.parametrize('dtype', [np.uint8, np.uint16])
def test_fromid_cityscapes_table(dtype):
    convert = label_converter('cityscapes', 'fromid')
    ids = np.arange(256, dtype=dtype)[None, :]
    out = convert(ids)
    assert out.dtype == np.uint8 and out.shape == ids.shape
    expected = [CITYSCAPES_TRAIN_IDS.get(i, 255) for i in range(256)]
    assert out[0].tolist() == expected


def test_fromid_unknown_ids_are_ignored_not_nearest():
    convert = label_converter('gta5', 'fromid')
    assert convert(np.array([[34, 35, 1000, 65535]], np.uint16)).tolist() == [[255, 255, 255, 255]]


def test_fromid_synthia_table():
    convert = label_converter('synthia', 'fromid')
    out = convert(np.arange(30, dtype=np.uint8)[None, :])[0]
    assert out.tolist() == [SYNTHIA_TRAIN_IDS.get(i, 255) for i in range(30)]


def test_fromrgb_shared_colours_resolve_to_first_label():
    convert = label_converter('cityscapes', 'fromrgb')
    out = convert(bgr((0, 0, 0), (0, 0, 142), (153, 153, 153), (128, 64, 128), (1, 2, 3), (119, 11, 32)))
    assert out.tolist() == [[255, 13, 5, 0, 255, 18]]


def test_fromrgb_matches_first_label_in_table_order():
    convert = label_converter('gta5', 'fromrgb')
    colors = [label.color for label in CITYSCAPES_LABELS]
    first = {}
    for label in CITYSCAPES_LABELS:
        first.setdefault(label.color, label.train_id % 256)
    assert convert(bgr(*colors))[0].tolist() == [first[color] for color in colors]


def test_fromrgb_synthia_lane_marking_wins_over_wall():
    assert label_converter('synthia', 'fromrgb')(bgr((102, 102, 156)))[0, 0] == 0


def test_fromrgb_on_palette_png_read_unchanged(tmp_path):
    rng = np.random.default_rng(0)
    image = palette_label(rng, 16, 24)
    path = str(tmp_path / 'label.png')
    image.save(path)
    raw = read_image(path, 'segmentation')
    assert isinstance(raw, PaletteLabel) and raw.shape == (16, 24, 3)
    opencv = cv2.imread(path, cv2.IMREAD_UNCHANGED)  # the palette expanded, in BGR order
    assert np.array_equal(raw.expanded(), opencv)
    expected = label_converter('gta5', 'fromrgb')(bgr(*PALETTE_COLORS))[0][np.asarray(image)]
    assert np.array_equal(label_converter('gta5', 'fromrgb')(raw), expected)
    assert np.array_equal(label_converter('gta5', 'fromrgb')(opencv), expected)
    rows, cols = np.array([3, 3, 0, 15]), np.array([23, 1, 2])
    assert np.array_equal(raw.take(rows, axis=0).take(cols, axis=1).expanded(), opencv[rows][:, cols])
    with pytest.raises(UserError, match=r"labels_mode 'fromid' expects a single-channel label image, got shape "
                                        r'\(16, 24, 3\)'):
        label_converter('cityscapes', 'fromid')(raw)


def test_palette_with_transparency_is_read_by_opencv(tmp_path):
    image = palette_label(np.random.default_rng(0), 8, 8)
    path = str(tmp_path / 'label.png')
    image.save(path, transparency=0)
    raw = read_image(path, 'segmentation')
    assert isinstance(raw, np.ndarray) and np.array_equal(raw, cv2.imread(path, cv2.IMREAD_UNCHANGED))
    assert raw.shape == (8, 8, 4)


def test_truncated_palette_label_is_one_sentence(tmp_path):
    path = str(tmp_path / 'label.png')
    palette_label(np.random.default_rng(0), 64, 64).save(path)
    with open(path, 'rb') as file:
        head = file.read()[:200]
    with open(path, 'wb') as file:
        file.write(head)
    with pytest.raises(UserError, match=r'the image file .*label.png cannot be read \(missing, empty, truncated'):
        read_image(path, 'segmentation')


def test_fromid_third_channel_reads_red_channel_of_file(tmp_path):
    path = str(tmp_path / 'label.png')
    stored = np.zeros((4, 5, 3), np.uint8)
    stored[..., 2] = 26  # OpenCV writes index 2 as the file's R channel
    stored[..., 0] = 7
    cv2.imwrite(path, stored)
    out = label_converter('cityscapes', 'fromid_third_channel')(read_image(path, 'segmentation'))
    assert (out == 13).all()


def test_fromtrainid_keeps_values_and_ignores_out_of_range():
    convert = label_converter('cityscapes', 'fromtrainid')
    assert convert(np.array([[0, 18, 19, 255, 300]], np.uint16)).tolist() == [[0, 18, 19, 255, 255]]


def test_bad_names_and_shapes():
    with pytest.raises(UserError, match="valid names: cityscapes, gta5, synthia"):
        label_converter('mapillary', 'fromid')
    with pytest.raises(UserError, match='valid modes: fromid, fromrgb, fromtrainid, fromid_third_channel'):
        label_converter('cityscapes', 'fromcolor')
    with pytest.raises(UserError, match='single-channel'):
        label_converter('cityscapes', 'fromid')(np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(UserError, match='colour label'):
        label_converter('cityscapes', 'fromrgb')(np.zeros((2, 2), np.uint8))


def test_conversion_is_a_fast_lookup():
    rng = np.random.default_rng(0)
    colors = bgr(*PALETTE_COLORS)[0]
    big = colors[rng.integers(0, len(colors), (1024, 2048))]
    convert = label_converter('gta5', 'fromrgb')
    convert(big)
    start = time.perf_counter()
    convert(big)
    assert time.perf_counter() - start < 0.25
