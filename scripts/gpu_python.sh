# Sourced by the GPU scripts (scripts/gpu_check.sh, scripts/gpu_emoji_heatmaps.sh) from the repository root:
# defines sees_cuda PYTHON and sets $python to $PYTHON, else .venv/bin/python when it sees CUDA, else python3, with
# the package from src/ on PYTHONPATH. Installs nothing.
sees_cuda() { "$1" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; }
python="${PYTHON:-}"
if [ -z "$python" ]; then
    python=python3
    if [ -x .venv/bin/python ] && sees_cuda .venv/bin/python; then python=.venv/bin/python; fi
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
