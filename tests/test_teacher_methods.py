"""cotta and rotta: the mean teacher's EMA, CoTTA's stochastic restore and anchor switch, RoTTA's robust BatchNorm
and memory, which tensors change, episodic against continual, bad settings, and runs through evaluate.main."""
import copy
import json
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import evaluate
from arguments import parse_evaluation_arguments
from models.adaptation import build_online_method
from models.adaptation.cotta import SCALES, scaled_side
from models.adaptation.rotta import Memory
from tests.support import SmallNet, with_source_statistics

pytestmark = pytest.mark.usefixtures('one_thread', 'no_network')  # conftest.py

BATCHES = [torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(k)) * (1 + k) + k for k in range(3)]



def small_net():
    torch.manual_seed(0)
    return with_source_statistics(SmallNet(), seed=None)  # the statistics' draws follow the weights'


def tensors(model) -> dict:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def changed(before: dict, after: dict) -> set:
    return {name for name in before if not torch.equal(before[name], after[name])}


STATISTICS = {f'features.{i}.{key}' for i in (1, 4) for key in ('running_mean', 'running_var', 'num_batches_tracked')}
AFFINE = {f'features.{i}.{key}' for i in (1, 4) for key in ('weight', 'bias')}


# --- cotta


def test_cotta_teacher_follows_the_student_by_ema_and_every_weight_moves():
    model = small_net()
    source = tensors(model)
    method = build_online_method('cotta', model, learning_rate=1e-2, restore_probability=0, anchor_threshold=0)
    method(BATCHES[0])
    student, teacher, anchor = tensors(model), tensors(method.teacher), tensors(method.anchor)
    # every parameter but a bias that batch statistics cancel, no running statistic
    assert changed(source, student) == set(source) - STATISTICS - {'features.0.bias'}
    assert not changed(source, anchor)
    for name in set(source) - STATISTICS:
        torch.testing.assert_close(teacher[name], 0.999 * source[name] + 0.001 * student[name], rtol=0, atol=1e-7)
    for name in STATISTICS:
        assert torch.equal(teacher[name], source[name])


def test_cotta_restores_exactly_the_drawn_entries_to_their_source_values():
    plain = small_net()
    build_online_method('cotta', plain, learning_rate=1e-2, restore_probability=0, anchor_threshold=0)(BATCHES[0])
    model = small_net()
    source = tensors(model)
    method = build_online_method('cotta', model, learning_rate=1e-2, restore_probability=0.3, anchor_threshold=0)
    torch.manual_seed(5)
    method(BATCHES[0])  # its only random draws: one mask per parameter, in parameters() order
    torch.manual_seed(5)
    for (name, parameter), stepped in zip(model.named_parameters(), plain.parameters()):
        drawn = torch.rand(parameter.shape) < 0.3
        assert 0 < drawn.sum() < drawn.numel()
        assert torch.equal(parameter, torch.where(drawn, source[name], stepped)), name


def augmented_by_hand(teacher, images):
    """14 separate passes, each view back to the input size; the mean of their class probabilities."""
    total = 0
    for scale in SCALES:
        size = tuple(scaled_side(side, scale) for side in images.shape[-2:])
        for flip in (False, True):
            view = F.interpolate(images, size, mode='bilinear', align_corners=False) if size != (64, 64) else images
            with torch.no_grad():
                p = teacher(view.flip(-1) if flip else view).softmax(1)
            p = p.flip(-1) if flip else p
            total = total + (F.interpolate(p, (64, 64), mode='bilinear', align_corners=False)
                             if size != (64, 64) else p)
    return total / 14


def test_cotta_target_is_the_plain_prediction_where_the_anchor_is_confident_else_the_augmented_average():
    model = small_net()
    method = build_online_method('cotta', model, layers=[], anchor_threshold=0)  # eval mode: one pass = separate ones
    images = BATCHES[1]
    with torch.no_grad():
        plain = model(images).softmax(1)
        confidence = model(images).softmax(1).amax(1, keepdim=True)  # the anchor is the untouched source
    threshold = confidence.median().item()
    torch.testing.assert_close(method.teacher_target(images), plain, rtol=0, atol=0)
    method.settings['anchor_threshold'] = 1.0  # no pixel is confident
    average = augmented_by_hand(method.teacher, images)
    torch.testing.assert_close(method.teacher_target(images), average, rtol=1e-5, atol=1e-6)
    method.settings['anchor_threshold'] = threshold
    target = method.teacher_target(images)
    unsure = (confidence < threshold).expand_as(plain)
    assert 0 < unsure.float().mean() < 1
    torch.testing.assert_close(target[~unsure], plain[~unsure], rtol=0, atol=0)
    torch.testing.assert_close(target[unsure], average[unsure], rtol=1e-5, atol=1e-6)


def test_cotta_episodic_starts_every_batch_from_the_source_and_continual_carries_on():
    outputs = {}
    for reset in ('episodic', 'continual'):
        method = build_online_method('cotta', small_net(), reset=reset, learning_rate=1e-2)
        outputs[reset] = [method(batch) for batch in BATCHES[:2]]
    fresh = build_online_method('cotta', small_net(), learning_rate=1e-2)(BATCHES[1])
    torch.testing.assert_close(outputs['episodic'][1], fresh, rtol=0, atol=0)
    assert not torch.allclose(outputs['continual'][1], fresh)
    torch.testing.assert_close(outputs['episodic'][0], outputs['continual'][0], rtol=0, atol=0)


def test_cotta_reset_restores_student_teacher_and_optimiser():
    model = small_net()
    source = tensors(model)
    method = build_online_method('cotta', model, learning_rate=1e-2)
    method(BATCHES[0])
    method.reset()
    assert not changed(source, tensors(model)) and not changed(source, tensors(method.teacher))
    assert not method.optimizer.state


# --- rotta


def test_rotta_memory_keeps_classes_balanced_and_evicts_the_oldest_or_least_certain():
    memory = Memory(capacity=4, classes=2)  # at most 2 per class
    for category, uncertainty in ((0, 0.1), (0, 0.5), (1, 0.1), (1, 0.1)):
        memory.add(torch.tensor(uncertainty), category, uncertainty)
    memory.add(torch.tensor(0.0), 0, 0.0)  # class 0 full: its most uncertain item goes
    assert [[item[1] for item in items] for items in memory.items] == [[0.1, 0.0], [0.1, 0.1]]
    memory.add(torch.tensor(0.9), 1, 0.9)  # class 1 full, the newcomer scores worse than both: refused
    assert [len(items) for items in memory.items] == [2, 2] and [item[2] for item in memory.items[1]] == [4, 3]
    memory.add(torch.tensor(0.1), 1, 0.1)  # equal uncertainty: the older item of class 1 goes
    assert [item[2] for item in memory.items[1]] == [4, 1]

    memory = Memory(capacity=3, classes=2)  # 1.5 per class
    for category in (0, 0, 1):
        memory.add(torch.tensor(0.0), category, 0.2)
    memory.add(torch.tensor(0.0), 1, 0.2)  # full: the majority class gives up its oldest item
    assert [len(items) for items in memory.items] == [1, 2] and memory.items[0][0][2] == 3
    assert [age for _, age in memory.contents()] == [3 / 3, 2 / 3, 1 / 3]


def test_rotta_changes_nothing_before_its_first_update():
    model = small_net()
    source = tensors(model)
    method = build_online_method('rotta', model, update_frequency=5)
    with torch.no_grad():
        expected = model(BATCHES[0])
    torch.testing.assert_close(method(BATCHES[0]), expected, rtol=0, atol=0)  # the teacher, as loaded
    assert not changed(source, tensors(model)) and not changed(source, tensors(method.teacher))
    assert sum(len(items) for items in method.memory.items) == 2
    assert method.diagnostics() == {'updates': 0}


def test_rotta_update_uses_robust_batchnorm_and_moves_the_teacher_by_ema():
    model = small_net()
    source = tensors(model)
    method = build_online_method('rotta', model, memory_size=2, update_frequency=2, momentum=0.3, learning_rate=0.1)
    seen = {name: [] for name, _ in method.layers}
    hooks = [layer.register_forward_pre_hook(lambda m, inputs, name=name: seen[name].append(inputs[0].clone()))
             for name, layer in method.layers]  # the student runs only in the update
    method(BATCHES[0])
    for hook in hooks:
        hook.remove()
    assert method.diagnostics() == {'updates': 1}
    student, teacher = tensors(model), tensors(method.teacher)
    assert changed(source, student) == STATISTICS - {'features.1.num_batches_tracked',
                                                     'features.4.num_batches_tracked'} | AFFINE
    assert changed(source, teacher) == changed(source, student)
    for name, (x,) in seen.items():
        variance, mean = torch.var_mean(x.double(), dim=(0, 2, 3), unbiased=False)
        expected_mean = 0.7 * source[f'{name}.running_mean'].double() + 0.3 * mean
        expected_var = 0.7 * source[f'{name}.running_var'].double() + 0.3 * variance
        torch.testing.assert_close(student[f'{name}.running_mean'].double(), expected_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(student[f'{name}.running_var'].double(), expected_var, rtol=1e-5, atol=1e-6)
    for name in AFFINE:
        torch.testing.assert_close(teacher[name], 0.999 * source[name] + 0.001 * student[name], rtol=0, atol=1e-7)
    assert not torch.equal(teacher['features.1.running_mean'], student['features.1.running_mean'])  # own pass


def test_rotta_episodic_differs_from_continual():
    outputs = {}
    for reset in ('episodic', 'continual'):
        torch.manual_seed(1)
        method = build_online_method('rotta', small_net(), reset=reset, memory_size=4, update_frequency=2,
                                     learning_rate=0.1)
        outputs[reset] = [method(batch) for batch in BATCHES]
    torch.testing.assert_close(outputs['episodic'][0], outputs['continual'][0], rtol=0, atol=0)
    assert not torch.allclose(outputs['episodic'][2], outputs['continual'][2])


# --- settings and evaluate.py


@pytest.mark.parametrize('flags, message', [
    (['--online-method', 'cotta', '--online-restore-probability', '1.5'],
     '--online-restore-probability must be in [0, 1], got 1.5'),
    (['--online-method', 'cotta', '--online-ema', '1'], '--online-ema must be in [0, 1), got 1.0'),
    (['--online-method', 'rotta', '--online-memory-size', '0'],
     '--online-memory-size must be a whole number of at least 1, got 0'),
    (['--online-method', 'rotta', '--online-anchor-threshold', '0.5'],
     '--online-anchor-threshold does not apply to --online-method rotta'),
])
def test_bad_settings_get_one_sentence_naming_the_flag(capsys, flags, message):
    with pytest.raises(SystemExit):
        parse_evaluation_arguments(['--model-load', 'x/checkpoints/epoch_0', *flags])
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f'evaluate.py: error: {message}')


CS, KITTI = 'cityscapes_validation', 'kitti_2015_train'
SOURCE = 'tiny/source/checkpoints/epoch_0'
JOB = ['--model-type', 'resnet', '--model-num-layers', '18', '--sys-cpu', '--sys-num-workers', '0',
       '--experiment-class', 'tiny', '--model-load', SOURCE, '--segmentation-eval-num-images', '0',
       '--segmentation-validation-resize-height', '64', '--segmentation-validation-resize-width', '128']
SMALL = {'cotta': [], 'rotta': ['--online-memory-size', '2', '--online-update-frequency', '2']}



# the fast tier's cotta skips the 14 views (threshold 0); the slow stream runs them
@pytest.mark.parametrize('name, flags', [('cotta', ['--online-anchor-threshold', '0']), ('rotta', SMALL['rotta'])])
def test_evaluate_adapts_one_domain(untrained_roots, name, flags):
    results = evaluate.main(JOB + ['--model-name', f'{name}_one', '--segmentation-validation-loaders', CS,
                                   '--online-method', name, *flags])
    online = results['online']
    assert online['method'] == name and online['settings']['reset'] == 'continual'
    assert 0 <= results['domains']['cityscapes']['none']['miou'] <= 1 and online['ms_per_image_adapting'] > 0
    assert (online['diagnostics'] == {}) if name == 'cotta' else (online['diagnostics']['updates'] >= 1)


@pytest.mark.slow  # a stream of two domains, twice
@pytest.mark.parametrize('name', ['cotta', 'rotta'])
def test_evaluate_adapts_a_stream_of_two_domains(untrained_roots, name):
    results = evaluate.main(JOB + ['--model-name', f'{name}_stream', '--segmentation-validation-loaders',
                                   f'{CS},{KITTI}', '--online-method', name, '--online-rounds', '2', *SMALL[name]])
    online = results['online']
    assert [(e['round'], e['domain']) for e in online['stream']] == [(1, CS), (1, KITTI), (2, CS), (2, KITTI)]
    assert online['stream'][0]['miou'] != online['stream'][2]['miou']  # continual: round 2 starts adapted
    assert json.load(open(os.path.join(untrained_roots, 'tiny', f'{name}_stream', 'results.json'))) == results
