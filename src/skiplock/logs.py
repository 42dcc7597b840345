"""structlog setup: JSON when not on a terminal, readable console output when on one.

The standard library's logging (asyncpg's pool, uvicorn, Python warnings) goes
through the same renderer, so every line a worker or the API writes is JSON
off a terminal, tracebacks included.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

__all__ = ["configure_logging"]


class _SkiplockHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The root handler configure_logging installs (replaced, not added, when called again).

    It writes to whatever ``sys.stderr`` is at the time of each record, as the
    structlog side does for a process whose stderr is swapped (test runners).
    """

    def emit(self, record: logging.LogRecord) -> None:
        """Write one record to the current ``sys.stderr``."""
        self.stream = sys.stderr
        super().emit(record)


_PROCESSORS: list[structlog.typing.Processor] = []


def configure_logging(
    fmt: Literal["auto", "json", "console"] | str = "auto", level: str = "info"
) -> None:
    """Configure structlog and the standard library's logging once for a process.

    Both write to stderr through one renderer: JSON lines when ``fmt`` is
    ``json`` (or ``auto`` off a terminal), colourful console lines otherwise.
    Standard-library records carry their logger's name as ``logger`` and their
    traceback as ``exception``. Python warnings are logged too. The CLI calls
    this; calling it again replaces the previous setup.
    """
    numeric = logging.getLevelNamesMapping().get(level.upper())
    if numeric is None:
        raise ValueError(f"unknown log level {level!r}")
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # One list, changed in place: loggers cached on first use keep a reference to
    # it, so they follow a later call (and structlog.testing.capture_logs, which
    # edits the configured list in place) instead of keeping the first setup.
    _PROCESSORS[:] = [*shared, structlog.processors.format_exc_info, renderer]
    structlog.configure(
        processors=_PROCESSORS,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )

    handler = _SkiplockHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _SkiplockHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    logging.captureWarnings(True)
