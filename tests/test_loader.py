"""The streaming loader (core.engine.loader): equal bit for bit to the reference load (the Hugging Face model,
through TransformerLens's bridge for GPT-2 / Llama) in float32 on every family and the embedded model; its peak
memory; bfloat16 against float32; one-line refusals."""

import argparse
import subprocess
import sys
import textwrap

import pytest
import torch

from core.cli.common import model_flags
from core.engine import forward as fw
from core.engine.loader import tensor_fields
from core.engine.model import load_model
from core.errors import UserError
from core.story import CLEAN
from tests.conftest import save_random
from tests.test_families import tiny_configs

TYPES = ["gpt2", "llama", *tiny_configs()]


@pytest.fixture(scope="module")
def folders(tmp_path_factory, gpt2_folder, llama_folder):
    out = {"gpt2": gpt2_folder, "llama": llama_folder}
    for name, config in tiny_configs().items():
        out[name] = save_random(tmp_path_factory.mktemp(f"loader-{name}"), config, seed=3)
    return out


def logits(model, text: str = CLEAN) -> torch.Tensor:
    ids = torch.tensor([model.prompt_ids(text)])
    return fw.unembed(model.weights, fw.run(model.weights, ids, record=frozenset()).resid_final)


def assert_same(ref, ours) -> None:
    """Every Weights tensor, the logits, the fingerprint and the facts: equal (not close)."""
    for name, a in tensor_fields(ref.weights).items():
        b = getattr(ours.weights, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), name
    assert ref.weights.arch == ours.weights.arch
    assert torch.equal(logits(ref), logits(ours))
    assert ref.fingerprint == ours.fingerprint  # cache keys on disk stay valid
    assert ref.facts() == ours.facts()


@pytest.mark.parametrize("processing", ["tl-default", "none"])
@pytest.mark.parametrize("family", TYPES)
def test_stream_equals_the_reference_bit_for_bit(folders, family, processing):
    folder = str(folders[family])
    ref = load_model(folder, device="cpu", processing=processing, loader="bridge")
    ours = load_model(folder, device="cpu", processing=processing)  # the default loader is "stream"
    assert_same(ref, ours)


def test_embedded_stream_equals_the_bridge_bit_for_bit():
    # Gemma 3 270M was checked the same way (every tensor, logits, fingerprint equal); left out here for time.
    assert_same(load_model("smollm2-135m", device="cpu", loader="bridge"), load_model("smollm2-135m", device="cpu"))


# ---------------------------------------------------------------- peak memory

_PEAK = textwrap.dedent(
    """
    import os, sys, json
    sys.path.insert(0, {root!r})
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch, transformers, safetensors, tokenizers  # the fixed cost of the imports, before the reset
    from core.engine.model import load_model
    from pathlib import Path
    def mb(field):
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    from transformers import AutoTokenizer, AutoConfig
    AutoTokenizer.from_pretrained({folder!r}); AutoConfig.from_pretrained({folder!r})  # warm their imports
    Path("/proc/self/clear_refs").write_text("5")
    base = mb("VmRSS")
    model = load_model({folder!r}, device="cpu", dtype={dtype!r}, loader={loader!r})
    w = model.weights
    size = sum(t.numel() * t.element_size() for t in vars(w).values() if isinstance(t, torch.Tensor)) / 2**20
    print(json.dumps({{"base": base, "peak": mb("VmHWM"), "weights": size}}))
    """
)


@pytest.fixture(scope="module")
def medium_folder(tmp_path_factory):
    """A Llama big enough (≈ 180 MB in fp32) that the weights dominate the loader's fixed costs."""
    from transformers import LlamaConfig

    config = LlamaConfig(
        num_hidden_layers=4,
        hidden_size=512,
        num_attention_heads=8,
        num_key_value_heads=4,
        intermediate_size=1536,
        vocab_size=50257,
        tie_word_embeddings=False,
        bos_token_id=50256,
        eos_token_id=50256,
    )
    return save_random(tmp_path_factory.mktemp("loader-medium"), config, seed=5)


def peak(folder, dtype: str, loader: str) -> dict:
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[1])
    script = _PEAK.format(root=root, folder=str(folder), dtype=dtype, loader=loader)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    import json

    return json.loads(done.stdout.strip().splitlines()[-1])


# Fixed, whatever the model's size: one layer in float32 (≈ 30 MB here), a few 32 MB float32 chunks of the
# (un)embedding alive at once (bfloat16), allocator slack.
OVERHEAD_MB = 200


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_peak_memory_is_about_the_weights(medium_folder, dtype):
    got = peak(medium_folder, dtype, "stream")
    grew = got["peak"] - got["base"]
    assert grew <= 1.15 * got["weights"] + OVERHEAD_MB, got


# ---------------------------------------------------------------- bfloat16


@pytest.fixture(scope="module")
def embedded_pair():
    return load_model("smollm2-135m", device="cpu"), load_model("smollm2-135m", device="cpu", dtype="bfloat16")


def test_bfloat16_is_float32_cast_and_agrees(embedded_pair):
    """Measured (SmolLM2, the post's prompt): every weight but the unembedding is float32's cast exactly (processing
    ran in float32); the unembedding's centring mean is accumulated over chunks (≤ 1 bf16 ulp apart); the logit
    diff " an" − " a" moves by ~0.02 (float32 0.714, bfloat16 0.738 by core.engine.metric), the top-5 tokens stay."""
    fp32, bf16 = embedded_pair
    assert bf16.facts()["dtype"] == "bfloat16" and "dtype" not in fp32.facts()
    for name, a in tensor_fields(fp32.weights).items():
        b = getattr(bf16.weights, name)
        if a is None:
            assert b is None
            continue
        assert b.dtype == torch.bfloat16, name
        if name not in ("W_U", "b_U"):
            assert torch.equal(a.to(torch.bfloat16), b), name
    cast = fp32.weights.W_U.to(torch.bfloat16).float()
    assert ((cast - bf16.weights.W_U.float()).abs() <= cast.abs() * 2**-7 + 1e-7).all()  # ≤ 1 bf16 ulp
    an, a = fp32.encode(" an")[0], fp32.encode(" a")[0]
    # bfloat16's final residual, unembedded in float32: bfloat16 logits of size 16–32 are quantised to 0.125 steps
    # (unembedded in bfloat16 the diff reads 0.625), which measures the unembedding's rounding, not the forward's.
    w = bf16.weights
    final = fw.run(w, torch.tensor([bf16.prompt_ids(CLEAN)]), record=frozenset()).resid_final[0, -1].float()
    lnf = None if w.lnf_w is None else w.lnf_w.float()
    normed = torch.nn.functional.rms_norm(final, final.shape[-1:], lnf, w.eps)
    l32, l16 = logits(fp32)[0, -1], normed @ w.W_U.float() + w.b_U.float()
    diff32, diff16 = float(l32[an] - l32[a]), float(l16[an] - l16[a])
    assert abs(diff32 - diff16) < 0.05, (diff32, diff16)
    assert l32.topk(5).indices.tolist() == l16.topk(5).indices.tolist()


# ---------------------------------------------------------------- refusals


def one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text and len(text) < 400, text
    return text


def test_unknown_dtype_is_refused(llama_folder):
    with pytest.raises(UserError) as err:
        load_model(str(llama_folder), device="cpu", dtype="float8")
    assert "float8" in one_line(err) and "bfloat16" in str(err.value)


def test_a_model_over_the_memory_budget_is_refused_before_loading(llama_folder, monkeypatch):
    monkeypatch.setenv("TNE_MEMORY_BUDGET_MB", "10")
    with pytest.raises(UserError) as err:
        load_model(str(llama_folder), device="cpu", dtype="float32")
    text = one_line(err)
    assert "TNE_MEMORY_BUDGET_MB=10" in text and "GiB in float32" in text and "in bfloat16" in text
    monkeypatch.setenv("TNE_MEMORY_BUDGET_MB", "1")
    with pytest.raises(UserError) as err:
        load_model(str(llama_folder), device="cpu", dtype="bfloat16")
    assert "does not fit in any dtype" in one_line(err)
    monkeypatch.setenv("TNE_MEMORY_BUDGET_MB", "100000")
    load_model(str(llama_folder), device="cpu")


def test_a_folder_with_mixed_dtypes_is_refused(tmp_path, llama_folder):
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "mixed"
    shutil.copytree(llama_folder, folder)
    tensors = load_file(folder / "model.safetensors")
    first = sorted(tensors)[0]
    tensors[first] = tensors[first].to(torch.bfloat16)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(UserError) as err:
        load_model(str(folder), device="cpu")
    assert "mixes weight dtypes" in one_line(err) and "BF16: 1 tensors" in str(err.value)


def test_every_cli_command_takes_dtype_and_loader():
    parser = argparse.ArgumentParser()
    model_flags(parser)
    args = parser.parse_args(["--dtype", "bfloat16", "--loader", "bridge"])
    assert (args.dtype, args.loader) == ("bfloat16", "bridge")
    assert parser.parse_args([]).dtype == "float32"
    with pytest.raises(SystemExit):
        parser.parse_args(["--dtype", "int8"])


def test_loader_choice_is_checked(llama_folder):
    with pytest.raises(UserError) as err:
        load_model(str(llama_folder), device="cpu", loader="mmap")  # type: ignore[arg-type]
    assert "stream" in one_line(err)


# ---------------------------------------------------------------- float16


@pytest.mark.parametrize("family", ["gemma2", "gemma3_text"])
@pytest.mark.parametrize("loader", ["stream", "bridge"])
def test_float16_is_refused_for_gemma_2_and_3_before_loading(folders, family, loader):
    """Gemma 3 270M's residual stream reaches 103,795 (float16 holds ≤ 65,504): NaN from layer 8 on. The family is
    refused in one line that names it, says why and what to use; bfloat16 loads."""
    with pytest.raises(UserError) as err:
        load_model(str(folders[family]), device="cpu", dtype="float16", loader=loader)
    text = one_line(err)
    label = {"gemma2": "Gemma 2", "gemma3_text": "Gemma 3"}[family]
    assert f"float16 is refused for {label} models" in text and "65,504" in text
    assert "use bfloat16" in text and "float32" in text
    assert load_model(str(folders[family]), device="cpu", dtype="bfloat16").dtype == "bfloat16"


@pytest.mark.parametrize("family", [f for f in TYPES if f not in ("gemma2", "gemma3_text")])
def test_float16_agrees_with_float32_on_every_other_family(folders, family):
    """Measured on the tiny checkpoints (residuals ≤ 10, the post's prompt, last position): float16 logits within
    0.0033 of float32's, bfloat16's within 0.037 (8 mantissa bits against float16's 11); tolerances ~3× that."""
    ref = logits(load_model(str(folders[family]), device="cpu"))[0, -1]
    for dtype, tol in (("float16", 0.01), ("bfloat16", 0.1)):
        got = logits(load_model(str(folders[family]), device="cpu", dtype=dtype))[0, -1].float()
        assert torch.isfinite(got).all(), dtype
        assert (got - ref).abs().max() < tol, (dtype, float((got - ref).abs().max()))


def test_float16_out_of_range_is_refused_for_any_family(tmp_path, llama_folder):
    """A Llama whose embedding entries are ±40,000 (float16 can store them, but the residual has no headroom:
    the next addition can overflow) is refused in float16 after the probe forward; float32 loads it."""
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "loud"
    shutil.copytree(llama_folder, folder)
    tensors = load_file(folder / "model.safetensors")
    name = "model.embed_tokens.weight"
    tensors[name] = tensors[name].sign() * 40_000
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(UserError) as err:
        load_model(str(folder), device="cpu", dtype="float16")
    text = one_line(err)
    assert "float16 is refused" in text and "entering layer 0" in text and "40,000" in text
    assert "use bfloat16" in text
    load_model(str(folder), device="cpu", dtype="float32")


def test_the_fingerprint_names_the_model_not_the_folder_it_lies_in(gpt2_folder, tmp_path):
    """Results are keyed by the fingerprint: a second server whose cache folder is mounted elsewhere (or a model
    folder copied) must find the same keys; a model with other weights must not."""
    import shutil

    copy = shutil.copytree(gpt2_folder, tmp_path / "elsewhere" / "gpt2-copy")
    here, there = load_model(str(gpt2_folder), device="cpu"), load_model(str(copy), device="cpu")
    assert here.fingerprint == there.fingerprint
    assert here.source != there.source  # the page still says where the files are
    assert load_model(str(gpt2_folder), device="cpu", processing="none").fingerprint != here.fingerprint
