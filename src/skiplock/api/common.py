"""What the routes share: the app state built by the lifespan, and request helpers."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import jsonschema
import orjson
import structlog
from prometheus_client import CollectorRegistry
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from skiplock.api.auth import Authenticator, Principal
from skiplock.api.metrics import ApiMetrics
from skiplock.api.problems import HTTPProblem
from skiplock.api.schemas import render
from skiplock.api.settings import ApiSettings
from skiplock.api.views import job_links, share_links
from skiplock.queue import ALL_TENANTS, Client, Job
from skiplock.queue.document import job_document
from skiplock.queue.hub import EventHub
from skiplock.queue.models import TenantScope

__all__ = [
    "ApiState",
    "authorize",
    "base_url",
    "document",
    "float_param",
    "job_id_param",
    "json_response",
    "model_response",
    "not_found",
    "state_of",
    "tenant_scope",
]

log = structlog.get_logger("skiplock.api")


class ApiState:
    """What the routes share, built by the lifespan."""

    def __init__(self, settings: ApiSettings) -> None:
        self.settings = settings
        self.metrics = ApiMetrics(CollectorRegistry())
        self.pool: asyncpg.Pool[Any] | None = None
        self.client: Client | None = None
        self.hub: EventHub | None = None
        self.auth: Authenticator | None = None
        self._result_sizes: dict[tuple[uuid.UUID, datetime], int] = {}
        self.validators = {
            name: jsonschema.Draft202012Validator(task.args_schema)
            for name, task in settings.exposed_tasks.items()
        }

    def result_size(self, job: Job) -> int:
        """Bytes of the job's result as JSON, measured once per version (streams share it)."""
        key = (job.id, job.updated_at)
        size = self._result_sizes.get(key)
        if size is None:
            size = self._result_sizes[key] = len(orjson.dumps(job.result))
            if len(self._result_sizes) > 1024:
                self._result_sizes.pop(next(iter(self._result_sizes)))
        return size

    def ready(self) -> tuple[Client, EventHub, Authenticator]:
        """The client, hub and authenticator; 503 while starting."""
        if self.client is None or self.hub is None or self.auth is None:
            raise HTTPProblem(
                503, "the service is starting", code="unavailable", headers={"Retry-After": "1"}
            )
        return self.client, self.hub, self.auth


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON response (orjson)."""
    return Response(
        orjson.dumps(data), status_code=status, media_type="application/json", headers=headers
    )


def model_response(
    model: type[BaseModel],
    data: Any,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> Response:
    """A JSON response shaped (and checked) by ``model``."""
    return Response(
        render(model, data), status_code=status, media_type="application/json", headers=headers
    )


def state_of(request: Request) -> ApiState:
    """The app's :class:`ApiState`."""
    state = request.app.state.skiplock
    assert isinstance(state, ApiState)
    return state


async def authorize(request: Request, scope: str) -> Principal:
    """The caller's principal, if its API key holds ``scope``; else 401/403."""
    _, _, auth = state_of(request).ready()
    header = request.headers.get("authorization", "")
    kind, _, secret = header.partition(" ")
    principal = None
    if kind.lower() == "bearer" and secret:
        principal = await auth.authenticate(secret.strip())
    if principal is None:
        raise HTTPProblem(
            401,
            "a valid API key is required (Authorization: Bearer <key>)",
            code="unauthorized",
            headers={"WWW-Authenticate": 'Bearer realm="skiplock"'},
        )
    if not principal.can(scope):
        raise HTTPProblem(403, f"this API key lacks the {scope!r} scope", code="forbidden")
    request.state.principal = principal
    return principal


def tenant_scope(request: Request, principal: Principal) -> TenantScope:
    """The tenant a request acts on, or :data:`ALL_TENANTS`.

    A ``read``/``write`` key (or a share link) acts on its own tenant only:
    ``?tenant=`` naming another is 403. An ``admin`` key acts on the tenant
    ``?tenant=`` names, or on every tenant without it.
    """
    asked = request.query_params.get("tenant")
    if principal.is_admin:
        if asked is not None and (not 1 <= len(asked) <= 256 or "\x00" in asked):
            raise HTTPProblem(
                422,
                "tenant must be 1 to 256 characters without NUL",
                code="invalid-parameter",
                parameter="tenant",
            )
        return ALL_TENANTS if asked is None else asked
    if asked is not None and asked != principal.tenant:
        raise HTTPProblem(403, "only an admin key may name another tenant", code="forbidden")
    return principal.tenant


def job_id_param(request: Request) -> uuid.UUID:
    """The ``{job_id}`` path parameter; a malformed id is a missing job (404)."""
    raw = request.path_params["job_id"]
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise not_found(raw) from None


def not_found(job_id: object) -> HTTPProblem:
    """The 404 problem of a missing (or another tenant's) job."""
    return HTTPProblem(404, f"job {job_id} not found", code="job-not-found")


def base_url(request: Request) -> str:
    """The configured public URL prefix of links (empty: relative links)."""
    configured = state_of(request).settings.public_url
    return configured.rstrip("/") if configured else ""


def document(request: Request, job: Job) -> dict[str, Any]:
    """The public document of ``job`` for this request."""
    base = base_url(request)
    token = request.path_params.get("token")
    # A document served through a share token links to the routes its holder can use.
    links = job_links(job.id, base) if token is None else share_links(token, base)
    doc = job_document(job, now=datetime.now(UTC), links=links)
    if token is not None:
        # The keys may name the tenant (tenant:<x>, the default fair key): not for a link.
        doc["limit_keys"] = doc["fair_key"] = doc["unique_key"] = None
    principal = getattr(request.state, "principal", None)
    if isinstance(principal, Principal) and principal.is_admin:
        doc["tenant"] = job.tenant  # an admin key sees every tenant's jobs: say whose
    return doc


def float_param(request: Request, name: str, maximum: float) -> float | None:
    """A query parameter of seconds in ``[0, maximum]``, or None when absent; else 422."""
    raw = request.query_params.get(name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= maximum:
        raise HTTPProblem(
            422,
            f"{name} must be a number of seconds between 0 and {maximum:g}",
            code="invalid-parameter",
            parameter=name,
        )
    return value
