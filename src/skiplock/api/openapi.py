"""The OpenAPI 3.1 document of the status API, generated from the typed models.

Every request and response shape comes from :mod:`skiplock.api.schemas` (the
models the routes validate and answer with); this module only says which
route answers which model with which status. The create-job body lists every
task exposed over HTTP with its own argument schema, so clients (and
schemathesis) know exactly what is accepted.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from skiplock.api.schemas import (
    MODELS,
    CreateJobBody,
    FlowQueues,
    Health,
    JobDocument,
    JobList,
    LimitDocument,
    LimitList,
    Problem,
    QueueSwitches,
    Readiness,
    ScheduleDocument,
    ScheduleList,
    SetLimitBody,
    ShareLink,
    Stats,
    TriggeredJob,
)
from skiplock.api.settings import ApiSettings

__all__ = ["openapi_document"]

_REF = "#/components/schemas/{model}"
_STATES = ["queued", "running", "succeeded", "failed", "cancelled"]


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": _REF.format(model=model.__name__)}


def _json(model: type[BaseModel], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(model)}}}


def _problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/problem+json": {"schema": _ref(Problem)}},
    }


def _unavailable() -> dict[str, Any]:
    """The 503 every /v1 route answers while the database is down (or the app starts)."""
    return {
        **_problem(
            "The database is unavailable (`database-unavailable`) or the service is starting"
            " (`unavailable`): nothing was done; retry after `Retry-After` seconds."
        ),
        "headers": {
            "Retry-After": {
                "description": "Seconds to wait before retrying.",
                "required": True,
                "schema": {"type": "integer", "minimum": 0},
            }
        },
    }


_SECURED: list[dict[str, list[str]]] = [{"apiKey": []}]
_AUTH_ERRORS = {
    "401": _problem("Missing, unknown, revoked or expired API key."),
    "403": _problem("The key lacks the scope."),
}
_JOB_ID = {
    "name": "job_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "The job's id (a UUID).",
}
_TENANT = {
    "name": "tenant",
    "in": "query",
    "schema": {"type": "string", "minLength": 1, "maxLength": 256},
    "description": "Admin keys only: act on this tenant's jobs (without it: every tenant's;"
    " a job made by an admin key belongs to its own tenant). Other keys may name only their"
    " own tenant (403 otherwise).",
}
_TOKEN = {"name": "token", "in": "path", "required": True, "schema": {"type": "string"}}
_PATTERN = {
    "name": "pattern",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "minLength": 1, "maxLength": 256},
    "description": "A key (provider:openai) or a key with * wildcards (user:*), percent-encoded.",
}
_QUEUE = {
    "name": "queue",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "minLength": 1, "maxLength": 128},
}
_ADMIN_ERRORS = {
    "401": _problem("Missing, unknown, revoked or expired API key."),
    "403": _problem("The key lacks the admin scope."),
}


def _admin_paths() -> dict[str, Any]:
    """Flow control for operators (admin keys): limits and queue switches."""
    switch = {
        "200": _json(QueueSwitches, "The queue's switches as stored."),
        **_ADMIN_ERRORS,
        "422": _problem("Invalid queue name."),
    }
    return {
        "/v1/admin/limits": {
            "get": {
                "summary": "Every limit with its usage, and the keys at their limit",
                "security": _SECURED,
                "responses": {"200": _json(LimitList, "The limits."), **_ADMIN_ERRORS},
            }
        },
        "/v1/admin/limits/{pattern}": {
            "put": {
                "summary": "Create or replace the limit of a key pattern (fleet-wide at once)",
                "security": _SECURED,
                "parameters": [_PATTERN],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _REF_SET_LIMIT}},
                },
                "responses": {
                    "200": _json(LimitDocument, "The limit as stored."),
                    **_ADMIN_ERRORS,
                    "408": _problem("The body did not arrive in time."),
                    "413": _problem("Body too large."),
                    "415": _problem("Body is not application/json."),
                    "422": _problem("Invalid body or limit (`invalid-body`, `invalid-setting`)."),
                },
            },
            "delete": {
                "summary": "Remove the limit of a key pattern",
                "security": _SECURED,
                "parameters": [_PATTERN],
                "responses": {
                    "204": {"description": "Removed: its jobs may start at once."},
                    **_ADMIN_ERRORS,
                    "404": _problem("No limit on this pattern."),
                },
            },
        },
        "/v1/admin/queues": {
            "get": {
                "summary": "Each queue with jobs or switches: paused, fair, throttled jobs",
                "security": _SECURED,
                "responses": {"200": _json(FlowQueues, "The queues."), **_ADMIN_ERRORS},
            }
        },
        "/v1/admin/queues/{queue}/pause": {
            "post": {
                "summary": "Pause a queue fleet-wide (running jobs finish)",
                "security": _SECURED,
                "parameters": [_QUEUE],
                "responses": dict(switch),
            }
        },
        "/v1/admin/queues/{queue}/resume": {
            "post": {
                "summary": "Resume a paused queue",
                "security": _SECURED,
                "parameters": [_QUEUE],
                "responses": dict(switch),
            }
        },
    }


_SCHEDULE = {
    "name": "name",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "minLength": 1, "maxLength": 128},
}


def _schedule_paths() -> dict[str, Any]:
    """Periodic jobs for operators (admin keys): list, pause, resume, trigger."""
    one = {
        "200": _json(ScheduleDocument, "The schedule as stored."),
        **_ADMIN_ERRORS,
        "404": _problem("No such schedule (`schedule-not-found`)."),
    }
    return {
        "/v1/admin/schedules": {
            "get": {
                "summary": "Every schedule: when it ticks, paused or not, its last and next tick",
                "security": _SECURED,
                "responses": {"200": _json(ScheduleList, "The schedules."), **_ADMIN_ERRORS},
            }
        },
        "/v1/admin/schedules/{name}/pause": {
            "post": {
                "summary": "Pause a schedule: none of its ticks is enqueued",
                "security": _SECURED,
                "parameters": [_SCHEDULE],
                "responses": dict(one),
            }
        },
        "/v1/admin/schedules/{name}/resume": {
            "post": {
                "summary": "Resume a schedule from its next tick (missed ticks are not caught up)",
                "security": _SECURED,
                "parameters": [_SCHEDULE],
                "responses": dict(one),
            }
        },
        "/v1/admin/schedules/{name}/trigger": {
            "post": {
                "summary": "Enqueue the schedule's job now, outside its ticks",
                "security": _SECURED,
                "parameters": [_SCHEDULE],
                "responses": {
                    "202": _json(TriggeredJob, "The job enqueued."),
                    **_ADMIN_ERRORS,
                    "404": _problem("No such schedule (`schedule-not-found`)."),
                },
            }
        },
    }


_REF_SET_LIMIT = {"$ref": _REF.format(model="SetLimit")}


def _schemas() -> dict[str, Any]:
    """The JSON Schemas of every response model, keyed by model name."""
    _, top = models_json_schema([(model, "serialization") for model in MODELS], ref_template=_REF)
    schemas: dict[str, Any] = top.get("$defs", {})
    return schemas


def _create_body(settings: ApiSettings) -> dict[str, Any]:
    """The create-job body: one variant per exposed task, with its args schema."""
    generated = CreateJobBody.model_json_schema()
    common = {
        name: prop for name, prop in generated["properties"].items() if name not in {"task", "args"}
    }
    variants = [
        {
            "type": "object",
            "title": name,
            "description": task.description or f"Create a {name!r} job.",
            "properties": {"task": {"const": name}, "args": task.args_schema, **common},
            "required": ["task"],
            "additionalProperties": False,
        }
        for name, task in sorted(settings.exposed_tasks.items())
    ]
    if not variants:
        return {
            "type": "object",
            "properties": {"task": {"type": "string"}, "args": {"type": "object"}, **common},
            "required": ["task"],
            "additionalProperties": False,
        }
    return {"oneOf": variants}


def _list_params() -> list[dict[str, Any]]:
    return [
        {
            "name": "state",
            "in": "query",
            "schema": {"type": "string", "enum": _STATES},
            "description": "Repeat to allow several states.",
        },
        {"name": "task", "in": "query", "schema": {"type": "string"}},
        {"name": "queue", "in": "query", "schema": {"type": "string"}},
        {
            "name": "created_after",
            "in": "query",
            "schema": {"type": "string", "format": "date-time"},
        },
        {
            "name": "created_before",
            "in": "query",
            "schema": {"type": "string", "format": "date-time"},
        },
        {"name": "cursor", "in": "query", "schema": {"type": "string"}},
        {
            "name": "limit",
            "in": "query",
            "schema": {"type": "integer", "minimum": 1, "maximum": 200},
        },
        {
            "name": "meta.{label}",
            "in": "query",
            "schema": {"type": "string"},
            "description": "Keep jobs whose meta has this label with this value, e.g. "
            "`meta.model=x1`; several labels must all match.",
        },
    ]


def _paths(settings: ApiSettings) -> dict[str, Any]:
    wait = {
        "name": "wait",
        "in": "query",
        "schema": {"type": "number", "minimum": 0, "maximum": settings.max_wait_seconds},
    }
    sse = {
        "description": (
            "A stream of `job` events (the job document; a result over"
            f" {settings.sse_max_result_bytes} bytes of JSON is left out: `result` is null"
            " and `result_omitted` true, read the job for it). The stream ends after the"
            " terminal state; with `expired` if the credential stops being valid first;"
            ' with `gone` (data: `{"id": …}`) if the job is deleted while watched.'
        ),
        "content": {"text/event-stream": {}},
    }
    return {
        "/v1/jobs": {
            "post": {
                "summary": "Create a job",
                "security": _SECURED,
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string", "minLength": 1, "maxLength": 256},
                    },
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": _REF.format(model="CreateJob")}}
                    },
                },
                "responses": {
                    "201": _json(JobDocument, "Created."),
                    "200": _json(
                        JobDocument,
                        "The job this Idempotency-Key already created, or the queued or "
                        "running job holding the unique key (after on_duplicate).",
                    ),
                    **_AUTH_ERRORS,
                    "408": _problem("The body did not arrive in time."),
                    "409": _problem("Idempotency-Key reused with a different body."),
                    "413": _problem("Body too large."),
                    "415": _problem("Body is not application/json."),
                    "422": _problem("Invalid body, unknown task or invalid arguments."),
                },
            },
            "get": {
                "summary": "List the tenant's jobs, newest first",
                "description": (
                    f"A result over {settings.list_max_result_bytes} bytes of JSON is left"
                    " out (`result` null, `result_omitted` true: read the job for it). A page"
                    f" ends before {settings.list_max_response_bytes} bytes even if fewer than"
                    " `limit` jobs: follow `next_cursor`."
                ),
                "security": _SECURED,
                "parameters": _list_params(),
                "responses": {
                    "200": _json(JobList, "A page of jobs."),
                    **_AUTH_ERRORS,
                    "422": _problem("Invalid filter."),
                },
            },
        },
        "/v1/jobs/{job_id}": {
            "get": {
                "summary": "Read a job (long-poll with ?wait=)",
                "security": _SECURED,
                "parameters": [
                    _JOB_ID,
                    wait,
                    {"name": "If-None-Match", "in": "header", "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": _json(JobDocument, "The job."),
                    "304": {"description": "Unchanged since the given ETag."},
                    **_AUTH_ERRORS,
                    "404": _problem("No such job (or it was deleted while waited for)."),
                    "422": _problem("Invalid wait."),
                },
            }
        },
        "/v1/jobs/{job_id}/events": {
            "get": {
                "summary": "Stream the job's changes (Server-Sent Events)",
                "security": _SECURED,
                "parameters": [_JOB_ID],
                "responses": {"200": sse, **_AUTH_ERRORS, "404": _problem("No such job.")},
            }
        },
        "/v1/jobs/{job_id}/cancel": {
            "post": {
                "summary": "Cancel a job",
                "security": _SECURED,
                "parameters": [_JOB_ID],
                "responses": {
                    "200": _json(JobDocument, "Cancelled (or already finished)."),
                    "202": _json(JobDocument, "Running: cancellation requested."),
                    **_AUTH_ERRORS,
                    "404": _problem("No such job."),
                },
            }
        },
        "/v1/jobs/{job_id}/retry": {
            "post": {
                "summary": "Retry a failed or cancelled job",
                "security": _SECURED,
                "parameters": [_JOB_ID],
                "responses": {
                    "200": _json(JobDocument, "Queued again."),
                    **_AUTH_ERRORS,
                    "404": _problem("No such job."),
                    "409": _problem("The job is not failed or cancelled."),
                },
            }
        },
        "/v1/jobs/{job_id}/share": {
            "post": {
                "summary": "Make a signed, expiring, read-only link to the job",
                "security": _SECURED,
                "parameters": [
                    _JOB_ID,
                    {
                        "name": "ttl",
                        "in": "query",
                        "schema": {
                            "type": "number",
                            "exclusiveMinimum": 0,
                            "maximum": settings.share_ttl_seconds,
                        },
                    },
                ],
                "responses": {
                    "201": _json(ShareLink, "The share link."),
                    **_AUTH_ERRORS,
                    "404": _problem("No such job."),
                    "409": _problem("Sharing is disabled."),
                    "422": _problem("Invalid ttl."),
                },
            }
        },
        "/v1/shared/{token}": {
            "get": {
                "summary": "Read a shared job (no API key)",
                "parameters": [_TOKEN, wait],
                "responses": {
                    "200": _json(JobDocument, "The job."),
                    "304": {"description": "Unchanged."},
                    "401": _problem("Invalid or expired link."),
                    "404": _problem("The job no longer exists."),
                    "422": _problem("Invalid wait."),
                },
            }
        },
        "/v1/shared/{token}/events": {
            "get": {
                "summary": "Stream a shared job's changes; ends when the link expires",
                "parameters": [_TOKEN],
                "responses": {
                    "200": sse,
                    "401": _problem("Invalid or expired link."),
                    "404": _problem("The job no longer exists."),
                },
            }
        },
        "/v1/stats": {
            "get": {
                "summary": "Counts, throughput, failure rate and wait/run times",
                "security": _SECURED,
                "responses": {
                    "200": _json(Stats, "Statistics of the tenant's jobs."),
                    **_AUTH_ERRORS,
                },
            }
        },
        **_admin_paths(),
        **_schedule_paths(),
        "/healthz": {"get": {"summary": "Liveness", "responses": {"200": _json(Health, "Alive.")}}},
        "/readyz": {
            "get": {
                "summary": "Readiness: database reachable and schema current",
                "responses": {
                    "200": _json(Readiness, "Ready."),
                    "503": _problem("Not ready."),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {"200": {"description": "Metrics.", "content": {"text/plain": {}}}},
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "responses": {
                    "200": {
                        "description": "OpenAPI 3.1.",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            }
        },
    }


def openapi_document(settings: ApiSettings) -> dict[str, Any]:
    """The OpenAPI document for an app built with ``settings``."""
    paths = _paths(settings)
    for path, item in paths.items():
        if path.startswith("/v1/"):
            for operation in item.values():
                operation["responses"]["503"] = _unavailable()
                if "security" in operation and not path.startswith("/v1/admin/"):
                    # the routes an API key calls about jobs
                    operation.setdefault("parameters", []).append(_TENANT)
                    operation["responses"].setdefault(
                        "422", _problem("Invalid parameter (for an admin key: tenant).")
                    )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "skiplock status API",
            "version": "1",
            "description": "Create jobs, follow them to the end, cancel them. Errors are "
            "RFC 9457 problem documents. Each API key sees only its tenant's jobs; another "
            "tenant's job answers exactly like a missing one.",
        },
        "components": {
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                **_schemas(),
                "CreateJob": _create_body(settings),
                "SetLimit": SetLimitBody.model_json_schema(ref_template=_REF),
            },
        },
        "paths": paths,
    }
