"""Sweeps: the cross product of adaptation settings over seeds, run through the jobs' code, kept in runs.csv and
summarised in the paper's shape (summary.md and plots)."""
