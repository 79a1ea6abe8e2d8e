"""Offline adaptation (adapt.py, spec §7): N unlabelled target batches move the BatchNorm running statistics with a
momentum schedule, then the model is saved and evaluated.

A schedule maps (batch index k, number of layers L) to one momentum per layer, set before the forward pass of batch
k. PyTorch updates running = (1 - m) * running + m * batch statistic (unbiased variance); a momentum of None makes
BatchNorm keep the cumulative average over all batches seen since a reset.
"""
import contextlib
import math
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm import tqdm

from models.adaptation.layers import default_layers, statistics_pass, training_mode


@dataclass(frozen=True)
class Schedule:
    """An offline schedule (`--adaptation-mode-sequential` value): the momentum of layer l = 1..L before batch k."""
    name: str
    label: str  # its name in tables and plots
    momentum: Callable  # (k, l, m0, alpha_batch, alpha_layer) -> momentum, or None for the cumulative average
    uses: tuple[str, ...]  # the sweep settings it depends on, of 'num_batches', 'alpha_batch', 'alpha_layer'
    help: str
    discards_source: bool = False  # the running statistics restart from the target batches alone


SCHEDULES: dict = {}  # name -> Schedule, in the order of the flag's choices


def register_schedule(schedule: Schedule) -> Schedule:
    """Make a schedule available to adapt.py and the sweep under its name."""
    SCHEDULES[schedule.name] = schedule
    return schedule


register_schedule(Schedule(  # PyTorch's default behaviour, m0 = 0.1 unless changed
    'none', 'constant momentum', lambda k, layer, m0, alpha_batch, alpha_layer: m0, ('num_batches',),
    'constant momentum'))
register_schedule(Schedule(  # UBNA: m_k = m0 * exp(-alpha_batch * k)
    'batch_shrinking', 'UBNA', lambda k, layer, m0, alpha_batch, alpha_layer: m0 * math.exp(-alpha_batch * k),
    ('num_batches', 'alpha_batch'), 'UBNA'))
register_schedule(Schedule(  # UBNA+: m_k * exp(-alpha_layer * l)
    'layer_shrinking', 'UBNA+',
    lambda k, layer, m0, alpha_batch, alpha_layer: m0 * math.exp(-alpha_batch * k) * math.exp(-alpha_layer * layer),
    ('num_batches', 'alpha_batch', 'alpha_layer'), 'UBNA+'))
register_schedule(Schedule(  # AdaBN: the average over the target batches
    'target_only', 'target_only (AdaBN)', lambda k, layer, m0, alpha_batch, alpha_layer: None, ('num_batches',),
    '(ours) cumulative average over the target batches (AdaBN)', discards_source=True))
MODES = tuple(SCHEDULES)


def layer_momenta(mode: str, batch_index: int, num_layers: int, momentum: float,
                  alpha_batch: float, alpha_layer: float) -> list:
    """The momentum of each BatchNorm layer (l = 1..num_layers) for batch k = batch_index."""
    if mode not in SCHEDULES:
        raise ValueError(f'unknown adaptation mode {mode!r}; choose one of {", ".join(SCHEDULES)}')
    return [SCHEDULES[mode].momentum(batch_index, layer, momentum, alpha_batch, alpha_layer)
            for layer in range(1, num_layers + 1)]


def prepare_batchnorm(mode: str, layers: list) -> None:
    """Reset the running statistics where the mode discards the source statistics (target_only)."""
    if SCHEDULES[mode].discards_source:
        for _, layer in layers:
            layer.reset_running_stats()


@torch.no_grad()
def adapt_batchnorm(model, batches, mode: str, momentum: float, alpha_batch: float, alpha_layer: float,
                    show_progress: bool = True, num_batches: int | None = None, after_batch=None,
                    autocast=contextlib.nullcontext, layers: list | None = None) -> list:
    """Forward passes with `layers` in train mode that refresh their running statistics; nothing else changes.

    `batches` yields network inputs (N×3×H×W) on the model's device, `num_batches` of them if known. `layers`: the
    (name, BatchNorm) pairs to adapt, by default the UBNA encoder's or else every BatchNorm layer. Before batch k
    layer l gets the momentum of `mode`; a UBNA network runs its encoder alone, since nothing after it changes a
    statistic (on the CPU its BatchNorm layers write over their inputs: a forward hook sees the output there).
    `after_batch(k)` is called after batch k (e.g. to evaluate); `autocast()` wraps each pass.
    Returns the momenta used: one (batch, layer, name, momentum) row each.
    """
    layers = default_layers(model) if layers is None else layers
    forward = statistics_pass(model)
    prepare_batchnorm(mode, layers)
    rows = []
    for k, images in enumerate(tqdm(batches, desc='adapt', total=num_batches, disable=not show_progress)):
        momenta = layer_momenta(mode, k, len(layers), momentum, alpha_batch, alpha_layer)
        rows += [(k, l, name, m) for l, ((name, _), m) in enumerate(zip(layers, momenta), start=1)]
        with training_mode(model, layers, momenta), autocast():
            forward(images)
        if after_batch is not None:
            after_batch(k)
    return rows
