"""Errors on a page: shown literally, never as a traceback (details one click away for the unexpected)."""

from __future__ import annotations

import streamlit as st

from ui import text


def show_error(message: str) -> None:
    """An error box whose text is shown literally: messages quote what the user typed (links, images, HTML or
    maths in it must not render). Every st.error of the app goes through here."""
    st.error(text.literal(message))


def show_unexpected(err: Exception) -> None:
    show_error(f"Something went wrong: {type(err).__name__}: {str(err)[:300]}")
    with st.expander("Technical details"):
        st.exception(err)
