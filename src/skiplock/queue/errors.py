"""Errors raised by the client and the migration runner."""

from __future__ import annotations

from uuid import UUID

import asyncpg

__all__ = [
    "TRANSIENT_DB_ERRORS",
    "UNAVAILABLE_DB_ERRORS",
    "DatabaseUnavailable",
    "IdempotencyConflict",
    "InvalidJob",
    "InvalidSetting",
    "JobNotFound",
    "JobStateConflict",
    "ScheduleNotFound",
    "SchemaMismatch",
    "SkiplockError",
]


class SkiplockError(Exception):
    """Base class of skiplock's own errors."""


class InvalidJob(SkiplockError, ValueError):
    """A job description was rejected before anything was written."""


class InvalidSetting(SkiplockError, ValueError):
    """A flow-control setting (a limit, a queue switch, a weight) or a schedule was
    rejected before anything was written."""


class JobNotFound(SkiplockError, LookupError):
    """No such job (or it belongs to another tenant, which looks the same)."""

    def __init__(self, job_id: UUID | str) -> None:
        super().__init__(f"job {job_id} not found")
        self.job_id = job_id


class ScheduleNotFound(SkiplockError, LookupError):
    """No schedule of that name."""

    def __init__(self, name: str) -> None:
        super().__init__(f"schedule {name!r} not found")
        self.name = name


class JobStateConflict(SkiplockError):
    """The job exists but is not in a state that allows the operation."""

    def __init__(self, job_id: UUID, state: str, operation: str, why: str = "") -> None:
        super().__init__(f"cannot {operation} job {job_id}: it is {state}{why}")
        self.job_id = job_id
        self.state = state
        self.operation = operation


class IdempotencyConflict(SkiplockError):
    """The idempotency key is already used by a job made by a different request."""

    def __init__(self, tenant: str, key: str, job_id: UUID) -> None:
        super().__init__(
            f"idempotency key {key!r} of tenant {tenant!r} already belongs to job {job_id} "
            "made by a different request"
        )
        self.tenant = tenant
        self.key = key
        self.job_id = job_id


class DatabaseUnavailable(SkiplockError):
    """The database could not complete a call: unreachable, restarting, out of
    connections, the connection lost mid-call, a deadlock or a statement timeout.

    ``retry_safe``: whether making the same call again cannot do anything twice.
    Reads and cancels are safe; ``retry`` is not (the job may already be back in
    the queue, or running); an enqueue is safe when the same :class:`JobSpec` is
    sent again (its client-made id finds the job if the first send committed),
    and ``Client.enqueue`` is when it has an idempotency key. On the
    application's own connection it is never safe: the transaction is gone and
    must be redone as a whole. ``operation``: the client method.
    ``__cause__`` holds the driver's exception.
    """

    def __init__(
        self,
        operation: str,
        cause: BaseException,
        *,
        retry_safe: bool,
        own_transaction: bool = False,
    ) -> None:
        if own_transaction:
            advice = "the application's transaction is lost with its connection: redo it"
        elif retry_safe:
            advice = "calling it again is safe"
        else:
            advice = "calling it again is not known to be safe: check the job first"
        super().__init__(
            f"the database is unavailable: {operation} failed ({type(cause).__name__}: "
            f"{cause}); {advice}"
        )
        self.operation = operation
        self.retry_safe = retry_safe


class SchemaMismatch(SkiplockError):
    """The database schema is missing, older or newer than this version of skiplock."""


# Errors that mean "the database cannot do this right now": unreachable,
# restarting, out of connections, a deadlock or a statement timeout. Loops
# retry them with backoff instead of letting them end the process.
# InternalClientError too: when a server shuts down (restart, pg_terminate_backend)
# an idle asyncpg connection may read the FATAL message before the end of the
# stream; its next query then fails with "cannot switch to state …; another
# operation (2) is in progress" instead of a connection error. The server has
# closed that connection: it is gone once the end of the stream is read, and
# the pool connects anew, so trying again is right.
# DatabaseUnavailable too: the client's own name for the same thing.
TRANSIENT_DB_ERRORS: tuple[type[BaseException], ...] = (
    DatabaseUnavailable,
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)

# The narrower set the client turns into DatabaseUnavailable: the server cannot be
# reached or went away (a lost connection, a restart, an administrator's kill, too
# many connections), or the statement was cancelled or rolled back (statement
# timeout, deadlock, serialization failure). Other server errors are bugs or
# setup problems and are not hidden behind "unavailable".
UNAVAILABLE_DB_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.TransactionRollbackError,
)
