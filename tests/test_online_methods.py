"""Every online method against its closed form on fixed batches: the running statistics after each batch, which
tensors change, episodic against continual; the settings a method refuses; and the API on torchvision's DeepLabV3
(offline and online, as the README shows it)."""
import copy
import math
import os

import pytest
import torch
import torch.nn as nn

from models.adaptation import (ONLINE_METHODS, SettingError, adapt_batchnorm, batchnorm_layers, build_online_method,
                               check_online_settings, default_layers, layer_momenta)
from models.adaptation.dua import augmented_copies, within_frame
from models.ubna import build_model, encoder_batchnorm_layers
from tests.support import REPO, SmallNet, with_source_statistics

pytestmark = pytest.mark.usefixtures('one_thread', 'no_network')  # conftest.py

BATCHES = [torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(k)) * (1 + k) + k for k in range(3)]



def small_net():
    torch.manual_seed(0)
    return with_source_statistics(SmallNet())


@pytest.fixture(scope='module')
def ubna_network():
    """A ResNet-18 UBNA network with source statistics, built once (copy it before changing it)."""
    torch.manual_seed(0)
    return with_source_statistics(build_model('resnet', 18, 'scratch'))


def statistics(model, layers=None) -> dict:
    """{layer name: (running mean, running variance)} in float64."""
    layers = default_layers(model) if layers is None else layers
    return {name: (layer.running_mean.double().clone(), layer.running_var.double().clone()) for name, layer in layers}


def tensors(model) -> dict:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def changed(before: dict, after: dict) -> set:
    return {name for name in before if not torch.equal(before[name], after[name])}


def record_inputs(layers):
    """Forward pre-hooks that keep a copy of every input of each layer (a statistics pass normalises over the
    input itself); returns (inputs by name, hooks)."""
    seen = {name: [] for name, _ in layers}
    hooks = [layer.register_forward_pre_hook(lambda module, inputs, name=name: seen[name].append(inputs[0].clone()))
             for name, layer in layers]
    return seen, hooks


def mean_and_variance(x: torch.Tensor) -> tuple:
    """Over N, H, W, unbiased, in float64."""
    return x.double().mean((0, 2, 3)), x.double().var((0, 2, 3), unbiased=True)


def train_mode_statistics(model, images, layers_of=default_layers) -> dict:
    """The statistics of each adapted layer's input in a train-mode pass (they do not depend on running statistics)."""
    twin = copy.deepcopy(model).eval()
    layers = layers_of(twin)
    for _, layer in layers:
        layer.train()
    seen, hooks = record_inputs(layers)
    with torch.no_grad():
        getattr(twin, 'statistics_pass', twin)(images)
    for hook in hooks:
        hook.remove()
    return {name: mean_and_variance(inputs[0]) for name, inputs in seen.items()}


def moved(start: dict, batch: dict, momenta) -> dict:
    """running ← (1 − m)·running + m·batch per layer."""
    return {name: tuple((1 - m) * s + m * b for s, b in zip(start[name], batch[name]))
            for (name, m) in zip(start, momenta)}


def eval_logits(model, images) -> torch.Tensor:
    """The logits of the model as it is now, in eval mode: what a method predicts after adapting."""
    with torch.no_grad():
        return model.eval()(images)


def assert_statistics(model, expected: dict) -> None:
    for name, (mean, var) in statistics(model).items():
        torch.testing.assert_close(mean, expected[name][0], rtol=1e-5, atol=1e-6, msg=name)
        torch.testing.assert_close(var, expected[name][1], rtol=1e-5, atol=1e-6, msg=name)


def test_the_registry_names_every_method_of_the_issue():
    assert set(ONLINE_METHODS) == {'none', 'test_batch', 'cbna', 'bn_ema', 'ubna_online', 'dua', 'tent', 'eta',
                                   'eata', 'sar', 'cotta', 'rotta'}


def test_batchnorm_layers_follow_named_modules_and_filter_by_prefix(ubna_network):
    model = ubna_network
    names = [name for name, _ in batchnorm_layers(model)]
    assert names == [name for name, module in model.named_modules() if isinstance(module, nn.BatchNorm2d)]
    assert [name for name, _ in batchnorm_layers(model, 'common.encoder.encoder.layer4')] == [
        name for name in names if name.startswith('common.encoder.encoder.layer4')] and len(names) == 20
    assert [name for name, _ in default_layers(model)] == [name for name, _ in encoder_batchnorm_layers(model)]
    assert [name for name, _ in default_layers(SmallNet())] == ['features.1', 'features.4']


@pytest.mark.parametrize('name', ['none', 'test_batch'])
def test_none_and_test_batch_change_nothing_and_ignore_the_reset(name):
    model = small_net()
    before = tensors(model)
    reference = copy.deepcopy(model)
    if name == 'test_batch':  # TENT's way to force batch statistics: no running statistics at all
        for _, layer in batchnorm_layers(reference):
            layer.track_running_stats, layer.running_mean, layer.running_var = False, None, None
    episodic = build_online_method(name, model, reset='episodic')
    continual = build_online_method(name, copy.deepcopy(model), reset='continual')
    for images in BATCHES:
        logits = episodic(images)
        with torch.no_grad():
            torch.testing.assert_close(logits, reference(images), rtol=1e-5, atol=1e-5)
        assert torch.equal(logits, continual(images))
    assert not changed(before, tensors(model)) and not model.training


@pytest.mark.parametrize('name, reset', [('cbna', 'episodic'), ('bn_ema', 'continual'), ('cbna', 'continual')])
def test_cbna_moves_each_layer_to_its_input_statistics_before_normalising_with_them(name, reset):
    model = small_net()
    source, before = statistics(model), tensors(model)
    default = check_online_settings(name)['reset'] == reset  # cbna: episodic, bn_ema: continual
    method = build_online_method(name, model, **({} if default else {'reset': reset}))
    assert method.settings == {'momentum': 0.2, 'reset': reset}
    expected = source
    for images in BATCHES:
        seen, hooks = record_inputs(default_layers(model))  # registered first: they see the input before the update
        logits = method(images)
        for hook in hooks:
            hook.remove()
        start = source if reset == 'episodic' else expected
        expected = moved(start, {n: mean_and_variance(inputs[0]) for n, inputs in seen.items()}, [0.2] * 2)
        assert_statistics(model, expected)  # and each layer normalised with them: the logits of the updated model
        torch.testing.assert_close(logits, eval_logits(model, images), rtol=1e-5, atol=1e-5)
    assert changed(before, tensors(model)) == {'features.1.running_mean', 'features.1.running_var',
                                               'features.4.running_mean', 'features.4.running_var'}


@pytest.mark.parametrize('reset', ['continual', 'episodic'])
def test_ubna_online_follows_ubna_plus_one_batch_at_a_time_on_the_encoder(ubna_network, reset):
    model = copy.deepcopy(ubna_network)
    before = tensors(model)
    batches = [torch.randn(1, 3, 64, 64) * (1 + k) + k for k in range(2)]
    method = build_online_method('ubna_online', model, reset=reset, momentum=0.2, alpha_batch=0.3, alpha_layer=0.1)
    source = expected = statistics(model)
    for k, images in enumerate(batches):
        batch = train_mode_statistics(model, images)
        schedule_index = k if reset == 'continual' else 0
        momenta = [0.2 * math.exp(-0.3 * schedule_index - 0.1 * l) for l in range(1, 21)]
        assert momenta == pytest.approx(layer_momenta('layer_shrinking', schedule_index, 20, 0.2, 0.3, 0.1))
        expected = moved(expected if reset == 'continual' else source, batch, momenta)
        logits = method(images)
        assert_statistics(model, expected)
        torch.testing.assert_close(logits, eval_logits(model, images), rtol=1e-4, atol=1e-4)
    assert all(key.startswith('common.encoder.') and key.endswith(('running_mean', 'running_var',
                                                                    'num_batches_tracked'))
               for key in changed(before, tensors(model)))


def test_dua_uses_its_decaying_momentum_and_the_statistics_of_augmented_copies():
    model = small_net()
    before = tensors(model)
    method = build_online_method('dua', model, augmentations=6)
    assert [method.momentum(k) for k in (1, 2)] == pytest.approx([0.1 * 0.94 + 0.005, 0.1 * 0.94 ** 2 + 0.005])
    augmented = []
    hook = model.register_forward_pre_hook(lambda module, inputs: augmented.append(inputs[0].clone())
                                           if len(inputs[0]) == 6 else None)
    expected, k = statistics(model), 0
    for images in BATCHES:
        start = len(augmented)
        logits = method(images)
        assert len(augmented) == start + len(images)  # one statistics pass per image, 6 copies each
        for copies in augmented[start:]:
            k += 1
            expected = moved(expected, train_mode_statistics(model, copies), [0.1 * 0.94 ** k + 0.005] * 2)
        assert_statistics(model, expected)
        torch.testing.assert_close(logits, eval_logits(model, images), rtol=1e-5, atol=1e-5)
    hook.remove()
    assert {key.rsplit('.', 1)[1] for key in changed(before, tensors(model))} == {
        'running_mean', 'running_var', 'num_batches_tracked'}


def test_dua_episodic_restarts_the_schedule_and_the_statistics():
    model = small_net()
    source = statistics(model)
    method = build_online_method('dua', model, reset='episodic', augmentations=4)
    torch.manual_seed(5)
    first = method(BATCHES[0][:1])
    after_first = statistics(model)
    method(BATCHES[1])
    torch.manual_seed(5)  # the same draws: episodic gives the first image the same result again
    assert torch.equal(method(BATCHES[0][:1]), first)
    assert statistics(model).keys() == source.keys()
    for name in source:
        assert torch.equal(statistics(model)[name][0], after_first[name][0])


def test_augmented_copies_are_shifted_flipped_and_turned_copies_of_the_image():
    image = torch.randn(3, 16, 16)
    torch.manual_seed(0)
    copies = augmented_copies(image, 64)
    padded = torch.nn.functional.pad(image, (2, 2, 2, 2))
    candidates = {(top, left, flip, turn): torch.rot90(padded[:, top:top + 16, left:left + 16].flip(-1) if flip
                                                      else padded[:, top:top + 16, left:left + 16], turn, (1, 2))
                  for top in range(5) for left in range(5) for flip in (False, True) for turn in range(4)}
    found = [next(key for key, candidate in candidates.items() if torch.equal(candidate, copy_))
             for copy_ in copies]
    assert {key[2] for key in found} == {False, True} and {key[3] for key in found} == {0, 1, 2, 3}
    assert len({key[:2] for key in found}) > 10  # many different shifts


def test_a_quarter_turn_of_a_wide_image_stays_centred_in_its_frame():
    image = torch.arange(4 * 8, dtype=torch.float32).view(1, 4, 8)
    turned = within_frame(torch.rot90(image, 1, (1, 2)), 4, 8)
    assert turned.shape == (1, 4, 8)
    assert torch.equal(turned[..., 2:6], torch.rot90(image, 1, (1, 2))[:, 2:6])
    assert not turned[..., :2].any() and not turned[..., 6:].any()


def tent_reference_step(model, images, learning_rate, optimizer=None, classes=None):
    """DequanWang/tent's configure_model + Adam step, then a prediction of the same batch after the step."""
    for _, layer in batchnorm_layers(model):
        layer.track_running_stats, layer.running_mean, layer.running_var = False, None, None
    model.requires_grad_(False)
    parameters = [p for _, layer in batchnorm_layers(model) for p in (layer.weight, layer.bias)]
    for parameter in parameters:
        parameter.requires_grad_(True)
    optimizer = optimizer or torch.optim.Adam(parameters, lr=learning_rate, betas=(0.9, 0.999), weight_decay=0.0)
    logits = model(images)[:, :classes]
    entropy = -(logits.softmax(1) * logits.log_softmax(1)).sum(1).mean()
    entropy.backward()
    optimizer.step()
    optimizer.zero_grad()
    with torch.no_grad():
        return model(images), optimizer


@pytest.mark.parametrize('reset', ['continual', 'episodic'])
def test_tent_takes_one_adam_step_on_batchnorm_scale_and_shift_per_batch(reset):
    model = small_net()
    before = tensors(model)
    method = build_online_method('tent', model, reset=reset, learning_rate=0.01)
    reference, optimizer = copy.deepcopy(model), None
    for images in BATCHES:
        if reset == 'episodic':
            reference, optimizer = copy.deepcopy(small_net()), None
        expected, optimizer = tent_reference_step(reference, images, 0.01, optimizer)
        torch.testing.assert_close(method(images), expected, rtol=1e-5, atol=1e-5)
        for name, layer in batchnorm_layers(model):
            reference_layer = dict(batchnorm_layers(reference))[name]
            torch.testing.assert_close(layer.weight, reference_layer.weight, rtol=1e-6, atol=1e-7)
            torch.testing.assert_close(layer.bias, reference_layer.bias, rtol=1e-6, atol=1e-7)
    assert changed(before, tensors(model)) == {'features.1.weight', 'features.1.bias',
                                               'features.4.weight', 'features.4.bias'}
    assert all(p.requires_grad for p in model.parameters()) and not model.training


def test_tent_on_a_ubna_network_minimises_the_entropy_of_its_19_classes(ubna_network):
    model, reference = copy.deepcopy(ubna_network), copy.deepcopy(ubna_network)
    images = torch.randn(1, 3, 64, 64)
    logits = build_online_method('tent', model)(images)
    expected, _ = tent_reference_step(reference, images, 1e-3, classes=19)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


def test_episodic_reset_restores_the_source_before_every_batch():
    model = small_net()
    method = build_online_method('bn_ema', model, reset='episodic')
    first = method(BATCHES[0])
    method(BATCHES[1])
    assert torch.equal(method(BATCHES[0]), first)
    method.reset()
    assert not changed(tensors(small_net()), tensors(model))


def test_every_call_is_timed_after_the_first():
    method = build_online_method('cbna', small_net())
    assert math.isnan(method.ms_per_image)
    for images in BATCHES:
        method(images)
    assert method.timed_images == 4 and method.ms_per_image > 0


@pytest.mark.parametrize('name, settings, setting, problem', [
    ('nope', {}, 'method', "must be one of bn_ema, cbna, cotta, dua, eata, eta, none, rotta, sar, tent, test_batch, "
             "ubna_online, got 'nope'"),
    ('cbna', {'learning_rate': 1e-3}, 'learning_rate', 'is not a setting of cbna (its settings: momentum)'),
    ('cbna', {'momentum': 0.0}, 'momentum', 'must be in (0, 1], got 0.0'),
    ('bn_ema', {'momentum': 1.5}, 'momentum', 'must be in (0, 1], got 1.5'),
    ('tent', {'learning_rate': math.nan}, 'learning_rate', 'must be a positive finite number, got nan'),
    ('tent', {'learning_rate': math.inf}, 'learning_rate', 'must be a positive finite number, got inf'),
    ('ubna_online', {'alpha_batch': -1.0}, 'alpha_batch', 'must be a finite number of 0 or more, got -1.0'),
    ('dua', {'augmentations': 0}, 'augmentations', 'must be at least 1, got 0'),
    ('dua', {'momentum': 1.0, 'min_momentum': 0.5}, 'min_momentum',
     'plus momentum × decay must be at most 1, got 1.44'),
    ('none', {'reset': 'sometimes'}, 'reset', "must be one of episodic, continual, got 'sometimes'"),
])
def test_bad_settings_name_the_setting(name, settings, setting, problem):
    with pytest.raises(SettingError) as error:
        build_online_method(name, small_net(), **settings)
    assert (error.value.setting, error.value.problem) == (setting, problem)
    assert isinstance(error.value, ValueError) and str(error.value) == f'{setting} {problem}'


@pytest.fixture(scope='module')
def deeplab():
    """torchvision's DeepLabV3 with a MobileNetV3 backbone, random weights (nothing is downloaded)."""
    from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large
    torch.manual_seed(0)
    return with_source_statistics(deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None))


def backbone_layers(model) -> list:
    return batchnorm_layers(model, 'backbone.')


def test_offline_schedules_adapt_any_network_by_its_batchnorm_names(deeplab):
    model = copy.deepcopy(deeplab)
    layers = backbone_layers(model)
    assert 0 < len(layers) < len(batchnorm_layers(model))  # the classifier's layers are left out
    before, expected = tensors(model), statistics(model, layers)
    batches = [torch.randn(2, 3, 64, 64) * (1 + k) + k for k in range(2)]
    batch_statistics = [train_mode_statistics(model, images, backbone_layers) for images in batches]

    rows = adapt_batchnorm(model, batches, 'batch_shrinking', 0.1, 0.3, 0.0, show_progress=False, layers=layers)

    for k, batch in enumerate(batch_statistics):
        expected = moved(expected, batch, [0.1 * math.exp(-0.3 * k)] * len(layers))
    for name, (mean, var) in statistics(model, layers).items():
        torch.testing.assert_close(mean, expected[name][0], rtol=1e-5, atol=1e-6, msg=name)
        torch.testing.assert_close(var, expected[name][1], rtol=1e-5, atol=1e-6, msg=name)
    assert len(rows) == 2 * len(layers)
    assert all(key.startswith('backbone.') and key.endswith(('running_mean', 'running_var', 'num_batches_tracked'))
               for key in changed(before, tensors(model)))


def test_online_methods_wrap_any_network_and_adapt_only_the_chosen_layers(deeplab):
    model = copy.deepcopy(deeplab)
    layers = backbone_layers(model)
    before, source = tensors(model), statistics(model, layers)
    images = torch.randn(2, 3, 64, 64)
    seen, hooks = record_inputs(layers)
    logits = build_online_method('cbna', model, layers=layers)(images)
    for hook in hooks:
        hook.remove()
    expected = moved(source, {name: mean_and_variance(inputs[0]) for name, inputs in seen.items()}, [0.2] * len(layers))
    for name, (mean, var) in statistics(model, layers).items():
        torch.testing.assert_close(mean, expected[name][0], rtol=1e-5, atol=1e-6, msg=name)
        torch.testing.assert_close(var, expected[name][1], rtol=1e-5, atol=1e-6, msg=name)
    assert logits.shape == (2, 21, 64, 64)
    torch.testing.assert_close(logits, eval_logits(model, images)['out'], rtol=1e-4, atol=1e-4)

    model = copy.deepcopy(deeplab)
    build_online_method('tent', model, layers=backbone_layers(model))(images)
    assert changed(before, tensors(model)) == {f'{name}.{kind}' for name, _ in layers for kind in ('weight', 'bias')}


def test_layers_of_another_model_are_refused():
    with pytest.raises(ValueError, match='pairs of the model itself'):
        build_online_method('tent', small_net(), layers=batchnorm_layers(small_net()))


def test_the_readme_example_runs_as_printed():
    readme = open(os.path.join(REPO, 'README.md')).read()
    section = readme[readme.index('### The API, on any BatchNorm network'):]
    start = section.index('```python\n') + len('```python\n')
    namespace = {}
    exec(section[start:section.index('```', start)], namespace)
    assert namespace['logits'].shape == (1, 21, 64, 128)
    assert namespace['cbna'].settings == {'momentum': 0.2, 'reset': 'episodic'}
