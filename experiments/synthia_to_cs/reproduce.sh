#!/usr/bin/env bash
# SYNTHIA -> Cityscapes: the paper's table over 3 seeds (no adaptation, UBNA, UBNA+, target_only, the online methods),
# evaluated on cityscapes_validation (19, 16 and 13 classes); the offline methods adapt once to 50 target batches of 6
# and are evaluated after 1, 5, 10 and 50. Results: $UBNA_DIR_CHECKPOINT/ubna_sweeps/synthia_to_cs/summary.md
# (mean ± std over the seeds), runs.csv and plots. Rerunning resumes; extra flags are passed on
# (e.g. --sys-num-workers 8, or --seeds 1 for a first look).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
reproduce_table \
    --model-name synthia_to_cs \
    --model-load ubna_pretrained_models/ubna_pretrained_seg_synthia_vgg16/checkpoints/epoch_20 \
    --adaptation-training-loaders cityscapes_sequence_train \
    --adaptation-resize-height 512 \
    --adaptation-resize-width 1024 \
    --segmentation-validation-loaders cityscapes_validation \
    --segmentation-validation-resize-height 512 \
    --segmentation-validation-resize-width 1024 \
    --segmentation-eval-remaps none,synthia_16,synthia_13 \
    --alpha-batch 0.08 \
    --alpha-layer 0.03 \
    "$@"
