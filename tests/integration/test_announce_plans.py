"""The update trigger's plans do not depend on the row count of a connection's first UPDATE.

PL/pgSQL plans a trigger's queries once per connection and keeps the plan. A
join of the old and new transition tables planned for one row is a nested
loop; reused for a 1,000-row claim or completion it is quadratic. The test
reads the plans the trigger's statements actually ran with from
``auto_explain`` (as NOTICEs), so it needs no timing.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson
import pytest
import pytest_asyncio

from tests.helpers import wait_until


@pytest_asyncio.fixture
async def explaining(db_dsn: str) -> AsyncIterator[tuple[asyncpg.Connection[Any], list[str]]]:
    """A fresh connection that logs every statement's plan, nested ones too, as NOTICEs.

    Yields the connection and the list the NOTICE texts arrive in.
    """
    conn = await asyncpg.connect(db_dsn)
    notices: list[str] = []
    conn.add_log_listener(lambda _conn, message: notices.append(str(message.message)))
    try:
        try:
            await conn.execute("LOAD 'auto_explain'")
        except asyncpg.UndefinedFileError:
            pytest.skip("this PostgreSQL server ships without the auto_explain contrib module")
        except asyncpg.InsufficientPrivilegeError:
            pytest.skip("LOAD 'auto_explain' needs a superuser; the test database user is not one")
        await conn.execute(
            """
            SET auto_explain.log_min_duration = 0;
            SET auto_explain.log_nested_statements = on;
            SET auto_explain.log_analyze = off;
            SET auto_explain.log_format = 'json';
            SET auto_explain.log_level = 'notice';
            SET client_min_messages = 'notice';
            """
        )
        yield conn, notices
    finally:
        await conn.close()


def _plans(notices: list[str]) -> list[dict[str, Any]]:
    """The plans auto_explain logged: each NOTICE is 'duration: … ms  plan:' and the JSON."""
    plans = []
    for text in notices:
        head, sep, body = text.partition("plan:")
        if sep and head.startswith("duration:"):
            plans.append(json.loads(body))
    return plans


def _nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    found = [node]
    for child in node.get("Plans", []):
        found.extend(_nodes(child))
    return found


def _scans_transition_tables(node: dict[str, Any]) -> bool:
    """Whether the plan (sub)tree reads a transition table: in a trigger, the only
    named tuplestores are the statement's old_jobs and new_jobs."""
    return any(n.get("Node Type") == "Named Tuplestore Scan" for n in _nodes(node))


async def test_a_one_row_update_first_does_not_make_later_joins_nested_loops(
    explaining: tuple[asyncpg.Connection[Any], list[str]],
) -> None:
    """A connection whose first UPDATE touched one row runs the trigger for a 1,000-row UPDATE
    without a nested loop over the transition tables, and still announces all 1,000 jobs in
    chunks of at most 100."""
    conn, notices = explaining
    ids = [uuid.uuid4() for _ in range(1000)]
    await conn.execute(
        """
        INSERT INTO skiplock.jobs (id, queue, task, args)
        SELECT id, 'q', 't', '{}' FROM unnest($1::uuid[]) AS id
        """,
        ids,
    )
    announced: list[str] = []
    await conn.add_listener("skiplock.job", lambda *args: announced.append(args[3]))

    await conn.execute("UPDATE skiplock.jobs SET progress = 1 WHERE id = $1", ids[0])
    await wait_until(lambda: len(announced) == 1, what="the one-row announcement")
    announced.clear()
    notices.clear()

    await conn.execute("UPDATE skiplock.jobs SET progress = 2")
    await conn.execute("SELECT 1")  # a round trip: every NOTICE of the UPDATE has arrived

    trigger_plans = [p for p in _plans(notices) if _scans_transition_tables(p["Plan"])]
    assert trigger_plans, f"auto_explain logged no plan of the trigger's statements: {notices}"
    for plan in trigger_plans:
        for node in _nodes(plan["Plan"]):
            if node.get("Node Type") == "Nested Loop":
                assert not _scans_transition_tables(node), (
                    "the trigger joined the transition tables with a nested loop:\n"
                    + plan["Query Text"]
                    + "\n"
                    + json.dumps(plan["Plan"], indent=1)
                )

    await wait_until(lambda: len(announced) >= 10, what="the 1,000-row announcements")
    await conn.execute("SELECT 1")
    chunks = [orjson.loads(payload) for payload in announced]
    assert all(len(chunk) <= 100 for chunk in chunks)
    entries = [entry for chunk in chunks for entry in chunk]
    assert sorted(entry[0] for entry in entries) == sorted(str(i) for i in ids)
    assert {(entry[1], entry[2]) for entry in entries} == {("queued", 2)}
