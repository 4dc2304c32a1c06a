#!/usr/bin/env bash
# The GPU check of issue 13, for a machine with a CUDA GPU: every test marked `cuda` (pytest -m cuda: the tests that
# skip without CUDA, see tests/conftest.py) and benchmarks/bench_gpu.py on cuda, each under a time limit.
#
#     scripts/gpu_check.sh                                    # from anywhere; outputs in $OUT or results/gpu-check
#     OUT=/tmp/out CPU_BESIDE_SECONDS=0 BENCH_ARGS="--n 50000" scripts/gpu_check.sh   # smaller, GPU column only
#
# Installs nothing and reaches no network: it runs $PYTHON (else .venv/bin/python when it sees CUDA, else python3)
# with the package from src/ on PYTHONPATH, and stops at once, naming them, when CUDA or a module is missing.
# Writes into the output folder: environment.txt (nvidia-smi, torch, CUDA), pytest.log and junit.xml, bench-gpu.log
# and bench-gpu.json (the GPU table as markdown and every number), then bench-gpu-cpu-beside.log/.json (the same
# with the CPU column beside; skipped with CPU_BESIDE_SECONDS=0); each JSON file is rewritten after every row, so a
# run cut by its time limit keeps what it measured; user-cache/ (compiled CPU kernels). Time limits in seconds:
# TEST_SECONDS (default 120), BENCH_SECONDS (240), CPU_BESIDE_SECONDS (240): 10 minutes in all, the longest command
# a lent GPU machine runs. Exit code 0 only when every cuda test passed and both benchmarks finished; 1 when one of
# them failed or ran out of time; 2 when this machine cannot run the check.
set -u -o pipefail
cd "$(dirname "$0")/.."
out="${OUT:-results/gpu-check}"
mkdir -p "$out"

. scripts/gpu_python.sh  # sees_cuda, $python, PYTHONPATH
export DENOISERLAB_CACHE="$out/user-cache"  # compiled kernels and eigendecompositions stay out of the home folder

{
    echo "gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "python: $python ($("$python" --version 2>&1))"
    nvidia-smi --query-gpu=name,memory.total,driver_version,compute_mode --format=csv 2>/dev/null || echo "nvidia-smi: none"
    "$python" -c 'import torch; print("torch", torch.__version__, "built for CUDA", torch.version.cuda, "| available:",
        torch.cuda.is_available(), "| devices:", [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])' 2>&1
} | tee "$out/environment.txt"

if ! sees_cuda "$python"; then
    echo "gpu_check: CUDA is not available to $python (set PYTHON to an interpreter with a CUDA build of torch)" >&2
    exit 2
fi
missing=$("$python" -c 'import importlib.util as u; print(" ".join(m for m in ("numpy", "PIL", "matplotlib", "tqdm",
    "safetensors", "tomli_w", "pytest", "denoiserlab") if u.find_spec(m) is None))')
if [ -n "$missing" ]; then
    echo "gpu_check: $python lacks the module(s) $missing; this script installs nothing" >&2
    exit 2
fi

status=0
echo "== pytest -m cuda (limit ${TEST_SECONDS:-120} s)"
timeout "${TEST_SECONDS:-120}" "$python" -m pytest -q -m cuda -rs -p no:cacheprovider --continue-on-collection-errors \
    --junitxml="$out/junit.xml" 2>&1 | tee "$out/pytest.log" || status=1
echo "== benchmarks/bench_gpu.py --device cuda --no-cpu-beside (limit ${BENCH_SECONDS:-240} s)"
# shellcheck disable=SC2086  # BENCH_ARGS holds several options
timeout "${BENCH_SECONDS:-240}" "$python" benchmarks/bench_gpu.py --device cuda --no-cpu-beside \
    --out "$out/bench-gpu.json" ${BENCH_ARGS:-} 2>&1 | tee "$out/bench-gpu.log" || status=1
if [ "${CPU_BESIDE_SECONDS:-240}" -gt 0 ]; then  # the same table again with the CPU column (16 threads: minutes)
    echo "== benchmarks/bench_gpu.py --device cuda --cpu-beside (limit ${CPU_BESIDE_SECONDS:-240} s)"
    # shellcheck disable=SC2086
    timeout "${CPU_BESIDE_SECONDS:-240}" "$python" benchmarks/bench_gpu.py --device cuda --cpu-beside \
        --out "$out/bench-gpu-cpu-beside.json" ${BENCH_ARGS:-} 2>&1 | tee "$out/bench-gpu-cpu-beside.log" || status=1
fi
echo "gpu_check: $([ "$status" = 0 ] && echo passed || echo FAILED); outputs in $out/"
exit "$status"
