"""torchvision's ResNet and VGG-bn, module for module, without their ImageNet heads and without importing
torchvision (its import takes seconds and hundreds of MB, at every start of every job).

The modules have torchvision's names, so state_dict keys, ImageNet weights and published checkpoints fit; their
construction and initialisation draw the same random numbers in the same order, so that a seeded scratch network
equals torchvision's (tests/test_models.py compares both).
"""
import torch
import torch.nn as nn

# torchvision's IMAGENET1K_V1 weights: what pretrained=True meant in the reference (file names end in a hash prefix)
IMAGENET_URLS = {
    'resnet18': 'https://download.pytorch.org/models/resnet18-f37072fd.pth',
    'resnet34': 'https://download.pytorch.org/models/resnet34-b627a593.pth',
    'resnet50': 'https://download.pytorch.org/models/resnet50-0676ba61.pth',
    'resnet101': 'https://download.pytorch.org/models/resnet101-63fe2227.pth',
    'resnet152': 'https://download.pytorch.org/models/resnet152-394f9c45.pth',
    'vgg11_bn': 'https://download.pytorch.org/models/vgg11_bn-6002323d.pth',
    'vgg13_bn': 'https://download.pytorch.org/models/vgg13_bn-abd245e5.pth',
    'vgg16_bn': 'https://download.pytorch.org/models/vgg16_bn-6c64b313.pth',
    'vgg19_bn': 'https://download.pytorch.org/models/vgg19_bn-c79401a0.pth',
}
IMAGENET_CLASSES = 1000


class BatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d that may write its output over its input: set `overwrite_input` for passes where nothing else
    reads that input, as in the encoders' statistics pass (each one's input is a convolution's fresh output). It
    does so on the CPU in float32 without autograd, through the kernel nn.BatchNorm2d runs there: the same numbers
    and running statistics, one feature map less to allocate and fill."""
    overwrite_input = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.overwrite_input and x.device.type == 'cpu' and x.dtype == torch.float32
                and not torch.is_grad_enabled()):
            return super().forward(x)
        momentum = 0.0  # as nn.BatchNorm2d: the running statistics move in training mode only, when tracked
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        tracked = not self.training or self.track_running_stats
        torch.ops.aten.native_batch_norm.out(
            x, self.weight, self.bias, self.running_mean if tracked else None, self.running_var if tracked else None,
            self.training, momentum, self.eps, out=x, save_mean=x.new_empty(0), save_invstd=x.new_empty(0))
        return x


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
