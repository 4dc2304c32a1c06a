#!/usr/bin/env bash
# Issue 14 on a GPU: train configs/train-unet-wide-full.toml (unet-small's layout at twice its width on the 60,000
# Fashion-MNIST images) for at most TRAIN_SECONDS, then the held-out learning curve of its checkpoints
# (scripts/heldout_mse.py: ratio to the better closed form per sigma, target <= 1.02 everywhere), then the last
# checkpoint packed for the trip back.
#
#     scripts/gpu_unet_full.sh                          # outputs in $OUT or results/gpu-unet-full
#     DEVICE=cpu TRAIN_SECONDS=60 HELDOUT_N=16 TRAIN_ARGS="--kimg 0.5 --checkpoint-kimg 0.25 --batch-size 32" \
#         scripts/gpu_unet_full.sh                      # a dry run of the plumbing on a CPU
#
# Needs Debian's dataset-fashion-mnist (/usr/share/datasets/fashion-mnist: on a machine without the package, copy
# its four .gz files there) and, like scripts/gpu_check.sh, installs nothing: $PYTHON (else .venv/bin/python when
# it sees CUDA, else python3) with src/ on PYTHONPATH. The training run lives in RUN_DIR (default $OUT/run) and
# resumes when the script is run again with the same RUN_DIR (the time limit cuts it at any moment; checkpoints
# every 50 kimg). Writes into the output folder: train.log, heldout.log and heldout.json (every checkpoint's
# ratios), and last-network.tar.part-aa, -ab, ... (the last checkpoint's folder, model.safetensors + config.json,
# with the run's loss.csv and that checkpoint's sample grid, in 15 MiB pieces: `cat last-network.tar.part-* | tar
# -x`). Time limits in seconds: TRAIN_SECONDS (default 330), HELDOUT_SECONDS (150). Exit code 0 when a checkpoint
# was made and evaluated, 1 otherwise, 2 when this machine cannot run it.
set -u -o pipefail
cd "$(dirname "$0")/.."
out="${OUT:-results/gpu-unet-full}"
run_dir="${RUN_DIR:-$out/run}"
device="${DEVICE:-cuda}"
mkdir -p "$out" "$run_dir"

. scripts/gpu_python.sh  # sees_cuda, $python, PYTHONPATH
if [ "$device" != cpu ] && ! sees_cuda "$python"; then
    echo "gpu_unet_full: CUDA is not available to $python (set PYTHON, or DEVICE=cpu for a dry run)" >&2
    exit 2
fi
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
    echo "gpu_unet_full: /usr/share/datasets/fashion-mnist is missing (apt-get install dataset-fashion-mnist)" >&2
    exit 2
fi

echo "== train (limit ${TRAIN_SECONDS:-330} s)"
# shellcheck disable=SC2086  # TRAIN_ARGS holds several options
timeout "${TRAIN_SECONDS:-330}" "$python" -m denoiserlab train --config configs/train-unet-wide-full.toml \
    --device "$device" --out "$run_dir" --no-progress ${TRAIN_ARGS:-} 2>&1 | tee -a "$out/train.log"
checkpoints=$(ls -d "$run_dir"/network-* 2>/dev/null | sort)
if [ -z "$checkpoints" ]; then
    echo "gpu_unet_full: no checkpoint in $run_dir" >&2
    exit 1
fi

echo "== held-out ratios of $(echo "$checkpoints" | wc -l) checkpoint(s) (limit ${HELDOUT_SECONDS:-150} s)"
# shellcheck disable=SC2086  # one argument per checkpoint
timeout "${HELDOUT_SECONDS:-150}" "$python" scripts/heldout_mse.py $checkpoints --curve --n "${HELDOUT_N:-512}" \
    --device "$device" --json "$out/heldout.json" 2>&1 | tr '\r' '\n' | grep -v "%|\|^ *$" | tee "$out/heldout.log"
status=$?

last=$(echo "$checkpoints" | tail -n 1)
name=$(basename "$last")
tar -C "$run_dir" -c "$name" loss.csv "samples-${name#network-}.png" | split -b 15M - "$out/last-network.tar.part-"
echo "gpu_unet_full: $([ "$status" = 0 ] && echo done || echo "held-out evaluation FAILED"); last checkpoint" \
     "$(basename "$last") packed in $out/last-network.tar.part-*"
exit "$status"
