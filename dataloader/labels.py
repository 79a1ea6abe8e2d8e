"""Label tables (spec §3) and lookup-table conversion of label images to train ids (255 = ignore)."""
from collections import namedtuple
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from errors import UserError

Label = namedtuple('Label', 'name id train_id color')

IGNORE_ID = 255
NUM_CLASSES = 19

# Cityscapes order decides shared colours in `fromrgb`; GTA-5 uses the same table.
CITYSCAPES_LABELS = (
    Label('unlabeled', 0, 255, (0, 0, 0)),
    Label('ego vehicle', 1, 255, (0, 0, 0)),
    Label('rectification border', 2, 255, (0, 0, 0)),
    Label('out of roi', 3, 255, (0, 0, 0)),
    Label('static', 4, 255, (0, 0, 0)),
    Label('dynamic', 5, 255, (111, 74, 0)),
    Label('ground', 6, 255, (81, 0, 81)),
    Label('road', 7, 0, (128, 64, 128)),
    Label('sidewalk', 8, 1, (244, 35, 232)),
    Label('parking', 9, 255, (250, 170, 160)),
    Label('rail track', 10, 255, (230, 150, 140)),
    Label('building', 11, 2, (70, 70, 70)),
    Label('wall', 12, 3, (102, 102, 156)),
    Label('fence', 13, 4, (190, 153, 153)),
    Label('guard rail', 14, 255, (180, 165, 180)),
    Label('bridge', 15, 255, (150, 100, 100)),
    Label('tunnel', 16, 255, (150, 120, 90)),
    Label('pole', 17, 5, (153, 153, 153)),
    Label('polegroup', 18, 255, (153, 153, 153)),
    Label('traffic light', 19, 6, (250, 170, 30)),
    Label('traffic sign', 20, 7, (220, 220, 0)),
    Label('vegetation', 21, 8, (107, 142, 35)),
    Label('terrain', 22, 9, (152, 251, 152)),
    Label('sky', 23, 10, (70, 130, 180)),
    Label('person', 24, 11, (220, 20, 60)),
    Label('rider', 25, 12, (255, 0, 0)),
    Label('car', 26, 13, (0, 0, 142)),
    Label('truck', 27, 14, (0, 0, 70)),
    Label('bus', 28, 15, (0, 60, 100)),
    Label('caravan', 29, 255, (0, 0, 90)),
    Label('trailer', 30, 255, (0, 0, 110)),
    Label('train', 31, 16, (0, 80, 100)),
    Label('motorcycle', 32, 17, (0, 0, 230)),
    Label('bicycle', 33, 18, (119, 11, 32)),
    Label('license plate', -1, 255, (0, 0, 142)),
)

SYNTHIA_LABELS = (
    Label('unlabeled', 0, 255, (0, 0, 0)),
    Label('road', 3, 0, (128, 64, 128)),
    Label('road_work', 14, 0, (128, 64, 64)),
    Label('sidewalk', 4, 1, (244, 35, 232)),
    Label('parking', 13, 255, (250, 170, 160)),
    Label('lane_marking', 22, 0, (102, 102, 156)),
    Label('building', 2, 2, (70, 70, 70)),
    Label('wall', 21, 3, (102, 102, 156)),
    Label('fence', 5, 4, (190, 153, 153)),
    Label('traffic light', 15, 6, (250, 170, 30)),
    Label('traffic sign', 9, 7, (220, 220, 0)),
    Label('pole', 7, 5, (153, 153, 153)),
    Label('vegetation', 6, 8, (107, 142, 35)),
    Label('terrain', 16, 9, (152, 251, 152)),
    Label('sky', 1, 10, (70, 130, 180)),
    Label('person', 10, 11, (220, 20, 60)),
    Label('rider', 17, 12, (255, 0, 0)),
    Label('car', 8, 13, (0, 0, 142)),
    Label('truck', 18, 14, (0, 0, 70)),
    Label('bus', 19, 15, (0, 60, 100)),
    Label('train', 20, 16, (0, 80, 100)),
    Label('motorcycle', 12, 17, (0, 0, 230)),
    Label('bicycle', 11, 18, (119, 11, 32)),
)

LABEL_TABLES = {'cityscapes': CITYSCAPES_LABELS, 'gta5': CITYSCAPES_LABELS, 'synthia': SYNTHIA_LABELS}
LABELS_MODES = ('fromid', 'fromrgb', 'fromtrainid', 'fromid_third_channel')


def _first_label_per_train_id(table) -> dict:
    first = {}
    for label in table:
        first.setdefault(label.train_id, label)
    return first


_FIRST_CITYSCAPES = _first_label_per_train_id(CITYSCAPES_LABELS)
CLASS_NAMES = tuple(_FIRST_CITYSCAPES[train_id].name for train_id in range(NUM_CLASSES))
TRAIN_ID_COLORS = np.zeros((256, 3), np.uint8)  # train ids 19 and 255 (and all others) stay black
for _train_id in range(NUM_CLASSES):
    TRAIN_ID_COLORS[_train_id] = _FIRST_CITYSCAPES[_train_id].color


def colorize(train_ids: np.ndarray) -> np.ndarray:
    """RGB visualisation (H×W×3 uint8) of a train-id image; ids outside 0..255 are black."""
    ids = np.asarray(train_ids)
    ids = np.where((ids >= 0) & (ids < 256), ids, IGNORE_ID)
    return TRAIN_ID_COLORS[ids]


def _color_code(red, green, blue) -> np.ndarray:
    """One 24-bit integer per colour, so that a colour lookup is a single table read."""
    return (np.asarray(red, np.uint32) << 16) | (np.asarray(green, np.uint32) << 8) | np.asarray(blue, np.uint32)


def _id_table(table) -> np.ndarray:
    lut = np.full(1 << 16, IGNORE_ID, np.uint8)  # covers uint8 and uint16 label images
    for label in table:
        if label.id >= 0:
            lut[label.id] = label.train_id
    return lut


def _color_table(table) -> np.ndarray:
    lut = np.full(1 << 24, IGNORE_ID, np.uint8)
    for label in reversed(table):  # reversed so that the first label with a shared colour wins
        lut[_color_code(*label.color)] = label.train_id
    return lut


def _train_id_table() -> np.ndarray:
    lut = np.full(1 << 16, IGNORE_ID, np.uint8)
    lut[:256] = np.arange(256)
    return lut


@dataclass(frozen=True)
class PaletteLabel:
    """A palette label image as stored (GTA-5's labels): 8-bit indices (H×W) and the BGR colour of each index
    (256×3), which is what OpenCV would expand every pixel to. Cropped and converted as indices: one byte per
    pixel, and a conversion of 256 colours."""
    indices: np.ndarray
    colors: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return (*self.indices.shape, 3)

    def take(self, positions: np.ndarray, axis: int) -> 'PaletteLabel':
        """The rows (axis 0) or columns (axis 1) at `positions`, as numpy's take."""
        return PaletteLabel(self.indices.take(positions, axis=axis), self.colors)

    def expanded(self) -> np.ndarray:
        """The H×W×3 BGR image OpenCV reads from the file."""
        return np.take(self.colors, self.indices, axis=0)


class LabelConverter:
    """Maps a label image as read by OpenCV (unchanged, BGR channel order), or a PaletteLabel, to uint8 train ids."""

    def __init__(self, labels_mode: str, lut: np.ndarray):
        self.labels_mode = labels_mode
        self.lut = lut

    def __call__(self, label: np.ndarray | PaletteLabel) -> np.ndarray:
        if isinstance(label, PaletteLabel):  # a per-pixel map: convert the palette, then look up every index
            return np.take(self._convert(label.colors[np.newaxis], label.shape)[0], label.indices)
        return self._convert(label, label.shape)

    def _convert(self, label: np.ndarray, shape: tuple) -> np.ndarray:
        if self.labels_mode == 'fromrgb':
            bgr = self._channels(label, shape, 'an 8-bit colour label image')
            return np.take(self.lut, _color_code(bgr[..., 2], bgr[..., 1], bgr[..., 0]))
        if self.labels_mode == 'fromid_third_channel':
            ids = self._channels(label, shape, 'a label image with at least three channels')[..., 2]
        elif label.ndim == 2:
            ids = label
        else:
            raise UserError(f"labels_mode '{self.labels_mode}' expects a single-channel label image, "
                            f'got shape {shape}')
        if ids.dtype not in (np.uint8, np.uint16):
            raise UserError(f'label ids must be 8- or 16-bit integers, got {ids.dtype}')
        return np.take(self.lut, ids)

    def _channels(self, label: np.ndarray, shape: tuple, what: str) -> np.ndarray:
        if label.ndim != 3 or label.shape[2] < 3 or (self.labels_mode == 'fromrgb' and label.dtype != np.uint8):
            raise UserError(f"labels_mode '{self.labels_mode}' expects {what}, got shape {shape} "
                            f'of {label.dtype}')
        return label


@lru_cache(maxsize=None)  # one (up to 16 MB) table per table and mode, shared by all datasets
def label_converter(labels_name: str, labels_mode: str) -> LabelConverter:
    """A lookup-table converter for a label table ('cityscapes', 'gta5', 'synthia') and labels mode."""
    if labels_name not in LABEL_TABLES:
        raise UserError(f"unknown label table '{labels_name}'; valid names: {', '.join(LABEL_TABLES)}")
    if labels_mode not in LABELS_MODES:
        raise UserError(f"unknown labels_mode '{labels_mode}'; valid modes: {', '.join(LABELS_MODES)}")
    table = LABEL_TABLES[labels_name]
    if labels_mode == 'fromrgb':
        return LabelConverter(labels_mode, _color_table(table))
    if labels_mode == 'fromtrainid':
        return LabelConverter(labels_mode, _train_id_table())
    return LabelConverter(labels_mode, _id_table(table))
