"""Settings of the status API, from ``SKIPLOCK_*`` environment variables."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import NoDecode

from skiplock.config import DatabaseSettings

__all__ = ["ApiSettings", "ExposedTask"]


class ExposedTask(BaseModel):
    """A task clients may create over HTTP, with the JSON Schema its args must match."""

    args_schema: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})
    queue: str = "default"
    max_attempts: int = Field(default=3, ge=1, le=1000)
    description: str = ""


class ApiSettings(DatabaseSettings):
    """Every knob of ``skiplock api``.

    ``exposed_tasks`` is the allowlist of tasks ``POST /v1/jobs`` may create,
    as JSON in ``SKIPLOCK_EXPOSED_TASKS``: ``{"render": {"args_schema": {…}}}``.
    ``share_secret`` signs read-only share links; without it they are disabled.
    A listing leaves out results over ``list_max_result_bytes`` of JSON (read
    the job for them) and ends a page early past ``list_max_response_bytes``.
    ``hub_poll_seconds``: how often streams and long-polls re-read their jobs
    whatever notifications say (the floor when they never arrive);
    ``statement_cache_size`` (0 behind PgBouncer in transaction mode) and
    ``listen_url`` (a direct URL for the event hub's LISTEN; ``"none"``: the
    hub does not listen; unset: the main URL) as for workers.
    ``flow_metrics_seconds``: the flow-control gauges of ``/metrics`` are read
    from the database at scrape time, at most once per this many seconds
    (scrapes in between get the last reading; 0: every scrape).
    """

    exposed_tasks: dict[str, ExposedTask] = Field(default_factory=dict)
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    body_timeout_seconds: float = Field(default=30.0, gt=0)
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    share_secret: str | None = Field(default=None, min_length=32)
    share_ttl_seconds: float = Field(default=7 * 24 * 3600, gt=0)
    key_cache_seconds: float = Field(default=2.0, ge=0)
    sse_keepalive_seconds: float = Field(default=15.0, gt=0)
    sse_send_timeout_seconds: float = Field(default=30.0, gt=0)
    sse_max_result_bytes: int = Field(default=64 * 1024, ge=0)
    hub_poll_seconds: float = Field(default=2.0, gt=0, le=3600)
    list_max_result_bytes: int = Field(default=16 * 1024, ge=0)
    list_max_response_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    subscriber_buffer: int = Field(default=64, ge=1, le=100_000)
    max_wait_seconds: float = Field(default=60.0, gt=0, le=300)
    pool_max_size: int = Field(default=10, ge=1, le=1000)
    public_url: str = ""
    flow_metrics_seconds: float = Field(default=5.0, ge=0, le=3600)

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value
