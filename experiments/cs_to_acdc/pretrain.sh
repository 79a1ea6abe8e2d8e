#!/usr/bin/env bash
# Cityscapes -> ACDC: the Cityscapes source model is cs_to_kitti's (VGG16-bn, batch 12, crop 192x640 from 512x1024,
# 20 epochs); this runs that script. Extra flags are passed on, e.g. --sys-num-workers 8.
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/../cs_to_kitti/pretrain.sh" "$@"
