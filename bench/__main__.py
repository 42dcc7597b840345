"""``python -m bench``: skiplock's benchmark suite (``scripts/bench`` runs it).

Each benchmark runs ``--runs`` times (default 3), each time on a fresh
database; the table shows the median of the runs next to its target. The
throughput, enqueue and pickup benchmarks also run the lean loop
(:mod:`bench.lean`, a hand-written asyncpg queue) on the same server in the
same run, and show each figure beside the lean loop's and as a ratio to it
("× lean"). See
``docs/performance.md`` for what each figure means and how it is measured.

    python -m bench                          # everything, default sizes
    python -m bench --quick                  # tiny sizes: does it all work?
    python -m bench --only throughput,pickup --throughput-jobs 200000
    python -m bench --json                   # one JSON document instead of the table
    python -m bench --only designs           # storage designs compared (bench/designs.py)
    python -m bench --only flow              # flow control (bench/flow.py)

The server is ``--dsn`` (or ``SKIPLOCK_BENCH_DATABASE_URL``, else
``SKIPLOCK_DATABASE_URL``): databases are created on it for each run and
dropped afterwards. Without one, a throwaway PostgreSQL is started from the
binaries on this machine (durable: fsync and synchronous_commit on, unless
``--fast``).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import statistics
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from bench import api, designs, flow, jobs, lean_bench, pgbench, schedules
from bench.common import (
    Server,
    default_dsn,
    exit_on_sigterm,
    header,
    kill_all,
    note,
    positive_int,
)
from skiplock.logs import configure_logging


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How big each benchmark is."""

    throughput_jobs: int = 20_000
    bulk_jobs: int = 20_000
    bulk_chunk: int = 1_000
    single_jobs: int = 2_000
    pickup_jobs: int = 500
    pickup_gap: float = 0.02
    big_rows: int = 1_000_000
    progress_calls: int = 10_000
    progress_seconds: float = 2.0
    sse_samples: int = 100
    sse_interval: float = 0.15
    api_duration: float = 5.0
    api_connections: int = 32
    pgbench_transactions: int = 1_000
    memory_jobs: int = 100_000
    designs_rows: int = designs.ROWS
    designs_seconds: int = designs.SECONDS
    flow_jobs: int = 10_000
    flow_keys: int = 1_000
    flow_many_keys: int = 100_000  # queued jobs, one per key; flow_jobs of them timed
    flow_fair_backlog: int = 100_000
    flow_fair_probes: int = 100
    flow_fair_gap: float = 0.05
    flow_rate_seconds: float = 60.0
    flow_pause_cycles: int = 20
    flow_pause_backlog: int = 50_000
    cron_ticks: int = 1_000


QUICK = Sizes(
    throughput_jobs=500,
    bulk_jobs=2_000,
    single_jobs=100,
    pickup_jobs=20,
    big_rows=2_000,
    progress_calls=1_000,
    progress_seconds=0.5,
    sse_samples=5,
    api_duration=1.0,
    api_connections=8,
    pgbench_transactions=10,
    memory_jobs=1_000,
    designs_rows=2_000,
    designs_seconds=1,
    flow_jobs=500,
    flow_keys=50,
    flow_many_keys=1_000,
    flow_fair_backlog=5_000,
    flow_fair_probes=10,
    flow_rate_seconds=3.0,
    flow_pause_cycles=3,
    flow_pause_backlog=5_000,
    cron_ticks=50,
)

MB = 1024 * 1024


# -- the benchmarks -------------------------------------------------------------

Run = dict[str, Any]
Bench = Callable[[Server, Sizes], Awaitable[Run]]


async def _empty(server: Server) -> str:
    return await server.template("empty")


async def _big(server: Server, sizes: Sizes) -> str:
    async def fill(dsn: str) -> None:
        note(f"filling the big-table template with {sizes.big_rows:,} finished jobs")
        await jobs.fill_finished(dsn, sizes.big_rows)

    return await server.template("big", fill)


# The four benchmarks with a lean reference: skiplock's run, then the lean
# loop's on a fresh database of the same server, as the run's "lean" entry.


async def _throughput(server: Server, sizes: Sizes) -> Run:
    async with server.fresh_database(await _empty(server)) as dsn:
        result = await jobs.throughput(dsn, sizes.throughput_jobs)
    async with server.fresh_database(await _empty(server)) as dsn:
        result["lean"] = await lean_bench.throughput(dsn, sizes.throughput_jobs)
    return result


async def _throughput_default(server: Server, sizes: Sizes) -> Run:
    async with server.fresh_database(await _empty(server)) as dsn:
        return await jobs.throughput(dsn, sizes.throughput_jobs, defaults=True)


async def _bulk(server: Server, sizes: Sizes) -> Run:
    async with server.fresh_database(await _empty(server)) as dsn:
        result = await jobs.bulk_enqueue(dsn, sizes.bulk_jobs, sizes.bulk_chunk)
    async with server.fresh_database(await _empty(server)) as dsn:
        result["lean"] = await lean_bench.bulk_enqueue(dsn, sizes.bulk_jobs, sizes.bulk_chunk)
    return result


async def _single(server: Server, sizes: Sizes) -> Run:
    async with server.fresh_database(await _empty(server)) as dsn:
        result = await jobs.single_enqueue(dsn, sizes.single_jobs)
    async with server.fresh_database(await _empty(server)) as dsn:
        result["lean"] = await lean_bench.single_enqueue(dsn, sizes.single_jobs)
    return result


async def _pickup(server: Server, sizes: Sizes) -> Run:
    async with server.fresh_database(await _empty(server)) as dsn:
        result = await jobs.pickup(dsn, sizes.pickup_jobs, sizes.pickup_gap)
    async with server.fresh_database(await _empty(server)) as dsn:
        result["lean"] = await lean_bench.pickup(dsn, sizes.pickup_jobs, sizes.pickup_gap)
    return result


async def _big_table(server: Server, sizes: Sizes) -> Run:
    template = await _big(server, sizes)
    async with server.fresh_database(template) as dsn:
        throughput = await jobs.throughput(dsn, sizes.throughput_jobs)
    async with server.fresh_database(template) as dsn:
        pickup = await jobs.pickup(dsn, sizes.pickup_jobs, sizes.pickup_gap)
    return {"rows": sizes.big_rows, "throughput": throughput, "pickup": pickup}


async def _progress(server: Server, sizes: Sizes) -> Run:
    async with server.fresh_database(await _empty(server)) as dsn:
        writes = await jobs.progress_writes(dsn, sizes.progress_calls, sizes.progress_seconds)
    async with server.fresh_database(await _empty(server)) as dsn:
        sse = await api.sse_latency(dsn, samples=sizes.sse_samples, interval=sizes.sse_interval)
    return {"writes": writes, "sse": sse}


async def _api(server: Server, sizes: Sizes) -> Run:
    async with server.fresh_database(await _empty(server)) as dsn:
        return await api.get_job_ratio(
            dsn, duration=sizes.api_duration, connections=sizes.api_connections
        )


async def _pgbench(server: Server, sizes: Sizes) -> Run:
    async with server.fresh_database(await _empty(server)) as dsn:
        return await pgbench.claim_complete(dsn, sizes.pgbench_transactions)


async def _memory(server: Server, sizes: Sizes) -> Run:
    async with server.fresh_database(await _empty(server)) as dsn:
        return await jobs.throughput(dsn, sizes.memory_jobs)


async def _flow(server: Server, sizes: Sizes) -> Run:
    # Each figure on a fresh database; a ratio's reference in the same run.
    return await flow.one_run(server, sizes)


async def _schedules(server: Server, sizes: Sizes) -> Run:
    async with server.fresh_database(await _empty(server)) as dsn:
        return await schedules.cron_duplicates(dsn, sizes.cron_ticks)


async def _designs(server: Server, sizes: Sizes) -> Run:
    # One run = every design once, so that --runs interleaves them.
    return await designs.one_round(server, sizes.designs_rows, sizes.designs_seconds)


BENCHMARKS: dict[str, Bench] = {
    "throughput": _throughput,
    "throughput_default": _throughput_default,
    "bulk_enqueue": _bulk,
    "single_enqueue": _single,
    "pickup": _pickup,
    "big_table": _big_table,
    "progress": _progress,
    "api": _api,
    "pgbench": _pgbench,
    "memory": _memory,
    "flow": _flow,
    "schedules": _schedules,
    "designs": _designs,
}
# A benchmark's figures may be relative to others': those run too.
NEEDS = {"big_table": ("throughput", "pickup"), "throughput_default": ("throughput",)}
# Run only when named in --only: the storage-design comparison (issue 11) takes about
# ten minutes at its sizes and measures candidate tables, not skiplock.
ON_REQUEST = {"designs"}


# -- figures ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Figure:
    """One row of the table: the median over the runs, and its target.

    ``lean`` is the lean loop's median of the same figure (when it has one),
    ``ratio`` is ``value / lean``; a target written "× lean" is checked on the
    ratio, any other on the value.
    """

    bench: str
    name: str
    value: float | None
    unit: str
    target: str = ""
    met: bool | None = None
    lean: float | None = None
    ratio: float | None = None


def _ge(limit: float) -> Callable[[float], bool]:
    return lambda value: value >= limit


def _le(limit: float) -> Callable[[float], bool]:
    return lambda value: value <= limit


def _median(runs: Sequence[Run], *path: str) -> float:
    values = []
    for run in runs:
        value: Any = run
        for key in path:
            value = value[key]
        values.append(float(value))
    return statistics.median(values)


SPREAD_RUNS = 5  # the throughput's spread is judged over at least this many runs


def _spread(runs: Sequence[Run], key: str) -> float:
    """The largest deviation of one run's ``key`` from the runs' median, in % of the median."""
    values = [float(run[key]) for run in runs]
    middle = statistics.median(values)
    return max(abs(v - middle) for v in values) / middle * 100 if middle else 0.0


def _pct(part: float | None, whole: float | None) -> float | None:
    return None if part is None or not whole else 100 * part / whole


class _Rows:
    """Builds the figures of one report from the runs' results."""

    def __init__(self, results: dict[str, list[Run]]) -> None:
        self.results = results
        self.figures: list[Figure] = []

    def has(self, bench: str) -> bool:
        return bool(self.results.get(bench))

    def med(self, bench: str, *path: str) -> float | None:
        """The median over the runs of ``bench`` (None when it did not run)."""
        return _median(self.results[bench], *path) if self.has(bench) else None

    def add(
        self,
        bench: str,
        name: str,
        value: float | None,
        unit: str,
        target: str = "",
        check: Callable[[float], bool] | None = None,
        *,
        lean: float | None = None,
    ) -> None:
        """One figure; with ``lean``, its ratio to it, and a "× lean" target checks the ratio."""
        ratio = None if value is None or not lean else value / lean
        checked = ratio if "× lean" in target else value
        met = None if check is None or checked is None else check(checked)
        self.figures.append(Figure(bench, name, value, unit, target, met, lean, ratio))

    def with_lean(
        self,
        bench: str,
        name: str,
        key: str,
        unit: str,
        target: str = "",
        check: Callable[[float], bool] | None = None,
        *,
        lean_of: str | None = None,
        at: tuple[str, ...] = (),
    ) -> None:
        """The figure ``key`` of ``bench``'s runs beside the lean loop's ``key``.

        The lean loop's runs are those of ``lean_of`` (default: ``bench``). ``at``:
        the path to ``key`` inside a run (``("limited",)``: ``run["limited"][key]``).
        """
        value = self.med(bench, *at, key)
        source = lean_of or bench
        if self.has(source) and all("lean" in run for run in self.results[source]):
            lean = self.med(source, "lean", *at, key)
        else:
            lean = None
        self.add(bench, name, value, unit, target, check, lean=lean)

    def cpu(
        self,
        bench: str,
        who: str,
        what: str,
        lean_of: str | None = None,
        at: tuple[str, ...] = (),
    ) -> None:
        """The CPU per job rows of ``bench``: ``who`` (worker or client) and PostgreSQL's.

        ``what`` names the figure they belong to (row names are unique); ``at`` is
        the path to the CPU keys inside a run (see :meth:`with_lean`).
        """
        key = f"{who}_cpu_us_per_job"
        name = f"  {who} CPU per job, {what}"
        self.with_lean(bench, name, key, "µs", lean_of=lean_of, at=at)
        server = f"  PostgreSQL CPU per job (its backends), {what}"
        self.with_lean(bench, server, "server_cpu_us_per_job", "µs", lean_of=lean_of, at=at)


def _figures(results: dict[str, list[Run]], sizes: Sizes) -> list[Figure]:
    """The table's rows from the runs' results (a failed benchmark has none)."""
    rows = _Rows(results)
    med, add, lean = rows.med, rows.add, rows.with_lean
    if rows.has("throughput"):
        name = f"throughput, {sizes.throughput_jobs:,} no-op jobs, 1 worker process, best settings"
        lean("throughput", name, "jobs_per_s", "jobs/s", "≥ 0.8 × lean", _ge(0.8))
        spread = _spread(results["throughput"], "jobs_per_s")
        enough = len(results["throughput"]) >= SPREAD_RUNS
        target = f"≤ 15 ({SPREAD_RUNS}+ runs)" if enough else ""
        name = "  largest deviation of a run from the median"
        add("throughput", name, spread, "%", target, _le(15) if enough else None)
        rows.cpu("throughput", "worker", "best settings")
    if rows.has("throughput_default"):
        name = "throughput, the same, WorkerSettings() defaults"
        lean("throughput_default", name, "jobs_per_s", "jobs/s", lean_of="throughput")
        rows.cpu("throughput_default", "worker", "defaults", lean_of="throughput")
        default = med("throughput_default", "jobs_per_s")
        best = med("throughput", "jobs_per_s")
        ratio = default / best if default is not None and best else None
        add("throughput_default", "  defaults / best settings", ratio, "×", "≥ 0.5", _ge(0.5))
    if rows.has("bulk_enqueue"):
        name = f"bulk enqueue, {sizes.bulk_jobs:,} in chunks of {sizes.bulk_chunk:,}"
        lean("bulk_enqueue", name, "jobs_per_s", "jobs/s", "≥ 0.6 × lean", _ge(0.6))
        rows.cpu("bulk_enqueue", "client", "bulk")
    if rows.has("single_enqueue"):
        name = f"single enqueue, {sizes.single_jobs:,} one after another"
        lean("single_enqueue", name, "jobs_per_s", "jobs/s", "≥ 0.9 × lean", _ge(0.9))
        rows.cpu("single_enqueue", "client", "single")
        bare = med("single_enqueue", "bare_inserts_per_s")
        add("single_enqueue", "  bare one-row INSERT + commit, the same way", bare, "rows/s")
    if rows.has("pickup"):
        what = f"pickup latency, {sizes.pickup_jobs} jobs {sizes.pickup_gap * 1000:g} ms apart"
        lean("pickup", f"{what}, p50", "p50", "ms", "≤ 1.5 × lean", _le(1.5))
        lean("pickup", f"{what}, p95", "p95", "ms", "≤ 2.5", _le(2.5))
        lean("pickup", f"{what}, p99", "p99", "ms")
        rows.cpu("pickup", "worker", "pickup")
    if rows.has("big_table"):
        big = f"{sizes.big_rows:,} finished rows"
        value = med("big_table", "throughput", "jobs_per_s")
        add("big_table", f"throughput with {big}", value, "jobs/s")
        share = _pct(value, med("throughput", "jobs_per_s"))
        add("big_table", "  throughput as % of the empty table", share, "%", "≥ 90", _ge(90))
        value = med("big_table", "pickup", "p50")
        add("big_table", f"pickup p50 with {big}", value, "ms")
        share = _pct(value, med("pickup", "p50"))
        add("big_table", "  pickup p50 as % of the empty table", share, "%", "≤ 110", _le(110))
    if rows.has("progress"):
        seconds = med("progress", "writes", "handler_seconds")
        add("progress", f"progress: {sizes.progress_calls:,} ctx.progress calls over", seconds, "s")
        writes = med("progress", "writes", "progress_writes")
        add("progress", "  database writes they caused", writes, "writes")
        # "~": the first report is written at once, then at most one per 0.1 s.
        rate = med("progress", "writes", "writes_per_s")
        add("progress", "  writes per job per second", rate, "writes/s", "≤ ~10", _le(11))
        add("progress", "progress → SSE latency, p50", med("progress", "sse", "p50"), "ms")
        p99 = med("progress", "sse", "p99")
        add("progress", "progress → SSE latency, p99", p99, "ms", "≤ 20", _le(20))
    if rows.has("api"):
        add("api", "GET /v1/jobs/{id}, skiplock API", med("api", "api", "rps"), "req/s")
        add("api", "GET /v1/jobs/{id}, bare Starlette", med("api", "bare", "rps"), "req/s")
        add("api", "  ratio API / bare", med("api", "ratio"), "×", "≥ 0.8", _ge(0.8))
    if rows.has("pgbench"):
        limit = med("pgbench", "rows_per_s")
        add("pgbench", f"pgbench claim+complete by 100, {pgbench.CLIENTS} clients", limit, "jobs/s")
        if rows.has("throughput"):
            share = _pct(med("throughput", "jobs_per_s"), limit)
            add("pgbench", "  throughput as % of it", share, "%")
        if rows.has("bulk_enqueue"):
            share = _pct(med("bulk_enqueue", "jobs_per_s"), limit)
            add("pgbench", "  bulk enqueue as % of it", share, "%")
    if rows.has("throughput"):
        peak = _median(results["throughput"], "peak_rss") / MB
        add("memory", "worker peak RSS during the throughput run", peak, "MiB")
    if rows.has("memory"):
        run = results["memory"]
        peak, warm, end = (_median(run, k) for k in ("peak_rss", "rss_after_warmup", "rss_end"))
        add("memory", f"worker peak RSS during a {sizes.memory_jobs:,}-job run", peak / MB, "MiB")
        add("memory", "  RSS after warm-up (20 % of the run)", warm / MB, "MiB")
        add("memory", "  RSS at the end", end / MB, "MiB")
        growth = _pct(end - warm, warm)
        add("memory", "  growth from warm-up to the end", growth, "%", "≤ 10 (flat)", _le(10))
    if rows.has("flow"):
        _flow_figures(rows, results["flow"], sizes)
    if rows.has("schedules"):
        n, every = sizes.cron_ticks, schedules.EVERY
        what = f"{n:,} ticks {every * 1000:g} ms apart, {schedules.WORKERS} worker processes"
        add("schedules", "cron_duplicates", med("schedules", "duplicates"), "ticks", "0", _le(0))
        add("schedules", f"  {what}: ticks enqueued", med("schedules", "ticks"), "ticks")
        add(
            "schedules",
            "  ticks left out between the first and the last",
            med("schedules", "missing"),
            "ticks",
        )
        add(
            "schedules",
            "  a tick's job created after the tick, p50",
            med("schedules", "late_p50_ms"),
            "ms",
        )
        add("schedules", "  the same, p95", med("schedules", "late_p95_ms"), "ms")
    if rows.has("designs"):
        for d in designs.summarize(results["designs"]):
            name = f"storage design {d.name}, pgbench claim+complete by 100"
            add("designs", name, d.rows_per_s, "jobs/s", lean=d.lean_rows_per_s)
            add("designs", f"  {d.name}: WAL per job", d.wal_bytes_per_job, "B")
            add("designs", f"  {d.name}: updates that were HOT", d.hot_pct, "%")
    return rows.figures


def _flow_figures(rows: _Rows, runs: Sequence[Run], sizes: Sizes) -> None:
    """The flow group's rows: each named figure, then what it was made of."""
    med, add = rows.med, rows.add
    jobs, keys, many = sizes.flow_jobs, sizes.flow_keys, sizes.flow_many_keys
    each = f"≤ {flow.MAX_RUNNING} running per key"
    for figure, limited, unlimited, what, short in (
        (
            "limited_throughput_ratio",
            "limited",
            "unlimited",
            f"{jobs:,} no-op jobs over {keys:,} keys, {each}",
            f"{keys:,} keys",
        ),
        (
            "many_keys_claim_ratio",
            "many_keys",
            "many_unlimited",
            f"first {jobs:,} of {many:,} queued no-op jobs, one key each, {each}",
            f"{many:,} keys",
        ),
    ):
        add("flow", figure, med("flow", figure), "×", "≥ 0.8", _ge(0.8))
        add("flow", f"  {what}", med("flow", limited, "jobs_per_s"), "jobs/s")
        rows.cpu("flow", "worker", f"{short}, limited", at=(limited,))
        rate = med("flow", unlimited, "jobs_per_s")
        add("flow", f"  the same without keys or limits ({short})", rate, "jobs/s")
        rows.cpu("flow", "worker", f"{short}, no limit", at=(unlimited,))
    p95 = med("flow", "fair", "p95")
    add("flow", "fair_wait_p95_ms", p95, "ms", "≤ 100", _le(100))
    fair = f"tenant B's wait in a fair queue behind A's {sizes.flow_fair_backlog:,}-job backlog"
    add("flow", f"  {fair}, p50", med("flow", "fair", "p50"), "ms")
    add(
        "flow",
        "  tenant A's 10 ms jobs run meanwhile",
        med("flow", "fair", "a_jobs_per_s"),
        "jobs/s",
    )
    # Exactness: the worst run, not the median (one window over the limit is a miss).
    worst = max(float(run["rate"]["max_over"]) for run in runs)
    add("flow", "rate_limit_max_over", worst, "starts", "0", _le(0))
    by_jobs = max(float(run["rate"]["max_over_started_at"]) for run in runs)
    add("flow", "  the same from jobs.started_at (claim transaction time)", by_jobs, "starts")
    rate = med("flow", "rate", "starts_per_s")
    seconds = sizes.flow_rate_seconds
    add("flow", f"  starts/s achieved, limit 50/s, 4 workers, {seconds:g} s", rate, "starts/s")
    add("flow", "pause_effect_ms", med("flow", "pause", "p95"), "ms", "≤ 50", _le(50))
    cycles = sizes.flow_pause_cycles
    add("flow", f"  pause → last start, p50 of {cycles} pauses", med("flow", "pause", "p50"), "ms")


# -- output ---------------------------------------------------------------------


def _number(value: float | None) -> str:
    if value is None:
        return "n/a"
    if abs(value) >= 999.5:  # what rounds to 1,000 or more gets its comma
        return f"{value:,.0f}"
    if abs(value) >= 99.95:
        return f"{value:.0f}"
    if abs(value) >= 9.995:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _met(met: bool | None) -> str:
    return {True: "yes", False: "NO", None: ""}[met]


def _header_lines(report: dict[str, Any]) -> list[str]:
    h = report["header"]
    m, pg, sk = h["machine"], h["postgres"], h["skiplock"]
    ram = f"{m['ram_bytes'] / 1024**3:.1f} GiB RAM" if m["ram_bytes"] else "RAM unknown"
    load = " ".join(f"{x:.2f}" for x in m["load_average"])
    load_end = " ".join(f"{x:.2f}" for x in report["load_average_end"])
    settings = ", ".join(f"{k}={pg[k]}" for k in _settings_shown(pg))
    return [
        f"skiplock benchmarks, {report['started_at']}",
        f"  machine   {m['cpu_model']}, {m['cores']} cores ({m['cores_usable']} usable), {ram}",
        f"  load      {load} at the start, {load_end} at the end (1/5/15 min)",
        f"  python    {h['python']}",
        f"  postgres  {pg['version']} ({pg['server']} server), {settings}",
        f"  skiplock  {sk['version']}, revision {sk['revision']}",
        f"  runs      median of {report['runs']} run(s), each on a fresh database"
        f"{'; quick sizes' if report['quick'] else ''}",
    ]


def _settings_shown(pg: dict[str, Any]) -> list[str]:
    """The PostgreSQL settings shown in the header, in order."""
    return [k for k in pg if k not in ("version", "server")]


def table(report: dict[str, Any]) -> str:
    """The header and one row per figure: name, value, unit, lean's, × lean, target, met?"""
    figures = [Figure(**f) for f in report["figures"]]
    width = max([len(f.name) for f in figures] + [30])
    lines = [*_header_lines(report), ""]
    head = f"{'figure':<{width}}  {'value':>10}  {'unit':<7}{'lean':>10}  {'× lean':>7}"
    lines.append(f"  {head}  {'target':<15}met?")
    for f in figures:
        value, lean = _number(f.value), "" if f.lean is None else _number(f.lean)
        ratio = "" if f.ratio is None else f"{f.ratio:.2f}"
        row = f"{f.name:<{width}}  {value:>10}  {f.unit:<7}{lean:>10}  {ratio:>7}"
        lines.append(f"  {row}  {f.target:<15}{_met(f.met)}")
    for name, error in report["errors"].items():
        lines.append(f"  {name}: FAILED: {error.splitlines()[-1] if error else ''}")
    return "\n".join(lines)


# -- running ----------------------------------------------------------------------


def _selected(only: str | None) -> list[str]:
    if not only:
        return [name for name in BENCHMARKS if name not in ON_REQUEST]
    wanted = {name.strip() for name in only.split(",") if name.strip()}
    unknown = sorted(wanted - set(BENCHMARKS))
    if unknown:
        raise ValueError(
            f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}"
        )
    for name in list(wanted):
        wanted.update(NEEDS.get(name, ()))
    return [name for name in BENCHMARKS if name in wanted]


async def run(
    names: list[str], sizes: Sizes, *, runs: int, dsn: str | None, fast: bool, quick: bool
) -> dict[str, Any]:
    """Run the benchmarks ``names``; the report (header, figures, every run, errors)."""
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    results: dict[str, list[Run]] = {}
    errors: dict[str, str] = {}
    async with Server.open(dsn, fast=fast) as server:
        head = await header(server)
        try:
            for name in names:
                results[name] = []
                for i in range(runs):
                    note(f"{name}: run {i + 1} of {runs}")
                    began = time.monotonic()
                    try:
                        results[name].append(await BENCHMARKS[name](server, sizes))
                    except Exception:
                        errors[name] = traceback.format_exc()
                        note(f"{name} failed:\n{errors[name]}")
                        results[name] = []
                        break
                    note(f"{name}: run {i + 1} took {time.monotonic() - began:.1f} s")
        finally:
            kill_all()
    return {
        "started_at": started,
        "header": head,
        "load_average_end": list(os.getloadavg()),
        "runs": runs,
        "quick": quick,
        "sizes": dataclasses.asdict(sizes),
        "figures": [dataclasses.asdict(f) for f in _figures(results, sizes)],
        "results": results,
        "errors": errors,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, run, print the table or JSON; 1 when a benchmark failed."""
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="Benchmark skiplock (see docs/performance.md)."
    )
    parser.add_argument("--dsn", help="a PostgreSQL server to create the run databases on")
    parser.add_argument("--fast", action="store_true", help="throwaway server without fsync")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: check that all runs")
    parser.add_argument(
        "--only",
        help=f"comma-separated subset of: {', '.join(BENCHMARKS)}"
        f" (default: all but {', '.join(sorted(ON_REQUEST))})",
    )
    parser.add_argument("--runs", type=positive_int, default=3, help="runs per benchmark")
    parser.add_argument("--throughput-jobs", type=positive_int, help="jobs in the throughput run")
    parser.add_argument("--memory-jobs", type=positive_int, help="jobs in the memory run")
    parser.add_argument("--big-rows", type=positive_int, help="finished rows for big_table")
    args = parser.parse_args(argv)
    try:
        names = _selected(args.only)
    except ValueError as exc:
        parser.error(str(exc))
    sizes = QUICK if args.quick else Sizes()
    overrides = {
        "throughput_jobs": args.throughput_jobs,
        "memory_jobs": args.memory_jobs,
        "big_rows": args.big_rows,
    }
    sizes = dataclasses.replace(sizes, **{k: v for k, v in overrides.items() if v is not None})
    dsn = default_dsn(args.dsn)

    configure_logging("console", "warning")  # stdout carries only the table or the JSON
    exit_on_sigterm()
    try:
        report = asyncio.run(
            run(names, sizes, runs=args.runs, dsn=dsn, fast=args.fast, quick=args.quick)
        )
    finally:
        kill_all()
    print(json.dumps(report, indent=2) if args.json else table(report))
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
