"""KITTI 2015 semantics (Cityscapes label ids): the validation loader kitti_2015_train."""
import os

from dataloader.datasets import DatasetEntry, Loader, register
from dataloader.index import Category, Frame, list_files, parameters, require_dir, stem, write_index
from errors import UserError


def kitti_2015_frames(paths: list) -> list:
    """Frames named <scene>_<frame>.png; the scene is the sequence."""
    frames = []
    for path in paths:
        fields = stem(path).split('_')
        if len(fields) != 2 or not fields[1].isdigit():
            raise UserError(f"file {path} is not named <scene>_<frame>.png like KITTI 2015.")
        frames.append(Frame(fields[0], int(fields[1]), path))
    return frames


def build_kitti_2015(root: str) -> dict:
    """KITTI 2015 semantics (data_semantics.zip unpacked) in <root>/kitti_2015:
    training/image_2/<scene>_10.png and training/semantic/<scene>_10.png (Cityscapes label ids).
    Every labelled image goes to kitti_2015/train.json (the split kitti_2015_train reads).
    """
    dataset_dir = os.path.join(root, 'kitti_2015')
    require_dir(os.path.join(dataset_dir, 'training', 'image_2'))
    require_dir(os.path.join(dataset_dir, 'training', 'semantic'))
    categories = [Category('color', kitti_2015_frames(list_files(dataset_dir, 'training/image_2', '.png'))),
                  Category('segmentation', kitti_2015_frames(list_files(dataset_dir, 'training/semantic', '.png')))]
    return write_index(dataset_dir, parameters('cityscapes', 'fromid', []), categories, lambda frame: 'train')


register(DatasetEntry(
    name='kitti_2015', labels='cityscapes',
    loaders=(Loader('kitti_2015_train', 'validation', 'train', size=(320, 1024)),),
    build_index=build_kitti_2015))
