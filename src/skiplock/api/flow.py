"""Flow-control routes for operators (``admin`` scope): limits and queue switches.

- ``GET /v1/admin/limits``: every limit with its usage summed over its keys, and the
  keys at their limit (at most :data:`AT_LIMIT_ROWS`);
- ``PUT /v1/admin/limits/{pattern}``: create or replace a limit (422 when invalid);
- ``DELETE /v1/admin/limits/{pattern}``: remove it (204; 404 when there is none);
- ``GET /v1/admin/queues``: each queue with jobs or switches (paused, fair, queued,
  running, throttled) and the fair weights;
- ``POST /v1/admin/queues/{queue}/pause`` and ``/resume``.

Limits and switches are fleet-wide, across tenants, hence the ``admin`` scope for
reads as well as writes. A pattern may hold ``/`` (``tenant:a/task:b``) or any other
character but NUL: the route takes the rest of the path, percent-encoded or not
(the ``pattern`` convertor, registered here, also matches line breaks).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import structlog
from pydantic import ValidationError
from starlette.convertors import PathConvertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import Response

from skiplock.api.common import authorize, model_response, state_of
from skiplock.api.problems import HTTPProblem
from skiplock.api.schemas import FlowQueues, LimitDocument, LimitList, QueueSwitches, SetLimitBody
from skiplock.queue import InvalidSetting, Limit, LimitSummary, QueueSettings

__all__ = [
    "AT_LIMIT_ROWS",
    "delete_limit",
    "list_flow_queues",
    "list_limits",
    "pause_queue",
    "put_limit",
    "resume_queue",
]

log = structlog.get_logger("skiplock.api")

AT_LIMIT_ROWS = 100
"""Keys at their limit listed by ``GET /v1/admin/limits`` (by pattern, then key)."""


class _PatternConvertor(PathConvertor):
    """The rest of the path, whatever it holds (``path`` stops at a line break)."""

    regex = "(?s:.+)"


register_url_convertor("pattern", _PatternConvertor())


def _ts(value: Any) -> str | None:
    return None if value is None else value.isoformat()


def _limit_doc(limit: Limit, usage: LimitSummary | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "pattern": limit.pattern,
        "max_running": limit.max_running,
        "max_starts": limit.max_starts,
        "per_seconds": limit.per_seconds,
        "updated_at": _ts(limit.updated_at),
    }
    if usage is not None:
        doc["usage"] = {k: v for k, v in asdict(usage).items() if k != "pattern"}
    return doc


def _queue_doc(q: QueueSettings) -> dict[str, Any]:
    return {"name": q.name, "paused": q.paused, "fair": q.fair, "updated_at": _ts(q.updated_at)}


def _invalid(exc: InvalidSetting) -> HTTPProblem:
    return HTTPProblem(422, str(exc), code="invalid-setting")


async def list_limits(request: Request) -> Response:
    """``GET /v1/admin/limits``: limits with usage, and the keys at their limit."""
    await authorize(request, "admin")
    client, _, _ = state_of(request).ready()
    limits = await client.limits()
    summary = {s.pattern: s for s in await client.limit_summary()}
    keys = await client.limit_usage(at_limit=True, limit=AT_LIMIT_ROWS + 1)
    return model_response(
        LimitList,
        {
            "limits": [_limit_doc(x, summary.get(x.pattern)) for x in limits],
            "at_limit": [
                {
                    "pattern": u.pattern,
                    "key": u.key,
                    "running": u.running,
                    "starts": u.starts,
                    "queued": u.queued,
                }
                for u in keys[:AT_LIMIT_ROWS]
            ],
            "at_limit_truncated": len(keys) > AT_LIMIT_ROWS,
        },
    )


async def put_limit(request: Request) -> Response:
    """``PUT /v1/admin/limits/{pattern}``: create or replace the limit of the pattern."""
    principal = await authorize(request, "admin")
    client, _, _ = state_of(request).ready()
    pattern = request.path_params["pattern"]
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise HTTPProblem(415, "send the body as application/json", code="unsupported-media-type")
    try:
        body = SetLimitBody.model_validate_json(await request.body())
    except ValidationError as exc:
        errors = [
            {"loc": ".".join(str(p) for p in e["loc"]), "msg": e["msg"]}
            for e in exc.errors(include_url=False, include_context=False, include_input=False)
        ]
        raise HTTPProblem(
            422, "the request body is invalid", code="invalid-body", errors=errors
        ) from None
    try:
        limit = await client.set_limit(
            pattern,
            max_running=body.max_running,
            max_starts=body.max_starts,
            per=body.per_seconds,
        )
    except InvalidSetting as exc:
        raise _invalid(exc) from None
    log.info("limit_set", by=principal.key_id, **_limit_doc(limit))
    return model_response(LimitDocument, _limit_doc(limit))


async def delete_limit(request: Request) -> Response:
    """``DELETE /v1/admin/limits/{pattern}``: remove the limit (204), or 404."""
    principal = await authorize(request, "admin")
    client, _, _ = state_of(request).ready()
    pattern = request.path_params["pattern"]
    if not await client.remove_limit(pattern):
        raise HTTPProblem(404, f"no limit on {pattern!r}", code="limit-not-found")
    log.info("limit_removed", pattern=pattern, by=principal.key_id)
    return Response(status_code=204)


async def list_flow_queues(request: Request) -> Response:
    """``GET /v1/admin/queues``: each queue with jobs or switches, and the fair weights."""
    await authorize(request, "admin")
    client, _, _ = state_of(request).ready()
    flow = await client.queue_flow()
    weights = await client.fair_weights()
    return model_response(
        FlowQueues,
        {"queues": [asdict(q) for q in flow], "fair_weights": [asdict(w) for w in weights]},
    )


async def _switch(request: Request, paused: bool) -> Response:
    principal = await authorize(request, "admin")
    client, _, _ = state_of(request).ready()
    queue = request.path_params["queue"]
    try:
        settings = await (client.pause(queue) if paused else client.resume(queue))
    except InvalidSetting as exc:
        raise _invalid(exc) from None
    log.info("queue_paused" if paused else "queue_resumed", queue=queue, by=principal.key_id)
    return model_response(QueueSwitches, _queue_doc(settings))


async def pause_queue(request: Request) -> Response:
    """``POST /v1/admin/queues/{queue}/pause``: no job of the queue starts, fleet-wide."""
    return await _switch(request, paused=True)


async def resume_queue(request: Request) -> Response:
    """``POST /v1/admin/queues/{queue}/resume``: the queue's jobs start again."""
    return await _switch(request, paused=False)
