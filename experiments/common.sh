# Sourced by every experiment script: find the repository and its Python from any working directory.
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$REPO/.venv/bin/python" ]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=python3; fi
fi

# The paper's table for one domain pair (the reproduce.sh scripts): the settings all pairs share, then the pair's
# own flags and the caller's extra ones (later flags win).
reproduce_table() {
    "$PYTHON" "$REPO/sweep.py" \
        --experiment-class ubna_sweeps \
        --model-type vgg \
        --model-num-layers-vgg 16 \
        --adaptation-training-batch-size 6 \
        --methods no_adaptation,batch_shrinking,layer_shrinking,target_only,test_batch,cbna,bn_ema,ubna_online,dua,tent \
        --num-batches 1,5,10,50 \
        --seeds 1,2,3 \
        "$@"
}
