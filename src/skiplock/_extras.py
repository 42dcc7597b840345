"""The optional parts of skiplock and the extra that installs each.

The core (``pip install skiplock``) enqueues and reads jobs: ``Client``,
``JobSpec``, ``migrate``. The worker, the status API and the ``skiplock``
command need more; :func:`require` turns a missing dependency into an error
that names the extra to install instead of a bare ``No module named …``.
"""

from __future__ import annotations

import importlib.util

__all__ = ["EXTRAS", "MissingExtra", "require"]

EXTRAS: dict[str, tuple[str, tuple[str, ...]]] = {
    # extra: (what needs it, the modules it installs)
    "worker": ("the skiplock worker (skiplock.worker)", ("prometheus_client",)),
    "api": (
        "the status API (skiplock.api)",
        (
            "starlette",
            "sse_starlette",
            "uvicorn",
            "prometheus_client",
            "pydantic",
            "pydantic_settings",
            "jsonschema",
        ),
    ),
    "cli": (
        "the skiplock command (skiplock.cli)",
        (
            "click",
            "pydantic_settings",
            "prometheus_client",
            "starlette",
            "sse_starlette",
            "uvicorn",
            "jsonschema",
        ),
    ),
}
"""What each extra of the wheel (``skiplock[worker]``, ``[api]``, ``[cli]``) makes importable."""


class MissingExtra(ImportError):
    """A part of skiplock was used without the extra that installs its dependencies."""


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # a parent package that cannot be imported, or an import hook saying no
        return False


def require(extra: str) -> None:
    """Raise :class:`MissingExtra`, naming the extra to install, if a module of it is missing."""
    feature, modules = EXTRAS[extra]
    missing = [m for m in modules if not _installed(m)]
    if missing:
        raise MissingExtra(
            f"{feature} needs the {extra!r} extra: pip install 'skiplock[{extra}]'"
            f" (missing: {', '.join(missing)})",
            name=missing[0],
        )
