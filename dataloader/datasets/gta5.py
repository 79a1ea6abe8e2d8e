"""GTA-5 (palette labels): the training loader gta5_train."""
import os

from dataloader.datasets import DatasetEntry, Loader, register
from dataloader.index import Category, list_files, parameters, require_dir, single_frames, write_index


def build_gta5(root: str) -> dict:
    """GTA-5 in <root>/gta5: images/<name>.png and labels/<name>.png (palette/colour labels, read `fromrgb`).
    Every image goes to gta5_full_split/train.json.
    """
    dataset_dir = os.path.join(root, 'gta5')
    require_dir(os.path.join(dataset_dir, 'images'))
    require_dir(os.path.join(dataset_dir, 'labels'))
    categories = [Category('color', single_frames(list_files(dataset_dir, 'images', '.png'))),
                  Category('segmentation', single_frames(list_files(dataset_dir, 'labels', '.png')))]
    return write_index(dataset_dir, parameters('gta5', 'fromrgb', ['full_split']), categories,
                       lambda frame: 'train', split_dir=os.path.join(root, 'gta5_full_split'))


register(DatasetEntry(
    name='gta5', labels='gta5',
    loaders=(Loader('gta5_train', 'training', 'train', split='full_split'),),
    build_index=build_gta5))
