"""Smoke test: ``python -m bench.api`` runs end to end and reports positive figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def test_bench_api_runs_and_reports_json() -> None:
    """A short run exits 0 with positive rps for both endpoints and some latency samples."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.api", "--duration", "1", "--samples", "10", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(proc.stdout)
    assert result["get_job"]["api"]["rps"] > 0
    assert result["get_job"]["bare"]["rps"] > 0
    assert result["sse_progress_latency_ms"]["samples"] > 0
