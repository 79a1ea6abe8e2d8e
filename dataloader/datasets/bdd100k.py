"""BDD100K semantic segmentation (10K images, JPEG, labels in train ids): the loaders bdd100k_train and
bdd100k_validation, each a validation loader and an adaptation loader."""
import os

from dataloader.datasets import DatasetEntry, Loader, register
from dataloader.index import CITYSCAPES_SPLITS, Category, Frame, list_files, parameters, require_dir, stem, write_index

IMAGES, MASKS = 'images/10k', 'labels/sem_seg/masks'
SIZE = (544, 960)  # ACDC's and Dark Zurich's size: BDD100K's 720x1280 is of the same aspect


def bdd100k_frames(dataset_dir: str, sub_dir: str, suffix: str) -> list:
    """Frames of <sub_dir>/<split>/<name><suffix>; every file is its own sequence '<split>/<name>'."""
    return [Frame(f"{path[len(sub_dir) + 1:].split('/', 1)[0]}/{stem(path)}", 0, path)
            for path in list_files(dataset_dir, sub_dir, suffix)]


def build_bdd100k(root: str) -> dict:
    """BDD100K in <root>/bdd100k: images/10k/{train,val,test}/<name>.jpg and
    labels/sem_seg/masks/{train,val}/<name>.png (train ids 0-18, 255 ignored; read `fromtrainid`). Splits
    train/validation/test: bdd100k/{train,validation,test}.json.
    """
    dataset_dir = os.path.join(root, 'bdd100k')
    require_dir(os.path.join(dataset_dir, *IMAGES.split('/')))
    require_dir(os.path.join(dataset_dir, *MASKS.split('/')))
    categories = [Category('color', bdd100k_frames(dataset_dir, IMAGES, '.jpg')),
                  Category('segmentation', bdd100k_frames(dataset_dir, MASKS, '.png'))]
    return write_index(dataset_dir, parameters('cityscapes', 'fromtrainid', []), categories,
                       lambda frame: CITYSCAPES_SPLITS.get(frame.sequence.split('/', 1)[0]))


register(DatasetEntry(
    name='bdd100k', labels='cityscapes',
    loaders=tuple(loader for split in ('train', 'validation')
                  for loader in (Loader(f'bdd100k_{split}', 'validation', split, size=SIZE, labels_mode='fromtrainid'),
                                 Loader(f'bdd100k_{split}', 'adaptation', split, cameras=('color',)))),
    build_index=build_bdd100k))
