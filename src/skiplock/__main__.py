"""``python -m skiplock``: the same command as the ``skiplock`` script (see skiplock.cli)."""

from skiplock.cli import cli, main

__all__ = ["cli", "main"]

if __name__ == "__main__":
    main()
