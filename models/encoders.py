"""VGG-bn and ResNet encoders (torchvision's backbones) returning five feature maps at strides 2, 4, 8, 16, 32
(spec §5)."""
import itertools
import os
import urllib.parse

import torch
import torch.nn as nn

from errors import UserError, first_line
from models.backbones import IMAGENET_URLS, VGG, BatchNorm2d, ResNet

ENCODER_DEPTHS = {'vgg': (11, 13, 16, 19), 'resnet': (18, 34, 50, 101, 152)}
DEPTH_FLAGS = {'vgg': '--model-num-layers-vgg', 'resnet': '--model-num-layers'}
WEIGHTS_INITS = ('pretrained', 'scratch', 'checkpoint')  # checkpoint: not initialised, a checkpoint fills every tensor


def torchvision_name(model_type: str, num_layers: int) -> str:
    """The torchvision model name, e.g. 'vgg16_bn' or 'resnet18'."""
    return f'vgg{num_layers}_bn' if model_type == 'vgg' else f'resnet{num_layers}'


def imagenet_state_dict(name: str) -> dict:
    """The ImageNet weights of torchvision model `name`, from the torch hub cache or downloaded into it."""
    url = IMAGENET_URLS[name]
    file_name = os.path.basename(urllib.parse.urlparse(url).path)
    folder = os.path.join(torch.hub.get_dir(), 'checkpoints')
    was_cached = os.path.isfile(os.path.join(folder, file_name))
    try:
        return torch.hub.load_state_dict_from_url(url, progress=True, check_hash=True, weights_only=True)
    except Exception as exc:  # download and torch.load fail in many ways; all mean the same to the user
        if was_cached:
            raise UserError(f'the ImageNet weights file {os.path.join(folder, file_name)} cannot be read '
                            f'({first_line(exc)}); delete it to download it again, or use '
                            f'--train-weights-init scratch') from exc
        raise UserError(f'the ImageNet weights {file_name} are not in the torch hub folder {folder} and '
                        f'downloading them from {url} failed ({first_line(exc)}); place the file there '
                        f'or use --train-weights-init scratch') from exc


def _headless_vgg(num_layers: int, device: torch.device, initialise: bool) -> nn.Module:
    """VGG-bn features on `device`, with torchvision's initialisation or (for a checkpoint to fill) the modules'."""
    if not initialise:
        with torch.device(device):
            return VGG(num_layers)
    with torch.device('meta'):  # as always: the seeded draws of a scratch VGG are torchvision's kaiming ones alone
        vgg = VGG(num_layers)
    vgg.to_empty(device=device)
    vgg.initialise()
    return vgg


def _headless_resnet(num_layers: int, device: torch.device, initialise: bool) -> nn.Module:
    """ResNet without avgpool and fc on `device`, with torchvision's initialisation or (for a checkpoint to fill)
    the modules'."""
    with torch.device(device):
        resnet = ResNet(num_layers)
    if initialise:
        resnet.initialise()
    return resnet


def _load_imagenet(backbone: nn.Module, name: str) -> None:
    """Copy the ImageNet weights into a headless backbone, dropping the classifier tensors."""
    state = imagenet_state_dict(name)
    backbone.load_state_dict({k: v for k, v in state.items() if not k.startswith(('classifier.', 'fc.'))})


class StagedEncoder(nn.Module):
    """An encoder as five stages of modules, each stage ending at one of the strides 2, 4, 8, 16, 32."""

    def stages(self) -> tuple:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> list:
        """The output of every stage, finest first."""
        features = []
        for stage in self.stages():
            for module in stage:
                x = module(x)
            features.append(x)
        return features

    def statistics_pass(self, x: torch.Tensor) -> None:
        """Every module for the BatchNorm layers' sake, one after the other so that each output is freed once the
        next module has read it; on the CPU without autograd the BatchNorm layers write over their inputs (see
        BatchNorm2d: nothing else reads them here)."""
        layers = [module for module in self.modules() if isinstance(module, BatchNorm2d)]
        for layer in layers:
            layer.overwrite_input = True
        try:
            for module in itertools.chain.from_iterable(self.stages()):
                x = module(x)
        finally:
            for layer in layers:
                layer.overwrite_input = False


class VggEncoder(StagedEncoder):
    """VGG-bn features split after each max-pool; `encoder.conv1..conv5` alias the slices (published keys)."""

    def __init__(self, vgg: nn.Module):
        super().__init__()
        self.encoder = vgg
        features = vgg.features
        ends = [i + 1 for i, module in enumerate(features) if isinstance(module, nn.MaxPool2d)]
        for stage, (start, end) in enumerate(zip([0] + ends[:-1], ends), start=1):
            setattr(vgg, f'conv{stage}', nn.Sequential(*features[start:end]))
        self.channels = (64, 128, 256, 512, 512)

    def stages(self) -> tuple:
        vgg = self.encoder
        return vgg.conv1, vgg.conv2, vgg.conv3, vgg.conv4, vgg.conv5


class ResnetEncoder(StagedEncoder):
    """ResNet stages conv1-bn1-relu, maxpool+layer1, layer2, layer3, layer4."""

    def __init__(self, resnet: nn.Module, num_layers: int):
        super().__init__()
        self.encoder = resnet
        self.channels = (64, 256, 512, 1024, 2048) if num_layers > 34 else (64, 64, 128, 256, 512)

    def stages(self) -> tuple:
        net = self.encoder
        return (net.conv1, net.bn1, net.relu), (net.maxpool, *net.layer1), net.layer2, net.layer3, net.layer4


def build_encoder(model_type: str, num_layers: int, weights_init: str,
                  device: str | torch.device = 'cpu') -> nn.Module:
    """A VggEncoder or ResnetEncoder on `device`, ImageNet-initialised ('pretrained'), random as torchvision's
    ('scratch'), or with its modules' default initialisation ('checkpoint': a checkpoint will fill it)."""
    if model_type not in ENCODER_DEPTHS:
        raise UserError(f'--model-type {model_type} is not supported; choose resnet or vgg')
    if num_layers not in ENCODER_DEPTHS[model_type]:
        depths = ', '.join(map(str, ENCODER_DEPTHS[model_type]))
        raise UserError(f'{DEPTH_FLAGS[model_type]} {num_layers} is not available for {model_type}; choose {depths}')
    if weights_init not in WEIGHTS_INITS:
        raise UserError(f'--train-weights-init {weights_init} is not supported; choose pretrained or scratch')
    device, initialise = torch.device(device), weights_init != 'checkpoint'
    backbone = (_headless_vgg if model_type == 'vgg' else _headless_resnet)(num_layers, device, initialise)
    if weights_init == 'pretrained':
        _load_imagenet(backbone, torchvision_name(model_type, num_layers))
    return VggEncoder(backbone) if model_type == 'vgg' else ResnetEncoder(backbone, num_layers)
