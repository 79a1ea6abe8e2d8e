#!/usr/bin/env bash
# Cityscapes -> KITTI: mIoU of the source model, UBNA and UBNA+ on the target validation set.
# Results: $UBNA_DIR_CHECKPOINT/iccv_experiments/eval_*/results.json (one folder per model).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
evaluate() {  # name checkpoint [extra flags]
    "$PYTHON" "$REPO/evaluate.py" \
        --sys-best-effort-determinism \
        --model-type vgg \
        --model-num-layers-vgg 16 \
        --model-name "$1" \
        --model-load "$2" \
        --segmentation-validation-loaders kitti_2015_train \
        --segmentation-validation-resize-height 320 \
        --segmentation-validation-resize-width 1024 \
        --segmentation-eval-remaps none \
        "${@:3}"
}

evaluate eval_cs_to_kitti_source "ubna_pretrained_models/ubna_pretrained_seg_cs_vgg16/checkpoints/epoch_20" "$@"
evaluate eval_cs_to_kitti_ubna "ubna_adapted_models/ubna_adaption_cs_to_kitti_vgg16_BS6_alpha_batch=0.08_alpha_layer=0/checkpoints/batch_50" "$@"
evaluate eval_cs_to_kitti_ubna_plus "ubna_adapted_models/ubna_adaption_cs_to_kitti_vgg16_BS6_alpha_batch=0.08_alpha_layer=0.3/checkpoints/batch_50" "$@"
