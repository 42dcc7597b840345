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
from bench.__main__ import BENCHMARKS, table

pytestmark = pytest.mark.timeout(400)  # the module's one quick run is most of it

ROOT = Path(__file__).resolve().parent.parent
RATE_UNITS = {"jobs/s", "req/s", "MiB", "s"}


def _bench(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
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
    names = [n for n in BENCHMARKS if n != "pgbench" or shutil.which("pgbench")]
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
