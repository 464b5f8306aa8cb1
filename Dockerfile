# The hosted demo: CPU torch, the pinned stack, the embedded model converted at build time, hosted-mode limits.
#   docker build -t token-neuron-explorer . && docker run -p 8501:8501 token-neuron-explorer
# Needs ~1.5 GB RAM per busy session on CPU (the model is shared by all sessions: ~0.6 GB once); 2 cores.
FROM python:3.11-slim
WORKDIR /app
ENV TNE_CACHE_DIR=/app/.cache/tne \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
    TNE_HOSTED=1 TNE_MODELS=smollm2-135m \
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
