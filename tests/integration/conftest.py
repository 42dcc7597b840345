"""Fixtures shared by the integration tests: a client on a fresh database."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from skiplock import Client


@pytest_asyncio.fixture
async def client(db_dsn: str) -> AsyncIterator[Client]:
    """A client on a fresh, migrated database."""
    async with await Client.connect(db_dsn) as c:
        yield c


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


def plans(notices: list[str]) -> list[dict[str, Any]]:
    """The plans auto_explain logged: each NOTICE is 'duration: … ms  plan:' and the JSON."""
    plans = []
    for text in notices:
        head, sep, body = text.partition("plan:")
        if sep and head.startswith("duration:"):
            plans.append(json.loads(body))
    return plans


def nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    found = [node]
    for child in node.get("Plans", []):
        found.extend(nodes(child))
    return found
