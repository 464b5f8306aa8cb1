# The hosted demo: CPU torch, the pinned stack, the embedded model converted at build time, hosted-mode limits.
#   docker build -t token-neuron-explorer . && docker run -p 8501:8501 token-neuron-explorer
# Memory: the server and its heavy-job worker peaked at 3.7–4.5 GB together (bench/load.py, 1 and 10 sessions, each
# Patching → Search → Corpus 10k tokens); heavy jobs beyond TNE_HEAVY_JOBS wait in a queue instead of adding memory.
# Give it 2 cores and 5 GB (docs/hosting.md); TNE_WORKERS=0 runs jobs in the server itself (~2.7 GB, slower under load).
FROM python:3.11-slim
WORKDIR /app
ENV TNE_CACHE_DIR=/app/.cache/tne \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
    TNE_HOSTED=1 TNE_MODELS=smollm2-135m \
    MALLOC_ARENA_MAX=2 \
    PIP_NO_CACHE_DIR=1
COPY requirements.txt requirements-test.txt requirements-scale.txt requirements.lock ./
COPY scripts/ scripts/
COPY core/ core/
# The same recipe as CI (.ci/run): torch first, then the lock, then the embedded model, converted once here.
RUN SETUP_TESTS=0 SETUP_SCALE=0 TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu bash scripts/setup.sh system
COPY . .
EXPOSE 8501
HEALTHCHECK CMD python -c "import urllib.request; urllib.request.urlopen('http://localhost:8501/_stcore/health')"
CMD ["streamlit", "run", "app.py", "--server.port=8501", "--server.address=0.0.0.0", "--server.headless=true"]
