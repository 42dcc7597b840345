"""`--json` on every command that prints data (the README promises it)."""

from __future__ import annotations

from collections.abc import Iterator

import click

from skiplock.cli import cli

# Long-running commands: they print a log, not a result.
NO_RESULT = {"worker", "api", "demo"}


def _commands(group: click.Group, prefix: str = "") -> Iterator[tuple[str, click.Command]]:
    """Every leaf command, by its full name (``jobs list``)."""
    for name, command in sorted(group.commands.items()):
        full = f"{prefix}{name}"
        if isinstance(command, click.Group):
            yield from _commands(command, f"{full} ")
        else:
            yield full, command


def test_every_command_that_prints_data_has_json() -> None:
    """Each command but worker, api and demo takes --json."""
    names = dict(_commands(cli))
    assert set(names) >= NO_RESULT
    missing = [
        name
        for name, command in names.items()
        if name not in NO_RESULT
        and not any("--json" in getattr(p, "opts", ()) for p in command.params)
    ]
    assert missing == []
