#!/usr/bin/env bash
# Cityscapes -> ACDC: pre-train VGG16-bn on Cityscapes (batch 12, crop 192x640 from 512x1024, 20 epochs), the same
# source model as cs_to_kitti/pretrain.sh (run one of the two). Extra flags are passed on, e.g. --sys-num-workers 8.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
"$PYTHON" "$REPO/train.py" \
    --model-name ubna_pretrained_seg_cs_vgg16 \
    --model-type vgg \
    --model-num-layers-vgg 16 \
    --segmentation-training-loaders cityscapes_train \
    --segmentation-training-batch-size 12 \
    --experiment-class ubna_pretrained_models \
    "$@"
