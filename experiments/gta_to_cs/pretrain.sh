#!/usr/bin/env bash
# GTA-5 -> Cityscapes: pre-train VGG16-bn on the source domain (paper: batch 12, crop 192x640 from 512x1024, 20 epochs).
# Extra flags are passed on, e.g. --sys-num-workers 8 or --train-weights-init scratch.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
"$PYTHON" "$REPO/train.py" \
    --model-name ubna_pretrained_seg_gta_vgg16 \
    --model-type vgg \
    --model-num-layers-vgg 16 \
    --segmentation-training-loaders gta5_train \
    --segmentation-training-batch-size 12 \
    --experiment-class ubna_pretrained_models \
    "$@"
