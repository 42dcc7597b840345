"""A model of the protocol: random interleavings against real PostgreSQL.

A hypothesis rule-based state machine drives the project's own SQL (the
``Store`` the worker and the client use, and ``Client.enqueue_many`` for its
idempotency handling) from three simulated workers — each with its worker id,
its queues and the leases it believes it holds — through random sequences of
enqueue (idempotency keys, two tenants, delays, batches of two, re-sent
specs), claim, a claim whose reply is lost, heartbeat, progress, completion
(succeeded, failed, retry with or without delay, graceful release, cancelled),
cancel and manual retry (own tenant, another tenant, any tenant), lease expiry
and rescue with a moved clock, retention, and late writes with old or forged
lease tokens.

The clock is moved in the data, never by sleeping: a frozen worker's lease is
set into the past, and "two hours pass" shifts every ``run_at``,
``lease_expires_at`` and ``finished_at`` back by two hours.

After every step the whole table is read and checked twice: against the
database-only invariants of ``protocol_model`` (one terminal state, a lease
exactly while running, attempts within bounds, no cancel request lost, unique
idempotency keys, nothing changes a finished row) and against the model's
exact prediction of every row. Each write's answer is checked in the step
itself: a write under a lost lease returns no row and changes nothing.

CI runs a bounded, derandomized budget (50 examples of up to 30 steps);
``SKIPLOCK_MODEL_EXAMPLES`` (and ``SKIPLOCK_MODEL_STEPS``) raise it and switch
to random exploration; ``scripts/faults`` does so.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import asyncpg
import orjson
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from skiplock import Client, JobSpec
from skiplock.queue.errors import IdempotencyConflict, InvalidJob
from skiplock.queue.store import Completion, ProgressWrite, Store
from tests.integration.protocol_model import (
    QUEUED,
    RUNNING,
    TERMINAL,
    JobModel,
    Lease,
    SimWorker,
    Snapshot,
    check_row,
    check_step,
    check_unique_keys,
    snapshot,
)

T = TypeVar("T")

TASK = "model.task"
QUEUES = ("a", "b")
TENANTS = ("t1", "t2")
KEYS = ("k1", "k2")
WORKERS = {"w1": ("a",), "w2": ("a", "b"), "w3": ("b",)}
LEASE_SECONDS = 60.0
LATER = 3600.0  # a delay that comes due only when the clock is moved
CLOCK_STEP = timedelta(hours=2)  # "time passes": past every lease, delay and retention age
RETENTION_AGE = 3600.0

EXAMPLES_ENV = "SKIPLOCK_MODEL_EXAMPLES"
STEPS_ENV = "SKIPLOCK_MODEL_STEPS"
CI_EXAMPLES = 50
CI_STEPS = 30


def _env_count(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise pytest.UsageError(f"{name}={raw!r} is not a whole number") from None
    if value < 1:
        raise pytest.UsageError(f"{name}={raw!r} must be at least 1")
    return value


def model_settings() -> settings:
    """CI: a fixed, derandomized budget. With SKIPLOCK_MODEL_EXAMPLES: random and longer."""
    examples = _env_count(EXAMPLES_ENV, CI_EXAMPLES)
    long_run = bool(os.environ.get(EXAMPLES_ENV, "").strip())
    chosen = settings(
        max_examples=examples,
        stateful_step_count=_env_count(STEPS_ENV, CI_STEPS),
        deadline=None,
        derandomize=not long_run,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        print_blob=True,
        # A failure shrinks on the database (minutes): stop at the first kind of bug.
        report_multiple_bugs=False,
    )
    # CI: no example database either, so that every run is the same run.
    return chosen if long_run else settings(chosen, database=None)


@dataclass
class Harness:
    """Connections shared by all examples of one test run (the table is truncated per example)."""

    run: Callable[[Coroutine[Any, Any, Any]], Any]
    admin: asyncpg.Connection[Any]  # snapshots, the moved clock, cancels, retries, retention
    client: Client
    workers: dict[str, SimWorker]
    store: Store
    seen: Counter[str] = field(default_factory=Counter)  # interleavings reached, all examples

    @classmethod
    async def open(cls, dsn: str, runner: asyncio.Runner) -> Harness:
        admin = await asyncpg.connect(dsn)
        client = await Client.connect(dsn, min_size=1, max_size=1)
        workers = {
            worker_id: SimWorker(worker_id, queues, await asyncpg.connect(dsn))
            for worker_id, queues in WORKERS.items()
        }
        return cls(runner.run, admin, client, workers, Store())

    async def close(self) -> None:
        for worker in self.workers.values():
            await worker.conn.close()
        await self.client.close()
        await self.admin.close()


def _error_json(kind: str, attempt: int, worker: str) -> str:
    """An error entry shaped as the worker writes it."""
    return orjson.dumps(
        {
            "type": kind,
            "message": f"{kind} in attempt {attempt}",
            "traceback": None,
            "attempt": attempt,
            "worker": worker,
            "at": "2026-01-01T00:00:00+00:00",
        }
    ).decode()


PICK = st.integers(min_value=0, max_value=1_000)


class ProtocolModel(RuleBasedStateMachine):
    """Random interleavings of the protocol's writes; see the module docstring."""

    def __init__(self, harness: Harness) -> None:
        super().__init__()
        self.h = harness
        self.store = harness.store
        self.h.run(harness.admin.execute("TRUNCATE skiplock.jobs"))
        for worker in harness.workers.values():
            worker.held.clear()
        self.jobs: dict[uuid.UUID, JobModel] = {}
        self.keys: dict[tuple[str, str], uuid.UUID] = {}
        self.stale: list[tuple[uuid.UUID, uuid.UUID]] = []  # (job, token) no longer current
        self.gone: list[uuid.UUID] = []  # purged ids, for late writes to rows that vanished
        self.prev: Snapshot = {}
        self.next_id = 0
        self.sent: list[JobSpec] = []  # specs whose job was inserted
        self.retried: set[uuid.UUID] = set()
        self.purgeable: set[uuid.UUID] = set()

    # -- helpers ----------------------------------------------------------

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        result: T = self.h.run(coro)
        return result

    def seen(self, what: str) -> None:
        """Count an interleaving the model reached (the test asserts the key ones)."""
        self.h.seen[what] += 1

    def _current(self, job_id: uuid.UUID, token: uuid.UUID) -> bool:
        job = self.jobs.get(job_id)
        return job is not None and job.token == token

    def holders(self) -> list[SimWorker]:
        """The workers that believe they hold a lease."""
        return [w for w in self.h.workers.values() if w.held]

    def _held(self, pick: int) -> tuple[SimWorker, uuid.UUID, Lease]:
        holders = self.holders()
        worker = holders[pick % len(holders)]
        leases = sorted(worker.held.items())
        job_id, lease = leases[(pick // len(holders)) % len(leases)]
        return worker, job_id, lease

    def _pick_job(self, pick: int, states: frozenset[str] | None = None) -> JobModel:
        jobs = [j for j in self.jobs.values() if states is None or j.state in states]
        jobs.sort(key=lambda j: j.id)
        return jobs[pick % len(jobs)]

    def _lose(self, job: JobModel) -> None:
        """The job's current lease ends: its token becomes stale."""
        assert job.token is not None
        self.stale.append((job.id, job.token))
        job.token = None
        job.holder = None
        job.expired = False

    def _assert_unchanged(self, what: str, baseline: Snapshot | None = None) -> None:
        """The table is as it was after the previous step (or at ``baseline``)."""
        after = self._run(snapshot(self.h.admin))
        assert after == (self.prev if baseline is None else baseline), f"{what} changed the table"

    def some(self, states: frozenset[str]) -> bool:
        """Whether the model has a job in one of ``states``."""
        return any(j.state in states for j in self.jobs.values())

    # -- one step ---------------------------------------------------------

    @rule(data=st.data())
    def step(self, data: st.DataObject) -> None:
        """One protocol step, drawn from ``ACTIONS`` by weight among those possible now.

        One rule, not one per action: hypothesis's swarm testing (a random subset
        of rules enabled per example) left most examples without one of the
        actions that an interesting interleaving needs all of (claim, cancel, a
        retry outcome; claim, expiry, rescue, a late write)."""
        names = [a.name for a in ACTIONS if a.possible(self) for _ in range(a.weight)]
        action = ACTIONS_BY_NAME[data.draw(st.sampled_from(names), label="action")]
        kwargs = {name: data.draw(strategy, label=name) for name, strategy in action.args}
        getattr(self, action.name)(**kwargs)

    # -- the client -------------------------------------------------------

    @initialize(
        jobs=st.lists(
            st.tuples(st.sampled_from(TENANTS), st.sampled_from(QUEUES), st.integers(1, 3)),
            min_size=2,
            max_size=4,
        )
    )
    def some_jobs(self, jobs: list[tuple[str, str, int]]) -> None:
        """Every example starts with a few due jobs, so that workers have work at once."""
        for tenant, queue, max_attempts in jobs:
            self.enqueue(tenant, None, queue, 0, max_attempts, False, False)

    def enqueue(
        self,
        tenant: str,
        key: str | None,
        queue: str,
        priority: int,
        max_attempts: int,
        later: bool,
        other_args: bool,
    ) -> None:
        """Enqueue; a (tenant, key) already held resolves to its job or conflicts."""
        args = {"n": 2 if other_args else 1}
        holder_id = None if key is None else self.keys.get((tenant, key))
        if holder_id is not None:
            holder = self.jobs[holder_id]
            # The holder's own request again, with other args or not (every other
            # field as first sent, so that the answer does not depend on which
            # fields the comparison covers: issue 10 #9).
            args = {"n": holder.args["n"] + 1} if other_args else holder.args
            resend = self._spec(
                args,
                queue=holder.queue,
                priority=holder.priority,
                delay=holder.delay,
                max_attempts=holder.requested_attempts,
                tenant=tenant,
                key=key,
            )
            if args == holder.args:
                (job,) = self._run(self.h.client.enqueue_many([resend]))
                assert job.id == holder.id
                assert (job.state.value, job.attempt) == (holder.state, holder.attempt)
                self.seen("idempotent re-enqueue")
            else:
                with pytest.raises(IdempotencyConflict) as conflict:
                    self._run(self.h.client.enqueue_many([resend]))
                assert conflict.value.job_id == holder.id
                self.seen("idempotency conflict")
                self._assert_unchanged("a conflicting enqueue")
            return
        delay = LATER if later else 0.0
        spec = self._spec(
            args,
            queue=queue,
            priority=priority,
            delay=delay,
            max_attempts=max_attempts,
            tenant=tenant,
            key=key,
        )
        (job,) = self._run(self.h.client.enqueue_many([spec]))
        assert job.id == spec.id
        self._add(spec, later=later)

    def _add(self, spec: JobSpec, *, later: bool) -> None:
        """The model of a job just inserted from ``spec``."""
        assert spec.id not in self.jobs
        self.jobs[spec.id] = JobModel(
            id=spec.id,
            tenant=spec.tenant,
            key=spec.idempotency_key,
            queue=spec.queue,
            priority=spec.priority,
            max_attempts=spec.max_attempts,
            requested_attempts=spec.max_attempts,
            args=dict(spec.args),
            delay=spec.delay_seconds or 0.0,
            due=not later,
        )
        self.sent.append(spec)
        if spec.idempotency_key is not None:
            self.keys[(spec.tenant, spec.idempotency_key)] = spec.id

    def enqueue_batch(
        self, first: tuple[str, str | None, bool], second: tuple[str, str | None, bool]
    ) -> None:
        """Two jobs in one ``enqueue_many``: all or nothing. Each (tenant, key, other
        args) resolves to the job holding its key — one already stored or the first of
        the batch — or conflicts, and then neither is written."""
        specs: list[JobSpec] = []
        expected: list[uuid.UUID | None] = []  # the holder, or None for a new job
        keys = dict(self.keys)
        bodies = {job_id: job.args for job_id, job in self.jobs.items()}
        conflict = False
        for tenant, key, other_args in (first, second):
            holder_id = None if key is None else keys.get((tenant, key))
            if holder_id is None:
                spec = self._spec(
                    {"n": 2 if other_args else 1},
                    queue=QUEUES[0],
                    priority=0,
                    delay=0.0,
                    max_attempts=2,
                    tenant=tenant,
                    key=key,
                )
                if key is not None:
                    keys[(tenant, key)] = spec.id
                bodies[spec.id] = dict(spec.args)
                specs.append(spec)
                expected.append(None)
                continue
            held = self.jobs.get(holder_id)
            args = {"n": bodies[holder_id]["n"] + 1} if other_args else bodies[holder_id]
            conflict = conflict or other_args
            specs.append(
                self._spec(
                    args,
                    queue=QUEUES[0] if held is None else held.queue,
                    priority=0 if held is None else held.priority,
                    delay=0.0 if held is None else held.delay,
                    max_attempts=2 if held is None else held.requested_attempts,
                    tenant=tenant,
                    key=key,
                )
            )
            expected.append(holder_id)
        if conflict:
            with pytest.raises(IdempotencyConflict):
                self._run(self.h.client.enqueue_many(specs))
            self.seen("idempotency conflict in a batch: nothing written")
            self._assert_unchanged("a batch with a conflicting key")
            return
        jobs = self._run(self.h.client.enqueue_many(specs))
        assert [j.id for j in jobs] == [
            spec.id if holder is None else holder
            for spec, holder in zip(specs, expected, strict=True)
        ]
        for spec, holder in zip(specs, expected, strict=True):
            if holder is None:
                self._add(spec, later=False)
            elif holder in (s.id for s in specs):
                self.seen("a key held by the same batch resolved to its first job")

    def resend(self, pick: int, other_args: bool) -> None:
        """The same spec (same client-made id) sent again, as after a network error:
        the job it created, or a clear error when the body differs; nothing written."""
        sent = [spec for spec in self.sent if spec.id in self.jobs]
        if not sent:
            return
        spec = sent[pick % len(sent)]
        job = self.jobs[spec.id]
        again = JobSpec(
            spec.task,
            {"n": job.args["n"] + 1} if other_args else spec.args,
            queue=spec.queue,
            priority=spec.priority,
            delay=spec.delay,
            max_attempts=spec.max_attempts,
            tenant=spec.tenant,
            idempotency_key=spec.idempotency_key,
            id=spec.id,
        )
        if other_args:
            with pytest.raises(InvalidJob):
                self._run(self.h.client.enqueue_many([again]))
        else:
            (got,) = self._run(self.h.client.enqueue_many([again]))
            assert got.id == spec.id
            assert (got.state.value, got.attempt) == (job.state, job.attempt)
            self.seen("a re-sent spec returned its job")
        self._assert_unchanged("a re-sent spec")

    def _spec(
        self,
        args: dict[str, Any],
        *,
        queue: str,
        priority: int,
        delay: float,
        max_attempts: int,
        tenant: str,
        key: str | None,
    ) -> JobSpec:
        """A job to enqueue, with an id from a counter: ids order the claim among equal
        priorities and run_at, and random ones would make a replayed example differ."""
        self.next_id += 1
        return JobSpec(
            TASK,
            args,
            queue=queue,
            priority=priority,
            delay=delay or None,
            max_attempts=max_attempts,
            tenant=tenant,
            idempotency_key=key,
            id=uuid.UUID(int=self.next_id),
        )

    def _tenant_for(self, job: JobModel, who: str) -> str | None:
        if who == "own":
            return job.tenant
        if who == "other":
            return next(t for t in TENANTS if t != job.tenant)
        return None  # any tenant (operators)

    def cancel(self, pick: int, who: str, aim: str) -> None:
        """Cancel a job: queued ends at once, running gets the flag; nothing else changes."""
        states = None if aim == "any" else frozenset({aim})
        self._cancel(
            self._pick_job(pick, states if states is None or self.some(states) else None), who
        )

    def _cancel(self, job: JobModel, who: str) -> None:
        got = self._run(self.store.cancel_job(self.h.admin, job.id, self._tenant_for(job, who)))
        if who == "other" or job.state not in (QUEUED, RUNNING):
            assert got is None
            self._assert_unchanged(f"cancel ({who}) of a {job.state} job")
            return
        assert got is not None
        assert got.id == job.id
        job.cancel_requested = True
        if job.state == QUEUED:
            job.state = "cancelled"
            job.old = False
        assert got.state.value == job.state

    def retry(self, pick: int, who: str, any_state: bool) -> None:
        """Manual retry: only failed or cancelled jobs, always with an attempt left."""
        ended = frozenset({"failed", "cancelled"})
        job = self._pick_job(pick, None if any_state or not self.some(ended) else ended)
        got = self._run(self.store.retry_job(self.h.admin, job.id, self._tenant_for(job, who)))
        if who == "other" or job.state not in ("failed", "cancelled"):
            assert got is None
            self._assert_unchanged(f"retry ({who}) of a {job.state} job")
            return
        assert got is not None
        assert got.id == job.id
        self.retried.add(job.id)
        job.state = QUEUED
        job.due = True
        job.max_attempts = max(job.max_attempts, min(job.attempt + 1, 1000))
        job.cancel_requested = False
        job.result = None
        assert (got.state.value, got.max_attempts) == (QUEUED, job.max_attempts)

    # -- the worker -------------------------------------------------------

    def _claim(self, worker_id: str, limit: int, *, reply_seen: bool) -> None:
        worker = self.h.workers[worker_id]
        free = worker.concurrency - len(worker.held)
        if free <= 0:
            return
        n = min(limit, free)
        claimable = [
            j
            for j in self.jobs.values()
            if j.state == QUEUED and j.due and j.queue in worker.queues
        ]
        claimable.sort(key=lambda j: (j.priority, self.prev[j.id]["run_at"], j.id))
        expected = {j.id for j in claimable[:n]}
        claimed = self._run(
            self.store.claim_jobs(
                worker.conn, list(worker.queues), n, LEASE_SECONDS, worker.worker_id
            )
        )
        assert {j.id for j in claimed} == expected, "claimed other jobs than the claim order"
        for got in claimed:
            job = self.jobs[got.id]
            job.state = RUNNING
            job.attempt += 1
            assert got.attempt == job.attempt
            assert got.lease_token is not None
            job.token = got.lease_token
            job.holder = job.last_worker = worker.worker_id
            job.expired = False
            if reply_seen:
                worker.held[got.id] = Lease(got.lease_token, got.attempt, got.max_attempts)

    def claim(self, worker: str, limit: int, reply_lost: bool) -> None:
        """Claim up to ``limit`` (and the free slots) due jobs, in claim order.

        ``reply_lost``: the claim committed but its reply never reached the worker;
        the rows stay running under tokens nobody holds until their lease expires.
        That is today's behaviour (issue 10 #5); once a worker releases such
        orphans on its next contact, this step gets that release and the
        attempt is given back."""
        self._claim(worker, limit, reply_seen=not reply_lost)

    def report(self, pick: int, value: float | None, message: str | None) -> None:
        """A worker's periodic writes: a heartbeat (no ``value``) or a progress report."""
        if value is None:
            self._heartbeat(pick)
        else:
            self._progress(pick, value, message)

    def _heartbeat(self, pick: int) -> None:
        """One worker extends all its leases; missing ids are lost leases."""
        holders = self.holders()
        worker = holders[pick % len(holders)]
        leases = [(job_id, lease.token) for job_id, lease in sorted(worker.held.items())]
        held = self._run(self.store.heartbeat_jobs(worker.conn, leases, LEASE_SECONDS))
        expected = {job_id for job_id, token in leases if self._current(job_id, token)}
        assert set(held) == expected, "a heartbeat renewed a lost lease, or lost a held one"
        for job_id, lease in list(worker.held.items()):
            if job_id not in held:
                self.seen("heartbeat found a lost lease")
                del worker.held[job_id]  # lease_lost: the worker stops that handler
                continue
            assert held[job_id] == self.jobs[job_id].cancel_requested
            lease.cancel_seen = held[job_id]
            self.jobs[job_id].expired = False

    def _progress(self, pick: int, value: float, message: str | None) -> None:
        """A progress report under the worker's lease: written iff the lease is current."""
        worker, job_id, lease = self._held(pick)
        write = ProgressWrite(job_id, lease.token, value, message, None)
        written = self._run(self.store.update_progress(worker.conn, [write]))
        if self._current(job_id, lease.token):
            assert written == {job_id}
            job = self.jobs[job_id]
            job.progress = value
            job.message = message or job.message
        else:
            self.seen("progress under a lost lease refused")
            assert written == set(), "a progress write under a lost lease was accepted"
            del worker.held[job_id]
            self._assert_unchanged("a progress write under a lost lease")

    def _completion(
        self, worker: SimWorker, job_id: uuid.UUID, lease: Lease, kind: str, later: bool
    ) -> Completion:
        """The outcome as the worker builds it (runner: _completion/_failure)."""
        if kind == "cancel" and lease.cancel_seen:
            # Written only for a cancel the worker read from the row (a heartbeat or
            # the read a hint triggers, see complete()): a forged NOTIFY trusted
            # alone would write `cancelled` without the flag (check_row catches it).
            return Completion(job_id, lease.token, "cancelled")
        if kind == "succeeded":
            result = orjson.dumps({"by": worker.worker_id, "attempt": lease.attempt}).decode()
            return Completion(job_id, lease.token, "succeeded", result_json=result)
        if kind == "release":
            return Completion(job_id, lease.token, "release")
        if kind == "fail":  # Fail(...): not retryable
            error = _error_json("Fail", lease.attempt, worker.worker_id)
            return Completion(job_id, lease.token, "failed", error_json=error)
        # An exception or Retry: retried while attempts are left, else failed.
        error = _error_json("RuntimeError", lease.attempt, worker.worker_id)
        if lease.attempt < lease.max_attempts:
            delay = LATER if later else 0.0
            return Completion(job_id, lease.token, "retry", error_json=error, delay_seconds=delay)
        return Completion(job_id, lease.token, "failed", error_json=error)

    def complete(
        self, pick: int, kind: str, later: bool, final: float | None, cancel_lands: bool
    ) -> None:
        """An attempt's outcome under the worker's lease: written iff the lease is current.
        ``cancel_lands``: a client's cancel lands while the attempt is ending, unseen by
        the worker (the race the architecture's "a cancel request is never lost" is about)."""
        worker, job_id, lease = self._held(pick)
        baseline = None
        if cancel_lands and job_id in self.jobs:
            self._cancel(self.jobs[job_id], "own")
            baseline = self._run(snapshot(self.h.admin))
        if kind == "cancel" and not lease.cancel_seen:
            # A cancel hint (a NOTIFY, which any role can send): the worker reads the
            # real flag before acting on it, as issue 10 #2's fix requires.
            held = self._run(
                self.store.heartbeat_jobs(worker.conn, [(job_id, lease.token)], LEASE_SECONDS)
            )
            if not self._current(job_id, lease.token):
                assert held == {}, "a lost lease answered a cancel read"
                del worker.held[job_id]
                return
            assert held == {job_id: self.jobs[job_id].cancel_requested}
            self.jobs[job_id].expired = False
            lease.cancel_seen = held[job_id]
            if not lease.cancel_seen:
                self.seen("cancel hint without a request ignored")
                return
        base = self._completion(worker, job_id, lease, kind, later)
        outcome = Completion(
            base.job_id,
            base.lease_token,
            base.outcome,
            result_json=base.result_json,
            error_json=base.error_json,
            delay_seconds=base.delay_seconds,
            progress=final,
            message=None if final is None else "final",
        )
        written = self._run(self.store.complete_jobs(worker.conn, [outcome]))
        del worker.held[job_id]  # written or lost, the worker is done with it
        if not self._current(job_id, lease.token):
            self.seen("completion under a lost lease refused")
            assert written == set(), "a completion under a lost lease was accepted"
            self._assert_unchanged("a completion under a lost lease", baseline)
            return
        assert written == {job_id}
        job = self.jobs[job_id]
        self._lose(job)
        if final is not None:
            job.progress = final
            job.message = "final"
        if outcome.error_json is not None:
            job.errors += 1
        if outcome.outcome == "succeeded":
            job.state = "succeeded"
            job.progress = 100
            job.result = orjson.loads(outcome.result_json or "null")
        elif outcome.outcome in ("failed", "cancelled"):
            job.state = outcome.outcome
        else:  # retry or release: back to the queue, unless a cancel is pending
            if outcome.outcome == "release":
                job.attempt -= 1
            if job.cancel_requested:
                self.seen(f"{outcome.outcome} of a job asked to cancel: cancelled")
            job.state = "cancelled" if job.cancel_requested else QUEUED
            job.due = outcome.outcome == "release" or not outcome.delay_seconds
        job.old = False

    # -- the moved clock, the rescuer, retention --------------------------

    def _freeze(self, pick: int) -> JobModel:
        """One running job's lease runs out without a heartbeat (a harness write)."""
        job = self._pick_job(pick, frozenset({RUNNING}))
        self._run(
            self.h.admin.execute(
                "UPDATE skiplock.jobs SET lease_expires_at = now() - interval '1 second'"
                " WHERE id = $1",
                job.id,
            )
        )
        job.expired = True
        return job

    def time_passes(self, pick: int, hours_pass: bool) -> None:
        """The clock moves, in the data: one running job's worker froze (its lease runs
        out without a heartbeat), or two hours pass (every lease runs out, every
        delay comes due, finished jobs age past retention)."""
        if not hours_pass and self.some(frozenset({RUNNING})):
            self._freeze(pick)
            return
        self._run(
            self.h.admin.execute(
                "UPDATE skiplock.jobs SET run_at = run_at - $1::interval,"
                " lease_expires_at = lease_expires_at - $1::interval,"
                " finished_at = finished_at - $1::interval",
                CLOCK_STEP,
            )
        )
        for job in self.jobs.values():
            job.due = True
            job.expired = job.state == RUNNING
            job.old = job.state in TERMINAL
        # Not a protocol step: the shifted table is the new baseline.
        self.prev = self._run(snapshot(self.h.admin))

    def rescue(self, worker: str, limit: int, froze: int | None, cancel_lands: bool) -> None:
        """Any worker's rescuer takes back expired leases, oldest expiry first.
        ``froze``: first, one running job's worker froze and its lease ran out (and,
        with ``cancel_lands``, a client asked to cancel it meanwhile)."""
        if froze is not None:
            frozen = self._freeze(froze)
            if cancel_lands:
                self._cancel(frozen, "own")
        expired = {j.id for j in self.jobs.values() if j.state == RUNNING and j.expired}
        # The expiries as they are now (a freeze in this step moved one).
        before = self.prev if froze is None else self._run(snapshot(self.h.admin))
        rescued = self._run(self.store.rescue_expired(self.h.workers[worker].conn, limit))
        ids = {r.job_id for r in rescued}
        assert len(ids) == len(rescued) == min(limit, len(expired))
        assert ids <= expired, "rescued a job whose lease had not expired"
        if ids:
            expiry = {i: row["lease_expires_at"] for i, row in before.items()}
            latest = max(expiry[i] for i in ids)
            for left in expired - ids:
                assert expiry[left] >= latest, "rescue skipped an older lease"
        for r in rescued:
            job = self.jobs[r.job_id]
            assert r.worker_id == job.holder
            assert r.attempt == job.attempt
            if job.cancel_requested:
                job.state = "cancelled"
            elif job.attempt >= job.max_attempts:
                job.state = "failed"
            else:
                job.state = QUEUED
                job.due = True
            assert r.state.value == job.state
            self.seen(f"rescued to {job.state}")
            job.errors += 1
            job.old = False
            self._lose(job)

    def purge(
        self, limit: int, succeeded: float | None, failed: float | None, cancelled: float | None
    ) -> None:
        """Retention deletes finished jobs past their state's age, never an active one."""
        ages = {"succeeded": succeeded, "failed": failed, "cancelled": cancelled}
        eligible = {
            j.id
            for j in self.jobs.values()
            if j.state in TERMINAL and j.old and ages[j.state] is not None
        }
        deleted = self._run(
            self.store.purge_finished(
                self.h.admin,
                limit,
                succeeded_after=succeeded,
                failed_after=failed,
                cancelled_after=cancelled,
            )
        )
        assert deleted == min(limit, len(eligible))
        if deleted:
            self.seen("retention deleted finished jobs")
        left = {r["id"] for r in self._run(self.h.admin.fetch("SELECT id FROM skiplock.jobs"))}
        gone = set(self.jobs) - left
        assert gone <= eligible
        assert len(gone) == deleted
        self.purgeable |= gone
        for job_id in sorted(gone):
            job = self.jobs.pop(job_id)
            if job.key is not None:
                del self.keys[(job.tenant, job.key)]
            self.gone.append(job_id)

    # -- late writes ------------------------------------------------------

    def late_write(self, pick: int, worker: str, kind: str, forged: bool) -> None:
        """A stale worker (its lease was rescued, reassigned, completed or purged) writes
        with its old token, or with a made-up one: no row, no change."""
        targets = self.stale + [(job_id, uuid.uuid4()) for job_id in self.gone]
        job_id, token = targets[pick % len(targets)]
        if forged:
            token = uuid.uuid4()
        assert not self._current(job_id, token)
        conn = self.h.workers[worker].conn
        written: set[uuid.UUID]
        if kind == "heartbeat":
            held = self._run(self.store.heartbeat_jobs(conn, [(job_id, token)], LEASE_SECONDS))
            written = set(held)
        elif kind == "progress":
            write = ProgressWrite(job_id, token, 42.0, "late", 1.0)
            written = self._run(self.store.update_progress(conn, [write]))
        else:
            late = Completion(
                job_id,
                token,
                kind,  # type: ignore[arg-type]  # one of the Outcome literals
                result_json='{"late": true}' if kind == "succeeded" else None,
                error_json=_error_json("Late", 0, worker) if kind in ("failed", "retry") else None,
                delay_seconds=0.0,
                progress=1.0,
            )
            written = self._run(self.store.complete_jobs(conn, [late]))
        self.seen(f"late {kind} refused")
        assert written == set(), f"a late {kind} under a stale token was accepted"
        self._assert_unchanged(f"a late {kind}")

    # -- after every step -------------------------------------------------

    @invariant()
    def database_matches(self) -> None:
        """The invariants hold on the table, and every row is what the model predicts."""
        cur = self._run(snapshot(self.h.admin))
        for row in cur.values():
            check_row(row)
        check_unique_keys(cur)
        check_step(self.prev, cur, retried=self.retried, purgeable=self.purgeable)
        assert set(cur) == set(self.jobs), "the table holds other jobs than the model"
        for job_id, job in self.jobs.items():
            row = cur[job_id]
            seen = {
                "state": row["state"],
                "attempt": row["attempt"],
                "max_attempts": row["max_attempts"],
                "lease_token": row["lease_token"],
                "worker_id": row["worker_id"],
                "cancel_requested": row["cancel_requested"],
                "tenant": row["tenant"],
                "idempotency_key": row["idempotency_key"],
                "queue": row["queue"],
                "priority": row["priority"],
                "progress": row["progress"],
                "progress_message": row["progress_message"],
                "result": row["result"],
                "errors": row["n_errors"],
                "due": row["due"] if row["state"] == QUEUED else None,
                "expired": row["expired"] if row["state"] == RUNNING else None,
            }
            want = {
                "state": job.state,
                "attempt": job.attempt,
                "max_attempts": job.max_attempts,
                "lease_token": job.token,
                "worker_id": job.last_worker,
                "cancel_requested": job.cancel_requested,
                "tenant": job.tenant,
                "idempotency_key": job.key,
                "queue": job.queue,
                "priority": job.priority,
                "progress": job.progress,
                "progress_message": job.message,
                "result": job.result,
                "errors": job.errors,
                "due": job.due if job.state == QUEUED else None,
                "expired": job.expired if job.state == RUNNING else None,
            }
            assert seen == want, f"job {job_id}: table {seen} but model {want}"
            if job.state == RUNNING:
                assert job.holder == row["worker_id"]
        assert {(t, k) for (t, k) in self.keys} == {
            (r["tenant"], r["idempotency_key"])
            for r in cur.values()
            if r["idempotency_key"] is not None
        }
        self.prev = cur
        self.seen("steps")
        self.retried = set()
        self.purgeable = set()


@dataclass(frozen=True)
class Action:
    """A kind of step: the method, its weight, when it is possible, its arguments."""

    name: str
    weight: int
    possible: Callable[[ProtocolModel], bool]
    args: tuple[tuple[str, st.SearchStrategy[Any]], ...]


def _always(machine: ProtocolModel) -> bool:
    return True


WORKER = st.sampled_from(sorted(WORKERS))
WHO = st.sampled_from(["own", "any", "other"])
# In order of interest: hypothesis draws the first possible action a little more often.
ACTIONS = (
    Action(
        "complete",
        4,
        lambda m: bool(m.holders()),
        (
            ("pick", PICK),
            ("kind", st.sampled_from(["error", "succeeded", "release", "cancel", "fail"])),
            ("later", st.booleans()),
            ("final", st.none() | st.sampled_from([33.0, 66.0])),
            ("cancel_lands", st.booleans()),
        ),
    ),
    Action(
        "report",
        3,
        lambda m: bool(m.holders()),
        (
            ("pick", PICK),
            ("value", st.sampled_from([12.5, 50.0, None, 99.0])),
            ("message", st.none() | st.sampled_from(["step one", "step two"])),
        ),
    ),
    Action(
        "late_write",
        2,
        lambda m: bool(m.stale or m.gone),
        (
            ("pick", PICK),
            ("worker", WORKER),
            (
                "kind",
                st.sampled_from(
                    ["progress", "succeeded", "heartbeat", "retry", "failed", "release"]
                ),
            ),
            ("forged", st.booleans()),
        ),
    ),
    Action(
        "rescue",
        2,
        lambda m: m.some(frozenset({RUNNING})),
        (
            ("worker", WORKER),
            ("limit", st.integers(1, 3)),
            ("froze", st.none() | PICK),
            ("cancel_lands", st.booleans()),
        ),
    ),
    Action(
        "claim",
        3,
        _always,
        (
            ("worker", WORKER),
            ("limit", st.integers(1, 3)),
            ("reply_lost", st.sampled_from([False, False, False, True])),
        ),
    ),
    Action(
        "cancel",
        2,
        lambda m: bool(m.jobs),
        (("pick", PICK), ("who", WHO), ("aim", st.sampled_from([RUNNING, QUEUED, "any"]))),
    ),
    Action(
        "time_passes",
        2,
        lambda m: bool(m.jobs),
        (("pick", PICK), ("hours_pass", st.sampled_from([False, False, True]))),
    ),
    Action(
        "enqueue",
        3,
        _always,
        (
            ("tenant", st.sampled_from(TENANTS)),
            ("key", st.none() | st.sampled_from(KEYS)),
            ("queue", st.sampled_from(QUEUES)),
            ("priority", st.integers(0, 1)),
            ("max_attempts", st.integers(1, 3)),
            ("later", st.sampled_from([False, False, True])),
            ("other_args", st.booleans()),
        ),
    ),
    Action(
        "enqueue_batch",
        1,
        _always,
        tuple(
            (
                name,
                st.tuples(
                    st.sampled_from(TENANTS),
                    st.none() | st.sampled_from(KEYS),
                    st.sampled_from([False, False, True]),
                ),
            )
            for name in ("first", "second")
        ),
    ),
    Action("resend", 1, lambda m: bool(m.jobs), (("pick", PICK), ("other_args", st.booleans()))),
    Action(
        "retry",
        1,
        lambda m: m.some(TERMINAL),
        (("pick", PICK), ("who", WHO), ("any_state", st.booleans())),
    ),
    Action(
        "purge",
        2,
        lambda m: m.some(TERMINAL),
        (
            ("limit", st.sampled_from([50, 1])),
            ("succeeded", st.sampled_from([RETENTION_AGE, RETENTION_AGE, None])),
            ("failed", st.sampled_from([RETENTION_AGE, RETENTION_AGE, None])),
            ("cancelled", st.sampled_from([RETENTION_AGE, RETENTION_AGE, None])),
        ),
    ),
)
ACTIONS_BY_NAME = {a.name: a for a in ACTIONS}


# Interleavings every run must reach (each group: at least one of), or the model
# explored too little to mean much. Groups, not single paths: which paths a
# derandomized run takes changes with any edit to the machine or its settings.
MUST_REACH = (
    ("idempotent re-enqueue",),
    ("idempotency conflict",),
    ("idempotency conflict in a batch: nothing written",),
    ("a re-sent spec returned its job",),
    (
        "heartbeat found a lost lease",
        "progress under a lost lease refused",
        "completion under a lost lease refused",
    ),
    (
        "retry of a job asked to cancel: cancelled",
        "release of a job asked to cancel: cancelled",
    ),
    ("rescued to queued",),
    ("rescued to failed",),
    ("rescued to cancelled",),
    ("retention deleted finished jobs",),
    (
        "late heartbeat refused",
        "late progress refused",
        "late succeeded refused",
        "late failed refused",
        "late retry refused",
        "late release refused",
    ),
)


def _timeout() -> float:
    """Passing takes seconds in CI; a failure's shrinking runs on the database and may
    take hypothesis's own limit of five minutes: let it finish and print the steps.
    A longer run gets about 50 ms a step on top (a loaded machine does ~10)."""
    steps = _env_count(EXAMPLES_ENV, CI_EXAMPLES) * _env_count(STEPS_ENV, CI_STEPS)
    return 600 + 0.05 * steps


@pytest.mark.timeout(_timeout())
def test_protocol_model(db_dsn: str) -> None:
    """Random interleavings of every protocol write keep every invariant (see the module doc)."""
    with asyncio.Runner(loop_factory=asyncio.new_event_loop) as runner:
        harness = runner.run(Harness.open(db_dsn, runner))
        try:
            run_state_machine_as_test(
                lambda: ProtocolModel(harness),  # type: ignore[arg-type]  # a factory is allowed
                settings=model_settings(),
            )
        finally:
            runner.run(harness.close())
    print("protocol model reached:", dict(sorted(harness.seen.items())))  # noqa: T201 - with -s / -rA
    missed = [group for group in MUST_REACH if not any(harness.seen[what] for what in group)]
    assert not missed, f"the model never reached: {missed}"
