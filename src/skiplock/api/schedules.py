"""Schedule routes for operators (``admin`` scope), issue 13.

- ``GET /v1/admin/schedules``: every schedule (when it ticks, paused, last and next tick);
- ``POST /v1/admin/schedules/{name}/pause`` and ``/resume`` (404 when there is none);
- ``POST /v1/admin/schedules/{name}/trigger``: enqueue its job now (202, the job's id).

Schedules are declared by the workers' code; they are fleet-wide and across
tenants, hence the ``admin`` scope for reads as well as writes.
"""

from __future__ import annotations

import structlog
from starlette.requests import Request
from starlette.responses import Response

from skiplock.api.common import authorize, model_response, state_of
from skiplock.api.problems import HTTPProblem
from skiplock.api.schemas import ScheduleDocument, ScheduleList, TriggeredJob
from skiplock.queue import ScheduleNotFound
from skiplock.queue.document import schedule_document

__all__ = ["list_schedules", "pause_schedule", "resume_schedule", "trigger_schedule"]

log = structlog.get_logger("skiplock.api")


def _not_found(exc: ScheduleNotFound) -> HTTPProblem:
    return HTTPProblem(404, str(exc), code="schedule-not-found")


async def list_schedules(request: Request) -> Response:
    """``GET /v1/admin/schedules``: every schedule, by name."""
    await authorize(request, "admin")
    client, _, _ = state_of(request).ready()
    schedules = await client.schedules()
    return model_response(ScheduleList, {"schedules": [schedule_document(s) for s in schedules]})


async def _switch(request: Request, paused: bool) -> Response:
    principal = await authorize(request, "admin")
    client, _, _ = state_of(request).ready()
    name = request.path_params["name"]
    try:
        schedule = await (client.pause_schedule(name) if paused else client.resume_schedule(name))
    except ScheduleNotFound as exc:
        raise _not_found(exc) from None
    event = "schedule_paused" if paused else "schedule_resumed"
    log.info(event, schedule=name, by=principal.key_id)
    return model_response(ScheduleDocument, schedule_document(schedule))


async def pause_schedule(request: Request) -> Response:
    """``POST /v1/admin/schedules/{name}/pause``: enqueue none of its ticks."""
    return await _switch(request, paused=True)


async def resume_schedule(request: Request) -> Response:
    """``POST /v1/admin/schedules/{name}/resume``: its ticks again, from the next one."""
    return await _switch(request, paused=False)


async def trigger_schedule(request: Request) -> Response:
    """``POST /v1/admin/schedules/{name}/trigger``: enqueue its job now (202)."""
    principal = await authorize(request, "admin")
    client, _, _ = state_of(request).ready()
    name = request.path_params["name"]
    try:
        job = await client.trigger_schedule(name)
    except ScheduleNotFound as exc:
        raise _not_found(exc) from None
    log.info("schedule_triggered", schedule=name, job_id=str(job.id), by=principal.key_id)
    return model_response(
        TriggeredJob,
        {"schedule": name, "job_id": str(job.id), "queue": job.queue},
        status=202,
    )
