"""The adaptation samples' per-pixel work on the device (--adaptation-pixel-work device): PIL's antialiased bilinear
resize and the colour jitter, computed as PIL computes them, in the same integer and float steps, on one H×W×3 image
or on a batch of them (N×H×W×3, one factor per image), with the same result for each image.

The workers then only decode, and the main process draws each sample's flip and jitter (loaders.DrawingSampler).
The resize, brightness, contrast and saturation equal PIL's (and so the workers') results bit for bit. The hue shift
is PIL's HSV round trip, which the reference's torchvision computes; the workers compute it in OpenCV's HSV instead
(faster on a CPU), which rounds differently by a level or two.
A batch is transformed at once, because launching the ~100 small operations of the chain per image bound the main
process on a GPU.
"""
from functools import lru_cache

import numpy as np
import torch
from PIL import __version__ as PILLOW_VERSION

PRECISION_BITS = 22  # Pillow's fixed-point resampling: 32 - 8 - 2 bits
PILLOW_ORDERS_PASSES = int(PILLOW_VERSION.split('.')[0]) >= 13  # Pillow 13 resamples first vertically when that saves


def _resample_table(in_size: int, out_size: int, start: float, end: float) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's bilinear coefficients for resampling [start, end) of in_size pixels to out_size: the source index
    and the fixed-point weight of each (output, tap), padded taps weighing 0 (Resample.c, precompute_coeffs)."""
    start, end = np.float32(start), np.float32(end)  # Pillow reads the box as C floats
    scale = float(np.float32(end - start)) / out_size
    filterscale = max(scale, 1.0)
    support = filterscale  # the bilinear filter's support is 1
    taps = int(np.ceil(support)) * 2 + 1
    center = float(start) + (np.arange(out_size) + 0.5) * scale
    first = np.maximum((center - support + 0.5).astype(np.int64), 0)  # C casts truncate towards zero
    count = np.minimum((center + support + 0.5).astype(np.int64), in_size) - first
    weights = np.zeros((out_size, taps))
    total = np.zeros(out_size)
    for tap in range(taps):  # summed tap by tap, in Pillow's order
        distance = np.abs((tap + first - center + 0.5) * (1.0 / filterscale))
        weight = np.where((tap < count) & (distance < 1.0), 1.0 - distance, 0.0)
        weights[:, tap] = weight
        total += weight
    weights = np.where(total[:, None] != 0.0, weights / np.where(total == 0.0, 1.0, total)[:, None], weights)
    fixed = np.trunc(weights * (1 << PRECISION_BITS) + 0.5).astype(np.int32)  # bilinear weights are never negative
    indices = np.minimum(first[:, None] + np.arange(taps), in_size - 1)
    return indices, fixed


@lru_cache(maxsize=256)
def _device_table(in_size: int, out_size: int, start: float, end: float, device: torch.device):
    """_resample_table on `device`, computed and copied once per size and box (a copy waits for the GPU's queue)."""
    indices, weights = _resample_table(in_size, out_size, start, end)
    return torch.from_numpy(indices).to(device), torch.from_numpy(weights).to(device)


def _resample(image: torch.Tensor, dim: int, out_size: int, start: float, end: float) -> torch.Tensor:
    """One pass of Pillow's 8-bit resampling along dim (-3: rows, -2: columns) of ...×H×W×3 uint8 images."""
    indices, weights = _device_table(image.shape[dim], out_size, start, end, image.device)
    taps = weights.shape[1]
    gathered = image.index_select(dim, indices.flatten()).int()
    dim %= image.dim()
    shape = list(image.shape)
    shape[dim:dim + 1] = [out_size, taps]
    weights = weights.view([out_size, taps] + [1] * (image.dim() - dim - 1))
    total = (gathered.view(shape) * weights).sum(dim + 1, dtype=torch.int32)
    return ((total + (1 << (PRECISION_BITS - 1))) >> PRECISION_BITS).clamp_(0, 255).to(torch.uint8)


def resize(image: torch.Tensor, hw: tuple[int, int], box: tuple[float, float, float, float]) -> torch.Tensor:
    """PIL's antialiased bilinear resize of the region box (left, top, right, bottom) of ...×H×W×3 uint8 images to
    hw, bit-exact: the same two passes, in the installed Pillow's order, each rounded to uint8."""
    (height, width), (out_height, out_width) = image.shape[-3:-1], hw
    rows = out_height != height or box[1] != 0 or box[3] != out_height
    columns = out_width != width or box[0] != 0 or box[2] != out_width
    if PILLOW_ORDERS_PASSES and 0 < height - out_height and (width - out_width) * 2 < height - out_height:
        if rows:
            image = _resample(image, -3, out_height, box[1], box[3])
        return _resample(image, -2, out_width, box[0], box[2]) if columns else image
    if columns:
        image = _resample(image, -2, out_width, box[0], box[2])
    return _resample(image, -3, out_height, box[1], box[3]) if rows else image


def _over(numerator: torch.Tensor, denominator: float) -> torch.Tensor:
    """numerator / denominator, correctly rounded: on a GPU, torch divides by a Python number as a multiplication by
    its reciprocal, which can differ from C's division in the last bit."""
    return numerator / torch.full((), denominator, dtype=numerator.dtype, device=numerator.device)


def _per_image(value: float | torch.Tensor, image: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A factor for one image (a float) or for each image of a batch (an N tensor on the device), shaped to broadcast
    over the image's H×W×C. A float becomes a tensor by a fill on the device: a copy would wait for its queue."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype).reshape(-1, 1, 1, 1)
    return torch.full((), value, dtype=dtype, device=image.device)


def _blend(degenerate: torch.Tensor, image: torch.Tensor, factor: float | torch.Tensor) -> torch.Tensor:
    """PIL's Image.blend: degenerate + factor * (image - degenerate) in C floats, truncated, clipped to uint8."""
    alpha = _per_image(factor, image, torch.float32)  # C's float: rounded to nearest
    mixed = degenerate.float() + alpha * (image.int() - degenerate.int()).float()
    return mixed.trunc_().clamp_(0, 255).to(torch.uint8)


def _luma(image: torch.Tensor) -> torch.Tensor:
    """PIL's RGB to L conversion (ITU-R 601-2, 16-bit fixed point) of ...×H×W×3 uint8 images: ...×H×W int32."""
    rgb = image.int()
    return (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16


def brightness(image: torch.Tensor, factor: float | torch.Tensor) -> torch.Tensor:
    """ImageEnhance.Brightness: a blend with black."""
    return _blend(torch.zeros_like(image), image, factor)


def contrast(image: torch.Tensor, factor: float | torch.Tensor) -> torch.Tensor:
    """ImageEnhance.Contrast: a blend with each image's mean luma, rounded to an integer."""
    luma = _luma(image)
    total = luma.sum((-2, -1), dtype=torch.int64).double()
    mean = torch.floor(_over(total, luma.shape[-2] * luma.shape[-1]) + 0.5)
    return _blend(mean.to(torch.uint8)[..., None, None, None].expand_as(image), image, factor)


def saturation(image: torch.Tensor, factor: float | torch.Tensor) -> torch.Tensor:
    """ImageEnhance.Color: a blend with the image's luma."""
    return _blend(_luma(image).to(torch.uint8).unsqueeze(-1).expand_as(image), image, factor)


def _to_hsv(image: torch.Tensor) -> torch.Tensor:
    """PIL's RGB to HSV conversion (Convert.c, rgb2hsv_row): float divisions, the hue's steps in double."""
    rgb = image.int()
    r, g, b = rgb.unbind(-1)
    high, low = rgb.amax(-1), rgb.amin(-1)
    spread = (high - low).float()
    divisor = torch.where(spread == 0, 1.0, spread)
    s = spread / high.float().clamp(min=1)
    rc, gc, bc = ((high - r).float() / divisor, (high - g).float() / divisor, (high - b).float() / divisor)
    h = torch.where(r == high, (bc - gc).double(),
                    torch.where(g == high, 2.0 + rc.double() - bc.double(), 4.0 + gc.double() - rc.double()))
    h = torch.fmod(_over(h.float().double(), 6.0) + 1.0, 1.0).float()  # each C float assignment rounds to float
    hue = (h.double() * 255.0).trunc().clamp(0, 255)
    sat = (s.double() * 255.0).trunc().clamp(0, 255)
    grey = spread == 0
    return torch.stack([hue.masked_fill(grey, 0), sat.masked_fill(grey, 0), high.double()], -1).to(torch.uint8)


def _round_half_away(x: torch.Tensor) -> torch.Tensor:
    """C's round() of non-negative doubles (torch.round rounds halves to even)."""
    whole = x.trunc()
    return whole + (x - whole >= 0.5).double()


@lru_cache(maxsize=None)
def _sector_choices(device: torch.device) -> torch.Tensor:
    """Per hue sector, which of (v, t, p, q) each of r, g, b takes; copied to the device once."""
    return torch.tensor([[0, 1, 2], [3, 0, 2], [2, 0, 1], [2, 3, 0], [1, 2, 0], [0, 2, 3]]).to(device)


def _to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """PIL's HSV to RGB conversion (Convert.c, hsv2rgb): the sector and remainder in double, stored as floats."""
    h, s, v = hsv.double().unbind(-1)
    sixths = _over(h * 6.0, 255.0)
    sector = torch.floor(sixths)
    f = (sixths - sector).float().double()
    fs = _over(s, 255.0).float().double()
    p = _round_half_away(v * (1.0 - fs)).clamp(0, 255)
    q = _round_half_away(v * (1.0 - fs * f)).clamp(0, 255)
    t = _round_half_away(v * (1.0 - fs * (1.0 - f))).clamp(0, 255)
    choices = torch.stack([v, t, p, q], -1)
    rgb = torch.gather(choices, -1, _sector_choices(hsv.device)[sector.long() % 6])
    return torch.where((s == 0).unsqueeze(-1), v.unsqueeze(-1), rgb).to(torch.uint8)


def hue(image: torch.Tensor, shift: int | torch.Tensor) -> torch.Tensor:
    """torchvision's adjust_hue on PIL images: the 8-bit hue shifted by `shift` (mod 256; an N tensor for a
    batch) in PIL's HSV. Like it, a shift of 0 still makes the round trip, which rounds."""
    hsv = _to_hsv(image)
    hsv[..., :1] += _per_image(shift, hsv, torch.uint8)  # uint8 arithmetic wraps around the hue circle
    return _to_rgb(hsv)


def jitter(images: torch.Tensor, factors: list) -> torch.Tensor:
    """The colour jitter of transforms.Jitter (brightness, contrast, saturation, hue, in that order) of an N×H×W×3
    batch, one Jitter per image (their factors reach the device in one copy)."""
    table = torch.tensor([(f.brightness, f.contrast, f.saturation, f.hue_shift) for f in factors], dtype=torch.float64)
    if images.is_cuda:  # a copy from pinned memory does not wait for the GPU's queue
        table = table.pin_memory()
    table = table.to(images.device, non_blocking=True)  # float64 to float32 on the device rounds as C's float does
    images = saturation(contrast(brightness(images, table[:, 0]), table[:, 1]), table[:, 2])
    return hue(images, table[:, 3])


def adaptation_images(batch: dict, hw: tuple[int, int], device: torch.device) -> torch.Tensor:
    """The network inputs of a batch of on-device adaptation samples (transforms.AdaptationTransform), as uint8
    N×3×H×W on `device` (channels_last strides): each native image resized from its box, flipped, jittered. The
    images of one native size and box are resized together, and then the whole batch is jittered at once."""
    groups = {}
    for i, (color, box) in enumerate(zip(batch['color'], batch['box'])):
        groups.setdefault((tuple(color.shape), tuple(box)), []).append(i)
    resized = [None] * len(batch['color'])
    for (_, box), members in groups.items():
        natives = torch.stack([batch['color'][i].to(device, non_blocking=True) for i in members])
        for i, image in zip(members, resize(natives, hw, box)):
            resized[i] = image.flip(1) if batch['flip'][i] else image
    return jitter(torch.stack(resized), list(batch['jitter'])).permute(0, 3, 1, 2)
