"""Job routes: create, list, read (long-poll), cancel, retry."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import structlog
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from skiplock.api.auth import Principal
from skiplock.api.common import (
    authorize,
    document,
    job_id_param,
    model_response,
    not_found,
    state_of,
    tenant_scope,
)
from skiplock.api.problems import HTTPProblem
from skiplock.api.schemas import CreateJobBody, JobDocument, render
from skiplock.api.streams import read_job
from skiplock.api.views import etag
from skiplock.queue import (
    IdempotencyConflict,
    InvalidJob,
    JobNotFound,
    JobSpec,
    JobState,
    JobStateConflict,
)
from skiplock.queue.client import decode_cursor, encode_cursor

__all__ = ["cancel_job", "create_job", "get_job", "list_jobs", "retry_job"]

log = structlog.get_logger("skiplock.api")


def _creating_tenant(request: Request, principal: Principal) -> str:
    """The tenant a created job belongs to: the one named by an admin's ``?tenant=``, else
    the key's own."""
    scope = tenant_scope(request, principal)
    return scope if isinstance(scope, str) else principal.tenant


async def create_job(request: Request) -> Response:
    """``POST /v1/jobs``: create a job of an exposed task (``Idempotency-Key`` honoured;
    a unique job whose key is held answers 200 with the job holding it)."""
    principal = await authorize(request, "write")
    state = state_of(request)
    client, _, _ = state.ready()
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise HTTPProblem(415, "send the body as application/json", code="unsupported-media-type")
    raw = await request.body()
    try:
        body = CreateJobBody.model_validate_json(raw)
    except ValidationError as exc:
        errors = [
            {"loc": ".".join(str(p) for p in e["loc"]), "msg": e["msg"]}
            for e in exc.errors(include_url=False, include_context=False, include_input=False)
        ]
        raise HTTPProblem(
            422, "the request body is invalid", code="invalid-body", errors=errors
        ) from None
    exposed = state.settings.exposed_tasks.get(body.task)
    validator = state.validators.get(body.task)
    if exposed is None or validator is None:
        raise HTTPProblem(
            422, f"task {body.task!r} cannot be created over HTTP", code="unknown-task"
        )
    problems = sorted(validator.iter_errors(body.args), key=lambda e: [str(p) for p in e.path])
    if problems:
        errors = [
            {"loc": ".".join(["args", *(str(p) for p in e.path)]), "msg": e.message[:500]}
            for e in problems[:20]
        ]
        raise HTTPProblem(
            422, "the task's arguments are invalid", code="invalid-args", errors=errors
        )
    key = request.headers.get("idempotency-key")
    if key is not None and not 1 <= len(key) <= 256:
        raise HTTPProblem(422, "Idempotency-Key must be 1 to 256 characters", code="invalid-header")
    try:
        spec = JobSpec(
            task=body.task,
            args=body.args,
            queue=exposed.queue,
            priority=body.priority,
            delay=body.delay_seconds,
            max_attempts=exposed.max_attempts,
            tenant=_creating_tenant(request, principal),
            idempotency_key=key,
            meta=body.meta,
            expires_at=body.expires_at,
            timeout=body.timeout_seconds,
            limit_keys=body.limit_keys,
            fairness_key=body.fairness_key,
            unique=body.unique,
            unique_key=body.unique_key,
            on_duplicate=body.on_duplicate,
            debounce=body.debounce,
        )
        (job,) = await client.enqueue_many([spec])
    except IdempotencyConflict:
        raise HTTPProblem(
            409,
            "this Idempotency-Key was already used with a different request body",
            code="idempotency-conflict",
        ) from None
    except InvalidJob as exc:
        raise HTTPProblem(422, str(exc), code="invalid-body") from None
    # ids are made client-side: ours means we inserted it (else an idempotent resend or
    # the job holding the unique key: 200)
    created = job.id == spec.id
    doc = document(request, job)
    headers = {"Location": doc["links"]["self"], "ETag": etag(job)}
    return model_response(JobDocument, doc, 201 if created else 200, headers)


async def get_job(request: Request) -> Response:
    """``GET /v1/jobs/{id}``: the job (ETag; ``?wait=`` long-polls for a change)."""
    principal = await authorize(request, "read")
    return await read_job(request, principal, job_id_param(request))


async def list_jobs(request: Request) -> Response:
    """``GET /v1/jobs``: the tenant's jobs, newest first, filtered, keyset-paginated."""
    principal = await authorize(request, "read")
    state = state_of(request)
    client, _, _ = state.ready()
    settings = state.settings
    q = request.query_params
    states = q.getlist("state") or None
    try:
        if any("\x00" in k or "\x00" in v for k, v in q.multi_items()):
            raise ValueError("query parameters must not contain NUL characters")
        if states is not None:
            states = [JobState(s).value for s in states]
        created_after = _parse_time(q.get("created_after"), "created_after")
        created_before = _parse_time(q.get("created_before"), "created_before")
        limit = int(q.get("limit", "50"))
        if not 1 <= limit <= 200:
            raise ValueError("limit must be between 1 and 200")
        cursor = q.get("cursor")
        if cursor is not None:
            decode_cursor(cursor)
    except ValueError as exc:
        raise HTTPProblem(422, str(exc), code="invalid-parameter") from None
    meta = {k[5:]: v for k, v in q.items() if k.startswith("meta.") and len(k) > 5} or None
    page = await client.list(
        tenant=tenant_scope(request, principal),
        states=states,
        task=q.get("task"),
        queue=q.get("queue"),
        created_after=created_after,
        created_before=created_before,
        meta=meta,
        cursor=cursor,
        limit=limit,
        max_result_bytes=settings.list_max_result_bytes,
    )
    # Each document is shaped by JobDocument; the page (a JobList) ends early once
    # it would pass list_max_response_bytes, its cursor pointing after the last one.
    parts: list[bytes] = []
    size = 0
    next_cursor = page.next_cursor
    for index, job in enumerate(page.jobs):
        part = render(JobDocument, document(request, job))
        if parts and size + len(part) > settings.list_max_response_bytes:
            next_cursor = encode_cursor(page.jobs[index - 1])
            break
        parts.append(part)
        size += len(part) + 1
    body = b'{"jobs":[%b],"next_cursor":%b}' % (b",".join(parts), orjson.dumps(next_cursor))
    return Response(body, media_type="application/json")


def _parse_time(raw: str | None, name: str) -> datetime | None:
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise ValueError(f"{name} must be an ISO 8601 timestamp with a time zone") from None
    if value.tzinfo is None:
        raise ValueError(f"{name} must include a time zone")
    try:
        value.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{name} is out of range") from None
    return value


async def cancel_job(request: Request) -> Response:
    """``POST /v1/jobs/{id}/cancel``: cancel a queued job, or ask a running one to stop."""
    principal = await authorize(request, "write")
    client, _, _ = state_of(request).ready()
    job_id = job_id_param(request)
    try:
        job = await client.cancel(job_id, tenant=tenant_scope(request, principal))
    except JobNotFound:
        raise not_found(job_id) from None
    return model_response(
        JobDocument, document(request, job), 202 if job.state is JobState.RUNNING else 200
    )


async def retry_job(request: Request) -> Response:
    """``POST /v1/jobs/{id}/retry``: queue a failed or cancelled job again."""
    principal = await authorize(request, "write")
    client, _, _ = state_of(request).ready()
    job_id = job_id_param(request)
    try:
        job = await client.retry(job_id, tenant=tenant_scope(request, principal))
    except JobNotFound:
        raise not_found(job_id) from None
    except JobStateConflict as exc:
        raise HTTPProblem(
            409,
            f"only failed or cancelled jobs can be retried; this one is {exc.state}",
            code="invalid-state",
            state=exc.state,
        ) from None
    return model_response(JobDocument, document(request, job))
