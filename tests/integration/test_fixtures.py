"""The database fixtures: a fresh, migrated database per test."""

from __future__ import annotations

import asyncpg
import pytest

from skiplock.testing import find_postgres_binaries
from tests import conftest


async def test_db_dsn_is_a_fresh_migrated_database(db_dsn: str, pg_template: str) -> None:
    """db_dsn is a new database, not the template, holding the migrated schema and no jobs."""
    conn = await asyncpg.connect(db_dsn)
    try:
        name = await conn.fetchval("SELECT current_database()")
        assert name.startswith("skiplock_test_")
        assert name != pg_template
        assert await conn.fetchval("SELECT to_regclass('skiplock.migrations')") is not None
        assert await conn.fetchval("SELECT count(*) FROM skiplock.migrations") >= 1
        assert await conn.fetchval("SELECT count(*) FROM skiplock.jobs") == 0
    finally:
        await conn.close()


@pytest.mark.parametrize(
    ("forced", "url", "docker", "expected"),
    [
        ("auto", "postgresql://u:secret@db/x", True, "url"),
        ("auto", None, True, "docker"),
        ("auto", None, False, "binaries-or-wheel"),
        ("docker", None, False, "none"),
        ("url", None, True, "none"),
        ("wheel", "postgresql://u@db/x", True, "wheel"),
    ],
)
def test_server_source_resolution(
    monkeypatch: pytest.MonkeyPatch, forced: str, url: str | None, docker: bool, expected: str
) -> None:
    """The URL wins, then Docker only when an engine answers, then binaries, then the wheel."""
    monkeypatch.setattr(conftest, "_docker_answers", lambda: docker)
    plan = conftest._choose(forced, url)
    if expected == "binaries-or-wheel":
        assert plan.source in ("binaries", "wheel", "none")
        assert (plan.binaries is None) == (plan.source == "none")
    elif expected == "wheel" and find_postgres_binaries("wheel") is None:
        assert plan.source == "none"
    else:
        assert plan.source == expected
    assert "secret" not in plan.detail
