"""Finding the layers that a method adapts, putting them into a mode for one pass, and restoring them.

A network tells the adaptation about itself through these optional members (models/ubna.py has all of them);
without them every BatchNorm layer is adapted (every affine normalisation layer by the affine methods: tent, eta,
eata, sar), by the full forward pass, and every logit channel is a class:
    adaptable_layers() -> [(name, layer)]   the normalisation layers that adaptation may change, in adaptation order
    adaptable_layers_description: str       those layers in words, for messages ('encoder BatchNorm')
    statistics_pass(images)                 the cheapest forward pass that feeds every adaptable layer
    num_classes: int                        how many leading logit channels score classes
"""
import contextlib

import torch
from torch.nn.modules.batchnorm import _BatchNorm

NORMALISATION = (_BatchNorm, torch.nn.GroupNorm, torch.nn.LayerNorm)

from errors import UserError


def batchnorm_layers(model: torch.nn.Module, prefix: str | None = None) -> list:
    """(name, layer) of every BatchNorm layer in `named_modules()` order, those whose name starts with `prefix` only."""
    return [(name, module) for name, module in model.named_modules()
            if isinstance(module, _BatchNorm) and (prefix is None or name.startswith(prefix))]


def normalisation_layers(model: torch.nn.Module, prefix: str | None = None) -> list:
    """(name, layer) of every BatchNorm, GroupNorm and LayerNorm layer in `named_modules()` order, those whose name
    starts with `prefix` only."""
    return [(name, module) for name, module in model.named_modules()
            if isinstance(module, NORMALISATION) and (prefix is None or name.startswith(prefix))]


def affine_layers(model: torch.nn.Module) -> list:
    """The layers the network offers for adaptation (adaptable_layers), else every normalisation layer with affine
    parameters: those the affine methods change."""
    offered = getattr(model, 'adaptable_layers', None)
    if offered is not None:
        return offered()
    return [(name, layer) for name, layer in normalisation_layers(model)
            if layer.weight is not None or layer.bias is not None]


def batchnorm_only(layers: list) -> list:
    """The (name, BatchNorm) pairs among (name, normalisation layer) pairs: the ones with running statistics."""
    return [(name, layer) for name, layer in layers if isinstance(layer, _BatchNorm)]


def default_layers(model: torch.nn.Module) -> list:
    """The layers the network offers for adaptation (adaptable_layers), else every BatchNorm layer."""
    offered = getattr(model, 'adaptable_layers', None)
    return batchnorm_layers(model) if offered is None else offered()


def statistics_pass(model: torch.nn.Module):
    """The cheapest forward that feeds every adapted layer: the network's statistics_pass, else its forward."""
    return getattr(model, 'statistics_pass', model)


def class_logits(model: torch.nn.Module, logits: torch.Tensor) -> torch.Tensor:
    """The channels of `logits` that score classes (num_classes of the network, else all)."""
    classes = getattr(model, 'num_classes', None)
    return logits if classes is None else logits[:, :classes]


def set_momenta(layers: list, momenta: list) -> None:
    """Give each (name, BatchNorm) layer its momentum for the next forward pass."""
    for (_, layer), momentum in zip(layers, momenta, strict=True):
        layer.momentum = momentum


@contextlib.contextmanager
def training_mode(model: torch.nn.Module, layers: list, momenta: list | None = None, track: bool = True):
    """The model in eval mode but `layers` in train mode, for one pass: they normalise with the batch's own
    statistics and, with `track`, move their running statistics with `momenta` (None: keep their own momentum);
    without `track` their running statistics stay untouched. Modes, momenta and tracking are restored after."""
    modes = [(module, module.training) for module in model.modules()]
    saved = [(layer.momentum, layer.track_running_stats) for _, layer in layers]
    model.eval()
    for _, layer in layers:
        layer.train()
        layer.track_running_stats = track
    if momenta is not None:
        set_momenta(layers, momenta)
    try:
        yield
    finally:
        for (_, layer), (momentum, track_running_stats) in zip(layers, saved):
            layer.momentum, layer.track_running_stats = momentum, track_running_stats
        for module, training in modes:
            module.training = training


def layer_state(layers: list) -> dict:
    """A copy of every tensor of the layers (running statistics, counter, affine parameters), keyed by name."""
    return {name: {key: value.detach().clone() for key, value in layer.state_dict().items()} for name, layer in layers}


def restore_layer_state(layers: list, state: dict) -> None:
    """Put back a copy made by layer_state, in place (an optimiser keeps its parameters)."""
    with torch.no_grad():
        for name, layer in layers:
            for key, value in layer.state_dict(keep_vars=True).items():
                value.copy_(state[name][key])


def check_finite_statistics(model: torch.nn.Module, layers: list | None = None) -> None:
    """UserError when a BatchNorm running mean or variance holds nan or inf (e.g. after adaptation)."""
    layers = default_layers(model) if layers is None else layers
    broken = [name for name, layer in layers
              if not (torch.isfinite(layer.running_mean).all() and torch.isfinite(layer.running_var).all())]
    if broken:
        kind = getattr(model, 'adaptable_layers_description', 'BatchNorm')
        raise UserError(f'the running statistics of {len(broken)} {kind} layers became non-finite '
                        f'(first: {broken[0]}), so nothing was saved; check the weights of --model-load and the '
                        f'target images')
