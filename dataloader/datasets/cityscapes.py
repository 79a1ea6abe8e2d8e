"""Cityscapes (fine annotations): the training loader cityscapes_train and the validation loader
cityscapes_validation."""
import os

from dataloader.datasets import DatasetEntry, Loader, register
from dataloader.index import Category, cityscapes_frames, cityscapes_split, parameters, require_dir, write_index


def build_cityscapes(root: str) -> dict:
    """Cityscapes (fine annotations) in <root>/cityscapes:
    leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png,
    gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png and optionally
    rightImg8bit/{train,val,test}/<city>/..._rightImg8bit.png. Splits train/validation/test.
    """
    dataset_dir = os.path.join(root, 'cityscapes')
    require_dir(os.path.join(dataset_dir, 'leftImg8bit'))
    require_dir(os.path.join(dataset_dir, 'gtFine'))
    categories = [Category('color', cityscapes_frames(dataset_dir, 'leftImg8bit', '_leftImg8bit.png')),
                  Category('color_right', cityscapes_frames(dataset_dir, 'rightImg8bit', '_rightImg8bit.png')),
                  Category('segmentation', cityscapes_frames(dataset_dir, 'gtFine', '_gtFine_labelIds.png'))]
    return write_index(dataset_dir, parameters('cityscapes', 'fromid', []), categories, cityscapes_split)


register(DatasetEntry(
    name='cityscapes', labels='cityscapes',
    loaders=(Loader('cityscapes_train', 'training', 'train'),
             Loader('cityscapes_validation', 'validation', 'validation', size=(512, 1024))),
    build_index=build_cityscapes))
