#!/usr/bin/env bash
# Issue 16's emoji heatmaps on a CUDA GPU: both shipped emoji networks, the same convergence rule as the shipped
# Fashion-MNIST files (--until-converged 0.02, under both readings), up to 256 z per sigma, in float32, with a 256-z
# reference at sigma 1.92. Both files ship, made on a CPU (the DiT's in float32, ~7 thread-hours; the U-Net's with
# --precision bfloat16, ~3 thread-hours: src/denoiserlab/assets/heatmaps/README.md); this script remakes them on a
# GPU, e.g. to add the reference or, with a larger --n-samples, more z.
#
#     scripts/gpu_emoji_heatmaps.sh     # outputs in $OUT or results/emoji-heatmaps; time limit HEATMAP_SECONDS each
#
# Installs nothing and reaches no network; runs $PYTHON (else .venv/bin/python when it sees CUDA, else python3) with
# the package from src/ on PYTHONPATH. A run cut by its time limit keeps its finished sigmas in OUT/*.npz.parts/, and
# the same command resumes from them. Replace a shipped file (src/denoiserlab/assets/heatmaps/) only if the new one
# says more (the repository keeps every version of a 64 MB file).
set -u -o pipefail
cd "$(dirname "$0")/.."
out="${OUT:-results/emoji-heatmaps}"
mkdir -p "$out"
. scripts/gpu_python.sh  # sees_cuda, $python, PYTHONPATH
if ! sees_cuda "$python"; then
    echo "gpu_emoji_heatmaps: CUDA is not available to $python (set PYTHON to a CUDA build of torch)" >&2
    exit 2
fi
status=0
for network in unet-small-emoji dit-small-emoji; do
    echo "== $network (limit ${HEATMAP_SECONDS:-240} s)"
    timeout "${HEATMAP_SECONDS:-240}" "$python" -m denoiserlab heatmaps --network "shipped:$network" \
        --out "$out/$network.npz" --device cuda --until-converged 0.02 --start-samples 8 --groups 4 \
        --check-pairs 16 --n-samples 256 --batch-size 8 --products-per-pass 128 --reference-sigma 1.92 \
        2>&1 | tr '\r' '\n' | grep -v '^ *$' | tail -n 20 || status=1
    [ -f "$out/$network.npz" ] || status=1
done
echo "gpu_emoji_heatmaps: $([ "$status" = 0 ] && echo finished || echo UNFINISHED); outputs in $out/"
exit "$status"
