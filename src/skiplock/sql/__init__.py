"""SQL as files: numbered migrations and named queries.

Every statement lives in a ``.sql`` file. A query's file name is the name of
the Python method that runs it (``queries/claim_jobs.sql`` is run by
``Store.claim_jobs``). In these files the word ``skiplock`` names the schema;
:func:`query` and :func:`migrations` substitute the configured schema name, which
:func:`validate_schema` restricts to a plain lowercase identifier so that the
substitution can never change a statement's meaning. Values are always passed
as ``$n`` parameters, never formatted in.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from importlib import resources

__all__ = ["Migration", "migrations", "query", "query_names", "validate_schema"]

_SCHEMA_RE = re.compile(r"^[a-z_][a-z0-9_]{0,47}$")
_WORD_RE = re.compile(r"\bskiplock\b")
_MIGRATION_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


def validate_schema(schema: str) -> str:
    """Return ``schema`` if it is a plain lowercase identifier, else raise ValueError."""
    if not _SCHEMA_RE.fullmatch(schema):
        raise ValueError(
            f"invalid schema name {schema!r}: use lowercase letters, digits and _ "
            "(at most 48 characters, not starting with a digit)"
        )
    return schema


def _for_schema(text: str, schema: str) -> str:
    return text if schema == "skiplock" else _WORD_RE.sub(schema, text)


@dataclass(frozen=True, slots=True)
class Migration:
    """One numbered, forward-only migration file."""

    version: int
    name: str
    text: str

    @property
    def checksum(self) -> str:
        """SHA-256 of the file as shipped (before schema substitution)."""
        return hashlib.sha256(self.text.encode()).hexdigest()

    def sql(self, schema: str) -> str:
        """The migration's statements for ``schema``."""
        return _for_schema(self.text, validate_schema(schema))


@functools.cache
def migrations() -> tuple[Migration, ...]:
    """Every migration shipped with this version, in order."""
    found: list[Migration] = []
    for entry in resources.files(__package__).joinpath("migrations").iterdir():
        match = _MIGRATION_RE.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migration numbers must run 1, 2, 3… without gaps: {versions}")
    return tuple(found)


@functools.cache
def query_names() -> tuple[str, ...]:
    """The names of every shipped query."""
    folder = resources.files(__package__).joinpath("queries")
    return tuple(sorted(e.name[:-4] for e in folder.iterdir() if e.name.endswith(".sql")))


@functools.cache
def query(name: str, schema: str = "skiplock") -> str:
    """The text of query ``name`` for ``schema``."""
    text = resources.files(__package__).joinpath("queries", f"{name}.sql").read_text("utf-8")
    return _for_schema(text, validate_schema(schema))
