"""How the completer cuts its buffer into statements (no database)."""

from __future__ import annotations

import uuid

import pytest

from skiplock.queue.store import Completion
from skiplock.worker.completer import ROW_OVERHEAD_BYTES, batch_length
from skiplock.worker.settings import WorkerSettings


def _outcome(result_bytes: int) -> Completion:
    text = "x" * max(0, result_bytes - ROW_OVERHEAD_BYTES)
    return Completion(uuid.uuid4(), uuid.uuid4(), "succeeded", result_json=text)


def test_batch_stops_before_the_outcome_that_would_pass_the_byte_cap() -> None:
    """Outcomes are taken from the front while they fit in the byte cap."""
    pending = [_outcome(400), _outcome(400), _outcome(400)]
    assert batch_length(pending, 100, 1000) == 2


def test_batch_of_an_outcome_over_the_cap_is_that_outcome_alone() -> None:
    """An outcome larger than the cap makes a batch of one, wherever it stands."""
    assert batch_length([_outcome(5000), _outcome(10)], 100, 1000) == 1
    assert batch_length([_outcome(10), _outcome(5000)], 100, 1000) == 1


def test_batch_respects_the_count_cap() -> None:
    """Small outcomes are cut at max_complete_batch."""
    assert batch_length([_outcome(10) for _ in range(10)], 3, 10_000) == 3


@pytest.mark.parametrize("field", ["max_complete_bytes", "max_complete_batch", "max_claim_batch"])
def test_settings_refuse_batch_caps_below_one(field: str) -> None:
    """A batch cap of zero is refused with a clear error."""
    with pytest.raises(ValueError, match="at least 1"):
        WorkerSettings(**{field: 0})  # type: ignore[arg-type]
