"""Results as JSON downloads: exactly what the engine returned, made plain by core.jsonable (the CLI's rules)."""

from __future__ import annotations

import json
from typing import Any

from core.jsonable import to_jsonable as jsonable


def json_bytes(payload: Any) -> bytes:
    return json.dumps(jsonable(payload), ensure_ascii=False, indent=1).encode()
