"""The promises every fault test ends by checking, with one helper: :func:`check_invariants`.

:func:`install` adds to the test's database, next to skiplock's schema:

- ``executions``: one row per handler run, written by the handlers of
  ``tests/apps/faulty.py`` (job, attempt, the lease token it ran under, worker,
  pid, started / finished / stopped);
- ``job_events``: a row-level trigger on ``skiplock.jobs`` records every
  insert, claim (with its fresh lease token and how long the job waited),
  end of a running attempt (with the token the write was fenced with, the
  token the result names, and the type of the error it appended), reopening
  of a finished job, and delete;
- ``fence_violations``: written by the same trigger the moment the database
  accepts a write that could only come from a stale lease: a result or a
  progress report naming a lease token other than the live one, or the
  deletion of a queued or running job.

:func:`check_invariants` then proves, from these tables and the jobs rows:

1. no job is lost and none appears from nowhere: the jobs ever inserted are
   exactly the jobs the test created;
2. every job reaches exactly one terminal state, once, and stays there (a
   purged row must have been deleted in that state);
3. no write from a stale lease was accepted: no fence violation; every
   outcome written by a worker carries the token of the job's latest claim,
   and a success names exactly one execution, the one that ran under that
   token and finished;
4. every handler run belongs to a claim (same job, token and attempt), and no
   claim was run twice;
5. re-runs are bounded: runs whose attempt was not ended by their own
   outcome (rescued after a crash or freeze, released at shutdown) number at
   most ``max_reruns`` — what the test says was in flight when it struck;
6. the system moved again in time: the jobs ``affected`` by the fault were
   claimed again within ``recover_within`` seconds of ``fault_at`` (without
   ``affected``: some job was).
"""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})

SIDE_SQL = """
CREATE TABLE executions (
    id          uuid PRIMARY KEY,
    job_id      uuid NOT NULL,
    task        text NOT NULL,
    attempt     integer NOT NULL,
    lease_token uuid NOT NULL,
    worker_id   text NOT NULL,
    pid         integer NOT NULL,
    started     timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished    timestamptz,
    stopped     timestamptz,
    stop_reason text
);
CREATE INDEX executions_job_idx ON executions (job_id);

CREATE TABLE job_events (
    seq              bigserial PRIMARY KEY,
    job_id           uuid NOT NULL,
    kind             text NOT NULL,  -- insert | claim | end | reopen | delete
    state            text NOT NULL,  -- the state the job went to (delete: the state it had)
    attempt          integer NOT NULL,
    lease_token      uuid,           -- claim: the new token; end: the token the write matched
    worker_id        text,
    result_token     text,           -- end: the token the result names
    result_execution text,           -- end: the execution the result names
    error_type       text,           -- end: the type of the error this transition appended
    wait             float8,         -- claim: seconds from run_at to the claim
    at               timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX job_events_job_idx ON job_events (job_id);

CREATE TABLE fence_violations (
    seq    bigserial PRIMARY KEY,
    job_id uuid NOT NULL,
    what   text NOT NULL,
    at     timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE FUNCTION record_job_event() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    appended text;
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO public.job_events (job_id, kind, state, attempt)
        VALUES (NEW.id, 'insert', NEW.state::text, NEW.attempt);
        RETURN NULL;
    END IF;
    IF TG_OP = 'DELETE' THEN
        INSERT INTO public.job_events (job_id, kind, state, attempt, worker_id)
        VALUES (OLD.id, 'delete', OLD.state::text, OLD.attempt, OLD.worker_id);
        IF OLD.state::text NOT IN ('succeeded', 'failed', 'cancelled') THEN
            INSERT INTO public.fence_violations (job_id, what)
            VALUES (OLD.id, 'a ' || OLD.state::text || ' job was deleted');
        END IF;
        RETURN NULL;
    END IF;
    IF OLD.state::text <> 'running' AND NEW.state::text = 'running' THEN
        INSERT INTO public.job_events (job_id, kind, state, attempt, lease_token, worker_id, wait)
        VALUES (NEW.id, 'claim', 'running', NEW.attempt, NEW.lease_token, NEW.worker_id,
                extract(epoch FROM now() - NEW.run_at));
    ELSIF OLD.state::text = 'running' AND NEW.state::text <> 'running' THEN
        IF jsonb_array_length(NEW.errors) > jsonb_array_length(OLD.errors) THEN
            appended := NEW.errors -> -1 ->> 'type';
        END IF;
        INSERT INTO public.job_events (job_id, kind, state, attempt, lease_token, worker_id,
                                result_token, result_execution, error_type)
        VALUES (NEW.id, 'end', NEW.state::text, OLD.attempt, OLD.lease_token, OLD.worker_id,
                CASE WHEN NEW.state::text = 'succeeded' THEN NEW.result ->> 'token' END,
                CASE WHEN NEW.state::text = 'succeeded' THEN NEW.result ->> 'execution' END,
                appended);
        IF NEW.state::text = 'succeeded'
           AND NEW.result ->> 'token' IS DISTINCT FROM OLD.lease_token::text THEN
            INSERT INTO public.fence_violations (job_id, what)
            VALUES (NEW.id, 'a result naming lease ' || coalesce(NEW.result ->> 'token', '?')
                            || ' was accepted under lease ' || OLD.lease_token::text);
        END IF;
    ELSIF OLD.state::text = 'running' AND NEW.state::text = 'running'
          AND (NEW.progress, NEW.progress_message)
              IS DISTINCT FROM (OLD.progress, OLD.progress_message)
          AND NEW.progress_message LIKE 'tok:%'
          AND NEW.progress_message <> 'tok:' || OLD.lease_token::text THEN
        INSERT INTO public.fence_violations (job_id, what)
        VALUES (NEW.id, 'progress from ' || NEW.progress_message
                        || ' was accepted under lease ' || OLD.lease_token::text);
    ELSIF OLD.state::text IN ('succeeded', 'failed', 'cancelled')
          AND NEW.state::text <> OLD.state::text THEN
        INSERT INTO public.job_events (job_id, kind, state, attempt)
        VALUES (NEW.id, 'reopen', NEW.state::text, NEW.attempt);
    END IF;
    RETURN NULL;
END;
$$;
CREATE TRIGGER jobs_fault_events AFTER INSERT OR UPDATE OR DELETE ON skiplock.jobs
    FOR EACH ROW EXECUTE FUNCTION record_job_event();
"""


async def install(dsn: str) -> None:
    """Create ``executions``, ``job_events``, ``fence_violations`` and the recording trigger."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(SIDE_SQL)
    finally:
        await conn.close()


@dataclass
class Figures:
    """What a fault run did, for the report: counts, re-runs and recovery time."""

    jobs: int = 0
    states: dict[str, int] = field(default_factory=dict)
    claims: int = 0
    executions: int = 0
    reruns: int = 0
    unrun_claims: int = 0
    late_finishes: int = 0
    recovery_seconds: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """The figures as one flat mapping (states spelled out)."""
        flat: dict[str, Any] = {"jobs": self.jobs}
        flat.update({f"{state}": n for state, n in sorted(self.states.items())})
        flat.update(
            claims=self.claims,
            executions=self.executions,
            reruns=self.reruns,
            unrun_claims=self.unrun_claims,
            late_finishes=self.late_finishes,
        )
        if self.recovery_seconds is not None:
            flat["recovery_s"] = round(self.recovery_seconds, 2)
        return flat


class InvariantBroken(AssertionError):
    """One of the promises did not hold; the message says which and for which jobs."""


def _fail_if(bad: Iterable[Any], promise: str) -> None:
    found = list(bad)
    if found:
        shown = ", ".join(str(b) for b in found[:5])
        more = f" (and {len(found) - 5} more)" if len(found) > 5 else ""
        raise InvariantBroken(f"{promise}: {len(found)} broken: {shown}{more}")


@dataclass
class _Event:
    seq: int
    kind: str
    state: str
    attempt: int
    lease_token: uuid.UUID | None
    worker_id: str | None
    result_token: str | None
    result_execution: str | None
    error_type: str | None
    at: datetime


@dataclass
class _Execution:
    id: uuid.UUID
    job_id: uuid.UUID
    attempt: int
    lease_token: uuid.UUID
    finished: bool


async def _load(
    conn: asyncpg.Connection[Any],
) -> tuple[dict[uuid.UUID, list[_Event]], list[_Execution], dict[uuid.UUID, str], list[str]]:
    events: dict[uuid.UUID, list[_Event]] = defaultdict(list)
    for r in await conn.fetch(
        "SELECT seq, job_id, kind, state, attempt, lease_token, worker_id, result_token,"
        " result_execution, error_type, at FROM public.job_events ORDER BY seq"
    ):
        events[r["job_id"]].append(
            _Event(
                r["seq"],
                r["kind"],
                r["state"],
                r["attempt"],
                r["lease_token"],
                r["worker_id"],
                r["result_token"],
                r["result_execution"],
                r["error_type"],
                r["at"],
            )
        )
    executions = [
        _Execution(r["id"], r["job_id"], r["attempt"], r["lease_token"], r["finished"])
        for r in await conn.fetch(
            "SELECT id, job_id, attempt, lease_token, finished IS NOT NULL AS finished"
            " FROM public.executions"
        )
    ]
    rows = {
        r["id"]: r["state"] for r in await conn.fetch("SELECT id, state::text FROM skiplock.jobs")
    }
    violations = [
        f"{r['job_id']}: {r['what']}"
        for r in await conn.fetch("SELECT job_id, what FROM public.fence_violations ORDER BY seq")
    ]
    return events, executions, rows, violations


def _interrupted(end: _Event) -> bool:
    """Whether an attempt ended without its own outcome: rescued, or released at shutdown."""
    return end.error_type in ("LeaseExpired", "WorkerDied") or (
        end.state == "queued" and end.error_type is None
    )


async def check_invariants(
    dsn: str,
    job_ids: Collection[uuid.UUID],
    *,
    max_reruns: int,
    fault_at: datetime | None = None,
    affected: Collection[uuid.UUID] | None = None,
    recover_within: float | None = None,
) -> Figures:
    """Check every promise (see the module docstring) for ``job_ids``; return the figures.

    Call it once every job should have ended. ``fault_at`` (database clock) and
    ``affected`` measure recovery: how long after the fault the last affected
    job was claimed again (without ``affected``: the first claim of any job);
    with ``recover_within`` it is also checked.
    """
    conn = await asyncpg.connect(dsn)
    try:
        events, executions, rows, violations = await _load(conn)
    finally:
        await conn.close()
    wanted = set(job_ids)

    # 1. none lost, none from nowhere
    inserted = {job for job, evs in events.items() if any(e.kind == "insert" for e in evs)}
    _fail_if(sorted(wanted - inserted), "every job the test created was inserted")
    _fail_if(sorted(inserted - wanted), "no job appeared that the test did not create")

    # 3a. nothing the fences should have refused was accepted
    _fail_if(violations, "no write from a stale lease (or deletion of a live job) was accepted")

    runs_by_token: dict[uuid.UUID, list[_Execution]] = defaultdict(list)
    for ex in executions:
        runs_by_token[ex.lease_token].append(ex)

    figures = Figures(jobs=len(wanted), executions=len(executions))
    final_states: Counter[str] = Counter()
    not_terminal: list[str] = []
    twice: list[str] = []
    moved: list[str] = []
    stale: list[str] = []
    unnamed: list[str] = []
    claims: dict[uuid.UUID, tuple[uuid.UUID, int]] = {}  # token -> (job, attempt)
    interrupted: set[uuid.UUID] = set()  # tokens whose attempt did not end by its own outcome
    for job in sorted(wanted):
        evs = events.get(job, [])
        ends = [e for e in evs if e.kind == "end" and e.state in TERMINAL]
        if len(ends) != 1:
            (twice if ends else not_terminal).append(f"{job} ({[e.state for e in ends]})")
            continue
        final = ends[0].state
        final_states[final] += 1
        after = [e for e in evs if e.seq > ends[0].seq and e.kind in ("claim", "reopen")]
        current = rows.get(job)
        deleted = [e.state for e in evs if e.kind == "delete"]
        if after or (current is not None and current != final) or (current is None and not deleted):
            moved.append(f"{job} ended {final}, now {current or deleted}")
        latest_claim: uuid.UUID | None = None
        for e in evs:
            if e.kind == "claim":
                assert e.lease_token is not None
                claims[e.lease_token] = (job, e.attempt)
                latest_claim = e.lease_token
            elif e.kind == "end":
                if e.lease_token is None or e.lease_token != latest_claim:
                    stale.append(f"{job}: {e.state} written under {e.lease_token}")
                elif _interrupted(e):
                    interrupted.add(e.lease_token)
                if e.state == "succeeded":
                    named = [
                        x
                        for x in runs_by_token.get(e.lease_token or uuid.UUID(int=0), [])
                        if str(x.id) == e.result_execution and x.job_id == job and x.finished
                    ]
                    if len(named) != 1:
                        unnamed.append(f"{job}: result names {e.result_execution}")
    _fail_if(not_terminal, "every job reached a terminal state")
    _fail_if(twice, "no job reached a terminal state twice")
    _fail_if(moved, "a finished job stays in its terminal state")
    _fail_if(stale, "every outcome was written under the job's live lease")
    _fail_if(unnamed, "every result comes from exactly one finished run under the live lease")

    # 4. runs belong to claims, one run per claim
    orphans = [
        f"{ex.job_id} attempt {ex.attempt}"
        for ex in executions
        if claims.get(ex.lease_token) != (ex.job_id, ex.attempt)
    ]
    _fail_if(orphans, "every handler run belongs to a claim of its job and attempt")
    _fail_if(
        [f"{t}: {len(xs)} runs" for t, xs in runs_by_token.items() if len(xs) > 1],
        "no claim was run twice",
    )

    # 5. re-runs are bounded by what was in flight
    rerun = [ex for ex in executions if ex.lease_token in interrupted]
    figures.states = dict(final_states)
    figures.claims = len(claims)
    figures.reruns = len(rerun)
    figures.late_finishes = sum(1 for ex in rerun if ex.finished)
    figures.unrun_claims = sum(1 for token in claims if token not in runs_by_token)
    if figures.reruns > max_reruns:
        raise InvariantBroken(
            f"re-runs are bounded by what was in flight: {figures.reruns} > {max_reruns}"
        )

    # 6. moving again in time
    if fault_at is not None:
        figures.recovery_seconds = _recovery(events, wanted, fault_at, affected)
        if recover_within is not None:
            if figures.recovery_seconds is None:
                raise InvariantBroken("the jobs were claimed again after the fault: none was")
            if figures.recovery_seconds > recover_within:
                raise InvariantBroken(
                    f"the jobs were claimed again within {recover_within} s of the fault:"
                    f" it took {figures.recovery_seconds:.2f} s"
                )
    return figures


def _recovery(
    events: dict[uuid.UUID, list[_Event]],
    wanted: set[uuid.UUID],
    fault_at: datetime,
    affected: Collection[uuid.UUID] | None,
) -> float | None:
    """Seconds from the fault until the system claimed again.

    With ``affected``: until the last of them was claimed again (None if one
    never was); without: until the first claim of any job.
    """

    def first_claim(job: uuid.UUID) -> float | None:
        later = [e.at for e in events.get(job, []) if e.kind == "claim" and e.at > fault_at]
        return (min(later) - fault_at).total_seconds() if later else None

    if affected is not None:
        firsts = [first_claim(job) for job in affected]
        if not firsts or any(f is None for f in firsts):
            return None
        return max(f for f in firsts if f is not None)
    anyone = [f for f in (first_claim(job) for job in wanted) if f is not None]
    return min(anyone) if anyone else None
