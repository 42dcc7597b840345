"""JSON encoding at the edge: what PostgreSQL's jsonb accepts, or a clear error."""

from __future__ import annotations

import math
import re
from decimal import Decimal
from typing import Any

import orjson

__all__ = ["dumps", "loads"]

# jsonb refuses the escaped NUL character; an even number of backslashes before
# it means the backslashes escape each other, not the NUL.
_NUL_RE = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


def dumps(value: Any, *, what: str) -> str:
    """Encode ``value`` as JSON text for a jsonb column, or raise ValueError naming ``what``."""
    try:
        data = orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise ValueError(f"{what} is not JSON-serializable: {exc}") from None
    if b"\\u0000" in data and _NUL_RE.search(data):
        raise ValueError(f"{what} contains a NUL character (\\u0000), which PostgreSQL rejects")
    # orjson writes NaN and infinities as null; only then is a walk needed.
    if b"null" in data and _has_non_finite(value):
        raise ValueError(f"{what} contains NaN or an infinite number, which JSON cannot hold")
    # jsonb keeps numbers as numeric: a float written with a positive exponent
    # comes back as an integer, rounded to 17 digits. Only then is a walk needed.
    if b"e+" in data:
        data = orjson.dumps(_exact_floats(value))
    return data.decode()


def _exact_floats(value: Any) -> Any:
    """Floats of 1e16 and more as their exact decimal with '.0', which numeric keeps."""
    if isinstance(value, float):
        if abs(value) >= 1e16:  # finite: NaN and infinities were refused before
            return orjson.Fragment(format(Decimal(value), "f").encode() + b".0")
        return value
    if isinstance(value, dict):
        return {k: _exact_floats(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_exact_floats(v) for v in value]
    return value


def _has_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_has_non_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_has_non_finite(v) for v in value)
    return False


def loads(text: str | bytes) -> Any:
    """Decode JSON text read from the database."""
    return orjson.loads(text)
