"""ACDC (adverse conditions, Cityscapes label ids): per condition (fog, night, rain, snow) the loaders
acdc_<condition>_train and acdc_<condition>_validation, each a validation loader and an adaptation loader."""
import os

from dataloader.datasets import DatasetEntry, Loader, register
from dataloader.index import CITYSCAPES_SPLITS, require_dir, write_rgb_anon_index

CONDITIONS = ('fog', 'night', 'rain', 'snow')
SIZE = (544, 960)  # the native 1080x1920 halved, rounded to a multiple of 32


def acdc_split(frame) -> str | None:
    """'<condition>_<split>' from the folders <condition>/<split>/ of a frame (train, val, test; the *_ref
    folders of daytime references belong to no split)."""
    condition, split = frame.sequence.split('/')[:2]
    return f'{condition}_{CITYSCAPES_SPLITS[split]}' if split in CITYSCAPES_SPLITS else None


def build_acdc(root: str) -> dict:
    """ACDC in <root>/acdc: rgb_anon/<condition>/{train,val,test}/<seq>/<seq>_frame_<n>_rgb_anon.png and
    gt/<condition>/{train,val}/<seq>/<seq>_frame_<n>_gt_labelIds.png (test has no labels). One split file per
    condition and split: acdc/<condition>_{train,validation,test}.json.
    """
    dataset_dir = os.path.join(root, 'acdc')
    require_dir(os.path.join(dataset_dir, 'rgb_anon'))
    require_dir(os.path.join(dataset_dir, 'gt'))
    return write_rgb_anon_index(dataset_dir, acdc_split)


register(DatasetEntry(
    name='acdc', labels='cityscapes',
    loaders=tuple(loader for condition in CONDITIONS for split in ('train', 'validation')
                  for loader in (Loader(f'acdc_{condition}_{split}', 'validation', f'{condition}_{split}', size=SIZE,
                                        domain=f'acdc_{condition}'),
                                 Loader(f'acdc_{condition}_{split}', 'adaptation', f'{condition}_{split}',
                                        cameras=('color',)))),
    build_index=build_acdc))
