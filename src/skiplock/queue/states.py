"""The public state vocabulary of a job."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["ACTIVE_STATES", "TERMINAL_STATES", "JobState"]


class JobState(StrEnum):
    """Where a job is in its life.

    ``queued`` → ``running`` → ``succeeded`` | ``failed`` | ``cancelled``, and back
    from ``running`` to ``queued`` for a retry. A job waiting for its retry or its
    scheduled time is ``queued`` with ``run_at`` in the future.
    """

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """Whether the job has ended (it carries ``finished_at``)."""
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
ACTIVE_STATES = frozenset({JobState.QUEUED, JobState.RUNNING})
