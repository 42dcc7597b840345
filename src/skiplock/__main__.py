"""``python -m skiplock`` and the ``skiplock`` script: the command of skiplock.cli.

Kept apart from skiplock.cli so that, installed without the ``cli`` extra, the
script says which extra to install instead of failing with a traceback.
"""

from __future__ import annotations

import sys

from skiplock._extras import MissingExtra

__all__ = ["main"]


def main() -> None:
    """Run the ``skiplock`` command; exit 1 with a one-line hint when the cli extra is missing."""
    try:
        from skiplock.cli import main as cli_main
    except MissingExtra as exc:
        sys.stderr.write(f"skiplock: {exc}\n")
        sys.exit(1)
    cli_main()


if __name__ == "__main__":
    main()
