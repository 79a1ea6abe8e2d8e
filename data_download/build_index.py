"""Write parameters.json, basic_files.json and the split files (spec §2) of a registered dataset
(dataloader/datasets/): the command line over each dataset's index builder.

Usage: python data_download/build_index.py <dataset> --root $UBNA_DIR_DATASET
"""
import argparse
import os
import sys

if __package__ in (None, ''):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dataloader.datasets import DATASETS  # noqa: E402
from dataloader.paths import dataset_root  # noqa: E402
from errors import UserError, run_cli  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Write the JSON index files of a dataset (spec §2).')
    parser.add_argument('dataset', choices=sorted(DATASETS))
    parser.add_argument('--root', default=None,
                        help='folder holding one sub-folder per dataset (default: $UBNA_DIR_DATASET)')
    for entry in DATASETS.values():
        for option in entry.index_options:
            parser.add_argument(option.flag, default=None, metavar=option.metavar, help=option.help)
    return parser.parse_args(argv)


def flags_pattern(options) -> str:
    """How an error names a dataset's flags: '--kitti-split-*' for a group, the flag itself when alone."""
    flags = [option.flag for option in options]
    return flags[0] if len(flags) == 1 else os.path.commonprefix(flags) + '*'


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.root is None:
        args.root = dataset_root()
    for entry in DATASETS.values():
        given = [option for option in entry.index_options if getattr(args, option.keyword) is not None]
        if given and entry.name != args.dataset:
            raise UserError(f'{flags_pattern(entry.index_options)} options apply to the dataset {entry.name} only, '
                            f'not to {args.dataset}.')
    entry = DATASETS[args.dataset]
    options = {option.keyword: getattr(args, option.keyword) for option in entry.index_options
               if getattr(args, option.keyword) is not None}
    counts = entry.build_index(args.root, **options)
    for split, count in counts.items():
        print(f'{args.dataset}: {split} split with {count} samples')


if __name__ == '__main__':
    sys.exit(run_cli(main))
