"""SYNTHIA-RAND-CITYSCAPES: the training loader synthia_train."""
import os

from dataloader.datasets import DatasetEntry, Loader, register
from dataloader.index import Category, list_files, parameters, require_dir, single_frames, write_index
from errors import UserError


def build_synthia(root: str) -> dict:
    """SYNTHIA-RAND-CITYSCAPES in <root>/synthia: RAND_CITYSCAPES/RGB/<name>.png and
    RAND_CITYSCAPES/GT_1_channel/LABELS/<name>.png (made from GT/LABELS by convert_segmentation_synthia.py).
    Every image goes to synthia/train.json (the split synthia_train reads).
    """
    dataset_dir = os.path.join(root, 'synthia')
    base = os.path.join(dataset_dir, 'RAND_CITYSCAPES')
    require_dir(os.path.join(base, 'RGB'))
    if not os.path.isdir(os.path.join(base, 'GT_1_channel', 'LABELS')):
        raise UserError(f"expected folder {os.path.join(base, 'GT_1_channel', 'LABELS')} does not exist; "
                        f"run data_download/convert_segmentation_synthia.py first.")
    categories = [
        Category('color', single_frames(list_files(dataset_dir, 'RAND_CITYSCAPES/RGB', '.png'))),
        Category('segmentation', single_frames(list_files(dataset_dir, 'RAND_CITYSCAPES/GT_1_channel/LABELS',
                                                          '.png')))]
    return write_index(dataset_dir, parameters('synthia', 'fromid', []), categories, lambda frame: 'train')


register(DatasetEntry(
    name='synthia', labels='synthia',
    loaders=(Loader('synthia_train', 'training', 'train'),),
    build_index=build_synthia))
