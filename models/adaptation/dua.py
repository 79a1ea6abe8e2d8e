"""dua (Mirza et al. CVPR 2022, jmiemirza/DUA): before sample k = 1, 2, ... every BatchNorm layer gets momentum
m0·decay^k + min_momentum and a train-mode pass over augmented copies of that one image moves its running
statistics; then the batch is predicted in eval mode. Continual.

The reference augments CIFAR images by a random 32×32 crop of the image padded by 4 pixels, a left-right flip and a
random turn by a multiple of 90°. For images of any size we take the same recipe in proportion: a random crop of the
image padded by 1/8 of each side (zeros in network-input space, i.e. the normalisation's mean colour), a flip with
probability 1/2, and a turn by a multiple of 90° within the image's frame (centred; what falls outside a non-square
frame is cut, the rest filled with zeros), as torchvision's rotate does for the reference's KITTI crops."""
import torch
import torch.nn.functional as F

from models.adaptation.base import OnlineMethod, Setting, SettingError, below_one, in_unit_interval
from models.adaptation.layers import statistics_pass, training_mode
from models.adaptation.registry import register


def _at_least_one(value) -> str | None:
    return None if value >= 1 else f'must be at least 1, got {value}'


def within_frame(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """`image` centred in a height×width frame of zeros; what does not fit is cut."""
    frame = image.new_zeros(*image.shape[:-2], height, width)
    rows, columns = min(height, image.shape[-2]), min(width, image.shape[-1])
    top, left = (image.shape[-2] - rows) // 2, (image.shape[-1] - columns) // 2
    frame_top, frame_left = (height - rows) // 2, (width - columns) // 2
    frame[..., frame_top:frame_top + rows, frame_left:frame_left + columns] = \
        image[..., top:top + rows, left:left + columns]
    return frame


def augmented_copies(image: torch.Tensor, count: int) -> torch.Tensor:
    """count×C×H×W: copies of a C×H×W network input, each randomly shifted, flipped and turned (module docstring).
    The draws come from torch's global generator, so a seeded run repeats them."""
    height, width = image.shape[-2:]
    pad_rows, pad_columns = height // 8, width // 8
    padded = F.pad(image, (pad_columns, pad_columns, pad_rows, pad_rows))
    tops = torch.randint(2 * pad_rows + 1, (count,)).tolist()
    lefts = torch.randint(2 * pad_columns + 1, (count,)).tolist()
    flips = (torch.rand(count) < 0.5).tolist()
    turns = torch.randint(4, (count,)).tolist()
    copies = []
    for top, left, flip, turn in zip(tops, lefts, flips, turns):
        copy = padded[..., top:top + height, left:left + width]
        copy = copy.flip(-1) if flip else copy
        copies.append(within_frame(torch.rot90(copy, turn, dims=(-2, -1)), height, width))
    return torch.stack(copies)


@register
class Dua(OnlineMethod):
    """Dynamic unsupervised adaptation: a decaying momentum over the stream, statistics of augmented copies."""
    name = 'dua'
    SETTINGS = {'momentum': Setting(0.1, in_unit_interval, 'm0 in m_k = m0·decay^k + min_momentum'),
                'decay': Setting(0.94, in_unit_interval, 'decay in m_k'),
                'min_momentum': Setting(0.005, below_one, 'min_momentum in m_k'),
                'augmentations': Setting(64, _at_least_one, 'augmented copies of each image')}

    @classmethod
    def check_together(cls, settings: dict) -> None:
        largest = settings['momentum'] * settings['decay'] + settings['min_momentum']  # at k = 1
        if largest > 1:
            raise SettingError('min_momentum', f'plus momentum × decay must be at most 1, got {largest:g}')

    def momentum(self, sample: int) -> float:
        """The momentum before sample k = 1, 2, ... of the stream (since the last reset)."""
        s = self.settings
        return s['momentum'] * s['decay'] ** sample + s['min_momentum']

    def adapt_and_predict(self, images):
        for i, image in enumerate(images):
            momenta = [self.momentum(self.images_seen + i + 1)] * len(self.layers)
            with torch.no_grad(), training_mode(self.model, self.layers, momenta):
                statistics_pass(self.model)(augmented_copies(image, self.settings['augmentations']))
        return self.predict(images)
