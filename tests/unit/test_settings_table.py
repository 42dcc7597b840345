"""The README's settings table names every SKIPLOCK_* variable the code reads, and no other."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic_settings import BaseSettings

from skiplock.api.settings import ApiSettings
from skiplock.config import DatabaseSettings, Settings

ROOT = Path(__file__).resolve().parents[2]
VARIABLE = re.compile(r"\bSKIPLOCK_[A-Z0-9_]*[A-Z0-9]\b")

SETTINGS_CLASSES: list[type[BaseSettings]] = [DatabaseSettings, Settings, ApiSettings]
"""Every pydantic-settings class of the package (a new one must be added here)."""


def _from_settings(cls: type[BaseSettings]) -> set[str]:
    """The environment variable of each field: its alias, else the prefix and its name."""
    prefix = str(cls.model_config.get("env_prefix", ""))
    return {(field.alias or f"{prefix}{name}").upper() for name, field in cls.model_fields.items()}


def _in_source() -> set[str]:
    """Every SKIPLOCK_* name written in the package (click envvars, messages, lookups)."""
    names: set[str] = set()
    for path in (ROOT / "src" / "skiplock").rglob("*.py"):
        names.update(VARIABLE.findall(path.read_text(encoding="utf-8")))
    return names


def _in_readme_table() -> set[str]:
    """The variables of the README's settings table (its rows' first cells)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `(SKIPLOCK_[A-Z0-9_]+)` \|", section, re.MULTILINE))


def test_every_settings_class_is_listed() -> None:
    """No BaseSettings subclass in the package escapes the check."""
    found: set[tuple[str, str]] = set()
    for path in (ROOT / "src" / "skiplock").rglob("*.py"):
        found.update(re.findall(r"^class (\w+)\((\w*Settings)\)", path.read_text(), re.MULTILINE))
    assert {name for name, _ in found} == {cls.__name__ for cls in SETTINGS_CLASSES}


def test_readme_settings_table_matches_the_code() -> None:
    """Every variable the code reads is in the table, and the table names no other."""
    used = _in_source() | set().union(*map(_from_settings, SETTINGS_CLASSES))
    documented = _in_readme_table()
    assert sorted(used - documented) == [], "add these to README.md's settings table"
    assert sorted(documented - used) == [], "the code reads no such variable"
