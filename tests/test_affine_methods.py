"""The affine methods (tent, eta, eata, sar) on tiny networks with fixed batches: EATA's filters and weights and SAR's
sharpness-aware step and recovery by hand, which tensors change, episodic against continual, the Fisher penalty from
batches, GroupNorm and LayerNorm layers; evaluate.py with each method on one domain and on a stream; bad input."""
import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import evaluate
from arguments import parse_evaluation_arguments
from models.adaptation import build_online_method
from models.adaptation.eata import eata_loss
from models.adaptation.tent import pixel_entropies

pytestmark = pytest.mark.usefixtures('one_thread', 'no_network')  # conftest.py

AFFINE = ['tent', 'eta', 'eata', 'sar']
BATCHES = [torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(k)) * (1 + k) + k for k in range(3)]
# margins that keep some pixels of the tiny networks' nearly uniform predictions over 4 classes
LOOSE = {'eta': {'entropy_margin': 1.0, 'redundancy_margin': 1.0}, 'eata': {'entropy_margin': 1.0,
         'redundancy_margin': 1.0}, 'sar': {'entropy_margin': 1.0}, 'tent': {}}


class NormNet(nn.Module):
    """conv-BatchNorm, conv-GroupNorm, conv-LayerNorm (over channels) and a 1×1 conv to 4 classes."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv1, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.gn = nn.Conv2d(8, 8, 3, padding=1), nn.GroupNorm(2, 8)
        self.conv3, self.ln = nn.Conv2d(8, 8, 1), nn.LayerNorm(8)
        self.head = nn.Conv2d(8, 4, 1)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-1, 1)
            self.bn.running_var.uniform_(0.5, 2)
            self.head.weight.mul_(8)  # confident enough that some pixels pass E0
        self.eval()

    def forward(self, x):
        x = F.relu(self.bn(self.conv1(x)))
        x = F.relu(self.gn(self.conv2(x)))
        x = self.ln(self.conv3(x).movedim(1, -1)).movedim(-1, 1)
        return self.head(F.relu(x))


def tensors(model) -> dict:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def changed(before: dict, after: dict) -> set:
    return {name for name in before if not torch.equal(before[name], after[name])}


AFFINE_TENSORS = {f'{layer}.{kind}' for layer in ('bn', 'gn', 'ln') for kind in ('weight', 'bias')}


def test_eata_filters_and_weights_pixels_by_hand():
    # 1 image, 3 classes, 1×3 pixels: confident class 0, confident class 1, uniform
    logits = torch.tensor([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 0.0]]).T.reshape(1, 3, 1, 3)
    p = torch.tensor([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0]]).softmax(1)
    h = -(p * p.log()).sum(1)
    margin = 0.4 * math.log(3)
    assert h.max() < margin < math.log(3)  # the uniform pixel is unreliable
    loss, kept, weights, mean = eata_loss(logits, margin, 0.05, None)
    assert kept.tolist() == [True, True, False]  # the first batch: the entropy filter alone
    torch.testing.assert_close(weights[:2], torch.exp(margin - h))
    torch.testing.assert_close(loss, (h * torch.exp(margin - h)).mean())
    torch.testing.assert_close(mean, p.mean(0))
    # a running mean along class 0: the class-0 pixel is redundant, the class-1 pixel nearly orthogonal to it
    running = torch.tensor([1.0, 0.0, 0.0])
    cosines = F.cosine_similarity(p, running[None], dim=1)
    assert cosines[0] > 0.05 > cosines[1]
    loss, kept, _, mean = eata_loss(logits, margin, 0.05, running)
    assert kept.tolist() == [False, True, False]
    torch.testing.assert_close(loss, h[1] * torch.exp(margin - h[1]))
    torch.testing.assert_close(mean, 0.9 * running + 0.1 * p[1])
    loss, kept, _, mean = eata_loss(logits, 0.01, 0.05, running)  # nothing reliable: no loss, the mean stays
    assert loss is None and not kept.any() and torch.equal(mean, running)


@pytest.mark.parametrize('name', AFFINE)
def test_affine_methods_change_only_normalisation_scale_and_shift_of_any_kind(name):
    model = NormNet()
    before = tensors(model)
    method = build_online_method(name, model, **LOOSE[name])
    assert [n for n, _ in method.layers] == ['bn', 'gn', 'ln']
    for images in BATCHES:
        logits = method(images)
    assert logits.shape == (2, 4, 8, 8) and torch.isfinite(logits).all()
    assert changed(before, tensors(model)) == AFFINE_TENSORS  # running statistics and convolutions stay
    assert not model.training and all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize('name', AFFINE)
def test_episodic_and_continual_differ(name):
    runs = {}
    for reset in ('episodic', 'continual'):
        method = build_online_method(name, NormNet(), reset=reset, **LOOSE[name])
        runs[reset] = [method(images) for images in BATCHES]
    torch.testing.assert_close(runs['episodic'][0], runs['continual'][0])
    assert not torch.allclose(runs['episodic'][-1], runs['continual'][-1])


@pytest.mark.parametrize('name', AFFINE)
def test_a_network_without_affine_normalisation_is_refused(name):
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, affine=False), nn.GroupNorm(2, 4, affine=False))
    with pytest.raises(ValueError, match=f'^{name} needs normalisation layers .* with affine parameters'):
        build_online_method(name, model)


def test_eta_keeps_no_redundant_pixel_after_the_first_batch():
    method = build_online_method('eta', NormNet(), entropy_margin=1.0)
    for images in BATCHES:
        method(images)
    assert method.kept_fraction[0] > 0.5 and max(method.kept_fraction[1:]) < method.kept_fraction[0]
    assert method.diagnostics() == {'kept_pixel_fraction': pytest.approx(sum(method.kept_fraction) / len(BATCHES))}
    assert method.running_mean is not None
    method.reset()
    assert method.running_mean is None


def fisher_by_hand(model, batches) -> dict:
    """EATA's Fisher: the mean over batches of the squared gradient of the cross-entropy against the argmax."""
    model = copy.deepcopy(model)
    model.bn.train()
    model.bn.track_running_stats = False
    sums = {}
    for images in batches:
        model.zero_grad()
        logits = model(images)
        F.cross_entropy(logits, logits.argmax(1)).backward()
        for name in AFFINE_TENSORS:
            grad = model.get_parameter(name).grad
            sums[name] = sums.get(name, 0) + grad.square()
    return {name: total / len(batches) for name, total in sums.items()}


def test_eata_takes_its_fisher_from_batches_and_penalises_the_move_from_the_source():
    fisher = fisher_by_hand(NormNet(), BATCHES[:2])
    eata = build_online_method('eata', NormNet(), fisher_batches=iter(BATCHES[:2]), **LOOSE['eata'])
    names = [f'{layer}.{kind}' for layer in ('bn', 'gn', 'ln') for kind in ('weight', 'bias')]
    for name, value in zip(names, eata.fisher):
        torch.testing.assert_close(value, fisher[name], rtol=1e-4, atol=1e-9, msg=name)
    eata(BATCHES[2])  # at the source the penalty is zero: the first step is eta's
    eta = build_online_method('eta', NormNet(), **LOOSE['eta'])
    eta(BATCHES[2])
    torch.testing.assert_close(tensors(eata.model), tensors(eta.model))
    weights = {name: build_online_method('eata', NormNet(), fisher_batches=BATCHES[:2], fisher_weight=beta,
                                         **LOOSE['eata']) for name, beta in (('none', 0.0), ('strong', 1e4))}
    moves = {}
    for name, method in weights.items():
        for images in BATCHES * 3:
            method(images)
        moves[name] = sum((p - a).abs().sum() for p, a in zip(method.parameters, method.anchors)).item()
    assert 0 < moves['strong'] < moves['none']
    without = build_online_method('eata', NormNet(), **LOOSE['eata'])  # no batches: the first test batch's
    without(BATCHES[0])
    first = fisher_by_hand(NormNet(), BATCHES[:1])
    torch.testing.assert_close(without.fisher[0], first['bn.weight'], rtol=1e-4, atol=1e-9)


def sar_by_hand(model, images, margin, rho, learning_rate):
    """SAR's step written out: the reliable pixels' entropy, the perturbation, the second pass, SGD at θ."""
    model = copy.deepcopy(model)
    model.bn.train()
    model.bn.track_running_stats = False
    params = [model.get_parameter(name) for name in sorted(AFFINE_TENSORS)]
    entropies = pixel_entropies(model(images))
    reliable = entropies < margin
    grads = torch.autograd.grad(entropies[reliable].mean(), params)
    norm = torch.sqrt(sum(g.square().sum() for g in grads))
    with torch.no_grad():
        for p, g in zip(params, grads):
            p.add_(rho * g / (norm + 1e-12))
    second = pixel_entropies(model(images))[reliable]
    second_loss = second[second < margin].mean()
    grads2 = torch.autograd.grad(second_loss, params)
    with torch.no_grad():
        for p, g, g1 in zip(params, grads2, grads):
            p.sub_(rho * g1 / (norm + 1e-12))
            p.sub_(learning_rate * g)  # SGD's first step: the momentum buffer is the gradient
    return {name: p.detach() for name, p in zip(sorted(AFFINE_TENSORS), params)}, second_loss.item()


def test_sar_takes_the_sharpness_aware_step_of_two_explicit_passes():
    expected, loss = sar_by_hand(NormNet(), BATCHES[0], math.log(4), 0.05, 0.01)
    method = build_online_method('sar', NormNet(), entropy_margin=1.0, learning_rate=0.01)
    method(BATCHES[0])
    for name, value in expected.items():
        torch.testing.assert_close(method.model.get_parameter(name).detach(), value, rtol=1e-5, atol=1e-6, msg=name)
    assert method.ema == pytest.approx(loss, rel=1e-5) and method.recoveries == 0


def test_sar_goes_back_to_the_source_when_the_loss_average_falls_below_the_threshold():
    model = NormNet()
    source = tensors(model)
    method = build_online_method('sar', model, entropy_margin=1.0, reset_threshold=1e3)  # every EMA is below
    method(BATCHES[0])
    assert method.recoveries == 1 and changed(source, tensors(model)) == set()
    assert method.ema is not None  # kept across a recovery, as the authors' code keeps it
    low = build_online_method('sar', NormNet(), entropy_margin=1.0, reset_threshold=0.0)
    for images in BATCHES:
        low(images)
    assert low.recoveries == 0 and changed(source, tensors(low.model)) == AFFINE_TENSORS
    assert method.diagnostics() == {'reliable_pixel_fraction': 1.0, 'recoveries': 1}  # entropy ≤ ln 4 everywhere
    assert low.diagnostics() == {'reliable_pixel_fraction': 1.0, 'recoveries': 0}


def test_sar_leaves_out_the_last_stage_of_a_resnet():
    from models.ubna import build_model
    model = build_model('resnet', 18, 'scratch')
    names = [name for name, _ in build_online_method('sar', model).layers]
    assert len(names) == 15 and not any('layer4' in name for name in names)
    assert len(build_online_method('eta', model).layers) == 20


@pytest.mark.parametrize('flags, message', [
    (['--online-method', 'eta', '--online-entropy-margin', '0'], '--online-entropy-margin must be in (0, 1], got 0.0'),
    (['--online-method', 'eata', '--online-redundancy-margin', '2'],
     '--online-redundancy-margin must be in (0, 1], got 2.0'),
    (['--online-method', 'eata', '--online-fisher-weight', '-1'],
     '--online-fisher-weight must be a finite number of 0 or more, got -1.0'),
    (['--online-method', 'sar', '--online-rho', '0'], '--online-rho must be a positive finite number, got 0.0'),
    (['--online-method', 'sar', '--online-reset-threshold', '-1'],
     '--online-reset-threshold must be a finite number of 0 or more, got -1.0'),
    (['--online-method', 'eta', '--online-fisher-weight', '1'],
     '--online-fisher-weight does not apply to --online-method eta'),
    (['--online-method', 'eta', '--online-fisher-loaders', 'cityscapes_validation'],
     '--online-fisher-loaders applies only to --online-method eata, got eta'),
    (['--online-method', 'eata', '--online-fisher-loaders', 'nope'], '--online-fisher-loaders: '),
])
def test_bad_affine_flags_get_one_sentence_naming_the_flag(capsys, flags, message):
    with pytest.raises(SystemExit):
        parse_evaluation_arguments(['--model-load', 'x/y', *flags])
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f'evaluate.py: error: {message}')


SOURCE = 'tiny/source/checkpoints/epoch_0'
JOB = ['--model-type', 'resnet', '--model-num-layers', '18', '--sys-cpu', '--sys-num-workers', '0',
       '--experiment-class', 'tiny', '--model-load', SOURCE, '--segmentation-eval-num-images', '0',
       '--segmentation-validation-resize-height', '64', '--segmentation-validation-resize-width', '128']
STREAM = ['--segmentation-validation-loaders', 'cityscapes_validation,kitti_2015_train', '--online-rounds', '2']



DIAGNOSTICS = {'eata': ['kept_pixel_fraction'], 'eta': ['kept_pixel_fraction'],
               'sar': ['recoveries', 'reliable_pixel_fraction'], 'tent': []}


@pytest.mark.parametrize('name, flags', [
    ('eata', ['--online-fisher-loaders', 'kitti_2015_train']),
    pytest.param('sar', [], marks=pytest.mark.slow), pytest.param('eta', [], marks=pytest.mark.slow),
    pytest.param('tent', [], marks=pytest.mark.slow)])
def test_evaluate_adapts_with_each_affine_method_on_one_domain(untrained_roots, capsys, name, flags):
    results = evaluate.main(JOB + ['--model-name', f'{name}_one', '--online-method', name, *flags])
    assert results['online']['method'] == name and math.isfinite(results['online']['ms_per_image_adapting'])
    assert 0 <= results['domains']['cityscapes']['none']['miou'] <= 1
    out = capsys.readouterr().out
    assert f'adapting online with {name}' in out
    diagnostics = results['online']['diagnostics']  # also in the log line, 4 significant digits
    assert sorted(diagnostics) == DIAGNOSTICS[name]
    assert all(f'; {key.replace("_", " ")} ' in out for key in diagnostics)


@pytest.mark.slow  # four streamed evaluate.py runs
@pytest.mark.parametrize('name', AFFINE)
def test_evaluate_streams_two_domains_in_two_rounds_with_each_affine_method(untrained_roots, name):
    results = evaluate.main(JOB + STREAM + ['--model-name', f'{name}_stream', '--online-method', name])
    assert [(e['round'], e['domain']) for e in results['online']['stream'] if e['remap'] == 'none'] == [
        (1, 'cityscapes_validation'), (1, 'kitti_2015_train'), (2, 'cityscapes_validation'),
        (2, 'kitti_2015_train')]
