"""Cityscapes video sequences (no labels): the adaptation loader cityscapes_sequence_train."""
import os

from dataloader.datasets import DatasetEntry, Loader, register
from dataloader.index import Category, cityscapes_frames, cityscapes_split, parameters, require_dir, write_index


def build_cityscapes_sequence(root: str) -> dict:
    """Cityscapes video sequences in <root>/cityscapes_sequence:
    leftImg8bit_sequence/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png and
    rightImg8bit_sequence/{train,val,test}/<city>/<city>_<seq>_<frame>_rightImg8bit.png.
    Splits train/validation/test (those present).
    """
    dataset_dir = os.path.join(root, 'cityscapes_sequence')
    require_dir(os.path.join(dataset_dir, 'leftImg8bit_sequence'))
    require_dir(os.path.join(dataset_dir, 'rightImg8bit_sequence'))
    categories = [
        Category('color', cityscapes_frames(dataset_dir, 'leftImg8bit_sequence', '_leftImg8bit.png')),
        Category('color_right', cityscapes_frames(dataset_dir, 'rightImg8bit_sequence', '_rightImg8bit.png'))]
    return write_index(dataset_dir, parameters('cityscapes', 'fromid', []), categories, cityscapes_split)


def sequence_geometry(resize_hw: tuple[int, int], crop_at_offsets: bool) -> tuple:
    """As in the reference: resize to (h*568//512, w*1092//1024) and crop (h*320//512, w) at the top-left corner
    (quirk: the reference passes offsets (h*32//512, w*33//1024) but ignores them; crop_at_offsets uses them)."""
    height, width = resize_hw
    offset = (height * 32 // 512, width * 33 // 1024) if crop_at_offsets else (0, 0)
    return (height * 568 // 512, width * 1092 // 1024), (height * 320 // 512, width), offset


register(DatasetEntry(
    name='cityscapes_sequence', labels=None,
    loaders=(Loader('cityscapes_sequence_train', 'adaptation', 'train', geometry=sequence_geometry),),
    build_index=build_cityscapes_sequence))
