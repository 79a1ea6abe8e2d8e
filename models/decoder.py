"""The UBNA decoder: ten conv/upsample steps over the reversed encoder features, and the output conv (spec §5)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

DECODER_WIDTHS = (256, 128, 64, 32, 16)
NUM_STEPS = 2 * len(DECODER_WIDTHS)
NUM_OUTPUTS = 20  # 19 classes + 1 unused


class DecoderStep(nn.Module):
    """Optional nearest x2 upsampling and concatenation with a skip map, then 3x3 conv (reflection pad 1) + ELU.
    The parts are padded before they are concatenated (the same values as padding the concatenation), so that
    no unpadded copy is alive during the conv."""

    def __init__(self, in_channels: int, out_channels: int, upsample: bool):
        super().__init__()
        self.upsample = upsample
        self.pad = nn.ReflectionPad2d(1)
        self.conv = nn.Conv2d(in_channels, out_channels, 3)
        self.act = nn.ELU()

    def forward(self, x: torch.Tensor, padded_skip: torch.Tensor | None = None) -> torch.Tensor:
        """padded_skip: the skip map after self.pad."""
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode='nearest')
        x = self.pad(x)
        if padded_skip is not None:
            x = torch.cat((x, padded_skip), 1)
        return self.act(self.conv(x))


class Decoder(nn.Module):
    """Decoder steps `steps` (a range within 0..9); features are the encoder maps, coarsest first."""

    def __init__(self, encoder_channels: tuple, steps: range):
        super().__init__()
        self.steps = steps
        self.blocks = nn.ModuleDict()
        for step in steps:
            level = step // 2
            if step % 2 == 0:
                in_channels = DECODER_WIDTHS[level - 1] if level > 0 else encoder_channels[0]
            else:
                skip_channels = encoder_channels[level + 1] if level + 1 < len(encoder_channels) else 0
                in_channels = DECODER_WIDTHS[level] + skip_channels
            self.blocks[f'step_{step}'] = DecoderStep(in_channels, DECODER_WIDTHS[level], upsample=step % 2 == 1)

    def forward(self, x: torch.Tensor, features: list) -> torch.Tensor:
        """features: the encoder maps, coarsest first. Each skip map is taken out of the list (None left) once
        padded for its step, so that it is freed before that step's conv (a lower peak of memory)."""
        for step in self.steps:
            block, skip_index = self.blocks[f'step_{step}'], step // 2 + 1
            padded_skip = None
            if step % 2 == 1 and skip_index < len(features):
                padded_skip, features[skip_index] = block.pad(features[skip_index]), None
            x = block(x, padded_skip)
        return x


class SegmentationOutput(nn.Module):
    """3x3 conv (reflection pad 1) from the last decoder width to the 20 logits."""

    def __init__(self):
        super().__init__()
        self.pad = nn.ReflectionPad2d(1)
        self.convs = nn.ModuleList([nn.Conv2d(DECODER_WIDTHS[-1], NUM_OUTPUTS, 3)])  # a list: published key 'convs.0'

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs[0](self.pad(x))
