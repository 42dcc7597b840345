"""JobSpec validates everything before anything is written."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest

from skiplock import InvalidJob, JobSpec


def test_valid_spec_encodes_args_and_meta() -> None:
    """A valid spec carries its args and meta as compact JSON text."""
    spec = JobSpec(task="t", args={"a": [1, "x"]}, meta={"model": "m"})
    assert orjson.loads(spec.args_json) == {"a": [1, "x"]}
    assert orjson.loads(spec.meta_json) == {"model": "m"}


def test_each_spec_gets_its_own_id() -> None:
    """Two specs built alike get distinct ids."""
    assert JobSpec(task="t").id != JobSpec(task="t").id


def test_invalid_job_is_a_value_error() -> None:
    """InvalidJob can be caught as ValueError."""
    with pytest.raises(ValueError, match="task"):
        JobSpec(task="")


def test_empty_task_rejected() -> None:
    """An empty task name is refused."""
    with pytest.raises(InvalidJob, match=r"^task must be a non-empty string of at most 256"):
        JobSpec(task="")


def test_task_with_nul_rejected() -> None:
    """A task name holding a NUL character is refused."""
    with pytest.raises(InvalidJob, match=r"^task must be"):
        JobSpec(task="a\x00b")


def test_queue_of_128_characters_accepted() -> None:
    """A queue name of exactly 128 characters is allowed."""
    assert JobSpec(task="t", queue="q" * 128).queue == "q" * 128


def test_too_long_queue_rejected() -> None:
    """A queue name longer than 128 characters is refused."""
    with pytest.raises(InvalidJob, match=r"^queue must be a non-empty string of at most 128"):
        JobSpec(task="t", queue="q" * 129)


def test_too_long_tenant_rejected() -> None:
    """A tenant longer than 256 characters is refused."""
    with pytest.raises(InvalidJob, match=r"^tenant must be a non-empty string of at most 256"):
        JobSpec(task="t", tenant="x" * 257)


def test_empty_idempotency_key_rejected() -> None:
    """An empty idempotency key is refused (None means no key)."""
    with pytest.raises(InvalidJob, match=r"^idempotency_key must be a non-empty string"):
        JobSpec(task="t", idempotency_key="")


@pytest.mark.parametrize("args", [[1, 2], "text", 3, None], ids=repr)
def test_non_mapping_args_rejected(args: Any) -> None:
    """Args that are not a mapping are refused."""
    with pytest.raises(InvalidJob, match=r"^args must be a JSON object"):
        JobSpec(task="t", args=args)


def test_non_mapping_meta_rejected() -> None:
    """Meta that is not a mapping is refused."""
    bad: Any = ["label"]
    with pytest.raises(InvalidJob, match=r"^meta must be a JSON object"):
        JobSpec(task="t", meta=bad)


@pytest.mark.parametrize("priority", [True, False, 1.0, "1"], ids=repr)
def test_non_integer_priority_rejected(priority: Any) -> None:
    """A priority that is a bool, float or string is refused."""
    with pytest.raises(InvalidJob, match=r"^priority must be an integer$"):
        JobSpec(task="t", priority=priority)


@pytest.mark.parametrize("priority", [-32769, 32768, 10**6])
def test_out_of_range_priority_rejected(priority: int) -> None:
    """A priority outside PostgreSQL's smallint is refused."""
    with pytest.raises(InvalidJob, match=r"^priority must be between -32768 and 32767$"):
        JobSpec(task="t", priority=priority)


@pytest.mark.parametrize("priority", [-32768, 32767])
def test_smallint_bounds_priority_accepted(priority: int) -> None:
    """The smallint bounds themselves are valid priorities."""
    assert JobSpec(task="t", priority=priority).priority == priority


@pytest.mark.parametrize("max_attempts", [0, -1, 1001])
def test_out_of_range_max_attempts_rejected(max_attempts: int) -> None:
    """max_attempts outside 1..1000 is refused."""
    with pytest.raises(InvalidJob, match=r"^max_attempts must be between 1 and 1000$"):
        JobSpec(task="t", max_attempts=max_attempts)


@pytest.mark.parametrize("max_attempts", [1, 1000])
def test_max_attempts_bounds_accepted(max_attempts: int) -> None:
    """max_attempts of exactly 1 and 1000 is valid."""
    assert JobSpec(task="t", max_attempts=max_attempts).max_attempts == max_attempts


@pytest.mark.parametrize("max_attempts", [True, 2.0], ids=repr)
def test_non_integer_max_attempts_rejected(max_attempts: Any) -> None:
    """max_attempts given as a bool or float is refused."""
    with pytest.raises(InvalidJob, match=r"^max_attempts must be an integer$"):
        JobSpec(task="t", max_attempts=max_attempts)


def test_naive_run_at_rejected() -> None:
    """A run_at without a timezone is refused."""
    with pytest.raises(InvalidJob, match=r"^run_at must be a timezone-aware datetime$"):
        JobSpec(task="t", run_at=datetime(2030, 1, 1))


def test_non_datetime_run_at_rejected() -> None:
    """A run_at that is not a datetime is refused."""
    bad: Any = "2030-01-01T00:00:00+00:00"
    with pytest.raises(InvalidJob, match=r"^run_at must be a timezone-aware datetime$"):
        JobSpec(task="t", run_at=bad)


def test_run_at_and_delay_together_rejected() -> None:
    """Giving both run_at and delay is refused."""
    with pytest.raises(InvalidJob, match=r"^give run_at or delay, not both$"):
        JobSpec(task="t", run_at=datetime(2030, 1, 1, tzinfo=UTC), delay=5)


@pytest.mark.parametrize(
    "delay",
    [-1, -0.001, timedelta(seconds=-1), float("nan"), float("inf"), True, "5"],
    ids=repr,
)
def test_bad_delay_rejected(delay: Any) -> None:
    """A negative, non-finite or non-numeric delay is refused."""
    with pytest.raises(InvalidJob, match=r"^delay must be a non-negative number of seconds"):
        JobSpec(task="t", delay=delay)


@pytest.mark.parametrize(
    ("delay", "seconds"), [(0, 0.0), (2.5, 2.5), (timedelta(minutes=1, milliseconds=5), 60.005)]
)
def test_delay_seconds(delay: float | timedelta, seconds: float) -> None:
    """delay_seconds converts numbers and timedeltas to float seconds."""
    assert JobSpec(task="t", delay=delay).delay_seconds == seconds


def test_aware_run_at_in_any_timezone_accepted() -> None:
    """A run_at in a non-UTC timezone is kept as given."""
    when = datetime(2030, 1, 1, 12, tzinfo=timezone(timedelta(hours=-5)))
    assert JobSpec(task="t", run_at=when).run_at == when


@pytest.mark.parametrize(
    "args",
    [{"x": object()}, {"x": {1, 2}}, {1: "int key"}, {"x": 2**64}, {"x": "\ud800"}],
    ids=["object", "set", "int-key", "huge-int", "lone-surrogate"],
)
def test_non_json_args_rejected(args: dict[Any, Any]) -> None:
    """Args that cannot be encoded as JSON are refused with a message naming args."""
    with pytest.raises(InvalidJob, match=r"^args is not JSON-serializable"):
        JobSpec(task="t", args=args)


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=repr)
def test_non_finite_float_in_args_rejected(value: float) -> None:
    """A NaN or infinite float in args is refused rather than stored as null."""
    with pytest.raises(InvalidJob, match="args"):
        JobSpec(task="t", args={"x": value})


def test_non_json_meta_rejected() -> None:
    """Meta that cannot be encoded as JSON is refused with a message naming meta."""
    with pytest.raises(InvalidJob, match=r"^meta is not JSON-serializable"):
        JobSpec(task="t", meta={"x": object()})


@pytest.mark.parametrize(
    "args",
    [{"s": "a\x00b"}, {"k\x00": 1}, {"n": ["ok", {"deep": "\x00"}]}, {"s": "\\\x00"}],
    ids=["value", "key", "nested", "after-backslash"],
)
def test_nul_character_in_args_rejected(args: dict[str, Any]) -> None:
    """A NUL character anywhere in args is refused (jsonb cannot store it)."""
    with pytest.raises(InvalidJob, match=r"^args contains a NUL character"):
        JobSpec(task="t", args=args)


def test_nul_character_in_meta_rejected() -> None:
    """A NUL character in meta is refused."""
    with pytest.raises(InvalidJob, match=r"^meta contains a NUL character"):
        JobSpec(task="t", meta={"label": "\x00"})


@pytest.mark.parametrize("text", ["\\u0000", "\\\\u0000", "x\\u0000y", "\\\\\\\\u0000"], ids=repr)
def test_literal_backslash_u0000_text_accepted(text: str) -> None:
    """The six characters \\u0000 (no NUL) are ordinary text and accepted."""
    spec = JobSpec(task="t", args={"s": text})
    assert orjson.loads(spec.args_json) == {"s": text}
