"""The encoder of a registered backbone family (models/backbones/): five feature maps at strides 2, 4, 8, 16, 32
(spec §5), with ImageNet, random or checkpoint-to-come weights."""
import os
import urllib.parse

import torch
import torch.nn as nn

from errors import UserError, first_line
from models.backbones import BACKBONES, family_choices, imagenet_heads

WEIGHTS_INITS = ('pretrained', 'scratch', 'checkpoint')  # checkpoint: not initialised, a checkpoint fills every tensor


def imagenet_state_dict(url: str) -> dict:
    """The ImageNet weights at `url`, from the torch hub cache or downloaded into it."""
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


def _load_imagenet(backbone: nn.Module, url: str) -> None:
    """Copy the ImageNet weights into a headless backbone, dropping the classifier tensors (any family's)."""
    state = imagenet_state_dict(url)
    backbone.load_state_dict({k: v for k, v in state.items() if not k.startswith(imagenet_heads())})


def build_encoder(model_type: str, num_layers: int, weights_init: str,
                  device: str | torch.device = 'cpu') -> nn.Module:
    """The StagedEncoder of family `model_type` on `device`, ImageNet-initialised ('pretrained'), random as
    torchvision's ('scratch'), or with its modules' default initialisation ('checkpoint': a checkpoint will fill
    it)."""
    if model_type not in BACKBONES:
        raise UserError(f'--model-type {model_type} is not supported; choose {family_choices()}')
    entry = BACKBONES[model_type]
    if num_layers not in entry.depths:
        depths = ', '.join(map(str, entry.depths))
        raise UserError(f'{entry.depth_flag} {num_layers} is not available for {model_type}; choose {depths}')
    if weights_init not in WEIGHTS_INITS:
        raise UserError(f'--train-weights-init {weights_init} is not supported; choose pretrained or scratch')
    if weights_init == 'pretrained' and num_layers not in entry.imagenet_urls:
        raise UserError(f'no ImageNet weights are known for {model_type} {entry.depth_flag} {num_layers}; use '
                        f'--train-weights-init scratch')
    device, initialise = torch.device(device), weights_init != 'checkpoint'
    backbone = entry.build(num_layers, device, initialise)
    if weights_init == 'pretrained':
        _load_imagenet(backbone, entry.imagenet_urls[num_layers])
    return entry.encoder(backbone, num_layers)
