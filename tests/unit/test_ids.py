"""UUIDv7 job ids: layout, time, strict order within a process, uniqueness across threads."""

from __future__ import annotations

import copy
import itertools
import os
import pickle
import threading
import time
import uuid

import pytest

from skiplock.queue import ids
from skiplock.queue.ids import uuid7
from skiplock.queue.models import JobSpec


def _milliseconds(value: uuid.UUID) -> int:
    return value.int >> 80


def test_version_and_variant_bits() -> None:
    """Every id is version 7 with the RFC 9562 variant (bits 10)."""
    for _ in range(1000):
        value = uuid7()
        assert value.version == 7
        assert value.variant == uuid.RFC_4122
        assert (value.int >> 62) & 0b11 == 0b10


def test_timestamp_is_the_current_millisecond() -> None:
    """The first 48 bits are the Unix time in milliseconds at which the id was made."""
    before = time.time_ns() // 1_000_000
    value = uuid7()
    after = time.time_ns() // 1_000_000
    assert before <= _milliseconds(value) <= after


def test_strictly_increasing_in_a_tight_loop() -> None:
    """100,000 ids made back to back (many per millisecond) are strictly increasing."""
    made = [uuid7() for _ in range(100_000)]
    assert all(a < b for a, b in itertools.pairwise(made))
    # Many fall in the same millisecond, so the order is the counter's, not the clock's.
    assert len({_milliseconds(v) for v in made}) < len(made)
    # The order is also PostgreSQL's: uuid compares byte-wise, as Python's bytes do.
    assert all(a.bytes < b.bytes for a, b in itertools.pairwise(made))


def test_increasing_when_the_clock_steps_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """An id made after the wall clock stepped back is still greater than the last one."""
    first = uuid7()
    earlier = (_milliseconds(first) - 5_000) * 1_000_000
    monkeypatch.setattr(time, "time_ns", lambda: earlier)
    later = [uuid7() for _ in range(100)]
    assert first < later[0]
    assert all(a < b for a, b in itertools.pairwise(later))
    assert all(v.version == 7 for v in later)


def test_random_bits_differ() -> None:
    """Ids of a new millisecond start from fresh random bits, not from a fixed counter."""
    tails = set()
    for _ in range(50):
        ids._forget_after_fork()  # as a new process would start
        tails.add(uuid7().int & ((1 << 62) - 1))
    assert len(tails) == 50


def test_unique_and_ordered_per_thread_across_threads() -> None:
    """Eight threads making 20,000 ids each: no duplicates, and each thread's ids increase."""
    per_thread: list[list[uuid.UUID]] = [[] for _ in range(8)]
    start = threading.Barrier(len(per_thread))

    def make(out: list[uuid.UUID]) -> None:
        start.wait()
        for _ in range(20_000):
            out.append(uuid7())

    threads = [threading.Thread(target=make, args=(out,)) for out in per_thread]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [v for out in per_thread for v in out]
    assert len(every) == len(set(every)) == 160_000
    for out in per_thread:
        assert all(a < b for a, b in itertools.pairwise(out))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_does_not_continue_the_parents_sequence() -> None:
    """A forked child starts afresh: its next id is not the parent's next step."""
    uuid7()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read)
        os.write(write, f"{ids._last} {len(ids._noise)}".encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child_last, child_noise = pipe.read().split()
    os.waitpid(pid, 0)
    assert child_last == "0"
    assert child_noise == "0"  # the parent's unused random bytes are not reused


def test_jobspec_ids_are_uuid7_and_ordered() -> None:
    """JobSpec's default id is a UUIDv7; specs made one after another have increasing ids."""
    specs = [JobSpec("t") for _ in range(1000)]
    assert all(s.id.version == 7 for s in specs)
    assert all(a.id < b.id for a, b in itertools.pairwise(specs))


@pytest.mark.parametrize(
    "value", [0, 1, (1 << 128) - 1, 0x0192_3456_789A_7BCD_8EF0_1234_5678_9ABC], ids=hex
)
def test_ids_are_ordinary_uuids(value: int) -> None:
    """The constructor uuid7 uses makes the same UUID as uuid.UUID(int=...), in every way."""
    made = ids._make(value)
    expected = uuid.UUID(int=value)
    assert type(made) is uuid.UUID
    assert made == expected
    assert hash(made) == hash(expected)
    assert (str(made), made.bytes, made.is_safe) == (
        str(expected),
        expected.bytes,
        expected.is_safe,
    )
    assert pickle.loads(pickle.dumps(made)) == expected  # noqa: S301 - our own bytes
    assert copy.deepcopy(made) == expected


def test_random_bytes_are_read_for_many_ids_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """os.urandom is called once per 256 ids, not once per id; the ids still differ."""
    calls: list[int] = []
    real = os.urandom

    def counting(size: int) -> bytes:
        calls.append(size)
        return real(size)

    monkeypatch.setattr(os, "urandom", counting)
    ids._forget_after_fork()  # an empty buffer, as in a new process
    made = [uuid7() for _ in range(1000)]
    assert len(calls) == 4  # ceil(1000 / 256)
    assert len(set(made)) == 1000
    assert all(a < b for a, b in itertools.pairwise(made))
