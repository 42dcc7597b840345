"""Announcements cost the hot path no join, and no plan depends on a connection's first call.

Until 0008 an AFTER UPDATE trigger joined the old and new transition tables to
find what changed; PL/pgSQL kept the plan made for a connection's first
UPDATE, and planned for one row it was a nested loop, quadratic on the next
1,000-row claim or completion. Since 0009 the statements announce their own
changes through ``skiplock.announce``, which reads its arrays by position.
The tests read the plans every statement (nested ones too) actually ran with
from ``auto_explain`` (as NOTICEs), so they need no timing: they fail on the
0007 trigger (a nested loop over transition tables) and on the 0008 one (it
still copies every row into transition tables and scans them).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg
import orjson

from skiplock.sql import query
from tests.helpers import wait_until
from tests.integration.conftest import nodes as _nodes
from tests.integration.conftest import plans as _plans


async def test_the_jobs_table_has_no_trigger(db_dsn: str) -> None:
    """Nothing runs per row or per statement beside the hot path's own statements."""
    conn = await asyncpg.connect(db_dsn)
    try:
        triggers = await conn.fetch(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = 'skiplock.jobs'::regclass"
            " AND NOT tgisinternal"
        )
    finally:
        await conn.close()
    assert [t["tgname"] for t in triggers] == []


async def _claim(conn: asyncpg.Connection[Any], limit: int) -> list[asyncpg.Record]:
    return await conn.fetch(query("claim_jobs"), ["q"], limit, 30.0, "plans-worker", None)


async def _complete(conn: asyncpg.Connection[Any], rows: list[asyncpg.Record]) -> list[Any]:
    n = len(rows)
    return await conn.fetch(
        query("complete_jobs"),
        [r["id"] for r in rows],
        [r["lease_token"] for r in rows],
        ["succeeded"] * n,
        ["null"] * n,
        [None] * n,
        [None] * n,
        [None] * n,
        [None] * n,
        [None] * n,
    )


async def test_a_one_row_claim_first_leaves_later_announcements_linear(
    explaining: tuple[asyncpg.Connection[Any], list[str]],
) -> None:
    """A connection whose first claim and completion touched one job claims and completes
    999 more with no transition table and no nested loop in any plan, its own or the
    announcements', and announces every job in chunks of at most 100: running, then
    succeeded with progress 100."""
    conn, notices = explaining
    ids = [uuid.uuid4() for _ in range(1000)]
    await conn.execute(
        "INSERT INTO skiplock.jobs (id, queue, task, args) SELECT id, 'q', 't', '{}'"
        " FROM unnest($1::uuid[]) AS id",
        ids,
    )
    announced: list[str] = []
    await conn.add_listener("skiplock.job", lambda *args: announced.append(args[3]))

    first = await _claim(conn, 1)
    assert len(await _complete(conn, first)) == 1
    await wait_until(lambda: len(announced) == 2, what="the one-job announcements")
    announced.clear()
    notices.clear()

    rest = await _claim(conn, 1000)
    assert len(rest) == 999
    assert len(await _complete(conn, rest)) == 999
    await conn.execute("SELECT 1")  # a round trip: every NOTICE of the statements has arrived

    plans = _plans(notices)
    nested = [p for p in plans if "FROM generate_series(lo" in p["Query Text"]]
    assert nested, "announce() ran no statement; plans logged:\n" + "\n".join(
        p["Query Text"].splitlines()[0] for p in plans
    )
    for plan in plans:
        kinds = {node.get("Node Type") for node in _nodes(plan["Plan"])}
        assert "Named Tuplestore Scan" not in kinds, (
            f"a statement read a transition table (a trigger ran):\n{plan['Query Text']}"
        )
    for plan in nested:
        kinds = {node.get("Node Type") for node in _nodes(plan["Plan"])}
        assert not kinds & {"Nested Loop", "Hash Join", "Merge Join"}, (
            f"announce() joined:\n{plan['Query Text']}\n{json.dumps(plan['Plan'], indent=1)}"
        )

    await wait_until(lambda: len(announced) >= 20, what="the 999-job announcements")
    await conn.execute("SELECT 1")
    chunks = [orjson.loads(payload) for payload in announced]
    assert all(len(chunk) <= 100 for chunk in chunks)
    entries = [entry for chunk in chunks for entry in chunk]
    want = sorted(str(r["id"]) for r in rest)
    assert sorted(e[0] for e in entries if e[1] == "running") == want
    assert sorted(e[0] for e in entries if e[1] == "succeeded" and e[2] == 100) == want
    assert len(entries) == 2 * 999
