"""The ``skiplock`` command (click), one module per command group.

``main`` (the ``skiplock`` script and ``python -m skiplock``) and ``cli`` (the
click group, for tests and embedding) are the public names.
"""

from skiplock._extras import require

require("cli")  # names the extra to install, before the imports that need it

from skiplock.cli.main import cli, main

__all__ = ["cli", "main"]
