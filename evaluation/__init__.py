"""Scoring a network on labelled images (spec §8): metrics, the scoring loop, pictures and tables."""
