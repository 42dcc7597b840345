"""Share links: a signed, expiring, read-only link to one job, and its routes."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime

import structlog
from starlette.requests import Request
from starlette.responses import Response

from skiplock.api.auth import Principal, sign_share_token, verify_share_token
from skiplock.api.common import (
    authorize,
    base_url,
    float_param,
    job_id_param,
    model_response,
    not_found,
    state_of,
    tenant_scope,
)
from skiplock.api.problems import HTTPProblem
from skiplock.api.schemas import ShareLink
from skiplock.api.streams import read_job, stream_job
from skiplock.api.views import share_links

__all__ = ["share_job", "shared_events", "shared_job"]

log = structlog.get_logger("skiplock.api")


async def share_job(request: Request) -> Response:
    """``POST /v1/jobs/{id}/share``: a signed, expiring, read-only link to the job."""
    principal = await authorize(request, "read")
    state = state_of(request)
    client, _, _ = state.ready()
    secret = state.settings.share_secret
    job_id = job_id_param(request)
    job = await client.get(job_id, tenant=tenant_scope(request, principal))
    if job is None:
        raise not_found(job_id)
    if not secret:
        raise HTTPProblem(
            409, "share links are disabled: set SKIPLOCK_SHARE_SECRET", code="sharing-disabled"
        )
    ttl = float_param(request, "ttl", state.settings.share_ttl_seconds)
    if ttl == 0:
        raise HTTPProblem(422, "ttl must be more than 0 seconds", code="invalid-parameter")
    # Whole seconds, as the token carries them: the link lives until exactly expires_at.
    expires = math.ceil(
        time.time() + (ttl if ttl is not None else state.settings.share_ttl_seconds)
    )
    token = sign_share_token(job_id, job.tenant, expires, secret)
    links = share_links(token, base_url(request))
    return model_response(
        ShareLink,
        {
            "token": token,
            "url": links["self"],
            "events": links["events"],
            "expires_at": datetime.fromtimestamp(expires, UTC).isoformat(),
        },
        201,
    )


def _share_principal(request: Request) -> Principal:
    secret = state_of(request).settings.share_secret
    principal = verify_share_token(request.path_params["token"], secret) if secret else None
    if principal is None or principal.share_job is None:
        raise HTTPProblem(401, "this share link is invalid or has expired", code="unauthorized")
    return principal


async def shared_job(request: Request) -> Response:
    """``GET /v1/shared/{token}``: the shared job (long-poll like ``GET /v1/jobs/{id}``)."""
    principal = _share_principal(request)
    assert principal.share_job is not None
    return await read_job(request, principal, principal.share_job)


async def shared_events(request: Request) -> Response:
    """``GET /v1/shared/{token}/events``: the shared job's changes as SSE."""
    principal = _share_principal(request)
    assert principal.share_job is not None
    return await stream_job(request, principal, principal.share_job)
