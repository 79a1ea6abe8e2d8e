"""The UBNA segmentation network (encoder, shared decoder step, segmentation head) and its BatchNorm listing."""
import contextlib

import torch
import torch.nn as nn

from errors import UserError
from models.backbones import BACKBONES
from models.decoder import NUM_OUTPUTS, NUM_STEPS, Decoder, SegmentationOutput
from models.encoders import build_encoder

STRIDE = 32


class Common(nn.Module):
    """Encoder and decoder step 0 (the part the reference shares between tasks)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.decoder = Decoder(tuple(reversed(encoder.channels)), range(0, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list]:
        """Decoder step 0's output and the encoder maps, coarsest first (a list that the head's decoder empties)."""
        features = list(reversed(self.encoder(x)))
        return self.decoder(features[0], features), features


class SegmentationHead(nn.Module):
    """Decoder steps 1..9 and the 20-channel output conv."""

    def __init__(self, encoder_channels: tuple):
        super().__init__()
        self.decoder = Decoder(tuple(reversed(encoder_channels)), range(1, NUM_STEPS))
        self.multires = SegmentationOutput()

    def forward(self, x: torch.Tensor, features: list) -> torch.Tensor:
        return self.multires(self.decoder(x, features))


def check_input_size(x: torch.Tensor) -> None:
    """UserError unless H and W are multiples of 32 and at least 64 (the decoder's reflection padding needs a 2x2
    coarsest map)."""
    height, width = x.shape[-2:]
    if height % STRIDE or width % STRIDE or min(height, width) < 2 * STRIDE:
        raise UserError(f'the network input is {height}x{width} but its sides must be multiples of {STRIDE} '
                        f'and at least {2 * STRIDE}; change the resize/crop sizes')


class UBNA(nn.Module):
    """Normalised images N×3×H×W (H, W multiples of 32, at least 64) → logits N×20×H×W; the adaptation protocol
    (models/adaptation/layers.py): its encoder's BatchNorm layers, fed by the encoder alone, and 19 class logits
    (the 20th channel is the reference's unused class)."""
    num_classes = NUM_OUTPUTS - 1
    adaptable_layers_description = 'encoder BatchNorm'

    def __init__(self, encoder: nn.Module, model_type: str, num_layers: int):
        super().__init__()
        self.model_type = model_type
        self.num_layers = num_layers
        self.common = Common(encoder)
        self.seg = SegmentationHead(encoder.channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x)
        return self.seg(*self.common(x))

    def adaptable_layers(self) -> list:
        """The encoder's BatchNorm layers (nothing after the encoder has one), in adaptation order."""
        return encoder_batchnorm_layers(self)

    def statistics_pass(self, x: torch.Tensor) -> None:
        """The encoder alone, for its BatchNorm layers: all that their statistics depend on (adaptation needs no
        logits)."""
        check_input_size(x)
        self.common.encoder.statistics_pass(x)


def build_model(model_type: str, num_layers: int, weights_init: str, device: str | torch.device = 'cpu',
                memory_format: torch.memory_format = torch.contiguous_format) -> UBNA:
    """The UBNA network on `device`, in `memory_format`; weights_init 'pretrained' (ImageNet encoder), 'scratch', or
    'checkpoint' (a checkpoint replaces every tensor: the modules' default init only, drawing nothing from the seeded
    generators; loaded into the final layout, it is copied once).

    Built straight on its device: the meta device's first use costs more than initialising the network.
    """
    device = torch.device(device)
    unseen_draws = (torch.random.fork_rng(devices=[device] if device.type == 'cuda' else [])
                    if weights_init == 'checkpoint' else contextlib.nullcontext())
    with unseen_draws, torch.device(device):
        model = UBNA(build_encoder(model_type, num_layers, weights_init, device), model_type, num_layers)
    return model.to(memory_format=memory_format)


def encoder_batchnorm_layers(model: UBNA) -> list:
    """(name, BatchNorm2d) of the encoder in adaptation order l = 1, 2, ... (first name of aliased modules): its
    family's order, by default the encoder's named_modules order."""
    return BACKBONES[model.model_type].batchnorm_layers(model.common.encoder, 'common.encoder')
