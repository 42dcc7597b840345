"""Fixtures shared by the integration tests: a client on a fresh database."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from skiplock import Client


@pytest_asyncio.fixture
async def client(db_dsn: str) -> AsyncIterator[Client]:
    """A client on a fresh, migrated database."""
    async with await Client.connect(db_dsn) as c:
        yield c
