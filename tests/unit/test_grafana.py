"""docs/grafana/skiplock.json: an importable dashboard whose queries name only real metrics."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from skiplock.api.metrics import ApiMetrics

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana" / "skiplock.json"

# The worker metrics the dashboard was written for (issue 5); checked against
# skiplock.worker.metrics when that module exists.
WORKER_METRICS = {
    "skiplock_worker_jobs_started_total": "counter",
    "skiplock_worker_jobs_finished_total": "counter",
    "skiplock_worker_job_duration_seconds": "histogram",
    "skiplock_worker_jobs_in_flight": "gauge",
    "skiplock_worker_claim_duration_seconds": "histogram",
    "skiplock_worker_lease_losses_total": "counter",
    "skiplock_worker_notifications_missed_total": "counter",
    "skiplock_worker_listener_reconnects_total": "counter",
}

_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "and",
    "or",
    "unless",
    "inf",
    "nan",
}


def _series_names(registry: CollectorRegistry) -> set[str]:
    """Every series name the registry's metrics expose, whether or not they have samples yet."""
    names: set[str] = set()
    for family in registry.collect():
        if family.type == "counter":
            names |= {f"{family.name}_total", f"{family.name}_created"}
        elif family.type == "histogram":
            names |= {f"{family.name}_{s}" for s in ("bucket", "sum", "count", "created")}
        else:
            names.add(family.name)
    return names


def _worker_series() -> tuple[set[str], str]:
    """The worker's series names, from skiplock.worker.metrics or else the documented list."""
    try:
        from skiplock.worker.metrics import WorkerMetrics
    except ImportError:
        names: set[str] = set()
        for name, kind in WORKER_METRICS.items():
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
            else:
                names.add(name)
        return names, "the documented list (skiplock.worker.metrics is absent)"
    return _series_names(WorkerMetrics("grafana-test").registry), "skiplock.worker.metrics"


def _dashboard() -> dict[str, Any]:
    data = orjson.loads(DASHBOARD.read_bytes())
    assert isinstance(data, dict)
    return data


def _panels(data: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in data["panels"]:
        yield panel
        yield from panel.get("panels", [])


def _exprs(data: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in _panels(data) for t in p.get("targets", [])]


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, labels and keywords removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values and strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range and subquery selectors
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    # a name starts after a non-name character (so the "m" of "5m" or "1e3" is not one)
    for match in re.finditer(r"(?<![A-Za-z0-9_:.])[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group(0)
        if word.lower() in _KEYWORDS or text[match.end() :].lstrip().startswith("("):
            continue  # a keyword, or a function or aggregation
        names.add(word)
    return names


def test_metric_names_reads_selectors_only() -> None:
    """The PromQL reader finds the selected metrics and nothing else."""
    expr = (
        'histogram_quantile(0.95, sum by (le, route) (rate(a_bucket{route!~".*/x", b="c"}[5m])))'
        " / on (route) group_left sum without (x) (b_total offset 5m) + time() - c"
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "c"}


def test_the_dashboard_is_importable() -> None:
    """Valid JSON with a schemaVersion, a uid, a Prometheus data source variable and panels."""
    data = _dashboard()
    assert isinstance(data["schemaVersion"], int)
    assert data["schemaVersion"] >= 36
    assert data["uid"]
    assert data["title"]
    variables = {v["name"]: v for v in data["templating"]["list"]}
    source = variables["datasource"]
    assert source["type"] == "datasource"
    assert source["query"] == "prometheus"
    panels = list(_panels(data))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
            assert target["expr"].count("{") == target["expr"].count("}"), target["expr"]


def test_every_query_names_only_existing_metrics() -> None:
    """Each PromQL expression selects only series the API or the workers expose."""
    worker, source = _worker_series()
    known = _series_names(ApiMetrics(CollectorRegistry()).registry) | worker
    exprs = _exprs(_dashboard())
    assert exprs
    for expr in exprs:
        names = metric_names(expr)
        assert names, f"no metric in {expr!r}"
        unknown = names - known
        assert not unknown, f"{expr!r} names {sorted(unknown)}, not in api/metrics.py or {source}"


@pytest.mark.parametrize(
    "metric",
    [
        "skiplock_api_requests_total",
        "skiplock_api_request_duration_seconds",
        "skiplock_api_sse_subscribers",
        "skiplock_api_sse_dropped_total",
        "skiplock_api_listener_connected",
        "skiplock_limit_keys",
        "skiplock_limit_keys_at_limit",
        "skiplock_limit_running_jobs",
        "skiplock_limit_throttled_jobs",
        "skiplock_queue_paused",
        "skiplock_queue_throttled_jobs",
        "skiplock_api_flow_metrics_up",
        *WORKER_METRICS,
    ],
)
def test_every_metric_has_a_panel(metric: str) -> None:
    """Every API metric (flow control's included) and every worker metric of issue 5 is
    shown somewhere."""
    used = {name for expr in _exprs(_dashboard()) for name in metric_names(expr)}
    stems = {re.sub(r"_(bucket|sum|count)$", "", name) for name in used}
    assert metric in used | stems


def test_the_task_variable_filters_the_task_panels() -> None:
    """Every worker query with a task label uses the $task variable, so the picker works."""
    for expr in _exprs(_dashboard()):
        if "task" in expr and "skiplock_worker_job" in expr:
            assert 'task=~"$task"' in expr, expr
