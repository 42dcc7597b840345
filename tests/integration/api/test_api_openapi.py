"""The OpenAPI 3.1 document: valid, complete, and true of the running app (schemathesis)."""

from __future__ import annotations

import re
import uuid
from typing import Any

import anyio
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import OpenAPIV31SpecValidator, validate
from schemathesis import GenerationMode, checks
from starlette.routing import Route

from skiplock import Client
from skiplock.api.openapi import openapi_document
from skiplock.queue import Store
from skiplock.queue.store import Completion
from tests.integration.api.support import (
    Keys,
    LiveApi,
    api_settings,
    bearer,
)

EXAMPLES_PER_OPERATION = 20
# What must hold of every answer, valid request or not: no 5xx; only documented status
# codes, content types and headers; bodies matching their schemas; no answer without a
# key where one is required. Not checked: whether the server is as strict as the schema
# (it ignores unknown query parameters) or as lenient (an opaque cursor, a timestamp
# past year 9999 in UTC, a NUL in a filter pass the schema and rightly get a 422).
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
    checks.ignored_auth,
]
# Every operation of the document, known without a database (the document is static).
OPERATIONS = sorted(
    (method.upper(), path)
    for path, item in openapi_document(api_settings("postgresql://unused"))["paths"].items()
    for method in item
)


async def _document(api: LiveApi) -> dict[str, Any]:
    response = await api.http.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    doc = response.json()
    assert isinstance(doc, dict)
    return doc


async def test_openapi_json_is_a_valid_openapi_3_1_document(shared_api: LiveApi) -> None:
    """GET /openapi.json validates as OpenAPI 3.1."""
    doc = await _document(shared_api)
    assert doc["openapi"].startswith("3.1")
    validate(doc, cls=OpenAPIV31SpecValidator)


async def test_openapi_json_describes_every_route(shared_api: LiveApi) -> None:
    """The document's paths and methods are exactly the app's routes (a route's path
    convertor, as in ``{pattern:pattern}``, is not part of the documented template)."""
    doc = await _document(shared_api)
    documented = {(method.upper(), path) for path, item in doc["paths"].items() for method in item}
    routed = {
        (method, re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path))
        for route in shared_api.app.routes
        if isinstance(route, Route)
        for method in (route.methods or set()) - {"HEAD"}
    }
    assert documented == routed


async def test_openapi_json_lists_each_exposed_task_with_its_argument_schema(
    shared_api: LiveApi,
) -> None:
    """The create body offers each exposed task with the args schema from the settings."""
    doc = await _document(shared_api)
    variants = doc["components"]["schemas"]["CreateJob"]["oneOf"]
    assert [(v["properties"]["task"], v["properties"]["args"]) for v in variants] == [
        ({"const": "render"}, shared_api.settings.exposed_tasks["render"].args_schema)
    ]


async def _finished_job(dsn: str, tenant: str) -> uuid.UUID:
    """A job of ``tenant`` that succeeded, made through the store as a worker would."""
    store = Store()
    async with await Client.connect(dsn, max_size=1) as client:
        job = await client.enqueue("render", {"video_id": "done"}, queue="fuzz", tenant=tenant)
        (claimed,) = await store.claim_jobs(client.pool, ["fuzz"], 1, 30.0, "fuzz-worker")
        assert claimed.id == job.id
        assert claimed.lease_token is not None
        written = await store.complete_jobs(
            client.pool,
            [Completion(job.id, claimed.lease_token, "succeeded", result_json='{"ok": true}')],
        )
        assert written == {job.id}
    return job.id


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
async def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    shared_api: LiveApi, shared_dsn: str, tenant_keys: Keys, method: str, path: str
) -> None:
    """Generated valid and invalid requests never get a 5xx or an answer the document denies."""
    schema = schemathesis.openapi.from_dict(await _document(shared_api))
    operation = schema[path][method]
    done = await _finished_job(shared_dsn, tenant_keys.tenant_a)
    shared = await shared_api.http.post(
        f"/v1/jobs/{done}/share", headers=bearer(tenant_keys.a_write)
    )
    token = shared.json()["token"]
    strategies = [operation.as_strategy(generation_mode=GenerationMode.POSITIVE)]
    if _has_inputs(operation.definition.raw):
        strategies.append(operation.as_strategy(generation_mode=GenerationMode.NEGATIVE))
    headers = bearer(tenant_keys.a_write)
    session = requests.Session()

    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=st.one_of(strategies), known=st.booleans())
    def exercise(case: Any, known: bool) -> None:
        # Half the cases name a real (finished) job or a real share link, so the
        # calls get past 404/401 into the handlers; finished jobs never stream forever.
        if known and "job_id" in case.path_parameters:
            case.path_parameters["job_id"] = str(done)
        if known and "token" in case.path_parameters:
            case.path_parameters["token"] = token
        case.call_and_validate(
            base_url=shared_api.url,
            session=session,
            headers=headers,
            checks=CHECKS,
            timeout=30,
        )

    try:
        await anyio.to_thread.run_sync(exercise)
    finally:
        session.close()


def _has_inputs(definition: dict[str, Any]) -> bool:
    return bool(definition.get("parameters") or definition.get("requestBody"))


def test_every_v1_route_documents_503_database_unavailable_with_retry_after() -> None:
    """Each /v1 operation lists the 503 problem answer and its Retry-After header."""
    doc = openapi_document(api_settings("postgresql://unused"))
    for path, item in doc["paths"].items():
        if not path.startswith("/v1/"):
            continue
        for method, operation in item.items():
            answer = operation["responses"].get("503")
            assert answer is not None, f"{method.upper()} {path} documents no 503"
            assert answer["content"] == {
                "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
            }
            assert answer["headers"]["Retry-After"]["required"] is True
            assert answer["headers"]["Retry-After"]["schema"] == {"type": "integer", "minimum": 0}
