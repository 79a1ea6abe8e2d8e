#!/usr/bin/env python3
"""Sweep: adapt.py + evaluate.py over the cross product of methods, numbers of batches, alphas and seeds, with the
jobs' own code; runs.csv, summary.md (mean ± std over seeds) and plots in $UBNA_DIR_CHECKPOINT/<class>/<name>/."""
from errors import run_cli
from experiment.runtime import exit_process
from sweeps.options import parse_sweep_arguments
from sweeps.launchers import run_sweep


def main(argv=None) -> str:
    return run_sweep(parse_sweep_arguments(argv))


if __name__ == '__main__':
    exit_process(run_cli(main))
