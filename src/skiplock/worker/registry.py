"""Tasks registered by name with a decorator."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from skiplock.queue.flow import Limit, check_limit
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

    def get(self, name: str) -> Task | None:
        """The task called ``name``, if registered."""
        return self._tasks.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    def __iter__(self) -> Iterator[Task]:
        return iter(self._tasks.values())

    def __len__(self) -> int:
        return len(self._tasks)
