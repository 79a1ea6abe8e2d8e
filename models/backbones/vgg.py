"""torchvision's VGG with BatchNorm, module for module, without its ImageNet head (avgpool, classifier), and its
encoder: the vgg family of --model-type.

The modules have torchvision's names, so state_dict keys, ImageNet weights and published checkpoints fit; a seeded
scratch network draws torchvision's kaiming numbers in torchvision's order (tests/test_models.py compares both).
"""
import torch
import torch.nn as nn

from models.backbones import Backbone, count_conv_weights, register
from models.layers import BatchNorm2d, StagedEncoder

# torchvision's IMAGENET1K_V1 weights: what pretrained=True meant in the reference (file names end in a hash prefix)
IMAGENET_WEIGHTS = {  # depth -> URL
    11: 'https://download.pytorch.org/models/vgg11_bn-6002323d.pth',
    13: 'https://download.pytorch.org/models/vgg13_bn-abd245e5.pth',
    16: 'https://download.pytorch.org/models/vgg16_bn-6c64b313.pth',
    19: 'https://download.pytorch.org/models/vgg19_bn-c79401a0.pth',
}

VGG_CONFIGS = {  # output channels of each 3x3 conv (+ BatchNorm + ReLU); 'M' a 2x2 max-pool
    11: (64, 'M', 128, 'M', 256, 256, 'M', 512, 512, 'M', 512, 512, 'M'),
    13: (64, 64, 'M', 128, 128, 'M', 256, 256, 'M', 512, 512, 'M', 512, 512, 'M'),
    16: (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M', 512, 512, 512, 'M'),
    19: (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 256, 'M', 512, 512, 512, 512, 'M', 512, 512, 512, 512, 'M'),
}


class VGG(nn.Module):
    """VGG-bn `features`; no avgpool and classifier (about 120 M weights that segmentation never uses)."""

    def __init__(self, num_layers: int):
        super().__init__()
        layers, channels = [], 3
        for value in VGG_CONFIGS[num_layers]:
            if value == 'M':
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(channels, value, kernel_size=3, padding=1), BatchNorm2d(value),
                           nn.ReLU(inplace=True)]
                channels = value
        self.features = nn.Sequential(*layers)

    def initialise(self) -> None:
        """torchvision's initialisation of the features (without the default init's draws: VGG was always built on
        the meta device first, never materialising the classifier)."""
        for module in self.features.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode='fan_out', nonlinearity='relu')
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                module.reset_parameters()


def build(num_layers: int, device: torch.device, initialise: bool) -> VGG:
    """VGG-bn features on `device`, with torchvision's initialisation or (for a checkpoint to fill) the modules'."""
    if not initialise:
        with torch.device(device):
            return VGG(num_layers)
    with torch.device('meta'):  # as always: the seeded draws of a scratch VGG are torchvision's kaiming ones alone
        vgg = VGG(num_layers)
    vgg.to_empty(device=device)
    vgg.initialise()
    return vgg


class VggEncoder(StagedEncoder):
    """VGG-bn features split after each max-pool; `encoder.conv1..conv5` alias the slices (published keys)."""

    def __init__(self, vgg: nn.Module, num_layers: int | None = None):  # num_layers: unused (the vgg knows it)
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


def checkpoint_depth(state: dict, prefix: str) -> int | None:
    """The depth that the convolutions under `prefix` show (None without any), under either name of the aliases,
    plus the three classifier layers."""
    convs = max(count_conv_weights(state, prefix, r'features\.\d+\.weight'),
                count_conv_weights(state, prefix, r'conv[1-5]\.\d+\.weight'))
    return convs + 3 if convs else None


register(Backbone(
    family='vgg', depths=tuple(VGG_CONFIGS), default_depth=16, depth_flag='--model-num-layers-vgg',
    depth_help='VGG depth (with BatchNorm)', build=build, encoder=VggEncoder, imagenet_urls=IMAGENET_WEIGHTS,
    torchvision_name=lambda num_layers: f'vgg{num_layers}_bn', imagenet_head=('classifier.',),
    checkpoint_depth=checkpoint_depth))
