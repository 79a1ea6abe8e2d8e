"""Dark Zurich (night, Cityscapes label ids): the validation loader dark_zurich_validation."""
import os

from dataloader.datasets import DatasetEntry, Loader, register
from dataloader.index import Category, numbered_frames, parameters, require_dir, write_index

NIGHT_VAL = 'val/night'  # the labelled part of Dark Zurich


def build_dark_zurich(root: str) -> dict:
    """Dark Zurich in <root>/dark_zurich: rgb_anon/val/night/<seq>/<name>_rgb_anon.png and
    gt/val/night/<seq>/<name>_gt_labelIds.png, <name> being <seq>_frame_<n>. Every labelled night image of val
    goes to dark_zurich/validation.json (other folders are not indexed).
    """
    dataset_dir = os.path.join(root, 'dark_zurich')
    require_dir(os.path.join(dataset_dir, 'rgb_anon', *NIGHT_VAL.split('/')))
    require_dir(os.path.join(dataset_dir, 'gt', *NIGHT_VAL.split('/')))
    categories = [Category('color', numbered_frames(dataset_dir, f'rgb_anon/{NIGHT_VAL}', '_rgb_anon.png')),
                  Category('segmentation', numbered_frames(dataset_dir, f'gt/{NIGHT_VAL}', '_gt_labelIds.png'))]
    return write_index(dataset_dir, parameters('cityscapes', 'fromid', []), categories, lambda frame: 'validation')


register(DatasetEntry(
    name='dark_zurich', labels='cityscapes',
    loaders=(Loader('dark_zurich_validation', 'validation', 'validation', size=(544, 960)),),
    build_index=build_dark_zurich))
