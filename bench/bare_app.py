"""A bare Starlette endpoint running the same primary-key SELECT as ``GET /v1/jobs/{id}``.

Run with ``python -m uvicorn bench.bare_app:app --port P --no-access-log`` and
``BENCH_BARE_DATABASE_URL`` set to the DSN; the tenant is ``BENCH_BARE_TENANT``
(default ``bench``). It is the baseline the status API is compared with.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

QUERY = "SELECT * FROM skiplock.jobs WHERE id=$1 AND tenant=$2"
TENANT = os.environ.get("BENCH_BARE_TENANT", "bench")


def _json(value: object) -> bytes:
    return orjson.dumps(value, default=str)


async def get_job(request: Request) -> Response:
    """The job row as JSON, or 404."""
    try:
        job_id = uuid.UUID(request.path_params["job_id"])
    except ValueError:
        return Response(_json({"error": "bad id"}), status_code=404, media_type="application/json")
    pool: asyncpg.Pool[Any] = request.app.state.pool
    row = await pool.fetchrow(QUERY, job_id, TENANT)
    if row is None:
        return Response(
            _json({"error": "not found"}), status_code=404, media_type="application/json"
        )
    return Response(_json(dict(row)), media_type="application/json")


async def healthz(request: Request) -> Response:
    """Liveness."""
    return Response(b'{"status":"ok"}', media_type="application/json")


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    """Open the pool (same sizes as the status API's) for the app's lifetime."""
    pool = await asyncpg.create_pool(os.environ["BENCH_BARE_DATABASE_URL"], min_size=1, max_size=10)
    app.state.pool = pool
    try:
        yield
    finally:
        await pool.close()


app = Starlette(
    routes=[
        Route("/v1/jobs/{job_id}", get_job, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
    ],
    lifespan=lifespan,
)
