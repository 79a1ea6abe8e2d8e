"""The UBNA segmentation network (encoder, shared decoder step, segmentation head) and its BatchNorm listing."""
import torch
import torch.nn as nn

from dataloader.errors import UserError
from models.decoder import NUM_STEPS, Decoder, SegmentationOutput
from models.encoders import build_encoder

STRIDE = 32


class Common(nn.Module):
    """Encoder and decoder step 0 (the part the reference shares between tasks)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.decoder = Decoder(tuple(reversed(encoder.channels)), range(0, 1))

    def forward(self, x: torch.Tensor) -> tuple:
        features = tuple(reversed(self.encoder(x)))
        return self.decoder(features[0], features), features


class SegmentationHead(nn.Module):
    """Decoder steps 1..9 and the 20-channel output conv."""

    def __init__(self, encoder_channels: tuple):
        super().__init__()
        self.decoder = Decoder(tuple(reversed(encoder_channels)), range(1, NUM_STEPS))
        self.multires = SegmentationOutput()

    def forward(self, x: torch.Tensor, features: tuple) -> torch.Tensor:
        return self.multires(self.decoder(x, features))


class UBNA(nn.Module):
    """Normalised images N×3×H×W (H, W multiples of 32, at least 64) → logits N×20×H×W."""

    def __init__(self, encoder: nn.Module, model_type: str, num_layers: int):
        super().__init__()
        self.model_type = model_type
        self.num_layers = num_layers
        self.common = Common(encoder)
        self.seg = SegmentationHead(encoder.channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        # the coarsest map must be at least 2x2 for the decoder's reflection padding
        if height % STRIDE or width % STRIDE or min(height, width) < 2 * STRIDE:
            raise UserError(f'the network input is {height}x{width} but its sides must be multiples of {STRIDE} '
                            f'and at least {2 * STRIDE}; change the resize/crop sizes')
        return self.seg(*self.common(x))


def build_model(model_type: str, num_layers: int, weights_init: str) -> UBNA:
    """The UBNA network; weights_init 'pretrained' (ImageNet encoder) or 'scratch'."""
    return UBNA(build_encoder(model_type, num_layers, weights_init), model_type, num_layers)


def encoder_batchnorm_layers(model: UBNA) -> list:
    """(name, BatchNorm2d) of the encoder in adaptation order l = 1, 2, ... (first name of aliased modules)."""
    return [(name, module) for name, module in model.common.encoder.named_modules(prefix='common.encoder')
            if isinstance(module, nn.BatchNorm2d)]
