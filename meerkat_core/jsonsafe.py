"""Valid JSON for values that may hold NaN or infinities (JSON has neither: they become null)."""

from __future__ import annotations

import json
import math
from typing import Any


def json_safe(obj: Any) -> Any:
    """A copy of ``obj`` with every non-finite float replaced by None (tuples become lists)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def dumps_safe(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` of ``json_safe(obj)``; never writes the invalid tokens NaN / Infinity."""
    return json.dumps(json_safe(obj), allow_nan=False, **kwargs)
