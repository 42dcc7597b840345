"""Jobs in PostgreSQL: states, the job model, the SQL runner, the client, migrations."""

from skiplock.queue.client import Client
from skiplock.queue.errors import (
    DatabaseUnavailable,
    IdempotencyConflict,
    InvalidJob,
    InvalidSetting,
    JobNotFound,
    JobStateConflict,
    ScheduleNotFound,
    SchemaMismatch,
    SkiplockError,
)
from skiplock.queue.flow import (
    FairWeight,
    Limit,
    LimitSummary,
    LimitUsage,
    QueueFlow,
    QueueSettings,
)
from skiplock.queue.migrate import check_schema, migrate
from skiplock.queue.models import (
    ALL_TENANTS,
    AllTenants,
    Job,
    JobError,
    JobSpec,
    OnDuplicate,
    Page,
)
from skiplock.queue.schedules import Schedule
from skiplock.queue.states import TERMINAL_STATES, JobState
from skiplock.queue.store import Store
from skiplock.queue.sync import SyncClient

__all__ = [
    "ALL_TENANTS",
    "TERMINAL_STATES",
    "AllTenants",
    "Client",
    "DatabaseUnavailable",
    "FairWeight",
    "IdempotencyConflict",
    "InvalidJob",
    "InvalidSetting",
    "Job",
    "JobError",
    "JobNotFound",
    "JobSpec",
    "JobState",
    "JobStateConflict",
    "Limit",
    "LimitSummary",
    "LimitUsage",
    "OnDuplicate",
    "Page",
    "QueueFlow",
    "QueueSettings",
    "Schedule",
    "ScheduleNotFound",
    "SchemaMismatch",
    "SkiplockError",
    "Store",
    "SyncClient",
    "check_schema",
    "migrate",
]
