"""Tasks registered by name with a decorator."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from skiplock.queue.flow import Limit, check_limit
from skiplock.queue.schedules import CatchUp, ScheduleDefinition
from skiplock.worker.retry import RetryPolicy

__all__ = ["Task", "TaskRegistry"]

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class Task:
    """A registered handler and how to run it.

    ``fn(ctx, **args)``: ``async def`` handlers run on the event loop, plain
    ``def`` handlers in worker threads. ``timeout`` (seconds) bounds one
    attempt; ``retry`` spaces the attempts. ``limit``: the limit declared for the
    key ``task:<name>`` (see :meth:`TaskRegistry.task`), if any.
    """

    name: str
    fn: Callable[..., Any]
    is_async: bool
    timeout: float | None
    retry: RetryPolicy
    limit: Limit | None = None


class TaskRegistry:
    """Maps task names to handlers.

    >>> tasks = TaskRegistry()
    >>> @tasks.task(timeout=60)
    ... async def render(ctx, *, video_id: str) -> dict: ...
    """

    def __init__(self) -> None:
        self._tasks: dict[str, Task] = {}
        self._schedules: dict[str, ScheduleDefinition] = {}

    def task(
        self,
        name: str | None = None,
        *,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        max_running: int | None = None,
        max_starts: int | None = None,
        per: float | None = None,
    ) -> Callable[[F], F]:
        """Register the decorated function under ``name`` (default: its ``__name__``).

        ``max_running``, ``max_starts`` per ``per`` seconds: a limit on the task's
        jobs fleet-wide (the key ``task:<name>``, see :meth:`Client.set_limit`),
        written by a worker at start when that key has no limit yet — so a change
        made at run time (``skiplock limits set``) is kept across restarts.
        """
        if timeout is not None and timeout <= 0:
            raise ValueError("timeout must be positive")
        limited = max_running is not None or max_starts is not None or per is not None

        def register(fn: F) -> F:
            task_name = name or fn.__name__
            if task_name in self._tasks:
                raise ValueError(f"task {task_name!r} is already registered")
            limit = None
            if limited:
                pattern, running, starts, seconds = check_limit(
                    f"task:{task_name}", max_running, max_starts, per
                )
                limit = Limit(pattern, running, starts, seconds)
            self._tasks[task_name] = Task(
                name=task_name,
                fn=fn,
                is_async=inspect.iscoroutinefunction(fn),
                timeout=timeout,
                retry=retry or RetryPolicy(),
                limit=limit,
            )
            return fn

        return register

    def schedule(
        self,
        name: str,
        *,
        task: str,
        cron: str | None = None,
        every: float | timedelta | None = None,
        timezone: str = "UTC",
        args: Mapping[str, Any] | None = None,
        queue: str = "default",
        tenant: str = "default",
        priority: int = 0,
        max_attempts: int = 3,
        catch_up: CatchUp = "once",
    ) -> ScheduleDefinition:
        """Declare a periodic job: one job of ``task`` with ``args`` per tick, across
        every worker together (each tick is enqueued once, whatever their number).

        ``cron``: a five-field cron expression read in ``timezone`` (an IANA name;
        daylight saving time as Debian cron does it), or ``every``: seconds (or a
        timedelta, at least 0.01 s) between ticks. ``catch_up``, for ticks that
        passed while no worker ran: ``"skip"`` them, run the latest ``"once"``
        (default), or run ``"all"`` of them (the latest 1,000 at most). Workers
        write the definition at start; pause, resume, trigger or remove it with
        ``skiplock schedules …`` or the :class:`~skiplock.Client`. Raises
        :class:`~skiplock.InvalidSetting` for a bad definition.

        >>> tasks.schedule("nightly-cleanup", task="cleanup", cron="0 3 * * *",
        ...                timezone="Europe/Paris")  # doctest: +SKIP
        """
        if name in self._schedules:
            raise ValueError(f"schedule {name!r} is already declared")
        seconds = every.total_seconds() if isinstance(every, timedelta) else every
        definition = ScheduleDefinition(
            name=name,
            task=task,
            cron=cron,
            every_seconds=None if seconds is None else float(seconds),
            timezone=timezone,
            args=dict(args or {}),
            queue=queue,
            tenant=tenant,
            priority=priority,
            max_attempts=max_attempts,
            catch_up=catch_up,
        )
        if cron is not None:
            from skiplock.worker.scheduler import check_cron

            check_cron(cron)
        self._schedules[name] = definition
        return definition

    @property
    def schedules(self) -> list[ScheduleDefinition]:
        """The schedules declared with :meth:`schedule`, in order."""
        return list(self._schedules.values())

    def get(self, name: str) -> Task | None:
        """The task called ``name``, if registered."""
        return self._tasks.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    def __iter__(self) -> Iterator[Task]:
        return iter(self._tasks.values())

    def __len__(self) -> int:
        return len(self._tasks)
