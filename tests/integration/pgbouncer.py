"""A throwaway PgBouncer in transaction mode in front of the suite's PostgreSQL.

:class:`PgBouncer` writes its own ``pgbouncer.ini`` and ``userlist.txt`` into
a temporary directory, starts Debian's ``pgbouncer`` on a free 127.0.0.1 port
with ``pool_mode = transaction`` and a small server pool per database (so
client transactions really are multiplexed over a few server connections),
and forwards every database name to the same name on the target server
(``* = host=… port=…``). Client authentication is ``trust`` (the name must
still be listed in the user list); PgBouncer logs in to the server with the
target DSN's user and password.

PgBouncer refuses to run as root ("PgBouncer should not run as root"); when
this process is root it runs as an unprivileged account (``nobody``, as the
throwaway PostgreSQL does), which only needs to read the two files.

On Linux the process gets ``PR_SET_PDEATHSIG`` (SIGKILL) so it never outlives
the test process, even one killed with SIGKILL.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit, urlunsplit

from skiplock.testing import free_port, port_accepts

__all__ = ["PgBouncer", "bouncer_binary"]

_PR_SET_PDEATHSIG = 1


def bouncer_binary() -> str | None:
    """The ``pgbouncer`` executable (PATH, then Debian's /usr/sbin), or None."""
    found = shutil.which("pgbouncer")
    if found is not None:
        return found
    debian = Path("/usr/sbin/pgbouncer")
    return str(debian) if debian.is_file() and os.access(debian, os.X_OK) else None


class _PortInUse(RuntimeError):
    pass


def _quote(value: str) -> str:
    """A value for a libpq-style ``key=value`` string in pgbouncer.ini."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _die_with_parent(parent: int) -> Callable[[], None] | None:
    if sys.platform != "linux":
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def preexec() -> None:  # runs in the child, after the uid switch
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return preexec


class PgBouncer:
    """PgBouncer (transaction pooling) in front of the server of ``target_dsn``.

    >>> with PgBouncer(admin_dsn) as bouncer:  # doctest: +SKIP
    ...     url = bouncer.dsn_for(db_dsn)  # the same database, through PgBouncer
    """

    def __init__(
        self,
        target_dsn: str,
        *,
        pool_size: int = 4,
        run_as: str = "nobody",
        startup_timeout: float = 15.0,
    ) -> None:
        binary = bouncer_binary()
        if binary is None:
            raise FileNotFoundError("pgbouncer is not installed (apt-get install pgbouncer)")
        self.binary = binary
        target = urlsplit(target_dsn)
        if target.hostname is None or target.username is None:
            raise ValueError(f"the target DSN needs a host and a user: {target_dsn!r}")
        self._target = target
        self.pool_size = pool_size
        self.startup_timeout = startup_timeout
        self._account = pwd.getpwnam(run_as) if os.geteuid() == 0 else None
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    # -- use -----------------------------------------------------------------

    def dsn_for(self, dsn: str) -> str:
        """``dsn`` (a database on the target server) rewritten to go through PgBouncer."""
        parts = urlsplit(dsn)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@127.0.0.1:{self.port}" if userinfo else f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    def log_tail(self, lines: int = 40) -> str:
        """The end of PgBouncer's log."""
        if self._dir is None:
            return ""
        path = self._dir / "pgbouncer.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> Self:
        """Write the configuration, start PgBouncer, wait until it accepts connections.

        A free port can be taken by someone else before PgBouncer binds it: then
        it is tried again on another port (three times in all).
        """
        self._dir = Path(tempfile.mkdtemp(prefix="skiplock-pgbouncer-"))
        self._dir.chmod(0o755)
        for attempt in range(3):
            try:
                self._launch()
                return self
            except _PortInUse:
                if attempt == 2:
                    self.stop()
                    raise
            except BaseException:
                self.stop()
                raise
        raise AssertionError("unreachable")

    def _launch(self) -> None:
        assert self._dir is not None
        self.port = free_port()
        ini = self._dir / "pgbouncer.ini"
        users = self._dir / "userlist.txt"
        users.write_text(f'"{self._target.username}" ""\n')
        ini.write_text(self._ini(users))
        for path in (ini, users):
            path.chmod(0o644)
        kwargs: dict[str, Any] = {}
        if self._account is not None:
            gid = self._account.pw_gid
            kwargs.update(user=self._account.pw_uid, group=gid, extra_groups=[gid])
        log_path = self._dir / "pgbouncer.log"
        log_path.unlink(missing_ok=True)
        with open(log_path, "ab") as log_file:
            self._proc = subprocess.Popen(
                [self.binary, str(ini)],
                cwd=self._dir,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent(os.getpid()),  # only a prctl call: safe after fork
                **kwargs,
            )
        deadline = time.monotonic() + self.startup_timeout
        while not port_accepts(self.port):
            code = self._proc.poll()
            if code is not None:
                tail = self.log_tail()
                self._proc = None
                error = _PortInUse if "Address already in use" in tail else RuntimeError
                raise error(f"pgbouncer exited with {code} during startup; its log:\n{tail}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"pgbouncer did not accept connections within {self.startup_timeout}s; "
                    f"its log:\n{self.log_tail()}"
                )
            time.sleep(0.01)  # waiting for the child to open its port, as pgserver does

    def stop(self, timeout: float = 10.0) -> None:
        """Stop PgBouncer (immediate shutdown) and remove its directory."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with contextlib.suppress(Exception):
            self.stop()

    def _ini(self, users: Path) -> str:
        t = self._target
        host, user = _quote(t.hostname or ""), _quote(t.username or "")
        server = f"host={host} port={t.port or 5432} user={user}"
        if t.password:
            server += f" password={_quote(t.password)}"
        return "\n".join(
            [
                "[databases]",
                f"* = {server}",
                "",
                "[pgbouncer]",
                "listen_addr = 127.0.0.1",
                f"listen_port = {self.port}",
                "unix_socket_dir =",
                "auth_type = trust",
                f"auth_file = {users}",
                "pool_mode = transaction",
                f"default_pool_size = {self.pool_size}",
                "min_pool_size = 0",
                "reserve_pool_size = 0",
                "max_client_conn = 1000",
                "max_db_connections = 0",
                "server_reset_query =",
                "ignore_startup_parameters = extra_float_digits",
                "log_connections = 0",
                "log_disconnections = 0",
                "",
            ]
        )
