"""Static checks of Dockerfile and compose.yaml: no Docker engine is needed."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DATABASE_URL = "postgresql://postgres:postgres@postgres:5432/postgres"
SKIPLOCK_SERVICES = ("migrate", "worker", "api")


def _compose() -> dict[str, Any]:
    """Parse compose.yaml (merge keys resolved) into a mapping."""
    data = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _services() -> dict[str, dict[str, Any]]:
    """The compose services by name."""
    services = _compose()["services"]
    assert isinstance(services, dict)
    return services


def _dockerfile_lines() -> list[str]:
    """Dockerfile instructions, comments dropped and continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    text = re.sub(r"\\\n", " ", text)
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _stages() -> list[list[str]]:
    """Dockerfile instructions grouped by build stage, each starting with its FROM."""
    stages: list[list[str]] = []
    for line in _dockerfile_lines():
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def _instructions(stage: list[str], name: str) -> list[str]:
    """The arguments of every `name` instruction in a stage."""
    prefix = name.upper() + " "
    return [line[len(prefix) :].strip() for line in stage if line.upper().startswith(prefix)]


def test_compose_has_the_four_services() -> None:
    """Postgres, migrate, worker and api are all defined."""
    assert {"postgres", *SKIPLOCK_SERVICES} <= set(_services())


def test_postgres_is_18_with_healthcheck_and_volume() -> None:
    """Postgres runs postgres:18, checks itself with pg_isready and keeps a volume."""
    postgres = _services()["postgres"]
    assert postgres["image"] == "postgres:18"
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    volume = postgres["volumes"][0].split(":")[0]
    assert volume in _compose()["volumes"]


def test_migrate_waits_for_healthy_postgres() -> None:
    """Migrate starts only once postgres reports healthy."""
    migrate = _services()["migrate"]
    assert migrate["command"] == ["migrate"]
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"


@pytest.mark.parametrize("name", ["worker", "api"])
def test_worker_and_api_wait_for_migrate(name: str) -> None:
    """Worker and api start only after migrate exited 0."""
    depends_on = _services()[name]["depends_on"]
    assert depends_on["migrate"]["condition"] == "service_completed_successfully"


def test_commands_and_database_url() -> None:
    """Each skiplock service runs its command against the compose database."""
    services = _services()
    assert services["worker"]["command"] == ["worker", "--app", "skiplock.demo:demo_tasks"]
    api_command = ["api", "--host", "0.0.0.0", "--port", "8000"]  # noqa: S104 (in-container bind)
    assert services["api"]["command"] == api_command
    for name in SKIPLOCK_SERVICES:
        assert services[name]["environment"]["SKIPLOCK_DATABASE_URL"] == DATABASE_URL


def test_api_publishes_8000_and_checks_readyz() -> None:
    """The api publishes port 8000 and its healthcheck fetches /readyz with Python."""
    api = _services()["api"]
    assert any(str(port).endswith("8000:8000") for port in api["ports"])
    check = " ".join(api["healthcheck"]["test"])
    assert "python" in check
    assert "urllib" in check
    assert "/readyz" in check


def test_dockerfile_is_multi_stage_from_python_312_slim() -> None:
    """A builder stage makes the wheel; the runtime stage is python:3.12-slim."""
    stages = _stages()
    assert len(stages) >= 2
    assert any("pip wheel" in line for line in stages[0])
    assert stages[-1][0].split()[1] == "python:3.12-slim"


def test_dockerfile_runtime_runs_as_non_root() -> None:
    """The last stage's final USER is a fixed, non-zero UID."""
    users = _instructions(_stages()[-1], "USER")
    assert users, "the runtime stage sets no USER"
    user = users[-1].split(":")[0]
    assert user.isdigit(), f"USER {users[-1]!r} is not a fixed numeric UID"
    assert int(user) != 0


def test_dockerfile_entrypoint_is_skiplock() -> None:
    """The image's entrypoint is the skiplock command."""
    entrypoints = _instructions(_stages()[-1], "ENTRYPOINT")
    assert entrypoints[-1] == '["skiplock"]'


def test_dockerfile_has_no_remote_add() -> None:
    """No ADD fetches a URL: downloads are unpinned and skip the build cache."""
    remote = [line for line in _dockerfile_lines() if re.match(r"ADD\s+.*https?://", line, re.I)]
    assert remote == []
