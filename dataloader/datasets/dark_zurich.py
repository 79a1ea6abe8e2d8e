"""Dark Zurich (Cityscapes label ids): the validation loader dark_zurich_validation (the labelled night images of
val) and the adaptation loaders dark_zurich_<day|twilight|night>_train (its unlabelled train images)."""
import os

from dataloader.datasets import DatasetEntry, Loader, register
from dataloader.index import require_dir, write_rgb_anon_index

TIMES_OF_DAY = ('day', 'twilight', 'night')
SPLITS = {**{('train', time): f'{time}_train' for time in TIMES_OF_DAY}, ('val', 'night'): 'validation'}


def dark_zurich_split(frame) -> str | None:
    """The split of a frame from its folders <split>/<time of day>/ (train/*; val/night; other folders: none)."""
    split, time = frame.sequence.split('/')[:2]
    return SPLITS.get((split, time))


def build_dark_zurich(root: str) -> dict:
    """Dark Zurich in <root>/dark_zurich: rgb_anon/{train/{day,twilight,night},val/night}/<seq>/<name>_rgb_anon.png
    and gt/val/night/<seq>/<name>_gt_labelIds.png, <name> being <seq>_frame_<n>. The train images go to
    dark_zurich/<time of day>_train.json, the labelled night images of val to dark_zurich/validation.json (either
    archive alone will do).
    """
    dataset_dir = os.path.join(root, 'dark_zurich')
    require_dir(os.path.join(dataset_dir, 'rgb_anon'))
    return write_rgb_anon_index(dataset_dir, dark_zurich_split)


register(DatasetEntry(
    name='dark_zurich', labels='cityscapes',
    loaders=(Loader('dark_zurich_validation', 'validation', 'validation', size=(544, 960)),
             *(Loader(f'dark_zurich_{time}_train', 'adaptation', f'{time}_train', cameras=('color',))
               for time in TIMES_OF_DAY)),
    build_index=build_dark_zurich))
