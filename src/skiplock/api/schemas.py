"""The typed shapes of the status API: request bodies and response documents.

The routes validate requests with these models and shape their JSON answers
through them (:func:`render`), and :mod:`skiplock.api.openapi` generates the
OpenAPI document's schemas from them, so the document cannot drift from what
the routes send.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

__all__ = [
    "MODELS",
    "CreateJobBody",
    "ErrorInfo",
    "FairWeightDocument",
    "FlowQueues",
    "Health",
    "JobCount",
    "JobDocument",
    "JobLinks",
    "JobList",
    "LimitDocument",
    "LimitKey",
    "LimitList",
    "LimitUsageSummary",
    "Problem",
    "QueueFlowDocument",
    "QueueSwitches",
    "Readiness",
    "ScheduleDocument",
    "ScheduleList",
    "SetLimitBody",
    "ShareLink",
    "Stats",
    "TaskWindow",
    "TriggeredJob",
    "Windows",
    "render",
]

Timestamp = Annotated[str | None, Field(json_schema_extra={"format": "date-time"})]
State = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class _Out(BaseModel):
    """A response document: fields by alias, nothing unknown."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class CreateJobBody(BaseModel):
    """The body of ``POST /v1/jobs`` (the task's ``args`` are checked against its schema)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    task: str = Field(min_length=1, max_length=256)
    args: dict[str, Any] = Field(default_factory=dict)
    priority: int = Field(default=0, ge=-32768, le=32767)
    delay_seconds: float | None = Field(default=None, ge=0, le=366 * 24 * 3600)
    meta: dict[str, Any] = Field(default_factory=dict, description="JSON labels kept with the job.")
    expires_at: AwareDatetime | None = Field(
        default=None,
        description="RFC 3339 time with an offset: a job not started by then never starts "
        "(it ends cancelled, an Expired entry in its errors).",
    )
    timeout_seconds: float | None = Field(
        default=None,
        gt=0,
        le=366 * 24 * 3600,
        description="Seconds one attempt may run, instead of the task's own timeout.",
    )
    limit_keys: list[Annotated[str, Field(min_length=1, max_length=256)]] | None = Field(
        default=None,
        min_length=1,
        max_length=16,
        description="Keys whose limits apply to the job (e.g. user:42); distinct, and not "
        "starting with the reserved queue:, task: or tenant:.",
    )
    fairness_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="The group a fair queue claims round-robin (default: the tenant).",
    )
    unique: bool = Field(
        default=False,
        description="At most one queued or running job of the tenant with this task and args.",
    )
    unique_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="At most one queued or running job of the tenant holds this key.",
    )
    on_duplicate: Literal["keep", "replace", "extend"] | None = Field(
        default=None,
        description="When a queued or running job holds the unique key (the answer is then "
        "200 with that job): keep it (default), replace its args, meta, priority and run "
        "time, or extend (move) its run time. A running job is never changed.",
    )
    debounce: float | None = Field(
        default=None,
        ge=0,
        le=366 * 24 * 3600,
        description="Seconds: a unique job (by unique_key, else task and args) that runs this "
        "long after the last of a burst of creations; on_duplicate extend (or replace).",
    )


class ErrorInfo(_Out):
    """A failed attempt: what was raised, in which attempt, when."""

    type: str
    message: str
    attempt: int
    at: str


class JobLinks(_Out):
    """Routes the caller can use for this job (no ``cancel`` through a share link)."""

    self_: str = Field(alias="self")
    events: str
    cancel: str | None = None


class JobDocument(_Out):
    """A job as the API shows it. Tracebacks, arguments and lease details stay inside."""

    id: str = Field(json_schema_extra={"format": "uuid"})
    task: str
    queue: str
    state: State
    scheduled: bool = Field(description="Queued with run_at in the future.")
    progress: float | None = Field(ge=0, le=100)
    message: str | None
    eta: Timestamp
    attempt: int = Field(ge=0)
    max_attempts: int = Field(ge=1)
    priority: int
    cancel_requested: bool
    stalled: bool = Field(
        default=False,
        description="Running, but its lease was not renewed on time: its worker crashed, froze "
        "or was cut off, and progress and eta are stale until the job is rescued.",
    )
    result: Any = Field(description="The handler's JSON result, when succeeded.")
    result_omitted: bool = Field(
        default=False,
        description="The result is too big for this answer (result is null): read the job.",
    )
    error: ErrorInfo | None = Field(
        description="The error the job failed with: set only when state is failed."
    )
    errors: list[ErrorInfo] = Field(
        description="Every failed attempt, oldest first, whatever the state (a job may "
        "succeed after failed attempts)."
    )
    meta: dict[str, Any]
    run_at: Timestamp
    created_at: Timestamp
    updated_at: Timestamp
    started_at: Timestamp
    finished_at: Timestamp
    expires_at: Timestamp = Field(
        default=None, description="A job not started by then never starts (ends cancelled)."
    )
    timeout_seconds: float | None = Field(
        default=None, description="Seconds one attempt may run (null: the task's own timeout)."
    )
    limit_keys: list[str] | None = Field(
        default=None,
        description="Keys whose limits apply to the job: the ones given and the implicit "
        "queue:, task:, tenant: keys a limit matched (null: none; hidden in share links).",
    )
    fair_key: str | None = Field(
        default=None,
        description="The group a fair queue claims round-robin (null: none; hidden in share "
        "links).",
    )
    unique_key: str | None = Field(
        default=None,
        description="The job's unique key (null: not unique; hidden in share links).",
    )
    links: JobLinks
    tenant: str | None = Field(
        default=None, description="The job's tenant: only in answers to an admin key."
    )


class JobList(_Out):
    """One page of jobs, newest first; pass ``next_cursor`` as ``cursor`` for the next."""

    jobs: list[JobDocument]
    next_cursor: str | None


class ShareLink(_Out):
    """A signed read-only link to one job, valid until ``expires_at``."""

    token: str
    url: str
    events: str
    expires_at: str = Field(json_schema_extra={"format": "date-time"})


class Percentiles(_Out):
    """Median and 95th percentile, in seconds (null without data)."""

    p50: float | None
    p95: float | None


class TaskWindow(_Out):
    """One task's figures over a time window."""

    task: str
    succeeded: int
    failed: int
    cancelled: int
    throughput_per_minute: float
    failure_rate: float | None
    wait_seconds: Percentiles
    run_seconds: Percentiles


class Windows(_Out):
    """Per-task figures of the last 5 minutes, hour and day."""

    m5: list[TaskWindow] = Field(alias="5m")
    h1: list[TaskWindow] = Field(alias="1h")
    h24: list[TaskWindow] = Field(alias="24h")


class JobCount(_Out):
    """How many jobs of a queue and task are in a state."""

    queue: str
    task: str
    state: State
    count: int


class Stats(_Out):
    """Counts, throughput, failure rate and wait/run times of the tenant's jobs."""

    counts: list[JobCount]
    windows: Windows


class Health(_Out):
    """The process is alive."""

    status: Literal["ok"]


class Readiness(_Out):
    """The service is ready; ``checks`` says how each dependency is."""

    status: Literal["ready"]
    checks: dict[str, str]


class SetLimitBody(BaseModel):
    """The body of ``PUT /v1/admin/limits/{pattern}``: the whole limit (a field left out
    or null is no limit of that kind)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    max_running: int | None = Field(
        default=None, ge=0, le=1_000_000, description="At most this many jobs of a key running."
    )
    max_starts: int | None = Field(
        default=None,
        ge=0,
        le=1_000_000,
        description="At most this many jobs of a key starting per per_seconds window.",
    )
    per_seconds: float | None = Field(
        default=None, gt=0, le=31 * 86400, description="The rate window, with max_starts."
    )


class LimitUsageSummary(_Out):
    """A limit's usage summed over the keys it matches."""

    keys: int = Field(description="Keys in use (of due queued or running jobs, or with starts).")
    keys_at_limit: int = Field(description="Keys with no room left: their queued jobs wait.")
    running: int
    queued: int = Field(description="Due queued jobs carrying its keys.")
    throttled: int = Field(description="Due queued jobs waiting on a key at its limit.")


class LimitDocument(_Out):
    """A concurrency and/or rate limit on the keys a pattern matches."""

    pattern: str
    max_running: int | None
    max_starts: int | None
    per_seconds: float | None
    updated_at: Timestamp
    usage: LimitUsageSummary | None = None


class LimitKey(_Out):
    """A key at its limit, with the jobs waiting on it."""

    pattern: str
    key: str
    running: int
    starts: int | None = Field(description="Starts in the current window (null: no rate limit).")
    queued: int


class LimitList(_Out):
    """Every limit with its usage, and the keys at their limit (most waiting jobs first)."""

    limits: list[LimitDocument]
    at_limit: list[LimitKey]
    at_limit_truncated: bool = Field(description="More keys are at their limit than listed.")


class QueueSwitches(_Out):
    """A queue's switches."""

    name: str
    paused: bool
    fair: bool
    updated_at: Timestamp


class QueueFlowDocument(_Out):
    """A queue with jobs or switches: its switches, due queued, running, throttled jobs."""

    queue: str
    paused: bool
    fair: bool
    queued: int
    running: int
    throttled: int = Field(description="Due queued jobs carrying a key at its limit.")


class FairWeightDocument(_Out):
    """A fair key's weight (jobs per round) in a fair queue."""

    queue: str
    fair_key: str
    weight: int


class FlowQueues(_Out):
    """Every queue with jobs or switches, and the fair weights that are not the default."""

    queues: list[QueueFlowDocument]
    fair_weights: list[FairWeightDocument]


class ScheduleDocument(_Out):
    """A periodic job: when it ticks, what it enqueues, and where it is."""

    name: str
    task: str
    cron: str | None = Field(description="Five-field cron expression, read in `timezone`.")
    every_seconds: float | None = Field(description="Or: seconds between ticks.")
    timezone: str
    args: dict[str, Any] = Field(description="The arguments of each tick's job.")
    queue: str
    tenant: str
    priority: int
    max_attempts: int
    catch_up: Literal["skip", "once", "all"]
    paused: bool
    last_tick: Timestamp = Field(description="The last tick handled (enqueued or passed over).")
    next_tick: Timestamp = Field(description="The next tick due, as the workers computed it.")
    last_job_id: str | None
    declared_at: Timestamp = Field(description="When a worker last wrote the definition.")
    updated_at: Timestamp


class ScheduleList(_Out):
    """Every schedule, by name."""

    schedules: list[ScheduleDocument]


class TriggeredJob(_Out):
    """The job a manual trigger enqueued."""

    schedule: str
    job_id: str
    queue: str


class Problem(BaseModel):
    """An RFC 9457 problem document; ``code`` is stable and machine-readable."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str
    code: str


# Every model named in the OpenAPI document's components.
MODELS: tuple[type[BaseModel], ...] = (
    JobDocument,
    JobList,
    ShareLink,
    Stats,
    Health,
    Readiness,
    LimitDocument,
    LimitList,
    QueueSwitches,
    FlowQueues,
    ScheduleDocument,
    ScheduleList,
    TriggeredJob,
    Problem,
)


def render(model: type[BaseModel], data: Any) -> bytes:
    """``data`` validated by ``model`` and serialized as JSON (only the fields it carries)."""
    instance = model.model_validate(data)
    return instance.__pydantic_serializer__.to_json(instance, by_alias=True, exclude_unset=True)
