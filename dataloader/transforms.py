"""Sample transforms of the named loaders (spec §4): flip, resize, rescale, crop, label conversion, jitter.

Resizing follows PIL (antialiased bilinear for colour, nearest for labels). Each random transform first draws
its parameters (python `random` only, so DataLoader worker seeding makes runs reproducible), then applies them.
Two equivalences keep the per-sample work small: a resize followed by a crop is a PIL resize of only the source
region the crop depends on (`box`), and the horizontal flip is applied to the crop (a flipped image cropped at x
is the flipped crop at the mirrored x), so only crop-sized pixels are flipped, jittered and converted.
"""
import random
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import cv2
import numpy as np
import torch
from PIL import Image, ImageEnhance

IMAGENET_MEAN = torch.tensor((0.485, 0.456, 0.406)).view(3, 1, 1)
IMAGENET_STD = torch.tensor((0.229, 0.224, 0.225)).view(3, 1, 1)
RESCALE_RANGE = (1.0, 1.5)
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0.2, 0.2, 0.2, 0.1


@dataclass(frozen=True)
class Jitter:
    """Colour-jitter factors, applied in the reference's fixed order (gamma range is 0, i.e. identity)."""
    brightness: float = 1.0
    contrast: float = 1.0
    saturation: float = 1.0
    hue: float = 0.0

    @staticmethod
    def draw(rng=random) -> 'Jitter':
        return Jitter(rng.uniform(1 - BRIGHTNESS, 1 + BRIGHTNESS), rng.uniform(1 - CONTRAST, 1 + CONTRAST),
                      rng.uniform(1 - SATURATION, 1 + SATURATION), rng.uniform(-HUE, HUE))

    @property
    def hue_shift(self) -> int:
        """The shift of the 8-bit hue (torchvision adds hue * 255, truncated, with uint8 wrap-around)."""
        return int(self.hue * 255) % 256

    def apply(self, image: Image.Image) -> np.ndarray:
        """The jittered RGB array: brightness, contrast, saturation with PIL, hue shift in OpenCV's HSV."""
        # torchvision's ColorJitter on PIL images is exactly these enhancers (and importing it costs seconds)
        image = ImageEnhance.Brightness(image).enhance(self.brightness)
        image = ImageEnhance.Contrast(image).enhance(self.contrast)
        image = ImageEnhance.Color(image).enhance(self.saturation)
        return shift_hue(np.asarray(image), self.hue_shift)


def shift_hue(rgb: np.ndarray, shift: int) -> np.ndarray:
    """The 8-bit hue of an RGB array shifted by `shift` (mod 256) in OpenCV's HSV: like PIL's HSV, which torchvision
    uses, and much faster, but rounded differently by a level or two; a shift of 0 leaves the array as it is."""
    if shift == 0:
        return rgb
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV_FULL)
    hsv[..., 0] += np.uint8(shift)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL)


def nearest_indices(size_in: int, size_out: int) -> np.ndarray:
    """Source index of each output pixel of a PIL NEAREST resize (PIL accumulates the step in double)."""
    steps = np.full(size_out, size_in / size_out)
    steps[0] *= 0.5
    return np.minimum(np.add.accumulate(steps).astype(np.int64), size_in - 1)


def resize_color(image: Image.Image, hw: tuple[int, int], box: tuple[float, ...] | None = None) -> Image.Image:
    """PIL antialiased bilinear resize to (height, width), optionally of the source region `box`."""
    return image.resize((hw[1], hw[0]), Image.Resampling.BILINEAR, box=box)


def resize_twice_and_crop(image: Image.Image, resize_hw: tuple[int, int], rescaled_hw: tuple[int, int],
                          top: int, left: int, crop_hw: tuple[int, int]) -> Image.Image:
    """Resize to resize_hw, resize to rescaled_hw, crop; only the pixels the crop depends on are computed."""
    (rh, rw), (sh, sw), (ch, cw) = resize_hw, rescaled_hw, crop_hw
    box = [left * rw / sw, top * rh / sh, (left + cw) * rw / sw, (top + ch) * rh / sh]
    margin = 2 + int(max(rh / sh, rw / sw, 1.0))  # > the bilinear support of the second resize
    x0, y0 = max(0, int(box[0]) - margin), max(0, int(box[1]) - margin)
    x1, y1 = min(rw, int(box[2]) + 1 + margin), min(rh, int(box[3]) + 1 + margin)
    sx, sy = image.width / rw, image.height / rh
    region = resize_color(image, (y1 - y0, x1 - x0), (x0 * sx, y0 * sy, x1 * sx, y1 * sy))
    return resize_color(region, crop_hw, (box[0] - x0, box[1] - y0, box[2] - x0, box[3] - y0))


def _chw(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))


@lru_cache(maxsize=None)
def _mean_and_std(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The ImageNet statistics on `device`, copied there once: a copy of a CPU tensor per batch would make the CPU
    wait for the GPU's queued work every batch."""
    return IMAGENET_MEAN.to(device), IMAGENET_STD.to(device)


def normalize(image: torch.Tensor) -> torch.Tensor:
    """ImageNet normalisation of a (N×)3×H×W float tensor in [0, 1], on its device."""
    mean, std = _mean_and_std(image.device)
    return (image - mean) / std


def to_network_input(images: torch.Tensor, device: torch.device | str,
                     memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """uint8 N×3×H×W images → normalised float on `device` in `memory_format` (converted there: cheap on a GPU).
    Normalised before the layout changes: per channel along rows, the arithmetic is faster on the CPU."""
    images = images.to(device, non_blocking=True)
    return normalize(images.float().div_(255)).contiguous(memory_format=memory_format)


def network_input(image: Image.Image, jitter: Jitter | None) -> torch.Tensor:
    """The network input, jittered when a jitter is given, as uint8 3×H×W: a quarter of the float bytes between
    loader workers and the main process; to_network_input normalises it on the device."""
    return _chw(np.asarray(image) if jitter is None else jitter.apply(image))


def _flip(image: Image.Image) -> Image.Image:
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


@dataclass(frozen=True)
class TrainDraw:
    """Random parameters of one segmentation training sample."""
    flip: bool
    rescaled_hw: tuple[int, int]
    top: int
    left: int
    jitter: Jitter


class SegmentationTrainTransform:
    """Flip, resize, random rescale (size // s), random crop, label conversion after the crop, jitter.
    Its samples also hold 'image', the crop before the jitter, which train.py shows in tensorboard."""

    def __init__(self, resize_hw: tuple[int, int], crop_hw: tuple[int, int],
                 convert_label: Callable[[np.ndarray], np.ndarray]):
        self.resize_hw = resize_hw
        self.crop_hw = crop_hw
        self.convert_label = convert_label

    def draw(self) -> TrainDraw:
        flip = random.random() < 0.5
        scale = random.uniform(*RESCALE_RANGE)
        rescaled_hw = (int(self.resize_hw[0] // scale), int(self.resize_hw[1] // scale))
        top = random.randint(0, rescaled_hw[0] - self.crop_hw[0])
        left = random.randint(0, rescaled_hw[1] - self.crop_hw[1])
        return TrainDraw(flip, rescaled_hw, top, left, Jitter.draw())

    def __call__(self, raw: dict) -> dict:
        return self.apply(raw, self.draw())

    def apply(self, raw: dict, draw: TrainDraw) -> dict:
        (rh, rw), (sh, sw), (ch, cw) = self.resize_hw, draw.rescaled_hw, self.crop_hw
        top, left = draw.top, draw.left
        crop = resize_twice_and_crop(Image.fromarray(raw['color']), self.resize_hw, draw.rescaled_hw, top, left,
                                     self.crop_hw)
        native_h, native_w = raw['segmentation'].shape[:2]
        rows = nearest_indices(native_h, rh)[nearest_indices(rh, sh)[top:top + ch]]
        cols = nearest_indices(native_w, rw)[nearest_indices(rw, sw)[left:left + cw]]
        if draw.flip:
            crop, cols = _flip(crop), cols[::-1]
        label = self.convert_label(raw['segmentation'].take(rows, axis=0).take(cols, axis=1))  # 5x the 2-D index
        return {'input': network_input(crop, draw.jitter), 'image': _chw(np.asarray(crop)),
                'label': torch.from_numpy(label)}


@dataclass(frozen=True)
class AdaptationDraw:
    """Random parameters of one adaptation sample."""
    flip: bool
    jitter: Jitter


class AdaptationTransform:
    """Flip, resize, optional crop at (top, left) of the (flipped) resized image, jitter; no labels.
    on_device: the sample is the native image with its draw and source box; the device resizes and jitters
    (device_transforms.adaptation_images)."""

    def __init__(self, resize_hw: tuple[int, int], crop_hw: tuple[int, int] | None = None,
                 crop_offset: tuple[int, int] = (0, 0), on_device: bool = False):
        self.resize_hw = resize_hw
        self.crop_hw = crop_hw
        self.crop_offset = crop_offset
        self.on_device = on_device

    @property
    def output_hw(self) -> tuple[int, int]:
        """The (height, width) of its samples: the crop's when it crops, else the resize's."""
        return self.crop_hw or self.resize_hw

    def draw(self, rng=random) -> AdaptationDraw:
        return AdaptationDraw(rng.random() < 0.5, Jitter.draw(rng))

    def __call__(self, raw: dict) -> dict:
        return self.apply(raw, self.draw())

    def source_box(self, image_hw: tuple[int, int], flip: bool) -> tuple[float, float, float, float]:
        """The region (left, top, right, bottom) of the native image that becomes the output before the flip."""
        height, width = image_hw
        if self.crop_hw is None:
            return 0, 0, width, height
        (rh, rw), (ch, cw), (top, left) = self.resize_hw, self.crop_hw, self.crop_offset
        if flip:  # a crop at `left` of the flipped image is the mirrored crop of the unflipped one
            left = rw - cw - left
        sy, sx = height / rh, width / rw
        return left * sx, top * sy, (left + cw) * sx, (top + ch) * sy

    def apply(self, raw: dict, draw: AdaptationDraw) -> dict:
        box = self.source_box(raw['color'].shape[:2], draw.flip)
        if self.on_device:
            return {'color': torch.from_numpy(raw['color']), 'box': box, 'flip': draw.flip, 'jitter': draw.jitter}
        out = resize_color(Image.fromarray(raw['color']), self.output_hw, box)
        if draw.flip:
            out = _flip(out)
        return {'input': network_input(out, draw.jitter)}


class ValidationTransform:
    """Resize the colour image only; the label is converted at its native size; no flip, no jitter."""

    def __init__(self, resize_hw: tuple[int, int], convert_label: Callable[[np.ndarray], np.ndarray]):
        self.resize_hw = resize_hw
        self.convert_label = convert_label

    def __call__(self, raw: dict) -> dict:
        image = resize_color(Image.fromarray(raw['color']), self.resize_hw)
        label = self.convert_label(raw['segmentation'])
        return {'input': network_input(image, None), 'label': torch.from_numpy(label)}
