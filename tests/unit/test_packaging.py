"""The wheel's core and extras, the lock files and the image that installs from one.

``pip install skiplock`` (the core) must be enough to enqueue: the modules an
enqueuing app loads import only the core dependencies, and the parts that need
an extra say which one when it is missing.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from skiplock._extras import EXTRAS

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "skiplock"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PROJECT = PYPROJECT["project"]

# What an app that only enqueues loads: `import skiplock`, the Client, JobSpec, migrate.
CORE_FILES = sorted(
    [
        *(SRC / "sql").rglob("*.py"),
        *(SRC / "queue").rglob("*.py"),
        SRC / "__init__.py",
        SRC / "_extras.py",
        SRC / "logs.py",
        SRC / "tracing.py",
    ]
)
# tracing.py imports opentelemetry-api only when the app has it (the otel extra).
OPTIONAL_IN = {"tracing.py": {"opentelemetry"}}


def _module(requirement: str) -> str:
    """The import name of a distribution (all of skiplock's dependencies follow the rule)."""
    return canonicalize_name(Requirement(requirement).name).replace("-", "_")


def _extra_requirements(extra: str) -> list[Requirement]:
    """The requirements of an extra, with skiplock's own extras it names expanded."""
    found: list[Requirement] = []
    for text in PROJECT["optional-dependencies"][extra]:
        req = Requirement(text)
        if canonicalize_name(req.name) == "skiplock":
            for inner in sorted(req.extras):
                found.extend(_extra_requirements(inner))
        else:
            found.append(req)
    return found


CORE_MODULES = {_module(r) for r in PROJECT["dependencies"]}
EXTRA_MODULES = {
    _module(str(r)) for extra in EXTRAS for r in _extra_requirements(extra)
} - CORE_MODULES


def _top_level_imports(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports, outside ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_core_dependencies_are_the_queue_layers_own() -> None:
    """The core is asyncpg, anyio, structlog and orjson; nothing of the API or the CLI."""
    assert {"asyncpg", "anyio", "structlog", "orjson"} == CORE_MODULES
    assert {"click", "starlette", "uvicorn", "prometheus_client"} <= EXTRA_MODULES


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: str(p.relative_to(SRC)))
def test_core_modules_import_only_core_dependencies(path: Path) -> None:
    """Each core module imports the standard library, skiplock and core dependencies only."""
    allowed = (
        set(sys.stdlib_module_names)
        | CORE_MODULES
        | {"skiplock"}
        | OPTIONAL_IN.get(path.name, set())
    )
    assert sorted(_top_level_imports(path) - allowed) == []


def test_extras_table_matches_pyproject() -> None:
    """skiplock._extras names, for each extra, modules that the extra really installs."""
    assert set(EXTRAS) <= set(PROJECT["optional-dependencies"])
    for extra, (_, modules) in EXTRAS.items():
        installed = {_module(str(r)) for r in _extra_requirements(extra)}
        assert set(modules) <= installed, extra


# Run in a child: every module of the extras made unimportable, as in a core-only install.
_BLOCKER = """
import importlib.abc, sys
BLOCKED = set({blocked!r})
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked)", name=name)
        return None
sys.meta_path.insert(0, Blocker())
"""


def _core_only(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a Python whose extras' modules cannot be imported."""
    program = _BLOCKER.format(blocked=sorted(EXTRA_MODULES)) + textwrap.dedent(code)
    return subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )


def test_enqueue_side_works_with_the_core_only() -> None:
    """import skiplock, the Client, JobSpec, migrate and skiplock.testing load without extras."""
    done = _core_only(
        """
        import skiplock
        from skiplock import Client, JobSpec, JobState, migrate, check_schema
        import skiplock.queue, skiplock.sql, skiplock.testing, skiplock.logs
        JobSpec(task="t", args={"n": 1})
        loaded = sorted({m.split(".")[0] for m in sys.modules} & BLOCKED)
        print("loaded:", loaded)
        """
    )
    assert done.returncode == 0, done.stderr
    assert "loaded: []" in done.stdout


@pytest.mark.parametrize(
    ("code", "extra"),
    [
        ("from skiplock import Worker", "worker"),
        ("import skiplock.worker", "worker"),
        ("from skiplock.api import create_app", "api"),
        ("import skiplock.cli", "cli"),
    ],
)
def test_a_missing_extra_is_named(code: str, extra: str) -> None:
    """Using a part without its extra raises MissingExtra saying what to install."""
    done = _core_only(
        f"""
        from skiplock._extras import MissingExtra
        try:
            {code}
        except MissingExtra as exc:
            print("MISSING", exc)
        """
    )
    assert done.returncode == 0, done.stderr
    assert "MISSING " in done.stdout
    assert f"pip install 'skiplock[{extra}]'" in done.stdout


def test_the_command_without_its_extra_says_what_to_install() -> None:
    """`python -m skiplock` without the cli extra: one line on stderr, exit 1, no traceback."""
    done = _core_only(
        """
        import runpy
        sys.argv = ["skiplock", "--help"]
        runpy.run_module("skiplock", run_name="__main__")
        """
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "pip install 'skiplock[cli]'" in done.stderr


def _locked(name: str) -> dict[str, str]:
    """Package → pinned version of a requirements/*.lock file."""
    pins: dict[str, str] = {}
    for line in (ROOT / "requirements" / name).read_text(encoding="utf-8").splitlines():
        if line and not line.startswith((" ", "#")):
            req = Requirement(line.rstrip(" \\"))
            (spec,) = req.specifier
            assert spec.operator == "==", line
            pins[canonicalize_name(req.name)] = spec.version
    return pins


def _check_pinned(requirements: list[Requirement], pins: dict[str, str]) -> None:
    for req in requirements:
        if req.marker is not None and not req.marker.evaluate():
            continue
        name = canonicalize_name(req.name)
        assert name in pins, f"{req} is not in the lock file: run scripts/lock"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"{req} but the lock file pins {pins[name]}: run scripts/lock"
        )


def test_dev_lock_pins_everything_pyproject_asks_for() -> None:
    """requirements/dev.lock holds the core, every extra and the dev group, as pyproject says."""
    wanted = [Requirement(r) for r in PROJECT["dependencies"]]
    for extra in PROJECT["optional-dependencies"]:
        wanted.extend(_extra_requirements(extra))
    wanted.extend(Requirement(r) for r in PYPROJECT["dependency-groups"]["dev"])
    _check_pinned(wanted, _locked("dev.lock"))


def test_cli_lock_pins_the_core_and_the_cli_extra() -> None:
    """requirements/cli.lock (the image's) holds the core and the cli extra, nothing of dev."""
    pins = _locked("cli.lock")
    _check_pinned(
        [Requirement(r) for r in PROJECT["dependencies"]] + _extra_requirements("cli"), pins
    )
    assert "pytest" not in pins


def test_image_installs_from_the_lock_file_with_hashes() -> None:
    """The image installs requirements/cli.lock hash-checked, then the wheel without deps."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert "COPY requirements/cli.lock" in text
    assert "pip install --require-hashes -r /wheels/cli.lock" in text
    assert "pip install --no-deps /wheels/*.whl" in text
