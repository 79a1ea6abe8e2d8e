"""Weighted cross entropy of the reference's segmentation pre-training (spec §6)."""
import torch
import torch.nn as nn

IGNORE_INDEX = 255

# Class weights for train ids 0..19; the unused 20th output channel gets weight 0.
CLASS_WEIGHTS = (
    2.8149201869965, 6.9850029945374, 3.7890393733978, 9.9428062438965, 9.7702074050903,
    9.5110931396484, 10.311357498169, 10.026463508606, 4.6323022842407, 9.5608062744141,
    7.8698215484619, 9.5168733596802, 10.373730659485, 6.6616044044495, 10.260489463806,
    10.287888526917, 10.289801597595, 10.405355453491, 10.138095855713, 0.0,
)


def segmentation_loss() -> nn.CrossEntropyLoss:
    """Cross entropy over the 20 logit channels with the reference's class weights, ignoring 255."""
    return nn.CrossEntropyLoss(weight=torch.tensor(CLASS_WEIGHTS), ignore_index=IGNORE_INDEX)
