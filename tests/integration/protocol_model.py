"""The pure-Python side of the protocol model (``test_protocol_model.py``).

What the model believes about each job and each simulated worker, a snapshot
of the ``jobs`` table, and the invariants checked on the database alone
(against the previous snapshot), independent of the model's own predictions.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson

RUNNING = "running"
QUEUED = "queued"
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})

Row = dict[str, Any]
Snapshot = dict[uuid.UUID, Row]


@dataclass
class JobModel:
    """What the model expects one row to hold."""

    id: uuid.UUID
    tenant: str
    key: str | None
    queue: str
    priority: int
    max_attempts: int
    requested_attempts: int  # as enqueued (a manual retry may raise max_attempts)
    args: dict[str, Any]
    delay: float
    state: str = QUEUED
    attempt: int = 0
    token: uuid.UUID | None = None
    holder: str | None = None  # worker_id of the current lease
    last_worker: str | None = None  # worker_id column: the last claimant, kept as history
    cancel_requested: bool = False
    due: bool = True  # queued and run_at <= now()
    expired: bool = False  # running and lease_expires_at < now()
    old: bool = False  # finished more than an hour ago (the clock was moved past it)
    progress: float | None = None
    message: str | None = None
    result: Any = None
    errors: int = 0  # entries in the error history


@dataclass
class Lease:
    """A lease as its worker believes it holds it (it may be lost already)."""

    token: uuid.UUID
    attempt: int
    max_attempts: int
    cancel_seen: bool = False  # a heartbeat told this worker the cancel flag is set


@dataclass
class SimWorker:
    """A simulated worker: its id, queues, connection and the leases it thinks it holds."""

    worker_id: str
    queues: tuple[str, ...]
    conn: asyncpg.Connection[Any]
    concurrency: int = 3
    held: dict[uuid.UUID, Lease] = field(default_factory=dict)


SNAPSHOT_SQL = """
SELECT j.*, j.run_at <= now() AS due,
       j.lease_expires_at < now() AS expired,
       jsonb_array_length(j.errors) AS n_errors
FROM skiplock.jobs j
"""


async def snapshot(conn: asyncpg.Connection[Any]) -> Snapshot:
    """Every row of the jobs table, as plain dicts keyed by id."""
    rows = await conn.fetch(SNAPSHOT_SQL)
    out: Snapshot = {}
    for r in rows:
        row = dict(r)
        row["result"] = None if row["result"] is None else orjson.loads(row["result"])
        out[row["id"]] = row
    return out


def lease_exactly_while_running(row: Row) -> None:
    """A lease (token, expiry, worker) exists exactly while the job runs, each column
    on its own: the schema constrains only the pair (issue 10 #6), so this check is
    what would catch a query leaving a token on a non-running row."""
    running = row["state"] == RUNNING
    assert (row["lease_token"] is not None) == running, row
    assert (row["lease_expires_at"] is not None) == running, row
    if running:
        assert row["worker_id"] is not None, row
        assert row["started_at"] is not None, row


def check_row(row: Row) -> None:
    """Invariants of one row, from the database alone."""
    state = row["state"]
    lease_exactly_while_running(row)
    # One terminal state: finished_at exactly when terminal.
    assert (row["finished_at"] is not None) == (state in TERMINAL), row
    # Attempts within bounds. A queued job always has an attempt left (the worker
    # fails instead of retrying the last one, the rescuer fails an exhausted job,
    # a manual retry raises max_attempts); a running one has used at least one.
    assert 0 <= row["attempt"] <= row["max_attempts"], row
    if state == QUEUED:
        assert row["attempt"] < row["max_attempts"], row
    if state == RUNNING:
        assert row["attempt"] >= 1, row
    # No cancel request lost: a flagged job never waits in the queue, and a
    # cancelled job was asked to be (a worker writes `cancelled` only for a
    # requested cancel: issue 10 #2, a trusted forged NOTIFY, would break this).
    if state == QUEUED:
        assert not row["cancel_requested"], row
    if state == "cancelled":
        assert row["cancel_requested"], row
    if state == "succeeded":
        assert row["progress"] == 100, row
    if row["result"] is not None:  # a result only on success (a retry clears it)
        assert state == "succeeded", row


def check_unique_keys(cur: Snapshot) -> None:
    """Idempotency keys are unique per tenant."""
    seen: dict[tuple[str, str], uuid.UUID] = {}
    for row in cur.values():
        if row["idempotency_key"] is None:
            continue
        pair = (row["tenant"], row["idempotency_key"])
        assert pair not in seen, f"two jobs hold {pair}: {seen[pair]} and {row['id']}"
        seen[pair] = row["id"]


def check_step(
    prev: Snapshot,
    cur: Snapshot,
    *,
    retried: set[uuid.UUID],
    purgeable: set[uuid.UUID],
) -> None:
    """Invariants of one step, comparing the table before and after it.

    ``retried``: the ids a manual retry was asked for in this step (the only way
    out of a terminal state); ``purgeable``: the ids retention may have deleted.
    """
    for job_id, before in prev.items():
        after = cur.get(job_id)
        if after is None:
            # Rows vanish only by retention, and only finished ones.
            assert job_id in purgeable, f"job {job_id} vanished: {before}"
            assert before["state"] in TERMINAL, before
            continue
        if before["state"] in TERMINAL:
            if job_id in retried and before["state"] in ("failed", "cancelled"):
                assert after["state"] == QUEUED, after
            else:
                # A finished job never changes again: not its state, not a column.
                assert after == before, f"finished job {job_id} changed:\n{before}\n{after}"
        if before["state"] == RUNNING and after["state"] == RUNNING:
            # A running lease is never handed over in place: a new token needs the
            # job to go back to queued first (and no step does both).
            assert after["lease_token"] == before["lease_token"], (before, after)
            assert after["worker_id"] == before["worker_id"], (before, after)
            assert after["attempt"] == before["attempt"], (before, after)
        if before["state"] == RUNNING and before["cancel_requested"]:
            # No cancel request lost: it ends cancelled, or succeeded/failed if
            # the attempt completed first; never back in the queue.
            assert after["state"] in (RUNNING, "cancelled", "succeeded", "failed"), after
        if before["state"] == QUEUED and after["state"] == RUNNING:
            # +1 at claim.
            assert after["attempt"] == before["attempt"] + 1, (before, after)
            assert after["lease_token"] is not None
        if before["state"] == RUNNING and after["state"] == QUEUED:
            # Back to the queue: counted (retry, rescue) or given back (release).
            assert after["attempt"] in (before["attempt"], before["attempt"] - 1), (before, after)
        if before["state"] != after["state"]:
            assert after["updated_at"] > before["updated_at"], (before, after)
    for job_id, after in cur.items():
        if job_id not in prev:
            assert after["state"] == QUEUED, after
            assert after["attempt"] == 0, after
