"""Sample transforms against PIL references (spec §4: PIL resize semantics, crops, flips, jitter)."""
import random

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from dataloader.labels import label_converter
from dataloader.transforms import (AdaptationDraw, AdaptationTransform, Jitter, SegmentationTrainTransform,
                                   TrainDraw, ValidationTransform, nearest_indices, normalize,
                                   to_network_input)

RNG = np.random.default_rng(0)
ONE_LEVEL = 1 / 255
FLIP = Image.Transpose.FLIP_LEFT_RIGHT


def fine_detail(height: int, width: int) -> np.ndarray:
    """Edges (1-pixel stripes, checkerboard), smooth texture and noise: hard cases for a resize."""
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([(x % 2) * 255, ((x // 3 + y // 3) % 2) * 255, 128 + 100 * np.sin(x / 3 + y / 5)], -1)
    return (0.6 * base + RNG.normal(0, 40, (height, width, 3))).clip(0, 255).astype(np.uint8)


def as_uint8(image: torch.Tensor) -> np.ndarray:
    return image.permute(1, 2, 0).numpy().astype(np.float64)


def mean_abs_diff(ours: torch.Tensor, reference: Image.Image) -> float:
    return float(np.abs(as_uint8(ours) - np.asarray(reference)).mean() / 255)


IMAGE = fine_detail(150, 300)
LABEL = RNG.integers(0, 256, (150, 300), dtype=np.uint8)
KEEP_IDS = label_converter('cityscapes', 'fromtrainid')


def test_nearest_indices_match_pil():
    row = np.arange(300, dtype=np.int32)[None, :].repeat(2, 0)
    for size in list(range(1, 700, 7)) + [64, 128, 1024]:
        pil = np.asarray(Image.fromarray(row).resize((size, 2), Image.NEAREST))[0]
        assert np.array_equal(nearest_indices(300, size), pil), size


def pil_train_reference(draw: TrainDraw, resize_hw, crop_hw):
    """The reference order on PIL images: resize, rescale, crop, then flip (see transforms docstring)."""
    (rh, rw), (sh, sw), (ch, cw) = resize_hw, draw.rescaled_hw, crop_hw
    box = (draw.left, draw.top, draw.left + cw, draw.top + ch)
    outputs = []
    for image, resample in ((Image.fromarray(IMAGE), Image.BILINEAR), (Image.fromarray(LABEL), Image.NEAREST)):
        image = image.resize((rw, rh), resample).resize((sw, sh), resample).crop(box)
        outputs.append(image.transpose(FLIP) if draw.flip else image)
    return outputs


@pytest.mark.parametrize('seed', range(6))
def test_train_transform_matches_pil(seed):
    transform = SegmentationTrainTransform((64, 128), (32, 80), KEEP_IDS)
    random.seed(seed)
    drawn = transform.draw()
    assert 64 // 1.5 <= drawn.rescaled_hw[0] <= 64 and 128 // 1.5 <= drawn.rescaled_hw[1] <= 128
    draw = TrainDraw(drawn.flip, drawn.rescaled_hw, drawn.top, drawn.left, Jitter())
    sample = transform.apply({'color': IMAGE, 'segmentation': LABEL}, draw)
    image, label = pil_train_reference(draw, (64, 128), (32, 80))
    assert sample['image'].shape == (3, 32, 80) and sample['image'].dtype == torch.uint8
    assert mean_abs_diff(sample['image'], image) < ONE_LEVEL
    assert sample['label'].dtype == torch.uint8 and np.array_equal(sample['label'].numpy(), np.asarray(label))
    assert torch.equal(sample['input'], sample['image'])  # no jitter drawn


def test_train_flip_is_the_mirrored_crop():
    transform = SegmentationTrainTransform((64, 128), (32, 80), KEEP_IDS)
    raw = {'color': IMAGE, 'segmentation': LABEL}
    plain = transform.apply(raw, TrainDraw(False, (50, 100), 5, 7, Jitter()))
    flipped = transform.apply(raw, TrainDraw(True, (50, 100), 5, 7, Jitter()))
    assert torch.equal(flipped['image'], plain['image'].flip(-1))
    assert torch.equal(flipped['label'], plain['label'].flip(-1))


def test_train_labels_converted_after_crop():
    convert = label_converter('cityscapes', 'fromid')
    transform = SegmentationTrainTransform((64, 128), (32, 80), convert)
    ids = np.full((150, 300), 26, np.uint8)
    ids[:, 150:] = 40
    sample = transform.apply({'color': IMAGE, 'segmentation': ids}, TrainDraw(False, (64, 128), 0, 0, Jitter()))
    assert set(sample['label'].unique().tolist()) == {13, 255}


@pytest.mark.parametrize('flip', [False, True])
def test_cityscapes_sequence_crop_is_top_left_of_flipped_resize(flip):
    height, width = 64, 128
    transform = AdaptationTransform((height * 568 // 512, width * 1092 // 1024), (height * 320 // 512, width))
    sample = transform.apply({'color': IMAGE}, AdaptationDraw(flip, Jitter()))
    reference = Image.fromarray(IMAGE)
    if flip:
        reference = reference.transpose(FLIP)
    reference = reference.resize((136, 71), Image.BILINEAR).crop((0, 0, 128, 40))
    assert set(sample) == {'input'}
    assert mean_abs_diff(sample['input'], reference) < ONE_LEVEL


@pytest.mark.parametrize('flip', [False, True])
def test_adaptation_resize_only(flip):
    sample = AdaptationTransform((48, 96)).apply({'color': IMAGE}, AdaptationDraw(flip, Jitter()))
    reference = Image.fromarray(IMAGE).resize((96, 48), Image.BILINEAR)
    assert mean_abs_diff(sample['input'], reference.transpose(FLIP) if flip else reference) < ONE_LEVEL


def test_validation_resizes_image_only():
    sample = ValidationTransform((64, 128), label_converter('cityscapes', 'fromid'))(
        {'color': IMAGE, 'segmentation': np.full((150, 300), 7, np.uint8)})
    assert set(sample) == {'input', 'label'}
    assert mean_abs_diff(sample['input'], Image.fromarray(IMAGE).resize((128, 64), Image.BILINEAR)) == 0
    assert sample['label'].shape == (150, 300) and (sample['label'] == 0).all()


def test_network_input_is_the_normalised_image():
    images = torch.randint(0, 256, (2, 3, 4, 5), dtype=torch.uint8)
    expected = (images.float() / 255 - torch.tensor((0.485, 0.456, 0.406)).view(3, 1, 1)) \
        / torch.tensor((0.229, 0.224, 0.225)).view(3, 1, 1)
    network_input = to_network_input(images, 'cpu')
    assert network_input.dtype == torch.float32 and torch.allclose(network_input, expected)
    channels_last = to_network_input(images, 'cpu', torch.channels_last)
    assert channels_last.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(channels_last, network_input)


def test_normalize_uses_imagenet_statistics():
    image = torch.stack([torch.full((2, 2), v) for v in (0.485, 0.456, 0.406)])
    assert normalize(image).abs().max() < 1e-6
    assert torch.allclose(normalize(torch.ones(3, 1, 1)).flatten(),
                          torch.tensor([(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225]))


def test_jitter_touches_input_only():
    transform = SegmentationTrainTransform((64, 128), (32, 80), KEEP_IDS)
    raw = {'color': IMAGE, 'segmentation': LABEL}
    jittered = transform.apply(raw, TrainDraw(False, (50, 100), 5, 7, Jitter(1.2, 0.8, 1.2, 0.1)))
    plain = transform.apply(raw, TrainDraw(False, (50, 100), 5, 7, Jitter()))
    assert torch.equal(jittered['image'], plain['image']) and torch.equal(plain['input'], plain['image'])
    assert not torch.equal(jittered['input'], plain['input'])


@pytest.mark.parametrize('jitter', [Jitter(), Jitter(1.15, 0.85, 1.1, 0.07), Jitter(0.8, 1.2, 0.8, -0.1)])
def test_jitter_matches_torchvision_pil_chain(jitter):
    image = Image.fromarray(IMAGE)
    reference = TF.adjust_hue(TF.adjust_saturation(TF.adjust_contrast(
        TF.adjust_brightness(image, jitter.brightness), jitter.contrast), jitter.saturation), jitter.hue)
    difference = np.abs(jitter.apply(image).astype(int) - np.asarray(reference))
    assert difference.mean() < 1.5  # only the 8-bit HSV rounding of the hue shift differs (OpenCV vs PIL)


def test_draws_come_from_python_random():
    transform = SegmentationTrainTransform((64, 128), (32, 80), KEEP_IDS)
    random.seed(3)
    first = [transform.draw() for _ in range(5)]
    random.seed(3)
    assert [transform.draw() for _ in range(5)] == first
    jitters = [Jitter.draw() for _ in range(200)]
    assert all(0.8 <= j.brightness <= 1.2 and 0.8 <= j.contrast <= 1.2 and 0.8 <= j.saturation <= 1.2
               and -0.1 <= j.hue <= 0.1 for j in jitters)
    assert {transform.draw().flip for _ in range(50)} == {False, True}


@pytest.mark.parametrize('flip', [False, True])
def test_cityscapes_sequence_crop_at_the_passed_offsets(flip):
    height, width = 256, 512
    top, left = height * 32 // 512, width * 33 // 1024
    resized_hw, crop_hw = (height * 568 // 512, width * 1092 // 1024), (height * 320 // 512, width)
    transform = AdaptationTransform(resized_hw, crop_hw, (top, left))
    sample = transform.apply({'color': IMAGE}, AdaptationDraw(flip, Jitter()))
    reference = Image.fromarray(IMAGE)
    if flip:
        reference = reference.transpose(FLIP)
    reference = reference.resize(resized_hw[::-1], Image.BILINEAR).crop((left, top, left + width, top + crop_hw[0]))
    assert mean_abs_diff(sample['input'], reference) < ONE_LEVEL
