"""Time-ordered job ids: UUIDv7 (RFC 9562), made by the client.

An id is a 48-bit Unix timestamp in milliseconds, the version (7), the
variant (``10``) and 74 bits that start random in each millisecond. Ids made
by one process are strictly increasing, also for many ids in the same
millisecond or when the wall clock steps back: the 122 bits other than version
and variant are treated as one number, and an id that would not be greater
than the previous one is the previous one plus a random step of 1 to 2**32
(RFC 9562 §6.2, "monotonic random"). A new millisecond starts from 73 random
bits (the top bit of the 74 is zero), so 2**41 ids would have to fall in one
millisecond before the step carries into the timestamp; if it ever does, the
timestamp simply runs ahead by a millisecond and the order still holds.

Time-ordered ids keep the primary key's B-tree appending at its right edge
instead of writing into random pages, which makes inserts cheaper and writes
less WAL than random UUIDv4 ids. They reveal when a job was made (to the
millisecond), which the job row shows anyway (``created_at``).

The random bits come from :func:`os.urandom`, read for 256 ids at a time (one
system call instead of one per id). A forked child forgets the parent's last
id and its unused random bytes, so parent and child do not step from the same
value or share randomness.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable

__all__ = ["uuid7"]

_RAND_BITS = 74  # rand_a (12) + rand_b (62)
_STEP_MASK = (1 << 32) - 1
_RAND_A_MASK = (1 << 12) - 1
_RAND_B_MASK = (1 << 62) - 1
_TIMESTAMP_MASK = (1 << 48) - 1
_VERSION_7 = 0x7 << 76
_VARIANT = 0b10 << 62

_lock = threading.Lock()
_last = 0  # the previous id's 122 bits: timestamp << 74 | random
_NOISE_BYTES = 10  # per id: 73 bits for a new start, 32 for a step
_NOISE_BATCH = 256  # ids' worth of os.urandom read at once (one system call)
_noise = b""
_noise_at = 0


def _forget_after_fork() -> None:
    global _lock, _last, _noise, _noise_at
    _lock = threading.Lock()
    _last = 0
    _noise = b""  # the parent's unused random bytes are not the child's
    _noise_at = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


def _uuid_checked(value: int) -> uuid.UUID:
    return uuid.UUID(int=value)


_new = object.__new__
_set = object.__setattr__
_UNKNOWN = uuid.SafeUUID.unknown


def _uuid_unchecked(value: int) -> uuid.UUID:
    """``uuid.UUID(int=value)`` without its argument checks (``value`` has 128 bits)."""
    made = _new(uuid.UUID)
    _set(made, "int", value)
    _set(made, "is_safe", _UNKNOWN)
    return made


def _uuid_maker() -> Callable[[int], uuid.UUID]:
    """The unchecked constructor where the standard library's UUID keeps its value in
    the slots ``int`` and ``is_safe`` (Python 3.11 to 3.14), else the checked one."""
    probe = 0x0192_3456_789A_7BCD_8EF0_1234_5678_9ABC
    try:
        made = _uuid_unchecked(probe)
        if made == uuid.UUID(int=probe) and str(made) == str(uuid.UUID(int=probe)):
            return _uuid_unchecked
    except (TypeError, AttributeError):  # pragma: no cover - depends on the Python version
        pass
    return _uuid_checked  # pragma: no cover - depends on the Python version


_make = _uuid_maker()


def uuid7() -> uuid.UUID:
    """A new UUIDv7: time-ordered, strictly greater than the previous one made in this process.

    Thread-safe. The first 48 bits are the current Unix time in milliseconds
    (or slightly ahead of it after many ids in one millisecond or a clock that
    stepped back); the rest is random.
    """
    global _last, _noise, _noise_at
    milliseconds = time.time_ns() // 1_000_000
    with _lock:
        at = _noise_at
        if at >= len(_noise):
            _noise = os.urandom(_NOISE_BYTES * _NOISE_BATCH)
            at = 0
        _noise_at = at + _NOISE_BYTES
        noise = int.from_bytes(_noise[at : at + _NOISE_BYTES], "big")
        value = (milliseconds << _RAND_BITS) | (noise >> 7)
        if value <= _last:
            value = _last + 1 + (noise & _STEP_MASK)
        _last = value
    timestamp = (value >> _RAND_BITS) & _TIMESTAMP_MASK
    rand_a = (value >> 62) & _RAND_A_MASK
    rand_b = value & _RAND_B_MASK
    return _make((timestamp << 80) | _VERSION_7 | (rand_a << 64) | _VARIANT | rand_b)
