"""The OpenAPI 3.1 document of the status API, built from the settings.

The create-job body lists every task exposed over HTTP with its own argument
schema, so clients (and schemathesis) know exactly what is accepted.
"""

from __future__ import annotations

from typing import Any

from skiplock.api.settings import ApiSettings

__all__ = ["openapi_document"]

_TS = {"type": ["string", "null"], "format": "date-time"}
_REF_PROBLEM = {"$ref": "#/components/schemas/Problem"}
_PROBLEM_JSON = {"application/problem+json": {"schema": _REF_PROBLEM}}


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "content": _PROBLEM_JSON}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_JOB = {"$ref": "#/components/schemas/Job"}
_JOB_ID = {
    "name": "job_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "The job's id (a UUID).",
}
_SECURED: list[dict[str, list[str]]] = [{"apiKey": []}]
_AUTH_ERRORS = {
    "401": _problem("Missing, unknown, revoked or expired API key."),
    "403": _problem("The key lacks the scope."),
}


def _job_schema() -> dict[str, Any]:
    error = {
        "type": ["object", "null"],
        "properties": {
            "type": {"type": "string"},
            "message": {"type": "string"},
            "attempt": {"type": "integer"},
            "at": {"type": "string"},
        },
        "required": ["type", "message", "attempt", "at"],
    }
    return {
        "type": "object",
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "task": {"type": "string"},
            "queue": {"type": "string"},
            "state": {
                "type": "string",
                "enum": ["queued", "running", "succeeded", "failed", "cancelled"],
            },
            "scheduled": {"type": "boolean", "description": "Queued with run_at in the future."},
            "progress": {"type": ["number", "null"], "minimum": 0, "maximum": 100},
            "message": {"type": ["string", "null"]},
            "eta": _TS,
            "attempt": {"type": "integer", "minimum": 0},
            "max_attempts": {"type": "integer", "minimum": 1},
            "priority": {"type": "integer"},
            "cancel_requested": {"type": "boolean"},
            "result": {"description": "The handler's JSON result, when succeeded."},
            "error": error,
            "meta": {"type": "object"},
            "run_at": _TS,
            "created_at": _TS,
            "updated_at": _TS,
            "started_at": _TS,
            "finished_at": _TS,
            "links": {
                "type": "object",
                "properties": {
                    "self": {"type": "string"},
                    "events": {"type": "string"},
                    "cancel": {"type": "string"},
                },
                "required": ["self", "events", "cancel"],
            },
        },
        "required": [
            "id",
            "task",
            "queue",
            "state",
            "scheduled",
            "progress",
            "message",
            "eta",
            "attempt",
            "max_attempts",
            "priority",
            "cancel_requested",
            "result",
            "error",
            "meta",
            "run_at",
            "created_at",
            "updated_at",
            "started_at",
            "finished_at",
            "links",
        ],
    }


def _create_body(settings: ApiSettings) -> dict[str, Any]:
    common = {
        "priority": {"type": "integer", "minimum": -32768, "maximum": 32767, "default": 0},
        "delay_seconds": {"type": ["number", "null"], "minimum": 0, "maximum": 366 * 24 * 3600},
        "meta": {"type": "object", "description": "JSON labels kept with the job."},
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


def openapi_document(settings: ApiSettings) -> dict[str, Any]:
    """The OpenAPI document for an app built with ``settings``."""
    job_list = {
        "type": "object",
        "properties": {
            "jobs": {"type": "array", "items": _JOB},
            "next_cursor": {"type": ["string", "null"]},
        },
        "required": ["jobs", "next_cursor"],
    }
    window = {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {
                "task": {"type": "string"},
                "succeeded": {"type": "integer"},
                "failed": {"type": "integer"},
                "cancelled": {"type": "integer"},
                "throughput_per_minute": {"type": "number"},
                "failure_rate": {"type": ["number", "null"]},
                "wait_seconds": {"type": "object"},
                "run_seconds": {"type": "object"},
            },
        },
    }
    sse = {
        "description": (
            "A stream of `job` events (the job document; a result over"
            f" {settings.sse_max_result_bytes} bytes of JSON is left out: `result` is null"
            " and `result_omitted` true, read the job for it), then `expired` if the"
            " credential stops being valid first."
        ),
        "content": {"text/event-stream": {}},
    }
    list_params = [
        {
            "name": "state",
            "in": "query",
            "schema": {
                "type": "string",
                "enum": ["queued", "running", "succeeded", "failed", "cancelled"],
            },
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
                "Job": _job_schema(),
                "CreateJob": _create_body(settings),
                "Problem": {
                    "type": "object",
                    "properties": {
                        "type": {"type": "string"},
                        "title": {"type": "string"},
                        "status": {"type": "integer"},
                        "detail": {"type": "string"},
                        "code": {"type": "string"},
                    },
                    "required": ["type", "title", "status", "detail", "code"],
                },
            },
        },
        "paths": {
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
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/CreateJob"}
                            }
                        },
                    },
                    "responses": {
                        "201": _json(_JOB, "Created."),
                        "200": _json(_JOB, "The job this Idempotency-Key already created."),
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
                    "security": _SECURED,
                    "parameters": list_params,
                    "responses": {
                        "200": _json(job_list, "A page of jobs."),
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
                        {
                            "name": "wait",
                            "in": "query",
                            "schema": {
                                "type": "number",
                                "minimum": 0,
                                "maximum": settings.max_wait_seconds,
                            },
                        },
                        {"name": "If-None-Match", "in": "header", "schema": {"type": "string"}},
                    ],
                    "responses": {
                        "200": _json(_JOB, "The job."),
                        "304": {"description": "Unchanged since the given ETag."},
                        **_AUTH_ERRORS,
                        "404": _problem("No such job."),
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
                        "200": _json(_JOB, "Cancelled (or already finished)."),
                        "202": _json(_JOB, "Running: cancellation requested."),
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
                        "200": _json(_JOB, "Queued again."),
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
                        "201": _json(
                            {
                                "type": "object",
                                "properties": {
                                    "token": {"type": "string"},
                                    "url": {"type": "string"},
                                    "events": {"type": "string"},
                                    "expires_at": {"type": "string"},
                                },
                                "required": ["token", "url", "events", "expires_at"],
                            },
                            "The share link.",
                        ),
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
                    "parameters": [
                        {
                            "name": "token",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        },
                        {
                            "name": "wait",
                            "in": "query",
                            "schema": {
                                "type": "number",
                                "minimum": 0,
                                "maximum": settings.max_wait_seconds,
                            },
                        },
                    ],
                    "responses": {
                        "200": _json(_JOB, "The job."),
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
                    "parameters": [
                        {
                            "name": "token",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        },
                    ],
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
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {
                                    "counts": {"type": "array"},
                                    "windows": {
                                        "type": "object",
                                        "properties": {"5m": window, "1h": window, "24h": window},
                                    },
                                },
                                "required": ["counts", "windows"],
                            },
                            "Statistics of the tenant's jobs.",
                        ),
                        **_AUTH_ERRORS,
                    },
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Liveness",
                    "responses": {"200": _json({"type": "object"}, "Alive.")},
                }
            },
            "/readyz": {
                "get": {
                    "summary": "Readiness: database reachable and schema current",
                    "responses": {
                        "200": _json({"type": "object"}, "Ready."),
                        "503": _problem("Not ready."),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {
                        "200": {"description": "Metrics.", "content": {"text/plain": {}}}
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1.")},
                }
            },
        },
    }
