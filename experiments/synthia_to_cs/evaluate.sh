#!/usr/bin/env bash
# SYNTHIA -> Cityscapes: mIoU of the source model, UBNA and UBNA+ on the target validation set.
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
        --segmentation-validation-loaders cityscapes_validation \
        --segmentation-validation-resize-height 512 \
        --segmentation-validation-resize-width 1024 \
        --segmentation-eval-remaps none,synthia_16,synthia_13 \
        "${@:3}"
}

evaluate eval_synthia_to_cs_source "ubna_pretrained_models/ubna_pretrained_seg_synthia_vgg16/checkpoints/epoch_20" "$@"
evaluate eval_synthia_to_cs_ubna "ubna_adapted_models/ubna_adaption_synthia_to_cs_vgg16_BS6_alpha_batch=0.08_alpha_layer=0/checkpoints/batch_50" "$@"
evaluate eval_synthia_to_cs_ubna_plus "ubna_adapted_models/ubna_adaption_synthia_to_cs_vgg16_BS6_alpha_batch=0.08_alpha_layer=0.03/checkpoints/batch_50" "$@"
