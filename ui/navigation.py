"""The app's pages and the links between them: one record per page, the sidebar's page list, and jumps to a neuron's
or a token's page that carry the model in the URL."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import streamlit as st

from core.engine.model import EMBEDDED
from ui import params


@dataclass(frozen=True)
class Page:
    path: str  # the script, relative to the repo root
    label: str  # in the sidebar
    icon: str  # a Material icon (they ship with Streamlit: no network needed)


PAGES: dict[str, Page] = {
    "home": Page("app.py", "Home", ":material/home:"),
    "prompt": Page("pages/0_Prompt.py", "Prompt", ":material/bolt:"),
    "lens": Page("pages/1_Logit_Lens.py", "Logit Lens", ":material/stacked_line_chart:"),
    "patching": Page("pages/2_Patching.py", "Patching", ":material/healing:"),
    "neuron": Page("pages/3_Neuron.py", "Neuron", ":material/scatter_plot:"),
    "token": Page("pages/4_Token.py", "Token", ":material/text_fields:"),
    "search": Page("pages/5_Search.py", "Search", ":material/search:"),
    "corpus": Page("pages/6_Corpus.py", "Corpus", ":material/menu_book:"),
    "atlas": Page("pages/7_Atlas.py", "Atlas", ":material/hub:"),
    "steer": Page("pages/8_Steer.py", "Steer", ":material/tune:"),
}


def path(name: str) -> str:
    return PAGES[name].path


def sidebar_pages() -> None:
    """The page list, drawn here rather than by Streamlit so that the entry page reads "Home" (not "app")."""
    for page in PAGES.values():
        st.page_link(page.path, label=page.label, icon=page.icon)


def go_neuron(layer: int, neuron: int, **extra: str) -> None:
    """Open a neuron's page (keeps the model in the URL)."""
    st.switch_page(path("neuron"), query_params=with_model({"layer": str(layer), "neuron": str(neuron), **extra}))


def go_neuron_of(row: Any, **extra: str) -> None:
    """Open the neuron of a table row (a mapping with 'layer' and 'neuron')."""
    go_neuron(int(row["layer"]), int(row["neuron"]), **extra)


def go_token(token: str) -> None:
    st.switch_page(path("token"), query_params=with_model({"token": token}))


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


def steer_query(layer: int, neuron: int, prompt: str | None = None) -> dict[str, str]:
    """The Steer page's URL query for one neuron (and a prompt), with the model carried along."""
    query = {"neuron": f"L{layer}.N{neuron}"}
    if prompt:
        query["prompt"] = prompt
    return with_model(query)


def steer_link(layer: int, neuron: int, prompt: str | None = None, container: Any = None) -> None:
    """ "Steer this neuron": a link to the Steer page, pre-filled (negate it, generate, compare with the baseline)."""
    (container or st).page_link(
        path("steer"),
        label=f"Steer L{layer}.N{neuron}: change it and watch what the model writes",
        icon=PAGES["steer"].icon,
        query_params=steer_query(layer, neuron, prompt),
    )


def steer_url(layer: int, neuron: int) -> str:
    """A relative link to the Steer page for a table's link column (the page's URL path is its label)."""
    return f"{PAGES['steer'].label}?{urlencode(steer_query(layer, neuron))}"
