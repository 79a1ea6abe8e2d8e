"""Convert SYNTHIA's 16-bit three-channel label PNGs into single-channel uint8 label-id PNGs.

SYNTHIA-RAND-CITYSCAPES stores the class id in the R channel of GT/LABELS/*.png (index 2 of the
BGR array OpenCV reads); the result goes to GT_1_channel/LABELS/ next to GT/, where build_index.py
looks for it. Usage: python data_download/convert_segmentation_synthia.py --root $UBNA_DIR_DATASET
"""
import argparse
import os
import sys

import cv2
import numpy as np

if __package__ in (None, ''):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dataloader.paths import dataset_root  # noqa: E402
from errors import UserError, run_cli  # noqa: E402
from experiment.folder import write_atomically  # noqa: E402

CLASS_CHANNEL = 2  # R channel of the file = index 2 of OpenCV's BGR array


def label_ids(image: np.ndarray, path: str) -> np.ndarray:
    """The uint8 HxW class ids held in the R channel of a SYNTHIA label image read by OpenCV."""
    if image is None or image.ndim != 3 or image.shape[2] < 3:
        raise UserError(f"SYNTHIA label file {path} is not a readable three-channel PNG.")
    ids = image[:, :, CLASS_CHANNEL]
    if ids.max() > 255:
        raise UserError(f"SYNTHIA label file {path} holds class ids above 255 in its R channel.")
    return ids.astype(np.uint8)


def convert_label_file(source: str, target: str) -> None:
    """Write the single-channel id PNG `target` made from the SYNTHIA label PNG `source`."""
    ids = label_ids(cv2.imread(source, cv2.IMREAD_UNCHANGED), source)

    def write(temporary):
        if not cv2.imwrite(temporary, ids):
            raise UserError(f"could not write label file {target}.")
    write_atomically(target, write)


def convert_synthia_labels(synthia_dir: str) -> int:
    """Convert every <synthia_dir>/RAND_CITYSCAPES/GT/LABELS/*.png into GT_1_channel/LABELS; returns the count."""
    source_dir = os.path.join(synthia_dir, 'RAND_CITYSCAPES', 'GT', 'LABELS')
    target_dir = os.path.join(synthia_dir, 'RAND_CITYSCAPES', 'GT_1_channel', 'LABELS')
    if not os.path.isdir(source_dir):
        raise UserError(f"expected SYNTHIA label folder {source_dir} does not exist.")
    names = sorted(name for name in os.listdir(source_dir) if name.endswith('.png'))
    if not names:
        raise UserError(f"SYNTHIA label folder {source_dir} holds no .png files.")
    os.makedirs(target_dir, exist_ok=True)
    for name in names:
        convert_label_file(os.path.join(source_dir, name), os.path.join(target_dir, name))
    return len(names)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description='Write SYNTHIA GT_1_channel/LABELS from GT/LABELS.')
    parser.add_argument('--root', default=None,
                        help='folder holding the synthia dataset folder (default: $UBNA_DIR_DATASET)')
    args = parser.parse_args(argv)
    if args.root is None:
        args.root = dataset_root()
    count = convert_synthia_labels(os.path.join(args.root, 'synthia'))
    print(f'converted {count} SYNTHIA label images')


if __name__ == '__main__':
    sys.exit(run_cli(main))
