"""BatchNorm momentum schedules for unsupervised adaptation (spec §7).

A schedule maps (batch index k, number of encoder BatchNorm layers L) to one momentum per layer,
set before the forward pass of batch k. PyTorch updates running = (1 - m) * running + m * batch_stat;
a momentum of None makes BatchNorm keep the cumulative average over all batches seen since a reset.
"""
import math

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
