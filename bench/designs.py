"""Storage designs for the jobs table, compared with pgbench (issue 11).

Each design is a table layout (with its indexes, trigger or history table) and
the claim + completion statements that go with it, in :file:`bench/design_files/`.
A design's template database is filled once with ``rows`` queued jobs; each
run clones it, checkpoints, and runs the design's pgbench script on two clients
for ``seconds`` seconds: each script claims up to 100 jobs in claim order
(``FOR UPDATE SKIP LOCKED``) and completes exactly those, as two transactions,
like a worker's claimer and completer. Per run it measures

- the jobs completed per second (completed rows ÷ pgbench's time without
  connections);
- the WAL written per job (``pg_current_wal_lsn()`` before and after ÷ jobs);
  the first change of each page after the checkpoint writes the whole page;
- the share of row updates that were HOT (no new index entries), from
  ``pg_stat_user_tables``. PostgreSQL 15 has no counter of index entries
  written, so they are not reported; a non-HOT update writes one in every
  index whose predicate the new row meets.

v1 is the lean loop's table and statements (:mod:`bench.lean`), the reference:
"× lean" is a design's median rate over v1's median in the same invocation.
The designs run interleaved (v1 … v9, then again) so that the machine's noise
falls on all of them alike.

    python -m bench.designs                       # throwaway server, 800,000 rows, 8 s, 3 runs
    python -m bench.designs --runs 5 --designs v1,v3,v8
    python -m bench --only designs                # the same in the suite's table (its sizes)
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import statistics
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from bench import lean, pgbench
from bench.common import Server, default_dsn, exit_on_sigterm, header, note, positive_int
from skiplock import sql
from skiplock.logs import configure_logging
from skiplock.testing import admin_execute

FILES = Path(__file__).with_name("design_files")
ROWS = 800_000
SECONDS = 8


def _sql(name: str) -> str:
    return (FILES / name).read_text()


@dataclasses.dataclass(frozen=True)
class Design:
    """A table layout (``ddl``, run in order on an empty database) and its pgbench ``script``.

    ``remaining`` counts the jobs not completed yet, so that a run's completed jobs are
    the rows filled minus it.
    """

    name: str
    summary: str
    ddl: tuple[str, ...]
    script: str
    tables: tuple[str, ...]
    remaining: str


_WIDE = _sql("wide_table.sql")
_QUEUE = _sql("queue_indexes.sql")
_TENANT = _sql("tenant_index.sql")
_FILL = _sql("fill_wide.sql")
# v7's trigger function, as migration 0008 left it (0009 dropped it): the
# migration's own text, run again in the design's database.
_TRIGGER_0008 = next(m for m in sql.migrations() if m.version == 8).sql("skiplock")
_NOT_DONE = "SELECT count(*) FROM jobs WHERE state <> 'succeeded'"

DESIGNS = (
    Design(
        "v1",
        "lean: narrow table, bigint id, claim index; claim UPDATE, DELETE",
        (lean.DDL, _sql("fill_lean.sql")),
        "lean.pgbench",
        ("lean.jobs",),
        "SELECT count(*) FROM lean.jobs",
    ),
    Design(
        "v2",
        "wide (skiplock's columns): pkey, claim, lease, tenant; 2 UPDATEs",
        (_WIDE, _QUEUE, _TENANT, _FILL),
        "wide.pgbench",
        ("jobs",),
        _NOT_DONE,
    ),
    Design(
        "v3",
        "v2 without the tenant index",
        (_WIDE, _QUEUE, _FILL),
        "wide.pgbench",
        ("jobs",),
        _NOT_DONE,
    ),
    Design(
        "v4",
        "HOT attempt: claim on a `queued` flag, fillfactor 80, tenant, no lease",
        (_WIDE, _sql("hot_flag.sql"), _TENANT, _FILL),
        "hot_flag.pgbench",
        ("jobs",),
        _NOT_DONE,
    ),
    Design(
        "v5",
        "split: hot table (pkey, claim, lease) + history; DELETE → INSERT",
        (_WIDE, _QUEUE, _sql("history.sql"), _FILL),
        "split.pgbench",
        ("jobs", "history"),
        "SELECT count(*) FROM jobs",
    ),
    Design(
        "v6",
        "v5 + tenant index on the hot table",
        (_WIDE, _QUEUE, _TENANT, _sql("history.sql"), _FILL),
        "split.pgbench",
        ("jobs", "history"),
        "SELECT count(*) FROM jobs",
    ),
    Design(
        "v7",
        "v3 + the 0008 AFTER UPDATE trigger (transition tables, NOTIFY)",
        (_WIDE, _QUEUE, _TRIGGER_0008, _sql("announce_trigger.sql"), _FILL),
        "wide.pgbench",
        ("jobs",),
        _NOT_DONE,
    ),
    Design(
        "v8",
        "v3 + the statements announce through skiplock.announce (0009), no trigger",
        (_WIDE, _QUEUE, _FILL),
        "inline_notify.pgbench",
        ("jobs",),
        _NOT_DONE,
    ),
    Design(
        "v9",
        "queue table: claim pops a narrow queue row; jobs fillfactor 50, HOT claim+completion",
        (_WIDE, _sql("queue_table.sql"), _TENANT, _FILL, _sql("fill_queue.sql")),
        "queue_table.pgbench",
        ("jobs", "queue"),
        _NOT_DONE,
    ),
)
BY_NAME = {d.name: d for d in DESIGNS}
REFERENCE = "v1"

Run = dict[str, Any]


async def _template(server: Server, design: Design, rows: int) -> str:
    """The design's template database: its tables, filled with ``rows`` queued jobs, vacuumed."""

    async def prepare(dsn: str) -> None:
        note(f"designs: filling {design.name} with {rows:,} queued jobs")
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("SELECT set_config('bench.rows', $1, false)", str(rows))
            for ddl in design.ddl:
                await conn.execute(ddl)
            await conn.execute("VACUUM ANALYZE")
        finally:
            await conn.close()

    return await server.template(f"design_{design.name}_{rows}", prepare)


_TABLE_STATS = """
SELECT coalesce(sum(n_tup_upd), 0)::bigint AS upd, coalesce(sum(n_tup_hot_upd), 0)::bigint AS hot
FROM pg_stat_user_tables
WHERE format('%I.%I', schemaname, relname) = ANY($1::text[])
"""

_OTHER_CLIENTS = """
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'
"""


def _qualified(tables: tuple[str, ...]) -> list[str]:
    return [t if "." in t else f"public.{t}" for t in tables]


async def _table_stats(conn: asyncpg.Connection[Any], tables: tuple[str, ...]) -> tuple[int, int]:
    """Row updates and HOT updates on ``tables`` so far, once pgbench's backends have gone.

    A backend flushes its counters as it exits, before it leaves ``pg_stat_activity``.
    """
    for _ in range(200):  # 10 s at most
        if not await conn.fetchval(_OTHER_CLIENTS):
            break
        await asyncio.sleep(0.05)
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    row = await conn.fetchrow(_TABLE_STATS, _qualified(tables))
    assert row is not None
    return int(row["upd"]), int(row["hot"])


async def run_design(server: Server, design: Design, rows: int, seconds: int) -> Run:
    """One run of ``design`` on a fresh clone of its template: rate, WAL and HOT share."""
    async with server.fresh_database(await _template(server, design, rows)) as dsn:
        await admin_execute(dsn, "CHECKPOINT")
        conn = await asyncpg.connect(dsn)
        try:
            upd0, hot0 = await _table_stats(conn, design.tables)
            lsn0 = await conn.fetchval("SELECT pg_current_wal_lsn()")
            script = FILES / design.script
            scripts, tps = await pgbench.run_script(dsn, script, "-T", str(seconds))
            wal = await conn.fetchval("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1)", lsn0)
            upd1, hot1 = await _table_stats(conn, design.tables)
            remaining = await conn.fetchval(design.remaining)
        finally:
            await conn.close()
    jobs = rows - remaining
    elapsed = scripts / tps
    updates = upd1 - upd0
    return {
        "jobs": jobs,
        "seconds": elapsed,
        "rows_per_s": jobs / elapsed,
        "wal_bytes_per_job": float(wal) / jobs if jobs else 0.0,
        "hot_pct": 100 * (hot1 - hot0) / updates if updates else 0.0,
        # Every queued row was used up before the time was over: the rate is too low.
        "ran_out": remaining < pgbench.BATCH * pgbench.CLIENTS,
    }


async def one_round(server: Server, rows: int, seconds: int, names: Sequence[str] = ()) -> Run:
    """One run of each design (all of them, or ``names``), in order; results by name."""
    results: Run = {}
    for design in DESIGNS:
        if names and design.name not in names:
            continue
        note(f"designs: {design.name} ({seconds} s)")
        results[design.name] = await run_design(server, design, rows, seconds)
    return results


# -- the summary ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Summary:
    """One design over the runs: medians, its rate as a multiple of v1's, the spread."""

    name: str
    summary: str
    rows_per_s: float
    lean_rows_per_s: float | None
    ratio: float | None
    wal_bytes_per_job: float
    hot_pct: float
    low: float
    high: float
    runs: int
    ran_out: bool


def summarize(rounds: Sequence[Run]) -> list[Summary]:
    """Per design, over ``rounds`` (each :func:`one_round`'s result)."""
    by_design: dict[str, list[Run]] = {}
    for design in DESIGNS:
        runs = [r[design.name] for r in rounds if design.name in r]
        if runs:
            by_design[design.name] = runs
    lean_rate = (
        statistics.median(r["rows_per_s"] for r in by_design[REFERENCE])
        if REFERENCE in by_design
        else None
    )
    out = []
    for name, runs in by_design.items():
        rates = [r["rows_per_s"] for r in runs]
        rate = statistics.median(rates)
        out.append(
            Summary(
                name=name,
                summary=BY_NAME[name].summary,
                rows_per_s=rate,
                lean_rows_per_s=lean_rate,
                ratio=rate / lean_rate if lean_rate else None,
                wal_bytes_per_job=statistics.median(r["wal_bytes_per_job"] for r in runs),
                hot_pct=statistics.median(r["hot_pct"] for r in runs),
                low=min(rates),
                high=max(rates),
                runs=len(runs),
                ran_out=any(r["ran_out"] for r in runs),
            )
        )
    return out


def table(report: dict[str, Any]) -> str:
    """The header (machine, load, server, sizes) and one row per design."""
    h = report["header"]
    m, pg = h["machine"], h["postgres"]
    load = " ".join(f"{x:.2f}" for x in m["load_average"])
    load_end = " ".join(f"{x:.2f}" for x in report["load_average_end"])
    settings = ", ".join(f"{k}={v}" for k, v in pg.items() if k not in ("version", "server"))
    lines = [
        f"storage designs, {report['started_at']}",
        f"  machine   {m['cpu_model']}, {m['cores']} cores ({m['cores_usable']} usable)",
        f"  load      {load} at the start, {load_end} at the end (1/5/15 min)",
        f"  postgres  {pg['version']} ({pg['server']} server), {settings}",
        f"  skiplock  revision {h['skiplock']['revision']}",
        f"  runs      {report['runs']} per design, interleaved; {report['rows']:,} queued rows,"
        f" {report['seconds']} s, {pgbench.CLIENTS} clients, claim {pgbench.BATCH} + complete",
        "",
        f"  {'design':<6}  {'jobs/s':>8}  {'× lean':>6}  {'WAL B/job':>9}  {'HOT %':>5}"
        f"  {'min–max jobs/s':>15}  what",
    ]
    for s in summarize(report["rounds"]):
        ratio = "" if s.ratio is None else f"{s.ratio:.2f}"
        spread = f"{s.low:,.0f}–{s.high:,.0f}"
        flag = "  (ran out of rows: rate too low)" if s.ran_out else ""
        lines.append(
            f"  {s.name:<6}  {s.rows_per_s:>8,.0f}  {ratio:>6}  {s.wal_bytes_per_job:>9,.0f}"
            f"  {s.hot_pct:>5.0f}  {spread:>15}  {s.summary}{flag}"
        )
    return "\n".join(lines)


async def run(
    dsn: str | None, rows: int, seconds: int, runs: int, names: Sequence[str]
) -> dict[str, Any]:
    """``runs`` rounds of the designs on the server at ``dsn`` (or a throwaway one)."""
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    rounds = []
    async with Server.open(dsn, fast=False) as server:
        head = await header(server)
        for i in range(runs):
            note(f"designs: round {i + 1} of {runs}")
            rounds.append(await one_round(server, rows, seconds, names))
    return {
        "started_at": started,
        "header": head,
        "load_average_end": list(os.getloadavg()),
        "runs": runs,
        "rows": rows,
        "seconds": seconds,
        "rounds": rounds,
        "summary": [dataclasses.asdict(s) for s in summarize(rounds)],
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, run every design ``--runs`` times, print the table."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.designs",
        description="Compare storage designs for the jobs table with pgbench (issue 11).",
    )
    parser.add_argument("--dsn", help="a PostgreSQL server to create the run databases on")
    parser.add_argument("--rows", type=positive_int, default=ROWS, help="queued rows per run")
    parser.add_argument("--seconds", type=positive_int, default=SECONDS, help="pgbench -T")
    parser.add_argument("--runs", type=positive_int, default=3, help="runs per design")
    parser.add_argument("--designs", help=f"comma-separated subset of {','.join(BY_NAME)}")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = parser.parse_args(argv)
    names = [n.strip() for n in (args.designs or "").split(",") if n.strip()]
    unknown = sorted(set(names) - set(BY_NAME))
    if unknown:
        parser.error(f"unknown design(s) {', '.join(unknown)}; known: {', '.join(BY_NAME)}")
    if names and REFERENCE not in names:
        names.append(REFERENCE)  # "× lean" needs it

    configure_logging("console", "warning")
    exit_on_sigterm()
    report = asyncio.run(run(default_dsn(args.dsn), args.rows, args.seconds, args.runs, names))
    print(json.dumps(report, indent=2) if args.json else table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
