"""torchvision's ResNet, module for module, without its ImageNet head (avgpool, fc), and its encoder: the
resnet family of --model-type.

The modules have torchvision's names, so state_dict keys, ImageNet weights and published checkpoints fit; their
construction and initialisation draw the same random numbers in the same order, so that a seeded scratch network
equals torchvision's (tests/test_models.py compares both). torchvision itself is not imported: its import takes
seconds and hundreds of MB, at every start of every job.
"""
import torch
import torch.nn as nn

from models.backbones import Backbone, count_conv_weights, matching_keys, register
from models.layers import BatchNorm2d, StagedEncoder

# torchvision's IMAGENET1K_V1 weights: what pretrained=True meant in the reference (file names end in a hash prefix)
IMAGENET_WEIGHTS = {  # depth -> URL
    18: 'https://download.pytorch.org/models/resnet18-f37072fd.pth',
    34: 'https://download.pytorch.org/models/resnet34-b627a593.pth',
    50: 'https://download.pytorch.org/models/resnet50-0676ba61.pth',
    101: 'https://download.pytorch.org/models/resnet101-63fe2227.pth',
    152: 'https://download.pytorch.org/models/resnet152-394f9c45.pth',
}
IMAGENET_CLASSES = 1000


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and a shortcut (ResNet-18/34)."""
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (with the stride, as torchvision's V1.5), 1x1 expand, and a shortcut (ResNet-50/101/152)."""
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


RESNET_BLOCKS = {18: (BasicBlock, (2, 2, 2, 2)), 34: (BasicBlock, (3, 4, 6, 3)), 50: (Bottleneck, (3, 4, 6, 3)),
                 101: (Bottleneck, (3, 4, 23, 3)), 152: (Bottleneck, (3, 8, 36, 3))}


class ResNet(nn.Module):
    """The stem (conv1, bn1, relu, maxpool) and layer1..layer4; no avgpool and fc."""

    def __init__(self, num_layers: int):
        super().__init__()
        block, counts = RESNET_BLOCKS[num_layers]
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, counts[0])
        self.layer2 = self._make_layer(block, 128, counts[1], stride=2)
        self.layer3 = self._make_layer(block, 256, counts[2], stride=2)
        self.layer4 = self._make_layer(block, 512, counts[3], stride=2)

    def initialise(self) -> None:
        """torchvision's initialisation, after its fc layer's default init (whose draws are repeated here)."""
        _draw_default_linear_init(self.inplanes, IMAGENET_CLASSES, self.conv1.weight.device)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode='fan_out', nonlinearity='relu')
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)

    def _make_layer(self, block, planes: int, count: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(_conv1x1(self.inplanes, planes * block.expansion, stride),
                                       BatchNorm2d(planes * block.expansion))
        blocks = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        blocks += [block(self.inplanes, planes) for _ in range(1, count)]
        return nn.Sequential(*blocks)


def _draw_default_linear_init(in_features: int, out_features: int, device: torch.device) -> None:
    """Draw what the default init of torchvision's fc layer draws (a uniform weight, then a uniform bias), so that
    the random numbers after it are the same."""
    torch.empty(out_features, in_features, device=device).uniform_()
    torch.empty(out_features, device=device).uniform_()


def build(num_layers: int, device: torch.device, initialise: bool) -> ResNet:
    """ResNet without avgpool and fc on `device`, with torchvision's initialisation or (for a checkpoint to fill)
    the modules'."""
    with torch.device(device):
        resnet = ResNet(num_layers)
    if initialise:
        resnet.initialise()
    return resnet


class ResnetEncoder(StagedEncoder):
    """ResNet stages conv1-bn1-relu, maxpool+layer1, layer2, layer3, layer4."""

    def __init__(self, resnet: nn.Module, num_layers: int):
        super().__init__()
        self.encoder = resnet
        self.channels = (64, 256, 512, 1024, 2048) if num_layers > 34 else (64, 64, 128, 256, 512)

    def stages(self) -> tuple:
        net = self.encoder
        return (net.conv1, net.bn1, net.relu), (net.maxpool, *net.layer1), net.layer2, net.layer3, net.layer4


def checkpoint_depth(state: dict, prefix: str) -> int | None:
    """The depth that the residual blocks under `prefix` show (None without any): two or three convolutions per
    block, plus the stem conv and fc."""
    blocks = count_conv_weights(state, prefix, r'layer\d\.\d+\.conv1\.weight')
    if not blocks:
        return None
    bottleneck = bool(matching_keys(state, prefix, r'layer\d\.\d+\.conv3\.weight'))
    return 2 + (3 if bottleneck else 2) * blocks


register(Backbone(
    family='resnet', depths=tuple(RESNET_BLOCKS), default_depth=18, depth_flag='--model-num-layers',
    depth_help='ResNet depth', build=build, encoder=ResnetEncoder, imagenet_urls=IMAGENET_WEIGHTS,
    torchvision_name=lambda num_layers: f'resnet{num_layers}', imagenet_head=('fc.',),
    checkpoint_depth=checkpoint_depth))
