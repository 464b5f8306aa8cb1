"""Process-wide settings the app takes from its host, applied once when the server process first imports the app.

core reads its hosted-mode limits from the environment (core/hosting.py), and the heavy-job worker processes inherit
that environment, so the host's `.streamlit/secrets.toml` is mapped onto it here, once per process (not at every
page run); an environment variable already set wins.
"""

from __future__ import annotations

import functools
import os

import streamlit as st

from core.hosting import limits


@functools.cache
def configure_process() -> None:
    """Hosting secrets → environment, then the hub switched off for a hosted demo. Runs once per process."""
    apply_hosting_secrets()
    hub_off_when_hosted()


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
