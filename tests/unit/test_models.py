"""JobSpec validates everything before anything is written."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest

from skiplock import InvalidJob, JobSpec
from skiplock.queue import models
from skiplock.queue.models import Job, request_fingerprints
from skiplock.queue.store import next_fair_key
from tests.unit.test_job_document import make_job


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


# Fingerprints of specs made by the version before JobSpec was rewritten for speed:
# rows store them, and an idempotent resend compares them, so they must not change.
_FINGERPRINTS: list[tuple[dict[str, Any], str]] = [
    ({"task": "t"}, "c51b83a7a653fb2f15b5a57ee0859c007e34c4915e21ecd83078dae00de905ea"),
    (
        {
            "task": "send",
            "args": {"b": [1, 2.5, {"z": None, "a": "x"}], "a": 1e20},
            "queue": "q",
            "priority": -3,
            "run_at": datetime(2030, 1, 2, 3, 4, 5, 600000, tzinfo=timezone(timedelta(hours=2))),
            "max_attempts": 7,
            "tenant": "acme",
            "idempotency_key": "k-1",
            "meta": {"m": 1, "a": [True]},
            "expires_at": datetime(2999, 1, 1, tzinfo=UTC),
            "timeout": 2,
        },
        "7690c196436ebd09ff1c973f7ac764b396b1fc4d0fdf75a0d192d49113d6770f",
    ),
    (
        {"task": "t", "delay": timedelta(seconds=90), "timeout": 1.5},
        "5c1112e4cc38d0b315bef554035fbb5ce72d663f810779afbdd2b541cd3ea85e",
    ),
    ({"task": "t", "delay": 2}, "c8edd472bf498cf65a0789b9d56a1b7786c6d0075604f5df71b58acf0722a3e4"),
    (
        {"task": "t", "delay": -0.0},
        "1ac628ee48dbd60396b7de47adfa2fff743fb4e901fe97207e274748e02bd372",
    ),
]


@pytest.mark.parametrize(("fields", "fingerprint"), _FINGERPRINTS)
def test_fingerprint_bytes_are_stable(fields: dict[str, Any], fingerprint: str) -> None:
    """The fingerprint of a request is what earlier versions stored for it."""
    assert JobSpec(**fields).fingerprint == fingerprint
    assert request_fingerprints([JobSpec(**fields)]) == [fingerprint]


def test_batch_fingerprints_hash_each_distinct_request_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Specs alike but for their ids share one hash; every spec gets its own request's."""
    hashed: list[JobSpec] = []
    real = models._request_fingerprint

    def counting(spec: JobSpec) -> str:
        hashed.append(spec)
        return real(spec)

    specs = [JobSpec("t", args={"n": i % 3}) for i in range(30)]
    specs += [JobSpec("t", delay=0.0), JobSpec("t", delay=-0.0), JobSpec("t", delay=0)]
    expected = [real(s) for s in specs]
    monkeypatch.setattr(models, "_request_fingerprint", counting)
    assert request_fingerprints(specs) == expected
    # 3 distinct args; delay 0.0 and 0 write the same JSON, -0.0 does not.
    assert len(hashed) == 3 + 2
    assert [s.fingerprint for s in specs] == expected  # kept on the specs
    assert len(hashed) == 5


def test_a_spec_keeps_what_it_was_given() -> None:
    """Defaults are fresh objects; meta is the spec's own copy; args is the caller's mapping."""
    first, second = JobSpec("t"), JobSpec("t")
    assert first.args == {}
    assert first.args is not second.args
    assert first.meta == {}
    assert first.meta is not second.meta
    args, meta = {"a": 1}, {"m": 1}
    spec = JobSpec("t", args=args, meta=meta)
    assert spec.args is args
    assert spec.meta == meta
    assert spec.meta is not meta
    meta["m"] = 2
    assert spec.meta_json == '{"m":1}'


def test_a_spec_id_must_be_a_uuid() -> None:
    """An id that is not a UUID is refused at the edge (it could not be matched to its row)."""
    with pytest.raises(InvalidJob, match=r"^id must be a uuid.UUID$"):
        JobSpec("t", id="0190b2a0-0000-7000-8000-000000000000")  # type: ignore[arg-type]
    given = uuid.UUID("0190b2a0-0000-7000-8000-000000000000")
    assert JobSpec("t", id=given).id is given


def test_replace_validates_and_encodes_again() -> None:
    """dataclasses.replace builds a new spec: validated, encoded and fingerprinted anew."""
    spec = JobSpec("t", args={"a": 1})
    other = dataclasses.replace(spec, args={"a": 2})
    assert (other.id, other.args_json) == (spec.id, '{"a":2}')
    assert other.fingerprint != spec.fingerprint
    assert other == JobSpec("t", args={"a": 2}, id=spec.id)
    with pytest.raises(InvalidJob, match=r"^priority must be between"):
        dataclasses.replace(spec, priority=40_000)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"limit_keys": "user:1"}, "limit_keys must be a list"),
        ({"limit_keys": []}, "1 to 16 keys"),
        ({"limit_keys": [f"k{i}" for i in range(17)]}, "1 to 16 keys"),
        ({"limit_keys": [""]}, "a limit key must be"),
        ({"limit_keys": ["a" * 257]}, "a limit key must be"),
        ({"limit_keys": ["a\x00b"]}, "a limit key must be"),
        ({"limit_keys": [1]}, "a limit key must be"),
        ({"limit_keys": ["a", "a"]}, "must not repeat"),
        ({"limit_keys": ["tenant:other"]}, "reserved prefix"),
        ({"limit_keys": ["queue:q"]}, "reserved prefix"),
        ({"limit_keys": ["task:t"]}, "reserved prefix"),
        ({"fairness_key": ""}, "fairness_key must be"),
        ({"unique_key": "x" * 257}, "unique_key must be"),
        ({"unique": "yes"}, "unique must be true or false"),
        ({"unique": True, "on_duplicate": "merge"}, "on_duplicate must be"),
        ({"on_duplicate": "replace"}, "on_duplicate is for unique jobs"),
        ({"debounce": -1}, "debounce must be"),
        ({"debounce": float("nan")}, "debounce must be"),
        ({"debounce": "5"}, "debounce must be"),
        ({"debounce": 5, "delay": 1}, "debounce or run_at/delay"),
        ({"debounce": 5, "on_duplicate": "keep"}, "not 'keep'"),
    ],
    ids=repr,
)
def test_flow_control_options_validated(fields: dict[str, Any], message: str) -> None:
    """Bad limit, fairness and unique options are refused before anything is written."""
    with pytest.raises(InvalidJob, match=message):
        JobSpec("t", **fields)


def test_limit_keys_may_hold_sixteen_keys_and_use_other_prefixes() -> None:
    """Sixteen distinct keys, kept in order as a tuple; other prefixes are the caller's."""
    keys = [f"user:{i}" for i in range(15)] + ["tenants:x"]
    assert JobSpec("t", limit_keys=keys).limit_keys == tuple(keys)


def test_unique_key_derived_from_task_and_canonical_args() -> None:
    """unique=True hashes task and args (key order aside); an explicit key is used as given."""
    a = JobSpec("t", args={"x": 1, "y": 2}, unique=True)
    b = JobSpec("t", args={"y": 2, "x": 1}, unique=True)
    assert a.stored_unique_key == b.stored_unique_key
    assert a.stored_unique_key is not None
    assert len(a.stored_unique_key) == 64
    assert JobSpec("u", args={"x": 1, "y": 2}, unique=True).stored_unique_key != a.stored_unique_key
    assert JobSpec("t", args={"x": 2, "y": 2}, unique=True).stored_unique_key != a.stored_unique_key
    assert JobSpec("t", unique_key="k").stored_unique_key == "k"
    assert JobSpec("t").stored_unique_key is None
    assert JobSpec("t", unique=True).on_duplicate == "keep"


def test_debounce_is_unique_extend_and_delayed() -> None:
    """debounce: a unique job, delayed by it, extending its duplicate (or replacing it)."""
    spec = JobSpec("t", args={"a": 1}, debounce=timedelta(seconds=2))
    assert spec.stored_unique_key == JobSpec("t", args={"a": 1}, unique=True).stored_unique_key
    assert spec.on_duplicate == "extend"
    assert spec.delay_seconds == 2.0
    assert JobSpec("t", debounce=2, on_duplicate="replace").on_duplicate == "replace"


def test_replace_keeps_flow_options_and_derives_the_key_again() -> None:
    """dataclasses.replace of a unique spec with other args gets the new args' key."""
    spec = JobSpec("t", args={"a": 1}, unique=True, on_duplicate="replace", limit_keys=["k"])
    other = dataclasses.replace(spec, args={"a": 2})
    assert other.stored_unique_key == JobSpec("t", args={"a": 2}, unique=True).stored_unique_key
    assert other.on_duplicate == "replace"
    assert other.limit_keys == ("k",)
    assert dataclasses.replace(JobSpec("t"), priority=1).on_duplicate == "keep"


def test_flow_options_enter_the_fingerprint_only_when_set() -> None:
    """Each option changes the fingerprint; a request without them keeps its old one."""
    base = JobSpec("t", args={"a": 1})
    variants = [
        JobSpec("t", args={"a": 1}, limit_keys=["k"]),
        JobSpec("t", args={"a": 1}, limit_keys=["k", "l"]),
        JobSpec("t", args={"a": 1}, fairness_key="f"),
        JobSpec("t", args={"a": 1}, unique=True),
        JobSpec("t", args={"a": 1}, unique=True, on_duplicate="replace"),
        JobSpec("t", args={"a": 1}, unique_key="u"),
        JobSpec("t", args={"a": 1}, debounce=3),
        JobSpec("t", args={"a": 1}, debounce=3, on_duplicate="replace"),
    ]
    prints = [base.fingerprint] + [v.fingerprint for v in variants]
    assert len(set(prints)) == len(prints)
    assert request_fingerprints([dataclasses.replace(v, id=uuid.uuid4()) for v in variants]) == [
        v.fingerprint for v in variants
    ]


def test_next_fair_key_is_the_last_key_of_the_claims_walk() -> None:
    """Keys after the cursor come first, then (wrapping) keys up to it: the next claim goes
    on after the last of that walk."""

    def jobs(*keys: str | None) -> list[Job]:
        return [make_job(fair_key=k) for k in keys]

    assert next_fair_key(None, jobs()) is None
    assert next_fair_key("b", jobs()) == "b"
    assert next_fair_key(None, jobs("b", "a", None)) == "b"
    assert next_fair_key("b", jobs("c", "d")) == "d"
    assert next_fair_key("c", jobs("d", "a", "b")) == "b"
