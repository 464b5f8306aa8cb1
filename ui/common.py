"""What every page shares: page setup, error handling, the conventions caption, tables, downloads and Run gates.

The page list and links live in ui/navigation.py, the model picker in ui/model_picker.py, URL state in ui/params.py."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pandas as pd
import streamlit as st

from core.analyses.congruence import MATRICES, MATRIX_HELP
from core.engine.metric import DESCRIPTION as METRIC_DESCRIPTION
from core.engine.model import Model
from core.errors import UserError
from ui import navigation, text
from ui.charts import shown as shown_token
from ui.errors import show_error, show_unexpected
from ui.export import json_bytes
from ui.model_picker import model_sidebar
from ui.navigation import sidebar_pages
from ui.settings import configure_process

APP_TITLE = "Token Neuron Explorer"


# ---------------------------------------------------------------- page setup


def setup_page(title: str) -> Model | None:
    """Every page starts here: wide layout, the sidebar (page list, model picker) and the loaded model.

    Returns None when no model could be loaded (the sidebar says why). The page list is drawn here rather than
    by Streamlit so that the entry page reads "Home" (Streamlit would label it after the file, "app").
    """
    st.set_page_config(page_title=f"{title} · {APP_TITLE}", page_icon="🔬", layout="wide")
    configure_process()
    with st.sidebar:
        st.markdown(f"**{APP_TITLE}**")
        sidebar_pages()
        st.divider()
    return model_sidebar(facts_open=title == "Home")


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


# ---------------------------------------------------------------- neurons that open their page on a click


def neuron_chart(figure: Any, key: str, **extra: str) -> None:
    """A Plotly chart whose points carry [layer, neuron, …] as customdata: a click opens that neuron's page."""
    clicked = navigation.neuron_from_point(st.plotly_chart(figure, key=key, on_select="rerun", selection_mode="points"))
    if clicked:
        layer, neuron = clicked
        navigation.go_neuron(layer, neuron, **extra)


def neuron_table(
    frame: pd.DataFrame, name: str, *, key: str, query: dict[str, str] | None = None, **kwargs: Any
) -> None:
    """A table of neurons (columns layer, neuron): a click on a row opens that neuron's page (a click on a link
    column, such as the atlas's "steer", follows its link instead)."""
    row = table(frame, name, key=key, select=True, **kwargs)
    if row and row["column"] != "steer":
        navigation.go_neuron_of(frame.iloc[row["row"]], **(query or {}))
