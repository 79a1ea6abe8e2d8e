"""BatchNorm momentum schedules for unsupervised adaptation (spec §7).

A schedule maps (batch index k, number of encoder BatchNorm layers L) to one momentum per layer,
set before the forward pass of batch k. PyTorch updates running = (1 - m) * running + m * batch_stat;
a momentum of None makes BatchNorm keep the cumulative average over all batches seen since a reset.
"""
import contextlib
import math

import torch
from tqdm import tqdm

from dataloader.errors import UserError
from models.ubna import encoder_batchnorm_layers

MODES = ('none', 'batch_shrinking', 'layer_shrinking', 'target_only')


def layer_momenta(mode: str, batch_index: int, num_layers: int, momentum: float,
                  alpha_batch: float, alpha_layer: float) -> list:
    """The momentum of each encoder BatchNorm layer (l = 1..num_layers) for batch k = batch_index."""
    if mode == 'none':  # constant momentum (the PyTorch default 0.1 unless changed)
        return [momentum] * num_layers
    if mode == 'batch_shrinking':  # UBNA: m_k = m0 * exp(-alpha_batch * k)
        return [momentum * math.exp(-alpha_batch * batch_index)] * num_layers
    if mode == 'layer_shrinking':  # UBNA+: m_kl = m0 * exp(-alpha_batch * k) * exp(-alpha_layer * l)
        batch_factor = momentum * math.exp(-alpha_batch * batch_index)
        return [batch_factor * math.exp(-alpha_layer * layer) for layer in range(1, num_layers + 1)]
    if mode == 'target_only':  # AdaBN: cumulative average over the target batches only
        return [None] * num_layers
    raise ValueError(f'unknown adaptation mode {mode!r}; choose one of {", ".join(MODES)}')


def prepare_batchnorm(mode: str, batchnorm_layers: list) -> None:
    """Reset the running statistics where the mode discards the source statistics (target_only)."""
    if mode == 'target_only':
        for _, layer in batchnorm_layers:
            layer.reset_running_stats()


def set_momenta(batchnorm_layers: list, momenta: list) -> None:
    """Give each (name, BatchNorm) layer its momentum for the next forward pass."""
    for (_, layer), momentum in zip(batchnorm_layers, momenta, strict=True):
        layer.momentum = momentum


@torch.no_grad()
def adapt_batchnorm(model, batches, mode: str, momentum: float, alpha_batch: float, alpha_layer: float,
                    show_progress: bool = True, num_batches: int | None = None, after_batch=None,
                    autocast=contextlib.nullcontext) -> list:
    """Encoder forward passes in train mode that refresh the encoder's BatchNorm running statistics.

    `batches` yields network inputs (N×3×H×W) on the model's device, `num_batches` of them if known. Before batch
    k every encoder BatchNorm layer l gets the momentum of `mode`; only the encoder runs, since nothing after it
    changes a statistic. `after_batch(k)` is called after batch k (e.g. to evaluate); `autocast()` wraps each
    pass. Returns the momenta used: one (batch, layer, name, momentum) row each.
    """
    batchnorm_layers = encoder_batchnorm_layers(model)
    prepare_batchnorm(mode, batchnorm_layers)
    was_training = model.training
    model.train()
    rows = []
    for k, images in enumerate(tqdm(batches, desc='adapt', total=num_batches, disable=not show_progress)):
        momenta = layer_momenta(mode, k, len(batchnorm_layers), momentum, alpha_batch, alpha_layer)
        set_momenta(batchnorm_layers, momenta)
        rows += [(k, l, name, m) for l, ((name, _), m) in enumerate(zip(batchnorm_layers, momenta), start=1)]
        with autocast():
            model.encoder_features(images)
        if after_batch is not None:
            after_batch(k)
    model.train(was_training)
    return rows


def check_finite_statistics(model) -> None:
    """UserError when an encoder BatchNorm running mean or variance holds nan or inf (e.g. after adaptation)."""
    broken = [name for name, layer in encoder_batchnorm_layers(model)
              if not (torch.isfinite(layer.running_mean).all() and torch.isfinite(layer.running_var).all())]
    if broken:
        raise UserError(f'the running statistics of {len(broken)} encoder BatchNorm layers became non-finite '
                        f'(first: {broken[0]}), so nothing was saved; check the weights of --model-load and the '
                        f'target images')
