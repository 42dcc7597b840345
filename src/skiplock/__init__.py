"""skiplock: durable asyncio jobs whose only moving part is PostgreSQL.

Enqueue with :class:`Client`, run with a :class:`Worker` and the tasks of a
:class:`TaskRegistry`, install the schema with :func:`migrate`.
"""

from skiplock.queue import (
    ALL_TENANTS,
    Client,
    DatabaseUnavailable,
    IdempotencyConflict,
    InvalidJob,
    Job,
    JobError,
    JobNotFound,
    JobSpec,
    JobState,
    JobStateConflict,
    Page,
    SchemaMismatch,
    SkiplockError,
    check_schema,
    migrate,
)
from skiplock.worker import (
    Cancelled,
    Fail,
    JobContext,
    Retry,
    RetryPolicy,
    TaskRegistry,
    Worker,
    WorkerSettings,
)

__version__ = "0.1.0"

__all__ = [
    "ALL_TENANTS",
    "Cancelled",
    "Client",
    "DatabaseUnavailable",
    "Fail",
    "IdempotencyConflict",
    "InvalidJob",
    "Job",
    "JobContext",
    "JobError",
    "JobNotFound",
    "JobSpec",
    "JobState",
    "JobStateConflict",
    "Page",
    "Retry",
    "RetryPolicy",
    "SchemaMismatch",
    "SkiplockError",
    "TaskRegistry",
    "Worker",
    "WorkerSettings",
    "__version__",
    "check_schema",
    "migrate",
]
