"""Encoders, decoder and the UBNA network: shapes, published keys, BatchNorm order, ImageNet weights loading."""
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torchvision

from errors import UserError
from models.backbones import IMAGENET_URLS
from models.backbones.resnet import ResNet
from models.backbones.vgg import VGG
from models.encoders import build_encoder
from models.ubna import build_model, encoder_batchnorm_layers
from tests.support import ALL_BACKBONES, REPO, published_bn_order, published_shapes

WIDE_RESNETS = (50, 101, 152)

pytestmark = pytest.mark.usefixtures('one_thread', 'no_network')  # conftest.py


@pytest.fixture
def hub_checkpoints(tmp_path, monkeypatch):
    """An empty torch hub cache under a temporary TORCH_HOME; returns its checkpoints folder."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    monkeypatch.setattr(torch.hub, '_hub_dir', None)  # an earlier torch.hub.set_dir would override TORCH_HOME
    folder = tmp_path / 'hub' / 'checkpoints'
    folder.mkdir(parents=True)
    return folder


@pytest.mark.parametrize('model_type,num_layers', ALL_BACKBONES)
def test_forward_shapes(model_type, num_layers):
    torch.manual_seed(0)
    model = build_model(model_type, num_layers, 'scratch').train()
    channels = (64, 256, 512, 1024, 2048) if num_layers in WIDE_RESNETS else model.common.encoder.channels
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        features = model.common.encoder(x)
        logits = model(x)
    assert [tuple(f.shape) for f in features] == [(2, c, 64 // s, 96 // s) for c, s in zip(channels, (2, 4, 8, 16, 32))]
    assert logits.shape == (2, 20, 64, 96)
    assert torch.isfinite(logits).all()


def decoder_as_the_reference_computes(model, x: torch.Tensor) -> torch.Tensor:
    """The logits computed step by step as the reference does: concatenate, pad, conv, ELU."""
    features = tuple(reversed(model.common.encoder(x)))
    x = features[0]
    for decoder in (model.common.decoder, model.seg.decoder):
        for step in decoder.steps:
            block, skip_index = decoder.blocks[f'step_{step}'], step // 2 + 1
            if step % 2 == 1:
                x = nn.functional.interpolate(x, scale_factor=2, mode='nearest')
                if skip_index < len(features):
                    x = torch.cat((x, features[skip_index]), 1)
            x = block.act(block.conv(block.pad(x)))
    return model.seg.multires(x)


@pytest.mark.parametrize('memory_format', [torch.contiguous_format, torch.channels_last])
def test_decoder_pads_the_parts_with_the_same_logits_and_gradients(memory_format):
    torch.manual_seed(0)
    model = build_model('resnet', 18, 'scratch', memory_format=memory_format).eval()  # eval: statistics stay put
    x = torch.randn(2, 3, 64, 128).to(memory_format=memory_format)
    weights = torch.randn(2, 20, 64, 128)
    gradients = []
    for forward in (model, lambda x: decoder_as_the_reference_computes(model, x)):
        model.zero_grad()
        logits = forward(x)
        (logits * weights).sum().backward()
        gradients.append([logits.detach()] + [parameter.grad.clone() for parameter in model.parameters()])
    assert all(torch.equal(ours, theirs) for ours, theirs in zip(*gradients))


@pytest.mark.parametrize('size', [(64, 80), (48, 64), (32, 64)])
def test_input_size_must_be_multiple_of_32(size):
    model = build_model('resnet', 18, 'scratch').eval()
    with pytest.raises(UserError, match='multiples of 32'):
        model(torch.zeros(1, 3, *size))


@pytest.mark.parametrize('model_type,num_layers,name', [('vgg', 16, 'vgg16'), ('resnet', 18, 'resnet18'),
                                                        ('resnet', 50, 'resnet50')])
def test_state_dict_equals_published_keys(model_type, num_layers, name):
    model = build_model(model_type, num_layers, 'scratch')
    expected = {k: v for k, v in published_shapes(name).items() if '.classifier.' not in k}
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected


@pytest.mark.parametrize('model_type,num_layers,name', [('vgg', 16, 'vgg16'), ('resnet', 18, 'resnet18'),
                                                        ('resnet', 50, 'resnet50')])
def test_batchnorm_order_matches_published(model_type, num_layers, name):
    layers = encoder_batchnorm_layers(build_model(model_type, num_layers, 'scratch'))
    assert all(isinstance(layer, nn.BatchNorm2d) for _, layer in layers)
    assert [(name, layer.num_features) for name, layer in layers] == published_bn_order(name)


def test_vgg_aliases_share_modules_and_imagenet_heads_are_gone():
    vgg = build_model('vgg', 16, 'scratch').common.encoder.encoder
    assert vgg.conv3[7] is vgg.features[21] and vgg.conv5[-1] is vgg.features[43]
    assert not hasattr(vgg, 'classifier') and not hasattr(vgg, 'avgpool')
    assert not hasattr(build_model('resnet', 18, 'scratch').common.encoder.encoder, 'fc')


@pytest.mark.parametrize('num_layers', [18, 50])
def test_seeded_resnet_equals_torchvision_and_draws_the_same_numbers(num_layers):
    torch.manual_seed(3)
    reference = torchvision.models.get_model(f'resnet{num_layers}', weights=None).train()
    after_reference = torch.rand(4)
    torch.manual_seed(3)
    ours = ResNet(num_layers).train()
    ours.initialise()
    assert torch.equal(torch.rand(4), after_reference)  # the same draws: later seeded numbers are unchanged too
    expected = {k: v for k, v in reference.state_dict().items() if not k.startswith('fc.')}
    assert list(ours.state_dict()) == list(expected)
    assert all(torch.equal(ours.state_dict()[k], v) for k, v in expected.items())
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        stem = reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))
        expected_out = reference.layer4(reference.layer3(reference.layer2(reference.layer1(stem))))
        out = ours.layer4(ours.layer3(ours.layer2(ours.layer1(ours.maxpool(ours.relu(ours.bn1(ours.conv1(x))))))))
    assert torch.equal(out, expected_out)


@pytest.mark.parametrize('num_layers', [11, pytest.param(16, marks=pytest.mark.slow)])  # 16: 1.5 s
def test_vgg_features_compute_as_torchvision(num_layers):
    torch.manual_seed(4)
    reference = torchvision.models.get_model(f'vgg{num_layers}_bn', weights=None).features.train()
    ours = VGG(num_layers).train()
    ours.features.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(ours.features(x), reference(x))
    assert all(torch.equal(ours.features.state_dict()[k], v) for k, v in reference.state_dict().items())


@pytest.mark.parametrize('name', sorted(IMAGENET_URLS))
def test_imagenet_urls_are_torchvisions(name):
    assert IMAGENET_URLS[name] == torchvision.models.get_model_weights(name).IMAGENET1K_V1.url


@pytest.mark.slow  # a fresh interpreter imports every entry point
def test_building_and_saving_a_network_imports_neither_torchvision_nor_dynamo(tmp_path):
    """Each import costs seconds (and torchvision hundreds of MB) at every start: the backbones are our own, and
    Adam (which imports torch._dynamo) is built only when training uses it."""
    code = ('import sys, adapt, evaluate, train, sweep\n'
            'from state_manager import StateManager\n'
            'StateManager("vgg", 11, "scratch")\n'
            f'StateManager("resnet", 18, "checkpoint").save({str(tmp_path)!r}, "batch_1")\n'
            'assert "torchvision" not in sys.modules, "torchvision was imported"\n'
            'assert "torch._dynamo" not in sys.modules, "torch._dynamo was imported"')
    subprocess.run([sys.executable, '-c', code], check=True, cwd=REPO)


def test_pretrained_resnet_loads_file_from_torch_hub_cache(hub_checkpoints):
    torch.manual_seed(1)
    imagenet = torchvision.models.resnet18().state_dict()
    torch.save(imagenet, hub_checkpoints / 'resnet18-f37072fd.pth')  # the name torchvision's weights URL ends in
    encoder = build_encoder('resnet', 18, 'pretrained')
    loaded = encoder.encoder.state_dict()
    assert set(loaded) == {k for k in imagenet if not k.startswith('fc.')}
    assert all(torch.equal(loaded[k], imagenet[k]) for k in loaded)


def test_pretrained_vgg_ignores_classifier_tensors(hub_checkpoints):
    torch.manual_seed(2)
    features = build_encoder('vgg', 11, 'scratch').encoder.features.state_dict()
    imagenet = {f'features.{k}': v for k, v in features.items()}
    # the ImageNet classifier at its real shapes, stored as expanded scalars to keep the file small
    for key, shape in [('classifier.0.weight', (4096, 25088)), ('classifier.6.bias', (1000,))]:
        imagenet[key] = torch.randn(()).expand(shape)
    torch.save(imagenet, hub_checkpoints / 'vgg11_bn-6002323d.pth')
    loaded = build_encoder('vgg', 11, 'pretrained').encoder.state_dict()
    assert all(torch.equal(loaded[k], imagenet[k]) for k in imagenet if k.startswith('features.'))


def test_pretrained_without_file_and_network_names_file_folder_and_scratch(hub_checkpoints):
    with pytest.raises(UserError) as error:
        build_encoder('resnet', 34, 'pretrained')
    message = str(error.value)
    assert 'resnet34-b627a593.pth' in message and str(hub_checkpoints) in message
    assert '--train-weights-init scratch' in message


def test_corrupt_cached_weights_are_reported(hub_checkpoints):
    (hub_checkpoints / 'resnet18-f37072fd.pth').write_bytes(b'not a torch file')
    with pytest.raises(UserError, match='resnet18-f37072fd.pth cannot be read'):
        build_encoder('resnet', 18, 'pretrained')


@pytest.mark.parametrize('model_type,num_layers,weights_init,flag', [
    ('densenet', 18, 'scratch', '--model-type'), ('resnet', 16, 'scratch', '--model-num-layers 16'),
    ('vgg', 18, 'scratch', '--model-num-layers-vgg 18'), ('resnet', 18, 'imagenet', '--train-weights-init')])
def test_bad_model_options(model_type, num_layers, weights_init, flag):
    with pytest.raises(UserError, match=flag):
        build_model(model_type, num_layers, weights_init)
