"""The encoder backbones by family: each family's file in this package registers one Backbone entry here, and the
command-line flags, the encoder builder and the checkpoint check read these entries, so that a new backbone is one
new file.

The families register in the order of their file names; that order is the order of the --model-type choices and of
the depth flags in --help.
"""
import importlib
import pkgutil
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch.nn as nn


@dataclass(frozen=True, kw_only=True)
class Backbone:
    """One backbone family: its depths and their flag, how to build it, and how to recognise its checkpoints.

    build(num_layers, device, initialise) makes the network without its ImageNet head, with torchvision's names, on
    `device`: with the family's own initialisation when `initialise`, else with its modules' default one (a
    checkpoint will fill every tensor). batchnorm_order gives the BatchNorm layers in adaptation order when that is
    not the encoder's named_modules order.
    """
    family: str                        # the --model-type value
    depths: tuple[int, ...]            # the depth flag's choices, in --help order
    default_depth: int
    depth_flag: str                    # the flag that picks the depth, e.g. '--model-num-layers'
    depth_help: str
    build: Callable                    # (num_layers, device, initialise) -> the headless network on `device`
    encoder: Callable                  # (network, num_layers) -> models.layers.StagedEncoder, with .channels
    imagenet_urls: Mapping[int, str] = field(default_factory=dict)  # depth -> URL of its ImageNet weights
    torchvision_name: Callable | None = None  # depth -> torchvision's model name, e.g. 'vgg16_bn', 'resnet18'
    imagenet_head: tuple[str, ...] = ()  # key prefixes of the ImageNet classifier, never loaded
    checkpoint_depth: Callable         # (state_dict, encoder key prefix) -> the depth its keys show, or None
    batchnorm_order: Callable | None = None  # (encoder, name prefix) -> [(name, BatchNorm)]; None: named_modules

    @property
    def depth_dest(self) -> str:
        """The depth flag's attribute in parsed options."""
        return self.depth_flag.lstrip('-').replace('-', '_')

    def batchnorm_layers(self, encoder: nn.Module, prefix: str) -> list:
        """(name, BatchNorm) of the encoder in adaptation order l = 1, 2, ... (first name of aliased modules)."""
        if self.batchnorm_order is not None:
            return self.batchnorm_order(encoder, prefix)
        return [(name, module) for name, module in encoder.named_modules(prefix=prefix)
                if isinstance(module, nn.BatchNorm2d)]


BACKBONES: dict[str, Backbone] = {}  # family -> entry, in registration order


def register(entry: Backbone) -> Backbone:
    """Make a family available by its name; its family name and depth flag must be new."""
    if entry.family in BACKBONES:
        raise ValueError(f'backbone family {entry.family} is registered twice')
    if any(other.depth_flag == entry.depth_flag for other in BACKBONES.values()):
        raise ValueError(f'the depth flag {entry.depth_flag} of {entry.family} belongs to another family')
    if entry.default_depth not in entry.depths:
        raise ValueError(f'the default depth {entry.default_depth} of {entry.family} is not one of its depths')
    BACKBONES[entry.family] = entry
    return entry


def family_choices() -> str:
    """The families in words, e.g. 'resnet or vgg'."""
    names = list(BACKBONES)
    return ' or '.join(filter(None, (', '.join(names[:-1]), names[-1])))


def matching_keys(state: dict, prefix: str, pattern: str) -> list:
    """The keys of `state` that are `prefix` followed by the regular expression `pattern`."""
    key_pattern = re.compile(re.escape(prefix) + pattern)
    return [key for key in state if key_pattern.fullmatch(key)]


def count_conv_weights(state: dict, prefix: str, pattern: str) -> int:
    """How many of those keys hold 4-d tensors (convolution weights)."""
    return sum(1 for key in matching_keys(state, prefix, pattern) if state[key].dim() == 4)


def checkpoint_architecture(state: dict, prefix: str) -> tuple[str, int] | None:
    """(family, depth) as read from the encoder keys (those starting with `prefix`) of a state_dict: the first
    family, in registration order, that recognises them; None when none does."""
    for entry in BACKBONES.values():
        depth = entry.checkpoint_depth(state, prefix)
        if depth is not None:
            return entry.family, depth
    return None


def describe_architecture(state: dict, prefix: str) -> str | None:
    """'vgg16', 'resnet50', ... as read from the encoder keys of a state_dict; None when unrecognisable."""
    found = checkpoint_architecture(state, prefix)
    return None if found is None else f'{found[0]}{found[1]}'


def imagenet_heads() -> tuple[str, ...]:
    """The key prefixes of every family's ImageNet classifier."""
    return tuple(head for entry in BACKBONES.values() for head in entry.imagenet_head)


for _module in sorted(module.name for module in pkgutil.iter_modules(__path__)):  # each file registers its family
    importlib.import_module(f'{__name__}.{_module}')

# torchvision's model name -> URL of its weights, over the families of this package's files
IMAGENET_URLS = {entry.torchvision_name(depth): url for entry in BACKBONES.values()
                 for depth, url in entry.imagenet_urls.items()}
