"""Segmentation metrics of spec §8: confusion matrix on the device, IoU, mean class accuracy, remaps.

Nothing here waits for a GPU: no boolean indexing, bincount or tensor from a Python list per batch (each makes the
CPU wait until the GPU has finished the batch's forward pass, so that the next batch cannot be queued meanwhile).
"""
from functools import lru_cache

import torch
import torch.nn.functional as F

NUM_CLASSES = 19

# Train ids kept by each remap, in their new order (spec §8); 'none' keeps all 19.
REMAPS = {
    'none': tuple(range(NUM_CLASSES)),
    'synthia_16': (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18),
    'synthia_13': (0, 1, 2, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18),
}


@lru_cache(maxsize=None)
def _kept_channels(remap: str, device: torch.device) -> torch.Tensor:
    return torch.tensor(REMAPS[remap], device=device)


@lru_cache(maxsize=None)
def _renumbering(remap: str, device: torch.device) -> torch.Tensor:
    """256 entries: a kept train id's index in the remap's order, 255 for every other value."""
    table = torch.full((256,), 255, dtype=torch.long)
    table[list(REMAPS[remap])] = torch.arange(len(REMAPS[remap]))
    return table.to(device)


def upsample_labels(prediction: torch.Tensor, size) -> torch.Tensor:
    """Nearest upsampling of an N×h×w map of class indices (argmax first: 1 channel instead of 20)."""
    if tuple(prediction.shape[-2:]) == tuple(size):
        return prediction
    return F.interpolate(prediction[:, None].float(), size=size, mode='nearest')[:, 0].long()


def remapped_prediction(logits: torch.Tensor, remap: str, skip_unused_class: bool = False) -> torch.Tensor:
    """Argmax over the logit channels a remap keeps: for 'none' all 20, so the unused class 19 can win
    (the reference's behaviour), or the 19 real ones with skip_unused_class."""
    if remap == 'none':
        return (logits[:, :NUM_CLASSES] if skip_unused_class else logits).argmax(1)
    return logits.index_select(1, _kept_channels(remap, logits.device)).argmax(1)


def remapped_label(label: torch.Tensor, remap: str) -> torch.Tensor:
    """Train ids renumbered to a remap's order; dropped classes become 255."""
    if remap == 'none':
        return label
    return _renumbering(remap, label.device)[label.clamp(0, 255).long()]


class ConfusionMatrix:
    """Accumulates an n×n confusion matrix (rows: label, columns: prediction), one scatter-add per batch."""

    def __init__(self, num_classes: int, device: torch.device | str = 'cpu'):
        self.num_classes = num_classes
        self._counts = torch.zeros(num_classes * num_classes + 1, dtype=torch.long, device=device)  # + the uncounted
        self.matrix = self._counts[:-1].view(num_classes, num_classes)

    def update(self, label: torch.Tensor, prediction: torch.Tensor) -> None:
        """Count pixels whose label and prediction are both < n (quirk: a prediction ≥ n is not counted)."""
        n = self.num_classes
        label, prediction = label.reshape(-1).long(), prediction.reshape(-1).long()
        valid = (label >= 0) & (label < n) & (prediction >= 0) & (prediction < n)
        codes = torch.where(valid, label * n + prediction, n * n)  # integer adds: exact in any order
        self._counts.scatter_add_(0, codes, torch.ones_like(codes))

    def add(self, other: 'ConfusionMatrix') -> 'ConfusionMatrix':
        """Count the pixels of `other` into this matrix too; returns this matrix."""
        self._counts += other._counts
        return self

    def iou(self) -> torch.Tensor:
        """Per-class IoU = TP / (TP + FP + FN); NaN for a class absent from labels and predictions."""
        matrix = self.matrix.double()
        true_positives = matrix.diag()
        union = matrix.sum(0) + matrix.sum(1) - true_positives
        return true_positives / union

    def class_accuracy(self) -> torch.Tensor:
        """Per-class accuracy TP / (TP + FN); NaN for a class absent from the labels."""
        matrix = self.matrix.double()
        return matrix.diag() / matrix.sum(1)

    def miou(self) -> float:
        return torch.nanmean(self.iou()).item()

    def mean_accuracy(self) -> float:
        return torch.nanmean(self.class_accuracy()).item()
