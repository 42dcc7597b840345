"""The lean loop: a hand-written job queue on asyncpg, the reference skiplock is measured against.

What a developer would write in an afternoon instead of using a library: one
narrow table in its own schema (``lean``) with one partial claim index; a
bulk enqueue (one ``INSERT … SELECT FROM unnest`` per call) and a single
enqueue, each one statement that also sends a NOTIFY; and a processing loop
that claims ``batch`` jobs with ``SELECT … FOR UPDATE SKIP LOCKED LIMIT n``,
marks them running (committed, like a lease), runs their handlers and deletes
them. No retries, leases, progress, results or history: the floor the
database sets for this work, on the same server and in the same run.

``python -m bench.lean --ready-file PATH --stats-file PATH [--dsn DSN]
[--batch N] [--loops N]`` runs the loop until SIGTERM and then writes its
counters as JSON to the stats file (see :mod:`bench.lean_bench`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import orjson

SCHEMA = "lean"
CHANNEL = "lean_jobs"
POLL = 1.0  # a claim at least this often even without a NOTIFY

DDL = f"""
CREATE SCHEMA {SCHEMA};
CREATE TABLE {SCHEMA}.jobs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue text NOT NULL,
    task text NOT NULL,
    payload jsonb NOT NULL,
    state text NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'running')),
    attempts integer NOT NULL DEFAULT 0,
    run_at timestamptz NOT NULL DEFAULT now(),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX jobs_claim_idx ON {SCHEMA}.jobs (queue, run_at, id) WHERE state = 'queued';
"""

# S608: the schema and channel are constants of this module, not input.
_BULK = f"""
WITH new AS (
    INSERT INTO {SCHEMA}.jobs (queue, task, payload)
    SELECT $1, $2, p FROM unnest($3::jsonb[]) AS p RETURNING id
)
SELECT array_agg(id) AS ids, pg_notify('{CHANNEL}', $1) FROM new
"""  # noqa: S608

_SINGLE = f"""
WITH new AS (INSERT INTO {SCHEMA}.jobs (queue, task, payload) VALUES ($1, $2, $3) RETURNING id)
SELECT id, pg_notify('{CHANNEL}', $1) FROM new
"""  # noqa: S608

_CLAIM = f"""
WITH picked AS (
    SELECT id FROM {SCHEMA}.jobs
    WHERE queue = $1 AND state = 'queued' AND run_at <= now()
    ORDER BY run_at, id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE {SCHEMA}.jobs AS j SET state = 'running', attempts = j.attempts + 1
FROM picked WHERE j.id = picked.id
RETURNING j.id, j.task, j.payload
"""  # noqa: S608

_DELETE = f"DELETE FROM {SCHEMA}.jobs WHERE id = ANY($1::bigint[])"  # noqa: S608


async def create_schema(conn: asyncpg.Connection[Any]) -> None:
    """Create the ``lean`` schema with its table and claim index."""
    await conn.execute(DDL)


async def enqueue_many(
    conn: asyncpg.Connection[Any], task: str, payloads: Sequence[Any], queue: str = "default"
) -> list[int]:
    """Enqueue one job per payload in one statement (and one NOTIFY); their ids, in order."""
    encoded = [orjson.dumps(p).decode() for p in payloads]
    ids: list[int] = await conn.fetchval(_BULK, queue, task, encoded)
    return ids


async def enqueue(
    conn: asyncpg.Connection[Any], task: str, payload: Any = None, queue: str = "default"
) -> int:
    """Enqueue one job (one statement, committed, with its NOTIFY); its id."""
    job_id: int = await conn.fetchval(_SINGLE, queue, task, orjson.dumps(payload).decode())
    return job_id


class Stats:
    """What the loop counts: jobs done, first claim → last delete, and the probes' start times."""

    def __init__(self) -> None:
        self.done = 0
        self.first: float | None = None
        self.last: float | None = None
        self.starts: dict[int, float] = {}

    def as_json(self) -> bytes:
        seconds = (self.last - self.first) if self.first and self.last else 0.0
        doc = {"jobs": self.done, "seconds": seconds, "starts": self.starts}
        return orjson.dumps(doc, option=orjson.OPT_NON_STR_KEYS)


Handler = Callable[[int, Any, Stats], Awaitable[None]]


async def _noop(job_id: int, payload: Any, stats: Stats) -> None:
    return None


async def _probe(job_id: int, payload: Any, stats: Stats) -> None:
    stats.starts[job_id] = time.time()  # the wall clock, as the enqueuing process reads it


HANDLERS: dict[str, Handler] = {"noop": _noop, "pickup_probe": _probe}


async def work(dsn: str, batch: int, loops: int, ready: Path, stats_file: Path) -> None:
    """Claim, run and delete jobs on ``loops`` connections until SIGTERM; then write the stats."""
    stats, wake, stop = Stats(), asyncio.Event(), asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    listener = await asyncpg.connect(dsn)
    await listener.add_listener(CHANNEL, lambda *_: wake.set())
    conns = [await asyncpg.connect(dsn) for _ in range(loops)]

    async def loop(conn: asyncpg.Connection[Any]) -> None:
        while not stop.is_set():
            wake.clear()  # a NOTIFY from now on wakes us; the claim sees what came before
            began = time.monotonic()
            rows = await conn.fetch(_CLAIM, "default", batch)
            if not rows:
                waits = [asyncio.ensure_future(e.wait()) for e in (wake, stop)]
                await asyncio.wait(waits, timeout=POLL, return_when=asyncio.FIRST_COMPLETED)
                for w in waits:
                    w.cancel()
                continue
            stats.first = stats.first or began
            await asyncio.gather(
                *(HANDLERS[r["task"]](r["id"], orjson.loads(r["payload"]), stats) for r in rows)
            )
            await conn.execute(_DELETE, [r["id"] for r in rows])
            stats.done += len(rows)
            stats.last = time.monotonic()

    await asyncio.to_thread(ready.touch)
    try:
        await asyncio.gather(*(loop(c) for c in conns))
    finally:
        await asyncio.to_thread(stats_file.write_bytes, stats.as_json())
        for conn in [*conns, listener]:
            await conn.close()


def main() -> None:
    """Run the lean loop until SIGTERM."""
    parser = argparse.ArgumentParser(description="The lean reference job loop.")
    parser.add_argument("--dsn", default=os.environ.get("SKIPLOCK_DATABASE_URL"))
    parser.add_argument("--ready-file", type=Path, required=True)
    parser.add_argument("--stats-file", type=Path, required=True)
    parser.add_argument("--batch", type=int, default=1000, help="jobs per claim")
    parser.add_argument("--loops", type=int, default=2, help="connections claiming in turn")
    args = parser.parse_args()
    if not args.dsn:
        parser.error("give --dsn or set SKIPLOCK_DATABASE_URL")
    if args.batch < 1 or args.loops < 1:
        parser.error("--batch and --loops must be positive")
    asyncio.run(work(args.dsn, args.batch, args.loops, args.ready_file, args.stats_file))


if __name__ == "__main__":
    main()
