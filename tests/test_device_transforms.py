"""The adaptation images' resize and jitter on the device (--adaptation-pixel-work device) against PIL and
torchvision bit for bit, and its batches against the workers' through the real loaders.
On a GPU machine, UBNA_TEST_DEVICE=cuda runs them there (a GPU's arithmetic can round differently)."""
import os

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageEnhance

from dataloader import device_transforms, loaders, transforms
from dataloader.transforms import AdaptationDraw, AdaptationTransform, Jitter
from experiment.runtime import seed_everything
from data_download.tiny_datasets import noise_image, write_dataset

DEVICE = torch.device(os.environ.get('UBNA_TEST_DEVICE', 'cpu'))

pytestmark = pytest.mark.usefixtures('one_thread')  # conftest.py: small tensors, shared cores


def on_device(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(image)).to(DEVICE)


def opencv_hue(images: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """The workers' hue shift (OpenCV's HSV) of a batch, for the device: with it, both give the same samples."""
    shifted = [transforms.shift_hue(image.cpu().numpy(), int(shift)) for image, shift in zip(images, shifts.cpu())]
    return torch.from_numpy(np.stack(shifted)).to(images.device)


def textured(height: int, width: int) -> np.ndarray:
    """Noise over flat patches and stripes: saturated and grey pixels, edges, smooth runs (the same for a size)."""
    y, x = np.mgrid[0:height, 0:width]
    flat = np.stack([(x // 7 % 3) * 120, (y // 5 % 2) * 250, (x + y) % 256], -1)
    noise = np.random.default_rng(height * width).normal(0, 25, (height, width, 3))
    return (flat * 0.8 + noise).clip(0, 255).astype(np.uint8)


def pil_resize(image: np.ndarray, hw, box) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((hw[1], hw[0]), Image.Resampling.BILINEAR, box=box))


@pytest.mark.parametrize('source_hw, hw, box', [
    ((96, 200), (48, 100), None),  # halving both sides
    ((120, 230), (40, 128), (0, 0, 216.0, 66.2)),  # a cityscapes_sequence crop: a fractional box
    ((120, 230), (40, 128), (12.9, 0, 228.9, 66.2)),  # the same crop mirrored for a flip
    ((258, 198), (32, 168), None),  # the height shrinks much more: Pillow 13 resamples the rows first
    ((37, 53), (90, 120), (1.5, 2.25, 50.0, 30.5)),  # enlarging a region
    ((64, 128), (64, 80), None),  # the rows untouched: one pass only
])
def test_resize_equals_pil(source_hw, hw, box):
    image = textured(*source_hw)
    box = box or (0, 0, source_hw[1], source_hw[0])
    assert np.array_equal(device_transforms.resize(on_device(image), hw, box).cpu().numpy(),
                          pil_resize(image, hw, box))


@pytest.mark.parametrize('factor', [0.0, 0.8, 1.0, 1.17, 1.5])
def test_brightness_contrast_and_saturation_equal_pil(factor):
    image = textured(33, 47)
    for ours, enhancer in ((device_transforms.brightness, ImageEnhance.Brightness),
                           (device_transforms.contrast, ImageEnhance.Contrast),
                           (device_transforms.saturation, ImageEnhance.Color)):
        expected = np.asarray(enhancer(Image.fromarray(image)).enhance(factor))
        assert np.array_equal(ours(on_device(image), factor).cpu().numpy(), expected), enhancer.__name__


@pytest.mark.parametrize('hue', [0.0, 0.001, 0.05, -0.07, 0.1, -0.5])
def test_hue_equals_torchvision_on_pil_images(hue):
    image = textured(40, 64)
    expected = np.asarray(TF.adjust_hue(Image.fromarray(image), hue))
    shift = Jitter(hue=hue).hue_shift
    assert np.array_equal(device_transforms.hue(on_device(image), shift).cpu().numpy(), expected)


@pytest.mark.slow  # 16.7 million colours: 5-15 s
def test_hsv_conversions_equal_pil_for_every_colour():
    every = np.stack(np.meshgrid(*[np.arange(256, dtype=np.uint8)] * 3, indexing='ij'), -1).reshape(4096, 4096, 3)
    assert np.array_equal(device_transforms._to_hsv(on_device(every)).cpu().numpy(),
                          np.asarray(Image.fromarray(every).convert('HSV')))
    assert np.array_equal(device_transforms._to_rgb(on_device(every)).cpu().numpy(),
                          np.asarray(Image.fromarray(every, 'HSV').convert('RGB')))


def test_a_batch_is_resized_and_jittered_as_each_of_its_images_alone():
    """One set of operations for a batch, with a factor per image: the same bytes as image by image."""
    images = np.stack([textured(70, 110), textured(70, 110)[::-1], textured(70, 110)[:, ::-1]])
    batch, box = on_device(images), (3.5, 0, 104.25, 66.0)
    resized = device_transforms.resize(batch, (36, 50), box)
    alone = [device_transforms.resize(on_device(image), (36, 50), box) for image in images]
    assert all(torch.equal(a, b) for a, b in zip(resized, alone))
    jitters = [Jitter(1.15, 0.85, 1.1, 0.07), Jitter(), Jitter(0.8, 1.2, 0.8, -0.1)]
    jittered = device_transforms.jitter(resized, jitters)
    assert all(torch.equal(jittered[i], device_transforms.jitter(alone[i][None], [jitters[i]])[0]) for i in range(3))
    assert not torch.equal(jittered[0], device_transforms.jitter(alone[0][None], [jitters[1]])[0])


def torchvision_jitter(image: Image.Image, jitter: Jitter) -> Image.Image:
    """The reference's colour jitter: torchvision's functions on PIL images, in its fixed order."""
    return TF.adjust_hue(TF.adjust_saturation(TF.adjust_contrast(
        TF.adjust_brightness(image, jitter.brightness), jitter.contrast), jitter.saturation), jitter.hue)


@pytest.mark.parametrize('jitter', [Jitter(), Jitter(1.15, 0.85, 1.1, 0.07), Jitter(0.8, 1.2, 0.8, -0.1)])
def test_jitter_equals_the_torchvision_chain_of_the_reference(jitter):
    image = Image.fromarray(textured(48, 80))
    ours = device_transforms.jitter(on_device(np.asarray(image))[None], [jitter])[0]
    assert np.array_equal(ours.cpu().numpy(), np.asarray(torchvision_jitter(image, jitter)))


@pytest.mark.parametrize('flip', [False, True])
def test_a_sample_made_on_the_device_equals_the_workers_but_for_the_hue(flip, monkeypatch):
    transform = AdaptationTransform((113, 218), (64, 204), (7, 9))
    draw = AdaptationDraw(flip, Jitter(1.1, 0.9, 1.2, 0.06))
    raw = {'color': textured(150, 300)}
    in_worker = transform.apply(raw, draw)['input']
    sample = AdaptationTransform((113, 218), (64, 204), (7, 9), on_device=True).apply(raw, draw)
    assert sample['color'].shape == (150, 300, 3)  # the worker only decodes
    assert sample['box'] == transform.source_box((150, 300), flip)
    batch = {key: [value] for key, value in sample.items()}
    made_on_device = device_transforms.adaptation_images(batch, (64, 204), DEVICE).cpu()
    assert made_on_device.shape == (1, 3, 64, 204)
    assert made_on_device.is_contiguous(memory_format=torch.channels_last)
    difference = (made_on_device[0].int() - in_worker.int()).abs()
    assert 0 < difference.float().mean() < 2 and difference.max() < 16  # PIL's HSV against OpenCV's: under 3 hue steps
    monkeypatch.setattr(device_transforms, 'hue', opencv_hue)  # the workers' hue: then the samples are the same
    assert torch.equal(device_transforms.adaptation_images(batch, (64, 204), DEVICE)[0].cpu(), in_worker)


def write_kitti_of_mixed_sizes(root: str) -> None:
    """KITTI's drives differ in image size (375x1242, 370x1224, ...): so do these, within a batch."""
    rng = np.random.default_rng(1)
    sizes = [(60, 150), (58, 146), (61, 152), (60, 150)] * 2
    write_dataset(root, 'kitti', {category: {i: noise_image(rng, *size) for i, size in enumerate(sizes)}
                                  for category in ('color', 'color_right')},
                  labels='other', labels_mode='fromid', split='kitti_split')


def kitti_batches(workers: int) -> loaders.DeviceBatches:
    dataset = loaders.adaptation_dataset('kitti_kitti_train', (40, 96), (40, 96), on_device=True)
    loader = loaders.make_loader(dataset, 3, True, True, workers, DEVICE.type == 'cuda', samples_needed=12,
                                 drawing=dataset.transform, single_samples=True)
    return loaders.DeviceBatches(loader, 3, dataset.transform, DEVICE)


@pytest.mark.parametrize('workers', [0, 2])
def test_device_batches_are_pil_and_torchvision_on_their_draws(ubna_env, workers):
    write_kitti_of_mixed_sizes(ubna_env)
    seed_everything(3)
    batches = kitti_batches(workers)
    seen_sizes = set()
    for batch in batches:
        images = batch['input'].cpu()
        for image, color, box, flip, jitter in zip(images, batch['color'], batch['box'], batch['flip'],
                                                   batch['jitter']):
            expected = Image.fromarray(color.numpy()).resize((96, 40), Image.Resampling.BILINEAR, box=box)
            if flip:
                expected = expected.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            assert np.array_equal(image.permute(1, 2, 0).numpy(), np.asarray(torchvision_jitter(expected, jitter)))
            seen_sizes.add(tuple(color.shape))
    assert len(seen_sizes) > 1 and len(batches) == 4


def adaptation_batches(workers: int, pixel_work: str, seed: int = 3) -> list[torch.Tensor]:
    """12 batches of 3 from the 16 samples of write_kitti_of_mixed_sizes: over three passes."""
    seed_everything(seed)
    return list(loaders.adaptation_batches(['kitti_kitti_train'], 3, 12, (40, 96), (40, 96), workers, DEVICE,
                                           torch.channels_last, pixel_work=pixel_work))


@pytest.mark.parametrize('pixel_work', ['workers', 'device'])
def test_adaptation_batches_do_not_depend_on_the_worker_count_over_several_passes(ubna_env, pixel_work):
    write_kitti_of_mixed_sizes(ubna_env)
    runs = [adaptation_batches(workers, pixel_work) for workers in (0, 2)]
    assert all(batch.is_contiguous(memory_format=torch.channels_last) for batch in runs[0])
    assert len(runs[0]) == 12 and all(torch.equal(a, b) for a, b in zip(*runs))
    assert not torch.equal(adaptation_batches(0, pixel_work, seed=4)[0], runs[0][0])


def test_auto_puts_the_pixel_work_on_a_gpu_and_leaves_it_to_the_workers_on_the_cpu():
    assert [loaders.pixel_work_on_device(choice, on_gpu=True) for choice in loaders.PIXEL_WORK] == [True, False, True]
    assert [loaders.pixel_work_on_device(choice, on_gpu=False) for choice in loaders.PIXEL_WORK] == [False, False, True]


def test_both_pixel_works_give_the_same_batches_but_for_the_hue(ubna_env, monkeypatch):
    """The same draws of the same samples: with the workers' hue on the device, the same bytes."""
    write_kitti_of_mixed_sizes(ubna_env)
    in_workers = adaptation_batches(2, 'workers')
    monkeypatch.setattr(device_transforms, 'hue', opencv_hue)
    on_device = adaptation_batches(2, 'device')
    assert len(in_workers) == len(on_device) == 12 and all(torch.equal(a, b) for a, b in zip(in_workers, on_device))


@pytest.mark.gpu
def test_on_a_gpu_the_pixel_work_gives_the_bytes_of_pil_and_torchvision():
    """In short, whatever UBNA_TEST_DEVICE says, what that variable set to cuda checks in full (a GPU's arithmetic
    can round differently): the HSV round trip of every colour, a fractional-box resize, the jitter chain."""
    cuda = torch.device('cuda')
    every = np.stack(np.meshgrid(*[np.arange(256, dtype=np.uint8)] * 3, indexing='ij'), -1).reshape(4096, 4096, 3)
    assert np.array_equal(device_transforms._to_hsv(torch.from_numpy(every).to(cuda)).cpu().numpy(),
                          np.asarray(Image.fromarray(every).convert('HSV')))
    assert np.array_equal(device_transforms._to_rgb(torch.from_numpy(every).to(cuda)).cpu().numpy(),
                          np.asarray(Image.fromarray(every, 'HSV').convert('RGB')))
    image, box = textured(120, 230), (12.9, 0, 228.9, 66.2)
    assert np.array_equal(device_transforms.resize(torch.from_numpy(image).to(cuda), (40, 128), box).cpu().numpy(),
                          pil_resize(image, (40, 128), box))
    picture = Image.fromarray(textured(48, 80))
    for jitter in (Jitter(1.15, 0.85, 1.1, 0.07), Jitter(0.8, 1.2, 0.8, -0.1)):
        ours = device_transforms.jitter(torch.from_numpy(np.asarray(picture).copy()).to(cuda)[None], [jitter])[0]
        assert np.array_equal(ours.cpu().numpy(), np.asarray(torchvision_jitter(picture, jitter)))
