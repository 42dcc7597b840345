"""Settings from the environment (``SKIPLOCK_*``); command-line flags override them."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from skiplock import sql
from skiplock.queue.listener import check_listen_url
from skiplock.queue.store import DEFAULT_STATEMENT_CACHE_SIZE

__all__ = ["DatabaseSettings", "Settings"]


class DatabaseSettings(BaseSettings):
    """What every process that connects reads: where the database is, the schema, and how
    to connect through a pooler (``statement_cache_size``, ``listen_url``).

    The fields the CLI's :class:`Settings` and the API's ``ApiSettings`` share.
    """

    model_config = SettingsConfigDict(env_prefix="SKIPLOCK_", extra="ignore")

    database_url: str | None = Field(
        default=None, description="PostgreSQL DSN, e.g. postgresql://user@host/db"
    )
    schema_name: str = Field(default="skiplock", alias="SKIPLOCK_SCHEMA")
    statement_cache_size: int = Field(default=DEFAULT_STATEMENT_CACHE_SIZE, ge=0)
    listen_url: str | None = Field(
        default=None, description="direct DSN for LISTEN; 'none': poll only; unset: the main URL"
    )

    @field_validator("schema_name")
    @classmethod
    def _schema(cls, value: str) -> str:
        return sql.validate_schema(value)

    @field_validator("listen_url")
    @classmethod
    def _listen_url(cls, value: str | None) -> str | None:
        return check_listen_url(value)

    def require_database_url(self) -> str:
        """The DSN, or a clear error saying how to set it."""
        if not self.database_url:
            raise ValueError(
                "no database configured: set SKIPLOCK_DATABASE_URL or pass --database-url"
            )
        return self.database_url


class Settings(DatabaseSettings):
    """Every knob of the CLI, read from ``SKIPLOCK_<NAME>`` environment variables."""

    queues: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["default"])
    concurrency: int = Field(default=10, ge=1, le=10_000)
    max_leases: int | None = Field(default=None, ge=1, le=1_000_000)
    lease_seconds: float = Field(default=30.0, gt=0.5, le=86_400)
    heartbeat_seconds: float | None = Field(default=None, gt=0)
    poll_seconds: float = Field(default=1.0, gt=0, le=3600)
    rescue_seconds: float = Field(default=5.0, gt=0, le=3600)
    schedule_poll_seconds: float = Field(default=1.0, gt=0, le=3600)
    shutdown_grace_seconds: float = Field(default=30.0, ge=0)
    progress_interval_seconds: float = Field(default=0.1, ge=0)
    log_format: str = Field(default="auto", pattern="^(auto|json|console)$")
    log_level: str = Field(default="info")

    @field_validator("queues", mode="before")
    @classmethod
    def _split_queues(cls, value: object) -> object:
        if isinstance(value, str):
            return [q.strip() for q in value.split(",") if q.strip()]
        return value
