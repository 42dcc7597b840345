"""The SQL files: schema names, numbered migrations, named queries with headers."""

from __future__ import annotations

import hashlib
import re
from importlib import resources

import pytest

from skiplock import sql
from skiplock.queue.store import Store

# Checksums of released migrations. Migrations are forward-only: an applied
# file must never change (deployed databases would refuse it), so a failure
# here means "add a new migration instead". Pin a migration here when it ships.
RELEASED_CHECKSUMS = {
    1: "8600a41b0bdf5a269f8f0e52e51de65eb2c6fa14d05f27643be3c27f4589abc0",
    2: "5bcb35813173d120130cfb9feb95f217bfeb27b0d092d190cc6000299f37305f",
    3: "0a81169ac6f8c0af8d09c2d72452d2d9fe322853cba92a6cf3da65035769320e",
}


@pytest.mark.parametrize("schema", ["skiplock", "jobs_alt", "_x", "a" * 48, "s3"])
def test_plain_schema_names_accepted(schema: str) -> None:
    """Lowercase identifiers of up to 48 characters are valid schema names."""
    assert sql.validate_schema(schema) == schema


@pytest.mark.parametrize(
    "schema",
    ["", "Jobs", "1abc", "a-b", "a b", "a" * 49, 'x"; drop', "jobs.alt", "é", "abc\n"],
    ids=repr,
)
def test_other_schema_names_rejected(schema: str) -> None:
    """Anything but a plain lowercase identifier is refused with a clear ValueError."""
    with pytest.raises(ValueError, match=r"^invalid schema name .*: use lowercase letters"):
        sql.validate_schema(schema)


def test_store_validates_schema() -> None:
    """A Store cannot be built for an invalid schema name."""
    with pytest.raises(ValueError, match="invalid schema name"):
        Store("Bad-Schema")


def test_migrations_numbered_from_one_without_gaps() -> None:
    """Migrations come back ordered 1, 2, 3… with lowercase names."""
    found = sql.migrations()
    assert [m.version for m in found] == list(range(1, len(found) + 1))
    assert all(re.fullmatch(r"[a-z0-9_]+", m.name) for m in found)


def test_migrations_match_files_on_disk() -> None:
    """Every NNNN_name.sql file is a migration, with the file's exact text."""
    folder = resources.files("skiplock.sql").joinpath("migrations")
    on_disk = {e.name: e.read_text("utf-8") for e in folder.iterdir() if e.name.endswith(".sql")}
    assert {f"{m.version:04d}_{m.name}.sql": m.text for m in sql.migrations()} == on_disk


def test_checksum_is_sha256_of_text() -> None:
    """A migration's checksum is the SHA-256 of its shipped text."""
    for m in sql.migrations():
        assert m.checksum == hashlib.sha256(m.text.encode()).hexdigest()


def test_released_migrations_unchanged() -> None:
    """Released migrations keep their checksums (edit nothing applied; add a migration)."""
    shipped = {m.version: m.checksum for m in sql.migrations()}
    assert {v: shipped.get(v) for v in RELEASED_CHECKSUMS} == RELEASED_CHECKSUMS


def test_migration_sql_substitutes_schema_word() -> None:
    """Migration.sql(schema) renames the schema everywhere and nothing else."""
    m = sql.migrations()[0]
    text = m.sql("jobs_alt")
    assert re.search(r"\bskiplock\b", text) is None
    assert "CREATE TABLE jobs_alt.jobs" in text
    assert text.replace("jobs_alt", "skiplock") == m.text
    assert m.sql("skiplock") == m.text


def test_migration_sql_validates_schema() -> None:
    """Migration.sql refuses an invalid schema name."""
    with pytest.raises(ValueError, match="invalid schema name"):
        sql.migrations()[0].sql("x; drop table y")


def test_migration_files_start_with_header() -> None:
    """Every migration opens with a comment naming it: `-- NNNN_name:`."""
    for m in sql.migrations():
        assert m.text.startswith(f"-- {m.version:04d}_{m.name}: "), m.name


def test_query_names_are_the_sql_files() -> None:
    """query_names lists every queries/*.sql file, sorted."""
    folder = resources.files("skiplock.sql").joinpath("queries")
    files = sorted(e.name[:-4] for e in folder.iterdir() if e.name.endswith(".sql"))
    assert files
    assert list(sql.query_names()) == files


@pytest.mark.parametrize("name", sql.query_names())
def test_query_file_starts_with_header(name: str) -> None:
    """Each query file opens with `-- <name>: <purpose>` and documents its parameters."""
    text = sql.query(name)
    assert text.startswith(f"-- {name}: "), text.splitlines()[0]
    header = "\n".join(line for line in text.splitlines() if line.startswith("--"))
    assert "Parameters" in header


@pytest.mark.parametrize("name", sql.query_names())
def test_query_named_after_store_method(name: str) -> None:
    """Each query is run by the Store method of the same name."""
    assert callable(getattr(Store, name, None))


@pytest.mark.parametrize("name", sql.query_names())
def test_query_holds_one_statement(name: str) -> None:
    """A query file holds one statement and no trailing semicolon."""
    body = "\n".join(line for line in sql.query(name).splitlines() if not line.startswith("--"))
    assert ";" not in body


def test_query_substitutes_schema() -> None:
    """query(name, schema) names the given schema instead of skiplock."""
    text = sql.query("get_job", "jobs_alt")
    assert "FROM jobs_alt.jobs j" in text
    assert re.search(r"\bskiplock\b", text) is None


def test_query_validates_schema() -> None:
    """query refuses an invalid schema name."""
    with pytest.raises(ValueError, match="invalid schema name"):
        sql.query("get_job", "public.jobs; --")
