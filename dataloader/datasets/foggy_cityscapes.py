"""Foggy Cityscapes (synthetic fog on Cityscapes, Cityscapes label ids): per fog density β (0.005, 0.01, 0.02) the
validation loader foggy_cityscapes_<β>_validation and the adaptation loader foggy_cityscapes_<β>_train."""
import os
import re

from dataloader.datasets import DatasetEntry, Loader, register
from dataloader.index import (CITYSCAPES_SPLITS, Category, Frame, cityscapes_frames, list_files, parameters,
                              require_dir, write_index)
from errors import UserError

BETAS = ('0.005', '0.01', '0.02')  # as the file names write them
FOGGY_NAME = re.compile(r'^([^_]+)_([^_]+)_(\d+)_leftImg8bit_foggy_beta_([0-9.]+)\.png$')


def foggy_frames(dataset_dir: str) -> list:
    """Frames of leftImg8bit_foggy/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit_foggy_beta_<β>.png; the
    sequence names β, split, city and seq (each β is a sequence of its own)."""
    frames = []
    for path in list_files(dataset_dir, 'leftImg8bit_foggy', '.png'):
        parts = path.split('/')
        match = FOGGY_NAME.match(parts[-1])
        if len(parts) != 4 or match is None:
            raise UserError(f"file {os.path.join(dataset_dir, path)} does not follow the Foggy Cityscapes pattern "
                            f"<split>/<city>/<city>_<seq>_<frame>_leftImg8bit_foggy_beta_<beta>.png.")
        city, seq, number, beta = match.groups()
        frames.append(Frame(f'beta_{beta}/{parts[1]}/{city}_{seq}', int(number), path))
    return frames


def foggy_split(frame: Frame) -> str | None:
    """'beta_<β>_<split>' from a frame of foggy_frames (train, val, test)."""
    beta, split = frame.sequence.split('/')[:2]
    return f'{beta}_{CITYSCAPES_SPLITS[split]}' if split in CITYSCAPES_SPLITS else None


def build_foggy_cityscapes(root: str) -> dict:
    """Foggy Cityscapes in <root>/foggy_cityscapes: leftImg8bit_foggy/{train,val,test}/<city>/
    <city>_<seq>_<frame>_leftImg8bit_foggy_beta_<β>.png and Cityscapes' gtFine/{train,val,test}/<city>/
    <city>_<seq>_<frame>_gtFine_labelIds.png (one label serves the image of every β). One split file per β and
    split: foggy_cityscapes/beta_<β>_{train,validation,test}.json.
    """
    dataset_dir = os.path.join(root, 'foggy_cityscapes')
    require_dir(os.path.join(dataset_dir, 'leftImg8bit_foggy'))
    require_dir(os.path.join(dataset_dir, 'gtFine'))
    images = foggy_frames(dataset_dir)
    betas = sorted({frame.sequence.split('/', 1)[0] for frame in images})
    labels = cityscapes_frames(dataset_dir, 'gtFine', '_gtFine_labelIds.png')
    # each label listed once per β, under the key of that β's image
    categories = [Category('color', images),
                  Category('segmentation', [Frame(f'{beta}/{label.sequence}', label.number, label.path)
                                            for beta in betas for label in labels])]
    return write_index(dataset_dir, parameters('cityscapes', 'fromid', []), categories, foggy_split)


register(DatasetEntry(
    name='foggy_cityscapes', labels='cityscapes',
    loaders=tuple(loader for beta in BETAS
                  for loader in (Loader(f'foggy_cityscapes_{beta}_validation', 'validation', f'beta_{beta}_validation',
                                        size=(512, 1024), domain=f'foggy_cityscapes_{beta}'),
                                 Loader(f'foggy_cityscapes_{beta}_train', 'adaptation', f'beta_{beta}_train',
                                        cameras=('color',)))),
    build_index=build_foggy_cityscapes))
