#!/usr/bin/env python3
"""Sweep: adapt.py + evaluate.py over the cross product of methods, numbers of batches, alphas and seeds, with the
jobs' own code; runs.csv, summary.md (mean ± std over seeds) and plots in $UBNA_DIR_CHECKPOINT/<class>/<name>/."""
from arguments import parse_sweep_arguments
from dataloader.paths import check_environment
from errors import run_cli
from runtime import exit_process
from sweeps.runner import run_sweep


def main(argv=None) -> str:
    opt = parse_sweep_arguments(argv)
    check_environment()
    return run_sweep(opt)


if __name__ == '__main__':
    exit_process(run_cli(main))
