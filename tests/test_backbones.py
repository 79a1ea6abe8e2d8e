"""The backbone registry: one Backbone entry makes a family buildable, adaptable, checkpointable and selectable on
the command line."""
import dataclasses

import pytest
import torch
import torch.nn as nn

from arguments import encoder_depth, parse_evaluation_arguments, parse_training_arguments
from errors import UserError
from models.adaptation import adapt_batchnorm
from models.backbones import BACKBONES, Backbone, count_conv_weights, describe_architecture, register
from models.layers import BatchNorm2d, StagedEncoder
from models.ubna import build_model, encoder_batchnorm_layers
from state_manager import ENCODER_PREFIX, StateManager

TOY_CHANNELS = (4, 8, 8, 16, 16)


class ToyNet(nn.Module):
    """Five stages of `num_layers` conv-BatchNorm-ReLU units each; the first conv of a stage halves the size."""

    def __init__(self, num_layers: int):
        super().__init__()
        channels = 3
        for stage, width in enumerate(TOY_CHANNELS, start=1):
            units = []
            for unit in range(num_layers):
                units += [nn.Conv2d(channels, width, 3, stride=2 if unit == 0 else 1, padding=1, bias=False),
                          BatchNorm2d(width), nn.ReLU(inplace=True)]
                channels = width
            setattr(self, f'stage{stage}', nn.Sequential(*units))


class ToyEncoder(StagedEncoder):
    def __init__(self, net: ToyNet, num_layers: int):
        super().__init__()
        self.encoder = net
        self.channels = TOY_CHANNELS

    def stages(self) -> tuple:
        return tuple(getattr(self.encoder, f'stage{stage}') for stage in range(1, 6))


def build_toy(num_layers: int, device: torch.device, initialise: bool) -> ToyNet:
    with torch.device(device):
        net = ToyNet(num_layers)
    if initialise:
        for module in net.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode='fan_out', nonlinearity='relu')
    return net


TOY = Backbone(family='toy', depths=(1, 2), default_depth=1, depth_flag='--model-num-layers-toy',
               depth_help='toy depth', build=build_toy, encoder=ToyEncoder,
               checkpoint_depth=lambda state, prefix: count_conv_weights(state, prefix, r'stage1\.\d+\.weight') or None)


@pytest.fixture
def toy():
    """The toy family, registered for one test."""
    register(TOY)
    yield TOY
    del BACKBONES['toy']


@pytest.fixture
def root(tmp_path, monkeypatch):
    """A temporary UBNA_DIR_CHECKPOINT."""
    monkeypatch.setenv('UBNA_DIR_CHECKPOINT', str(tmp_path))
    return tmp_path


def test_the_families_register_in_file_name_order():
    assert list(BACKBONES) == ['resnet', 'vgg']
    assert BACKBONES['resnet'].depths == (18, 34, 50, 101, 152) and BACKBONES['vgg'].depths == (11, 13, 16, 19)


def test_a_family_registers_once():
    with pytest.raises(ValueError, match='registered twice'):
        register(dataclasses.replace(BACKBONES['vgg'], depth_flag='--model-num-layers-other'))
    with pytest.raises(ValueError, match='belongs to another family'):
        register(dataclasses.replace(BACKBONES['vgg'], family='other'))
    assert list(BACKBONES) == ['resnet', 'vgg']


def test_one_entry_builds_adapts_saves_and_restores_a_network(toy, root):
    torch.manual_seed(0)
    manager = StateManager('toy', 2, 'scratch')
    model = manager.model.eval()  # the statistics move in adaptation alone
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        assert [tuple(f.shape[1:]) for f in model.common.encoder(x)] == [
            (c, 64 // s, 96 // s) for c, s in zip(TOY_CHANNELS, (2, 4, 8, 16, 32))]
        assert model(x).shape == (2, 20, 64, 96)
    layers = encoder_batchnorm_layers(model)
    assert [name for name, _ in layers][:3] == ['common.encoder.encoder.stage1.1', 'common.encoder.encoder.stage1.4',
                                                'common.encoder.encoder.stage2.1'] and len(layers) == 10
    adapt_batchnorm(model, [x, x], 'batch_shrinking', 0.1, 0.1, 0.0, show_progress=False)
    assert all(int(layer.num_batches_tracked) == 2 for _, layer in layers)
    assert describe_architecture(model.state_dict(), ENCODER_PREFIX) == 'toy2'

    manager.save(str(root / 'run'), 'batch_2')
    loaded = StateManager('toy', 2, 'checkpoint')
    loaded.load('run/checkpoints/batch_2', weights_only=True)
    saved_state, loaded_state = model.state_dict(), loaded.model.state_dict()
    assert list(loaded_state) == list(saved_state)
    assert all(torch.equal(loaded_state[key], value) for key, value in saved_state.items())

    path = root / 'run' / 'checkpoints' / 'batch_2' / 'model.pth'
    with pytest.raises(UserError, match=f'^{path} holds a toy2, but --model-num-layers-toy is 1$'):
        StateManager('toy', 1, 'checkpoint').load('run/checkpoints/batch_2', weights_only=True)
    with pytest.raises(UserError, match=f'^{path} holds a toy2, but --model-type is resnet$'):
        StateManager('resnet', 18, 'checkpoint').load('run/checkpoints/batch_2', weights_only=True)


def test_one_entry_gives_the_flags_and_their_checks(toy, capsys):
    opt = parse_evaluation_arguments(['--model-load', 'a/checkpoints/batch_1', '--model-type', 'toy',
                                      '--model-num-layers-toy', '2'])
    assert (opt.model_type, encoder_depth(opt)) == ('toy', 2)
    assert (opt.model_num_layers, opt.model_num_layers_vgg) == (18, 16)
    assert parse_training_arguments(['--model-type', 'toy']).model_num_layers_toy == 1
    with pytest.raises(SystemExit):
        parse_training_arguments(['--model-num-layers-toy', '3'])
    assert "argument --model-num-layers-toy: invalid choice: 3 (choose from 1, 2)" in capsys.readouterr().err
    with pytest.raises(UserError, match='^--model-num-layers-toy 3 is not available for toy; choose 1, 2$'):
        build_model('toy', 3, 'scratch')
    with pytest.raises(UserError, match='^--model-type other is not supported; choose resnet, vgg or toy$'):
        build_model('other', 1, 'scratch')
    with pytest.raises(UserError, match='no ImageNet weights are known for toy --model-num-layers-toy 1'):
        build_model('toy', 1, 'pretrained')


def test_a_family_may_state_its_batchnorm_order():
    def reversed_order(encoder, prefix):
        return list(reversed(TOY.batchnorm_layers(encoder, prefix)))

    register(dataclasses.replace(TOY, batchnorm_order=reversed_order))
    try:
        names = [name for name, _ in encoder_batchnorm_layers(build_model('toy', 1, 'scratch'))]
    finally:
        del BACKBONES['toy']
    assert names == [f'common.encoder.encoder.stage{stage}.1' for stage in range(5, 0, -1)]


def test_the_flags_forget_a_family_once_it_is_gone(capsys):
    with pytest.raises(SystemExit):
        parse_training_arguments(['--model-type', 'toy'])
    assert "argument --model-type: invalid choice: 'toy' (choose from 'resnet', 'vgg')" in capsys.readouterr().err
