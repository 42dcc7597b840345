"""Smoke test of the benchmark suite: ``python -m bench --quick`` runs every benchmark.

It checks that the suite works and reports every figure with a valid number,
never how fast anything is (speed is the suite's business, not the tests').
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from bench import designs, flow, lean
from bench.__main__ import BENCHMARKS, QUICK, _figures, table

pytestmark = pytest.mark.timeout(460)  # the module's one quick run is most of it

ROOT = Path(__file__).resolve().parent.parent
RATE_UNITS = {"jobs/s", "req/s", "MiB", "s"}
PGBENCH = {"pgbench", "designs"}  # the benchmarks that need the pgbench program
# The benchmarks that also run the lean loop, and their main figure's key.
WITH_LEAN = {
    "throughput": "jobs_per_s",
    "bulk_enqueue": "jobs_per_s",
    "single_enqueue": "jobs_per_s",
    "pickup": "p50",
}


def _bench(*args: str, timeout: float = 360) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def report(pg_admin_dsn: str) -> dict[str, Any]:
    """One quick run of every benchmark (one run each) on the session's server, as JSON."""
    names = [n for n in BENCHMARKS if n not in PGBENCH or shutil.which("pgbench")]
    proc = _bench(
        "--quick", "--runs", "1", "--json", "--dsn", pg_admin_dsn, "--only", ",".join(names)
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    result: dict[str, Any] = json.loads(proc.stdout)
    result["_names"] = names
    return result


def test_every_benchmark_reports_figures(report: dict[str, Any]) -> None:
    """Every selected benchmark ran once without error and produced at least one figure."""
    assert report["errors"] == {}
    assert {name: len(runs) for name, runs in report["results"].items()} == {
        name: 1 for name in report["_names"]
    }
    assert {f["bench"] for f in report["figures"]} == set(report["_names"])


def test_figures_are_valid_numbers(report: dict[str, Any]) -> None:
    """Each figure is a finite number; rates and sizes are positive; a target has a verdict."""
    for figure in report["figures"]:
        value = figure["value"]
        assert isinstance(value, int | float), figure
        assert not isinstance(value, bool), figure
        assert math.isfinite(value), figure
        if figure["unit"] in RATE_UNITS:
            assert value > 0, figure
        assert (figure["met"] is None) == (figure["target"] == ""), figure


def test_header_describes_machine_and_server(report: dict[str, Any]) -> None:
    """The header names the CPU, cores, RAM, Python, PostgreSQL settings and the revision."""
    header = report["header"]
    assert header["machine"]["cores"] >= 1
    assert header["machine"]["ram_bytes"] > 0
    assert header["python"].count(".") == 2
    for setting in ("version", "fsync", "synchronous_commit", "shared_buffers", "max_connections"):
        assert header["postgres"][setting], setting
    assert header["skiplock"]["revision"]


def test_table_shows_every_figure(report: dict[str, Any]) -> None:
    """The printed table has one line per figure, with its target and verdict."""
    text = table(report)
    names = [figure["name"] for figure in report["figures"]]
    assert len(set(names)) == len(names)
    for figure in report["figures"]:
        line = next(line for line in text.splitlines() if figure["name"] in line)
        assert figure["unit"] in line
        assert figure["target"] in line


def test_run_databases_are_dropped(report: dict[str, Any], pg_admin_dsn: str) -> None:
    """After the run, no database the suite made (templates included) is left on the server."""

    async def leftovers() -> list[str]:
        conn = await asyncpg.connect(pg_admin_dsn)
        try:
            rows = await conn.fetch(
                "SELECT datname FROM pg_database WHERE datname LIKE 'skiplock\\_bench\\_%'"
            )
        finally:
            await conn.close()
        return [row["datname"] for row in rows]

    assert report["errors"] == {}
    assert asyncio.run(leftovers()) == []


def test_unknown_benchmark_is_refused() -> None:
    """``--only`` with an unknown name exits 2, names the known ones, and runs nothing."""
    proc = _bench("--only", "throughput,nonsense", timeout=60)
    assert proc.returncode == 2
    assert "nonsense" in proc.stderr
    assert "throughput" in proc.stderr
    assert proc.stdout == ""


def test_lean_loop_runs_beside_each_reference_figure(report: dict[str, Any]) -> None:
    """Throughput, enqueue and pickup ran the lean loop too, with as many jobs, in the same run."""
    for bench, key in WITH_LEAN.items():
        run = report["results"][bench][0]
        assert run["lean"]["jobs"] == run["jobs"], bench
        assert run["lean"][key] > 0, bench
        for cpu in ("server_cpu_us_per_job", "worker_cpu_us_per_job", "client_cpu_us_per_job"):
            if cpu in run:
                assert run["lean"][cpu] >= 0, (bench, cpu)


def test_reference_figures_show_the_lean_value_and_ratio(report: dict[str, Any]) -> None:
    """Each rate and latency with a lean counterpart shows it and value / lean, table and JSON."""
    text = table(report)
    shown = 0
    for figure in report["figures"]:
        if figure["bench"] in WITH_LEAN and figure["unit"] in ("jobs/s", "ms"):
            assert figure["lean"] > 0, figure
            assert figure["ratio"] == pytest.approx(figure["value"] / figure["lean"]), figure
            line = next(line for line in text.splitlines() if figure["name"] in line)
            assert f"{figure['ratio']:.2f}" in line
            shown += 1
    assert shown == 3 + 3  # three rates, pickup p50/p95/p99
    assert "× lean" in text.splitlines()[8]  # the column header


def test_ratio_targets_are_judged_on_the_ratio(report: dict[str, Any]) -> None:
    """A "≥ k × lean" / "≤ k × lean" target's verdict is the ratio's, not the raw value's."""
    judged = [f for f in report["figures"] if "× lean" in f["target"]]
    assert {f["bench"] for f in judged} == set(WITH_LEAN)
    for figure in judged:
        sign, limit = figure["target"].split()[:2]
        ratio = figure["ratio"]
        assert figure["met"] == (ratio >= float(limit) if sign == "≥" else ratio <= float(limit))


def test_default_settings_are_compared_with_the_best(report: dict[str, Any]) -> None:
    """throughput_default runs WorkerSettings() defaults; its figure is shown as a share of best."""
    default = report["results"]["throughput_default"][0]["jobs_per_s"]
    best = report["results"]["throughput"][0]["jobs_per_s"]
    share = next(f for f in report["figures"] if f["name"].strip() == "defaults / best settings")
    assert share["value"] == pytest.approx(default / best)
    assert share["met"] == (share["value"] >= 0.5)


FLOW_FIGURES = {
    "limited_throughput_ratio": "≥ 0.8",
    "many_keys_claim_ratio": "≥ 0.8",
    "fair_wait_p95_ms": "≤ 100",
    "rate_limit_max_over": "0",
    "pause_effect_ms": "≤ 50",
}


def test_flow_group_reports_its_named_figures(report: dict[str, Any]) -> None:
    """``flow`` ran every part at quick sizes: the five named figures with their targets,
    each ratio that of the same run's rates, every probe and pause measured."""
    (run,) = report["results"]["flow"]
    figures = {f["name"]: f for f in report["figures"] if f["bench"] == "flow"}
    assert {name: figures[name]["target"] for name in FLOW_FIGURES} == FLOW_FIGURES
    for ratio, limited, unlimited in (
        ("limited_throughput_ratio", "limited", "unlimited"),
        ("many_keys_claim_ratio", "many_keys", "many_unlimited"),
    ):
        expected = run[limited]["jobs_per_s"] / run[unlimited]["jobs_per_s"]
        assert figures[ratio]["value"] == pytest.approx(expected)
        assert run[limited]["jobs"] == run[unlimited]["jobs"]
        assert run[limited]["worker_cpu_us_per_job"] > 0
    assert (run["limited"]["keys"], run["many_keys"]["keys"]) == (
        QUICK.flow_keys,
        QUICK.flow_many_keys,
    )
    assert run["fair"]["probes"] == QUICK.flow_fair_probes
    assert 0 <= run["fair"]["p50"] <= run["fair"]["p95"] <= run["fair"]["max"]
    assert run["rate"]["starts"] > 0
    assert 0 < run["rate"]["starts_per_s"] <= 2 * flow.RATE_STARTS
    assert len(run["pause"]["effects_ms"]) == QUICK.flow_pause_cycles
    assert all(effect >= 0 for effect in run["pause"]["effects_ms"])


def test_schedules_group_counts_every_tick_of_four_workers(report: dict[str, Any]) -> None:
    """``schedules`` ran four workers on one fast schedule: at least the quick number of
    ticks, every job counted, and the named figure with its target."""
    (run,) = report["results"]["schedules"]
    assert run["workers"] == 4
    assert run["ticks"] >= QUICK.cron_ticks * 0.5
    assert run["jobs"] == run["ticks"] + run["duplicates"]
    assert run["missing"] >= 0
    assert 0 <= run["late_p50_ms"] <= run["late_p95_ms"]
    figures = {f["name"]: f for f in report["figures"] if f["bench"] == "schedules"}
    assert figures["cron_duplicates"]["target"] == "0"
    assert figures["cron_duplicates"]["value"] == run["duplicates"]


def _flow_run(max_over: int, ratio: float) -> dict[str, Any]:
    rates = {"jobs_per_s": 1000.0, "worker_cpu_us_per_job": 50.0, "server_cpu_us_per_job": 90.0}
    return {
        "limited_throughput_ratio": ratio,
        "many_keys_claim_ratio": ratio,
        **{name: rates for name in ("limited", "unlimited", "many_keys", "many_unlimited")},
        "fair": {"p50": 10.0, "p95": 20.0, "a_jobs_per_s": 3000.0},
        "rate": {"max_over": max_over, "max_over_started_at": max_over, "starts_per_s": 50.0},
        "pause": {"p50": 2.0, "p95": 5.0},
    }


def test_rate_limit_over_is_the_worst_run_and_ratios_the_median() -> None:
    """One run over the rate limit misses the target although the median run is not;
    the throughput ratios are the runs' median."""
    runs = [_flow_run(0, 0.9), _flow_run(3, 0.5), _flow_run(0, 0.85)]
    figures = {f.name: f for f in _figures({"flow": runs}, QUICK)}
    over = figures["rate_limit_max_over"]
    assert (over.value, over.met) == (3.0, False)
    ratio = figures["limited_throughput_ratio"]
    assert (ratio.value, ratio.met) == (0.85, True)
    assert figures["pause_effect_ms"].met is True


def _throughput_run(rate: float, lean_rate: float | None) -> dict[str, Any]:
    run: dict[str, Any] = {
        "jobs_per_s": rate,
        "worker_cpu_us_per_job": 40.0,
        "server_cpu_us_per_job": 80.0,
        "peak_rss": 1024 * 1024,
    }
    if lean_rate is not None:
        cpu = {"worker_cpu_us_per_job": 10.0, "server_cpu_us_per_job": 20.0}
        run["lean"] = {"jobs_per_s": lean_rate, **cpu}
    return run


@pytest.mark.parametrize(("rate", "met"), [(900.0, True), (700.0, False)])
def test_throughput_target_is_a_share_of_the_lean_loop(rate: float, met: bool) -> None:
    """0.9 × lean meets "≥ 0.8 × lean", 0.7 × does not; CPU rows carry their ratios too."""
    results = {
        "throughput": [_throughput_run(rate, 1000.0)],
        "throughput_default": [_throughput_run(rate / 4, None)],
    }
    figures = {f.name.strip(): f for f in _figures(results, QUICK)}
    best = next(f for name, f in figures.items() if name.endswith("best settings"))
    assert (best.lean, best.ratio, best.met) == (1000.0, rate / 1000, met)
    cpu = figures["worker CPU per job, best settings"]
    assert (cpu.value, cpu.lean, cpu.ratio) == (40.0, 10.0, 4.0)
    default = figures["throughput, the same, WorkerSettings() defaults"]
    assert (default.lean, default.ratio) == (1000.0, rate / 4 / 1000)
    share = figures["defaults / best settings"]
    assert (share.value, share.met) == (0.25, False)


async def test_lean_enqueue_returns_ids_in_input_order(db_dsn: str) -> None:
    """The lean loop's bulk enqueue writes one row per payload, ids in the payloads' order."""
    conn = await asyncpg.connect(db_dsn)
    try:
        await lean.create_schema(conn)
        ids = await lean.enqueue_many(conn, "noop", [{"n": n} for n in range(5)])
        one = await lean.enqueue(conn, "noop", {"n": 5})
        rows = await conn.fetch("SELECT id, payload, state FROM lean.jobs ORDER BY id")
    finally:
        await conn.close()
    assert [*ids, one] == [row["id"] for row in rows]
    assert [json.loads(row["payload"])["n"] for row in rows] == list(range(6))
    assert {row["state"] for row in rows} == {"queued"}


def test_lean_loop_refuses_a_zero_batch() -> None:
    """``python -m bench.lean --batch 0`` exits 2 with a message and connects to nothing."""
    options = ["--dsn", "postgresql://nowhere/x", "--ready-file", "/nonexistent/r"]
    options += ["--stats-file", "/nonexistent/s", "--batch", "0"]
    proc = subprocess.run(
        [sys.executable, "-m", "bench.lean", *options],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "--batch" in proc.stderr


@pytest.mark.parametrize(
    ("rates", "spread", "met"),
    [
        ([1000.0, 1100.0, 900.0, 1000.0, 1200.0], 20.0, False),
        ([1000.0, 1100.0, 900.0, 1000.0, 1050.0], 10.0, True),
        ([1000.0, 1100.0, 700.0], 30.0, None),  # fewer than five runs: shown, not judged
    ],
)
def test_throughput_spread_over_runs(rates: list[float], spread: float, met: bool | None) -> None:
    """The runs' largest deviation from their median; "≤ 15" is judged from five runs on."""
    results = {"throughput": [_throughput_run(rate, 2000.0) for rate in rates]}
    figures = {f.name.strip(): f for f in _figures(results, QUICK)}
    figure = figures["largest deviation of a run from the median"]
    assert figure.value == pytest.approx(spread)
    assert figure.met is met
    assert (figure.target == "") == (met is None)


def _designs(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench.designs", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _needs_pgbench() -> None:
    if not shutil.which("pgbench"):
        pytest.skip("pgbench is not installed")


def test_every_storage_design_reports_a_positive_rate(report: dict[str, Any]) -> None:
    """``--only designs`` ran each design once: jobs completed at a positive rate, with WAL."""
    if "designs" not in report["_names"]:
        pytest.skip("pgbench is not installed")
    (run,) = report["results"]["designs"]
    assert list(run) == list(designs.BY_NAME)
    for name, result in run.items():
        assert result["jobs"] > 0, name
        assert result["rows_per_s"] > 0, name
        assert result["wal_bytes_per_job"] > 0, name
        assert 0 <= result["hot_pct"] <= 100, name
    rates = [f for f in report["figures"] if f["bench"] == "designs" and f["unit"] == "jobs/s"]
    assert len(rates) == len(designs.DESIGNS)
    for figure in rates:
        assert figure["ratio"] == pytest.approx(figure["value"] / figure["lean"]), figure
    assert rates[0]["ratio"] == pytest.approx(1.0)  # v1 is the lean reference itself


def test_storage_designs_standalone_interleaves_runs(pg_admin_dsn: str) -> None:
    """``python -m bench.designs --runs 2 --designs v3`` runs v1 and v3 twice each; the table
    has a row per design with its ratio to v1's median."""
    _needs_pgbench()
    options = ["--dsn", pg_admin_dsn, "--rows", "1000", "--seconds", "1", "--runs", "2"]
    proc = _designs(*options, "--designs", "v3", "--json")
    assert proc.returncode == 0, proc.stderr[-5000:]
    report = json.loads(proc.stdout)
    assert [list(r) for r in report["rounds"]] == [["v1", "v3"], ["v1", "v3"]]
    assert [s["name"] for s in report["summary"]] == ["v1", "v3"]
    v1, v3 = report["summary"]
    assert v1["ratio"] == pytest.approx(1.0)
    assert v3["ratio"] == pytest.approx(v3["rows_per_s"] / v1["rows_per_s"])
    assert v3["runs"] == 2
    assert v3["low"] <= v3["rows_per_s"] <= v3["high"]
    text = designs.table(report)
    assert next(line for line in text.splitlines() if line.strip().startswith("v3"))
    assert "load" in text


def test_storage_designs_refuse_an_unknown_design() -> None:
    """``--designs v1,v99`` exits 2 naming the known designs, before starting any server."""
    proc = _designs("--designs", "v1,v99", timeout=60)
    assert proc.returncode == 2
    assert "v99" in proc.stderr
    assert "v8" in proc.stderr
    assert proc.stdout == ""


def test_storage_design_summary_is_a_ratio_of_medians() -> None:
    """Each design's rate is the median of its runs, "× lean" that over v1's median."""

    def run(rate: float, wal: float = 500.0) -> dict[str, Any]:
        return {"rows_per_s": rate, "wal_bytes_per_job": wal, "hot_pct": 0.0, "ran_out": False}

    rounds = [
        {"v1": run(100.0), "v2": run(30.0, 1000.0)},
        {"v1": run(80.0), "v2": run(60.0, 1200.0)},
        {"v1": run(120.0), "v2": run(50.0, 1100.0)},
    ]
    v1, v2 = designs.summarize(rounds)
    assert (v1.rows_per_s, v1.ratio) == (100.0, 1.0)
    assert (v2.rows_per_s, v2.ratio, v2.low, v2.high) == (50.0, 0.5, 30.0, 60.0)
    assert v2.wal_bytes_per_job == 1100.0
    assert not v2.ran_out
