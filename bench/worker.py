"""The benchmark worker: one process running :class:`skiplock.Worker` on :mod:`bench.tasks`.

``python -m bench.worker --ready-file PATH [--dsn DSN] [--concurrency N]
[--max-claim-batch N] [--max-complete-batch N] [--lease S] [--progress-interval S]
[--rescue S] | --defaults]``
runs a worker through the public API (``Worker``, ``WorkerSettings``,
``TaskRegistry``) on ``DSN`` (default: ``SKIPLOCK_DATABASE_URL``) until
SIGTERM (graceful drain), logging at ``warning`` only, and creates ``PATH``
once the worker is claiming. :class:`WorkerProcess` starts one from a
benchmark and reads its memory from ``/proc``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import proc_status, spawn, stop, wait_ready
from skiplock import Worker, WorkerSettings
from skiplock.logs import configure_logging

# The fastest settings for a single worker process: big batches, many leases.
# A handler's slot frees when it returns, so many slots no longer pay: on
# 100,000 no-op jobs (one run each, shared machine) 10/4000 gave 8.0k jobs/s
# and 54 µs of worker CPU per job, 100/4000 10.2k and 48 µs, 1000 (max_leases
# 4000 by default) 5.6k and 72 µs, 4000 (16,000) 5.7-7.1k and 65-67 µs.
BEST = {
    "concurrency": 100,
    "max_leases": 4000,
    "max_claim_batch": 1000,
    "max_complete_batch": 2000,
}


@dataclasses.dataclass
class WorkerProcess:
    """A running ``python -m bench.worker`` subprocess."""

    proc: subprocess.Popen[bytes]

    @classmethod
    async def start(cls, dsn: str, **settings: Any) -> WorkerProcess:
        """Start a worker with :data:`BEST` settings (overridden by ``settings``); wait for it."""
        values = {**BEST, **settings}
        argv: list[str] = []
        for name, value in values.items():
            argv += [f"--{name.replace('_', '-')}", str(value)]
        return await cls._spawn(dsn, argv)

    @classmethod
    async def _spawn(cls, dsn: str, options: list[str]) -> WorkerProcess:
        with tempfile.TemporaryDirectory(prefix="skiplock-bench-") as tmp:
            ready = Path(tmp) / "ready"
            argv = [sys.executable, "-m", "bench.worker", "--ready-file", str(ready), *options]
            proc = spawn(argv, {"SKIPLOCK_DATABASE_URL": dsn})  # not in argv: ps shows argv

            async def is_ready() -> bool:
                return ready.exists()

            await wait_ready(proc, is_ready, "bench worker")
        return cls(proc)

    @classmethod
    async def start_defaults(cls, dsn: str) -> WorkerProcess:
        """Start a worker with ``WorkerSettings()`` as they come (``--defaults``); wait for it."""
        return await cls._spawn(dsn, ["--defaults"])

    @property
    def pid(self) -> int:
        """The worker's process id."""
        return self.proc.pid

    def rss(self) -> int:
        """Resident memory now (VmRSS), in bytes."""
        return proc_status(self.pid)["VmRSS"]

    def peak_rss(self) -> int:
        """Peak resident memory so far (VmHWM), in bytes."""
        return proc_status(self.pid)["VmHWM"]

    async def stop(self) -> None:
        """Graceful stop (SIGTERM: drain, write outcomes), then wait for the exit."""
        await asyncio.to_thread(stop, self.proc)


def main() -> None:
    """Run a worker until SIGTERM."""
    parser = argparse.ArgumentParser(description="A skiplock worker for the benchmarks.")
    parser.add_argument("--dsn", default=os.environ.get("SKIPLOCK_DATABASE_URL"))
    parser.add_argument("--ready-file", type=Path, required=True)
    parser.add_argument("--concurrency", type=int, default=BEST["concurrency"])
    parser.add_argument("--max-claim-batch", type=int, default=BEST["max_claim_batch"])
    parser.add_argument("--max-complete-batch", type=int, default=BEST["max_complete_batch"])
    parser.add_argument("--max-leases", type=int, default=BEST.get("max_leases"))
    parser.add_argument("--lease", type=float, default=30.0)
    parser.add_argument("--progress-interval", type=float, default=0.1)
    parser.add_argument(
        "--rescue", type=float, default=5.0, help="seconds between rescues and flow upkeep"
    )
    parser.add_argument(
        "--async-commit", type=int, choices=(0, 1), default=int(BEST.get("async_commit", 0))
    )
    parser.add_argument(
        "--schedule-every",
        type=float,
        default=None,
        help="declare the schedule 'bench-tick' of a no-op job every this many seconds",
    )
    parser.add_argument("--schedule-poll", type=float, default=1.0)
    parser.add_argument(
        "--defaults", action="store_true", help="WorkerSettings() as they come (ignores the rest)"
    )
    args = parser.parse_args()
    if not args.dsn:
        parser.error("give --dsn or set SKIPLOCK_DATABASE_URL")

    from bench.tasks import tasks  # the handlers live there

    if args.schedule_every is not None:
        tasks.schedule("bench-tick", task="noop", every=args.schedule_every, catch_up="all")

    configure_logging("console", "warning")
    worker = Worker(
        tasks,
        args.dsn,
        WorkerSettings()
        if args.defaults
        else WorkerSettings(
            concurrency=args.concurrency,
            max_claim_batch=args.max_claim_batch,
            max_complete_batch=args.max_complete_batch,
            max_leases=args.max_leases,
            lease=args.lease,
            progress_interval=args.progress_interval,
            rescue=args.rescue,
            async_commit=bool(args.async_commit),
            schedule_poll=args.schedule_poll,
        ),
    )

    async def run() -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(worker.run_until_signal())
            await worker.wait_started()
            args.ready_file.touch()

    asyncio.run(run())


if __name__ == "__main__":
    main()
