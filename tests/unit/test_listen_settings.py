"""Where workers and the API listen, and the statement cache: settings and their errors."""

from __future__ import annotations

import pytest

from skiplock import WorkerSettings
from skiplock.api import ApiSettings
from skiplock.config import Settings
from skiplock.queue.listener import POLL_ONLY, check_listen_url, listen_dsn

MAIN = "postgresql://app@pgbouncer:6432/app"
DIRECT = "postgresql://app@db:5432/app"


@pytest.mark.parametrize(
    ("listen_url", "expected"),
    [
        (None, MAIN),
        ("", MAIN),
        ("  ", MAIN),
        (DIRECT, DIRECT),
        (f" {DIRECT} ", DIRECT),
        ("postgres://app@db/app", "postgres://app@db/app"),
        ("none", None),
        ("NONE", None),
    ],
)
def test_listen_dsn(listen_url: str | None, expected: str | None) -> None:
    """Unset: the main URL; a URL: that one; "none": no LISTEN at all."""
    assert listen_dsn(MAIN, listen_url) == expected


@pytest.mark.parametrize("bad", ["off", "db:5432", "host=db dbname=app", "mysql://db/app"])
def test_listen_url_refuses_anything_else(bad: str) -> None:
    """A value that is neither a postgresql:// URL nor "none" is a clear error, not a retry loop."""
    with pytest.raises(ValueError, match="listen_url must be a postgresql:// URL"):
        check_listen_url(bad)


def test_environment_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """SKIPLOCK_LISTEN_URL and SKIPLOCK_STATEMENT_CACHE_SIZE, the same in both settings classes."""
    monkeypatch.setenv("SKIPLOCK_LISTEN_URL", "None")
    monkeypatch.setenv("SKIPLOCK_STATEMENT_CACHE_SIZE", "0")
    for settings in (Settings(), ApiSettings()):
        assert settings.listen_url == POLL_ONLY
        assert settings.statement_cache_size == 0
    monkeypatch.setenv("SKIPLOCK_LISTEN_URL", "")
    monkeypatch.delenv("SKIPLOCK_STATEMENT_CACHE_SIZE")
    for settings in (Settings(), ApiSettings()):
        assert settings.listen_url is None
        assert settings.statement_cache_size == 100


@pytest.mark.parametrize(
    ("name", "value"),
    [("SKIPLOCK_LISTEN_URL", "db:5432"), ("SKIPLOCK_STATEMENT_CACHE_SIZE", "-1")],
)
def test_environment_errors(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    """Bad values are refused when the settings are read."""
    monkeypatch.setenv(name, value)
    for cls in (Settings, ApiSettings):
        with pytest.raises(ValueError, match=name.removeprefix("SKIPLOCK_").lower()):
            cls()


def test_worker_settings_check_both() -> None:
    """WorkerSettings refuses the same bad values."""
    assert WorkerSettings(listen_url="none", statement_cache_size=0).listen_url == "none"
    with pytest.raises(ValueError, match="listen_url"):
        WorkerSettings(listen_url="db:5432")
    with pytest.raises(ValueError, match="statement_cache_size"):
        WorkerSettings(statement_cache_size=-1)
