"""Confusion matrix, IoU, accuracy and remaps against values computed by hand (spec §8)."""
import math

import pytest
import torch

from evaluation.metrics import REMAPS, ConfusionMatrix, remapped_label, remapped_prediction
from evaluation.metrics import upsample_labels


def logits_for(top: list, second: list = None) -> torch.Tensor:
    """1×20×1×P logits whose argmax per pixel is `top` (and runner-up `second`)."""
    logits = torch.zeros(1, 20, 1, len(top))
    for i, c in enumerate(top):
        logits[0, c, 0, i] = 2.0
    for i, c in enumerate(second or []):
        logits[0, c, 0, i] = 1.0
    return logits


def test_iou_and_accuracy_by_hand_with_ignore_nan_and_unused_class():
    label = torch.tensor([[0, 0, 1, 1, 255, 2]])
    prediction = remapped_prediction(logits_for([0, 1, 1, 1, 0, 19]), 'none')[0]
    matrix = ConfusionMatrix(19)
    matrix.update(label, prediction)
    iou = matrix.iou()
    # class 0: TP 1, FN 1 (predicted 1) → 1/2; class 1: TP 2, FP 1 → 2/3.
    # class 2: its only pixel was predicted as the unused class 19, which is not counted (quirk) → NaN.
    assert iou[0].item() == pytest.approx(1 / 2)
    assert iou[1].item() == pytest.approx(2 / 3)
    assert math.isnan(iou[2].item()) and all(math.isnan(v) for v in iou[3:].tolist())
    assert matrix.miou() == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert matrix.mean_accuracy() == pytest.approx((1 / 2 + 1) / 2)
    assert matrix.matrix.sum().item() == 4  # the 255 pixel and the class-19 prediction are left out


def test_matrix_accumulates_over_batches():
    matrix = ConfusionMatrix(19)
    matrix.update(torch.tensor([3, 3]), torch.tensor([3, 4]))
    matrix.update(torch.tensor([4]), torch.tensor([4]))
    # class 3: TP 1, FN 1 → 1/2; class 4: TP 1, FP 1 → 1/2
    assert matrix.iou()[3].item() == pytest.approx(0.5)
    assert matrix.iou()[4].item() == pytest.approx(0.5)
    assert matrix.miou() == pytest.approx(0.5)


def test_matrix_counts_every_pair_as_a_pixel_loop_does():
    generator = torch.Generator().manual_seed(0)
    matrix, expected = ConfusionMatrix(19), torch.zeros(19, 19, dtype=torch.long)
    for _ in range(3):
        label = torch.randint(0, 21, (2, 8, 9), generator=generator, dtype=torch.uint8)
        label[label == 20] = 255
        prediction = torch.randint(0, 20, (2, 8, 9), generator=generator)
        matrix.update(label, prediction)
        for truth, predicted in zip(label.flatten().tolist(), prediction.flatten().tolist()):
            if truth < 19 and predicted < 19:
                expected[truth, predicted] += 1
    assert torch.equal(matrix.matrix, expected) and expected.sum() > 0


def test_synthia_16_remap_reindexes_logits_and_labels():
    kept = REMAPS['synthia_16']
    assert len(kept) == 16 and 9 not in kept and 14 not in kept and 16 not in kept
    # pixel 0: truck (dropped) wins, car second → car; pixel 1: unused 19 wins, road second → road;
    # pixel 2: sky → new index 9.
    logits = logits_for([14, 19, 10], second=[13, 0, 0])
    prediction = remapped_prediction(logits, 'synthia_16')[0, 0]
    assert prediction.tolist() == [kept.index(13), kept.index(0), kept.index(10)]
    label = torch.tensor([13, 9, 10, 255, 16])
    assert remapped_label(label, 'synthia_16').tolist() == [kept.index(13), 255, kept.index(10), 255, 255]


def test_synthia_13_remap_drops_wall_fence_pole_too():
    kept = REMAPS['synthia_13']
    assert kept == (0, 1, 2, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18)
    label = torch.tensor([[3, 4, 5, 6, 18]])
    logits = logits_for([3, 4, 6, 6, 18], second=[2, 2, 2, 2, 2])
    matrix = ConfusionMatrix(13)
    matrix.update(remapped_label(label, 'synthia_13'), remapped_prediction(logits, 'synthia_13'))
    iou = matrix.iou()
    # wall and fence labels are ignored; the pole pixel (ignored) was predicted traffic light.
    # traffic light (new 3): TP 1; bicycle (new 12): TP 1; building (new 2): FP 0 since its pixels are ignored
    assert iou[3].item() == pytest.approx(1.0)
    assert iou[12].item() == pytest.approx(1.0)
    assert matrix.miou() == pytest.approx(1.0)
    assert matrix.matrix.sum().item() == 2


def test_argmax_then_nearest_upsampling_equals_upsampling_logits_first():
    torch.manual_seed(0)
    logits = torch.randn(2, 20, 4, 8)
    label_size = (16, 32)
    direct = torch.nn.functional.interpolate(logits, size=label_size, mode='nearest').argmax(1)
    assert torch.equal(upsample_labels(logits.argmax(1), label_size), direct)


def test_skip_unused_class_counts_every_labelled_pixel():
    label = torch.tensor([[2, 2]])
    logits = logits_for([19, 2], second=[3, 0])
    matrix = ConfusionMatrix(19)
    matrix.update(label, remapped_prediction(logits, 'none', skip_unused_class=True)[0])
    assert matrix.matrix.sum().item() == 2
    assert matrix.iou()[2].item() == pytest.approx(1 / 2)  # the class-19 pixel now counts as predicted wall (3)
    assert matrix.iou()[3].item() == pytest.approx(0.0)
