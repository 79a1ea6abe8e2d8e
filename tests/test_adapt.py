"""UBNA / UBNA+ / baselines against the closed-form recursion of spec §7 on fixed batches."""
import copy
import math

import pytest
import torch

from models.adaptation import adapt_batchnorm, layer_momenta, prepare_batchnorm, set_momenta
from models.adaptation.layers import training_mode
from models.ubna import build_model, encoder_batchnorm_layers

pytestmark = pytest.mark.usefixtures('one_thread')  # conftest.py: small tensors, shared cores


def batch_statistics(model, batches):
    """Per batch, per encoder BatchNorm layer: (mean, unbiased variance) of the layer's input."""
    model = copy.deepcopy(model).train()
    layers = encoder_batchnorm_layers(model)
    current = {}
    hooks = [layer.register_forward_hook(
        lambda module, inputs, output, name=name: current.__setitem__(
            name, (inputs[0].double().mean((0, 2, 3)), inputs[0].double().var((0, 2, 3), unbiased=True))))
        for name, layer in layers]
    statistics = []
    with torch.no_grad():
        for images in batches:
            model(images)
            statistics.append(dict(current))
    for hook in hooks:
        hook.remove()
    return statistics


def expected_momentum(mode, k, l, m0=0.1, alpha_batch=0.0, alpha_layer=0.0):
    if mode == 'none':
        return m0
    if mode == 'batch_shrinking':
        return m0 * math.exp(-alpha_batch * k)
    return m0 * math.exp(-alpha_batch * k) * math.exp(-alpha_layer * l)


@pytest.mark.parametrize('model_type, depth, mode', [
    ('resnet', 18, 'batch_shrinking'),
    ('resnet', 18, 'layer_shrinking'),
    ('vgg', 11, 'layer_shrinking'),
    ('resnet', 18, 'none'),
])
def test_running_statistics_follow_the_closed_form(model_type, depth, mode):
    torch.manual_seed(0)
    model = build_model(model_type, depth, 'scratch')
    source = {name: (layer.running_mean.double().clone(), layer.running_var.double().clone())
              for name, layer in encoder_batchnorm_layers(model)}
    for name, layer in encoder_batchnorm_layers(model):  # non-trivial source statistics
        layer.running_mean.uniform_(-1, 1)
        layer.running_var.uniform_(0.5, 2)
        source[name] = (layer.running_mean.double().clone(), layer.running_var.double().clone())
    parameters = {name: p.clone() for name, p in model.named_parameters()}
    batches = [torch.randn(3, 3, 64, 64) * (1 + k) + k for k in range(4)]
    statistics = batch_statistics(model, batches)
    alpha_batch, alpha_layer, m0 = 0.3, 0.2, 0.1

    rows = adapt_batchnorm(model, batches, mode, m0, alpha_batch, alpha_layer, show_progress=False)

    layers = encoder_batchnorm_layers(model)
    assert len(rows) == len(batches) * len(layers)
    for l, (name, layer) in enumerate(layers, start=1):
        mean, var = source[name]
        for k, batch in enumerate(statistics):
            m = expected_momentum(mode, k, l, m0, alpha_batch, alpha_layer)
            assert rows[k * len(layers) + l - 1][3] == pytest.approx(m, rel=1e-12)
            mean = (1 - m) * mean + m * batch[name][0]
            var = (1 - m) * var + m * batch[name][1]
        torch.testing.assert_close(layer.running_mean.double(), mean, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(layer.running_var.double(), var, rtol=1e-5, atol=1e-5)
    for name, p in model.named_parameters():
        assert torch.equal(p, parameters[name]), f'{name} changed during adaptation'


def test_target_only_replaces_source_statistics_by_the_target_average():
    torch.manual_seed(0)
    model = build_model('resnet', 18, 'scratch')
    batches = [torch.randn(2, 3, 64, 64) + k for k in range(3)]
    statistics = batch_statistics(model, batches)
    adapt_batchnorm(model, batches, 'target_only', 0.1, 0.0, 0.0, show_progress=False)
    for name, layer in encoder_batchnorm_layers(model):
        expected_mean = sum(s[name][0] for s in statistics) / len(statistics)
        expected_var = sum(s[name][1] for s in statistics) / len(statistics)
        torch.testing.assert_close(layer.running_mean.double(), expected_mean, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(layer.running_var.double(), expected_var, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('model_type, depth, mode, memory_format', [
    ('resnet', 18, 'layer_shrinking', torch.contiguous_format),
    ('vgg', 11, 'layer_shrinking', torch.contiguous_format),
    ('resnet', 18, 'target_only', torch.channels_last),  # momentum None: the cumulative average
])
def test_encoder_only_adaptation_gives_the_statistics_of_the_full_forward(model_type, depth, mode, memory_format):
    """Adaptation runs the encoder alone, its BatchNorm layers writing over their inputs; the full network in train
    mode must leave identical statistics."""
    torch.manual_seed(0)
    encoder_only = build_model(model_type, depth, 'scratch', memory_format=memory_format)
    full = copy.deepcopy(encoder_only)
    batches = [(torch.randn(2, 3, 64, 96) * (1 + k) + k).to(memory_format=memory_format) for k in range(3)]
    in_place = []
    hooks = [layer.register_forward_hook(lambda module, inputs, output: in_place.append(output is inputs[0]))
             for _, layer in encoder_batchnorm_layers(encoder_only)]
    adapt_batchnorm(encoder_only, batches, mode, 0.1, 0.3, 0.2, show_progress=False)
    for hook in hooks:
        hook.remove()
    assert len(in_place) == len(batches) * len(hooks) and all(in_place)
    layers = encoder_batchnorm_layers(full)
    prepare_batchnorm(mode, layers)
    full.train()
    with torch.no_grad():
        for k, images in enumerate(batches):
            set_momenta(layers, layer_momenta(mode, k, len(layers), 0.1, 0.3, 0.2))
            full(images)
    adapted = encoder_only.state_dict()
    for key, value in full.state_dict().items():
        assert torch.equal(adapted[key], value), key


def test_adapting_some_encoder_layers_gives_the_statistics_of_the_full_forward():
    """The encoder's other BatchNorm layers stay in eval mode (and also write over their inputs on the CPU)."""
    torch.manual_seed(0)
    encoder_only = build_model('resnet', 18, 'scratch')
    for _, layer in encoder_batchnorm_layers(encoder_only):
        layer.running_mean.uniform_(-1, 1)
        layer.running_var.uniform_(0.5, 2)
    full = copy.deepcopy(encoder_only)
    batches = [torch.randn(2, 3, 64, 96) * (1 + k) + k for k in range(3)]
    adapt_batchnorm(encoder_only, batches, 'batch_shrinking', 0.1, 0.3, 0.2, show_progress=False,
                    layers=encoder_batchnorm_layers(encoder_only)[::2])
    layers = encoder_batchnorm_layers(full)[::2]
    with torch.no_grad():
        for k, images in enumerate(batches):
            with training_mode(full, layers, layer_momenta('batch_shrinking', k, len(layers), 0.1, 0.3, 0.2)):
                full(images)
    adapted = encoder_only.state_dict()
    for key, value in full.state_dict().items():
        assert torch.equal(adapted[key], value), key


def test_batchnorm_layers_write_over_their_inputs_only_in_a_statistics_pass_without_autograd():
    model = build_model('resnet', 18, 'scratch').train()
    images = torch.randn(2, 3, 64, 64)
    outputs = []
    model.common.encoder.encoder.bn1.register_forward_hook(
        lambda module, inputs, output: outputs.append(output is inputs[0]))
    with torch.no_grad():
        model(images)
        model.statistics_pass(images)
    model.statistics_pass(images)  # autograd on: the input may be needed for the gradient
    assert outputs == [False, True, False]


def test_mixed_precision_keeps_batchnorm_statistics_in_float32():
    torch.manual_seed(0)
    reference = build_model('resnet', 18, 'scratch')
    mixed = copy.deepcopy(reference)
    batches = [torch.randn(2, 3, 64, 96) + k for k in range(3)]
    adapt_batchnorm(reference, batches, 'batch_shrinking', 0.1, 0.08, 0.0, show_progress=False)
    adapt_batchnorm(mixed, batches, 'batch_shrinking', 0.1, 0.08, 0.0, show_progress=False,
                    autocast=lambda: torch.autocast('cpu', dtype=torch.bfloat16))
    for (name, layer), (_, expected) in zip(encoder_batchnorm_layers(mixed), encoder_batchnorm_layers(reference)):
        assert layer.running_mean.dtype == layer.running_var.dtype == torch.float32, name
        torch.testing.assert_close(layer.running_mean, expected.running_mean, rtol=0.05, atol=0.05)
        torch.testing.assert_close(layer.running_var, expected.running_var, rtol=0.05, atol=0.05)
