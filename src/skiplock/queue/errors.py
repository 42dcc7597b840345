"""Errors raised by the client and the migration runner."""

from __future__ import annotations

from uuid import UUID

__all__ = [
    "IdempotencyConflict",
    "InvalidJob",
    "JobNotFound",
    "JobStateConflict",
    "SchemaMismatch",
    "SkiplockError",
]


class SkiplockError(Exception):
    """Base class of skiplock's own errors."""


class InvalidJob(SkiplockError, ValueError):
    """A job description was rejected before anything was written."""


class JobNotFound(SkiplockError, LookupError):
    """No such job (or it belongs to another tenant, which looks the same)."""

    def __init__(self, job_id: UUID | str) -> None:
        super().__init__(f"job {job_id} not found")
        self.job_id = job_id


class JobStateConflict(SkiplockError):
    """The job exists but is not in a state that allows the operation."""

    def __init__(self, job_id: UUID, state: str, operation: str) -> None:
        super().__init__(f"cannot {operation} job {job_id}: it is {state}")
        self.job_id = job_id
        self.state = state
        self.operation = operation


class IdempotencyConflict(SkiplockError):
    """The idempotency key is already used by a job with another task or other args."""

    def __init__(self, tenant: str, key: str, job_id: UUID) -> None:
        super().__init__(
            f"idempotency key {key!r} of tenant {tenant!r} already belongs to job {job_id} "
            "with a different task or arguments"
        )
        self.tenant = tenant
        self.key = key
        self.job_id = job_id


class SchemaMismatch(SkiplockError):
    """The database schema is missing, older or newer than this version of skiplock."""
