#!/usr/bin/env bash
# Cityscapes -> ACDC, CoTTA's continual protocol: every online method over fog -> night -> rain -> snow, the whole
# sequence 10 times without a reset of the stream, at batch 1 and 960x544 network input (the multiple of 32 nearest
# to CoTTA's 960x540; labels at native size). Results: $UBNA_DIR_CHECKPOINT/ubna_sweeps/cs_to_acdc/summary.md (the
# stream's mIoU and the last round per domain), runs.csv, and each method's per-round table in the log. The networks
# are ours (VGG16-bn), not CoTTA's SegFormer: the numbers are not the paper's. Rerunning resumes; extra flags are
# passed on (e.g. --online-rounds 1 for a first look, --seeds 1,2,3).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
"$PYTHON" "$REPO/sweep.py" \
    --experiment-class ubna_sweeps \
    --model-name cs_to_acdc \
    --model-type vgg \
    --model-num-layers-vgg 16 \
    --model-load ubna_pretrained_models/ubna_pretrained_seg_cs_vgg16/checkpoints/epoch_20 \
    --methods no_adaptation,test_batch,cbna,bn_ema,ubna_online,dua,tent,eta,eata,sar,cotta,rotta \
    --segmentation-validation-loaders acdc_fog_validation,acdc_night_validation,acdc_rain_validation,acdc_snow_validation \
    --segmentation-validation-resize-height 544 \
    --segmentation-validation-resize-width 960 \
    --segmentation-validation-batch-size 1 \
    --segmentation-eval-remaps none \
    --online-rounds 10 \
    --seeds 1 \
    "$@"
