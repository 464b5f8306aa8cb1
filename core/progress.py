"""The progress callback every long analysis accepts: `progress(done, total)`, called as work completes."""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[int, int], None]
