"""Small DataFrame helpers shared by result types, the CLI and the pages (a leaf module: imports nothing from core)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def by_magnitude(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    """Rows ordered by |column|, largest first; ties keep their order (a stable sort), so tables are reproducible."""
    order = np.argsort(-np.abs(frame[column].to_numpy(dtype=float)), kind="stable")
    return frame.iloc[order].reset_index(drop=True)
