"""skiplock: durable asyncio jobs whose only moving part is PostgreSQL.

Enqueue with :class:`Client`, run with a :class:`Worker` and the tasks of a
:class:`TaskRegistry`, install the schema with :func:`migrate`.

``pip install skiplock`` is enough to enqueue and read jobs; the worker needs
``skiplock[worker]``, the status API ``skiplock[api]`` and the ``skiplock``
command ``skiplock[cli]`` (which includes both).
"""

from typing import TYPE_CHECKING, Any

from skiplock.queue import (
    ALL_TENANTS,
    Client,
    DatabaseUnavailable,
    FairWeight,
    IdempotencyConflict,
    InvalidJob,
    InvalidSetting,
    Job,
    JobError,
    JobNotFound,
    JobSpec,
    JobState,
    JobStateConflict,
    Limit,
    LimitSummary,
    LimitUsage,
    Page,
    QueueFlow,
    QueueSettings,
    Schedule,
    ScheduleNotFound,
    SchemaMismatch,
    SkiplockError,
    SyncClient,
    check_schema,
    migrate,
)

if TYPE_CHECKING:
    from skiplock.worker import (
        Cancelled,
        Fail,
        JobContext,
        Retry,
        RetryPolicy,
        Snooze,
        TaskRegistry,
        Worker,
        WorkerSettings,
    )

_WORKER_NAMES = frozenset(
    {
        "Cancelled",
        "Fail",
        "JobContext",
        "Retry",
        "RetryPolicy",
        "Snooze",
        "TaskRegistry",
        "Worker",
        "WorkerSettings",
    }
)


def __getattr__(name: str) -> Any:
    """The worker's names, imported on first use: the core install (no extras) only enqueues."""
    if name in _WORKER_NAMES:
        from skiplock import worker  # MissingExtra names skiplock[worker] when it is not installed

        return getattr(worker, name)
    raise AttributeError(f"module 'skiplock' has no attribute {name!r}")


__version__ = "0.1.0"

__all__ = [
    "ALL_TENANTS",
    "Cancelled",
    "Client",
    "DatabaseUnavailable",
    "Fail",
    "FairWeight",
    "IdempotencyConflict",
    "InvalidJob",
    "InvalidSetting",
    "Job",
    "JobContext",
    "JobError",
    "JobNotFound",
    "JobSpec",
    "JobState",
    "JobStateConflict",
    "Limit",
    "LimitSummary",
    "LimitUsage",
    "Page",
    "QueueFlow",
    "QueueSettings",
    "Retry",
    "RetryPolicy",
    "Schedule",
    "ScheduleNotFound",
    "SchemaMismatch",
    "SkiplockError",
    "Snooze",
    "SyncClient",
    "TaskRegistry",
    "Worker",
    "WorkerSettings",
    "__version__",
    "check_schema",
    "migrate",
]
