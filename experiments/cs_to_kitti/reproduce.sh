#!/usr/bin/env bash
# Cityscapes -> KITTI: the paper's table over 3 seeds (no adaptation, UBNA, UBNA+, target_only, the online methods),
# evaluated on kitti_2015_train; the offline methods adapt once to 50 target batches of 6
# and are evaluated after 1, 5, 10 and 50. Results: $UBNA_DIR_CHECKPOINT/ubna_sweeps/cs_to_kitti/summary.md
# (mean ± std over the seeds), runs.csv and plots. Rerunning resumes; extra flags are passed on
# (e.g. --sys-num-workers 8, or --seeds 1 for a first look).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
reproduce_table \
    --model-name cs_to_kitti \
    --model-load ubna_pretrained_models/ubna_pretrained_seg_cs_vgg16/checkpoints/epoch_20 \
    --adaptation-training-loaders kitti_kitti_train \
    --adaptation-resize-height 320 \
    --adaptation-resize-width 1024 \
    --segmentation-validation-loaders kitti_2015_train \
    --segmentation-validation-resize-height 320 \
    --segmentation-validation-resize-width 1024 \
    --segmentation-eval-remaps none \
    --alpha-batch 0.08 \
    --alpha-layer 0.3 \
    --online-alpha-layer 0.3 \
    "$@"
