"""jsoncodec: JSON text that PostgreSQL's jsonb accepts, or a clear error."""

from __future__ import annotations

from typing import Any

import pytest

from skiplock.queue.jsoncodec import dumps, loads


def test_dumps_is_compact_text() -> None:
    """dumps returns compact JSON as str."""
    assert dumps({"a": [1, 2.5, None, True], "b": "é"}, what="args") == (
        '{"a":[1,2.5,null,true],"b":"é"}'
    )


@pytest.mark.parametrize(
    "value", [{}, {"a": {"b": [1, "x", None]}}, [1, 2], "s", 0, {"s": "\\u0000"}], ids=repr
)
def test_round_trip(value: Any) -> None:
    """loads(dumps(x)) gives x back."""
    assert loads(dumps(value, what="value")) == value


def test_loads_accepts_bytes() -> None:
    """loads decodes bytes as well as str."""
    assert loads(b'{"a":1}') == loads('{"a":1}') == {"a": 1}


def test_unserializable_error_names_what() -> None:
    """The error for an unencodable value names what was being encoded."""
    with pytest.raises(ValueError, match=r"^result is not JSON-serializable: "):
        dumps({"x": object()}, what="result")


def test_nul_error_names_what() -> None:
    """The error for a NUL character names what was being encoded and says why."""
    with pytest.raises(ValueError, match=r"^meta filter contains a NUL character .*rejects$"):
        dumps({"x": "\x00"}, what="meta filter")


@pytest.mark.parametrize(
    "text", ["\x00", "\\\x00", "\\\\\x00", "ab\x00\\u0000"], ids=["nul", "1bs", "2bs", "mixed"]
)
def test_nul_after_any_number_of_backslashes_rejected(text: str) -> None:
    """A real NUL is found whatever number of backslashes precede it."""
    with pytest.raises(ValueError, match="NUL character"):
        dumps(text, what="args")


@pytest.mark.parametrize("text", ["\\u0000", "\\\\u0000", "\\\\\\u0000"], ids=repr)
def test_escaped_backslash_before_u0000_accepted(text: str) -> None:
    """Backslashes followed by the letters u0000 are plain text, not a NUL."""
    assert loads(dumps(text, what="args")) == text


def test_large_floats_are_written_as_exact_decimals_numeric_keeps() -> None:
    """jsonb's numeric would read 2.044006497593603e16 back as another integer."""
    text = dumps({"f": 2.044006497593603e16, "n": [1e300, -1e16, 1.5, 7]}, what="x")
    assert text.startswith('{"f":20440064975936032.0,"n":[1')
    assert loads(text) == {"f": 2.044006497593603e16, "n": [1e300, -1e16, 1.5, 7]}
    assert all(isinstance(v, float) for v in loads(text)["n"][:3])
