"""Render a schema from PostgreSQL's catalogs as stable, diffable text.

The text is the same on every supported PostgreSQL version (15 to 18): it
leaves out what a version adds on its own (PostgreSQL 18's catalogued NOT NULL
constraints, implicit row and array types, owners, OIDs) and prints each
object with the server's own deparsers under a fixed ``search_path``, so
every name outside ``pg_catalog`` comes out schema-qualified.
"""

from __future__ import annotations

from typing import Any

import asyncpg

__all__ = ["render_schema"]

_RELKINDS = {
    "r": "table",
    "p": "partitioned table",
    "v": "view",
    "m": "materialized view",
    "S": "sequence",
    "f": "foreign table",
    "c": "composite type",
}

_TABLES = """
SELECT c.oid, c.relname, c.relkind::text, c.relpersistence::text
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1 AND c.relkind <> 'i' AND c.relkind <> 'I'
ORDER BY c.relname
"""

_COLUMNS = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS type, a.attnotnull,
       pg_get_expr(d.adbin, d.adrelid) AS default, a.attidentity::text, a.attgenerated::text,
       CASE WHEN a.attcollation <> t.typcollation THEN co.collname END AS collation
FROM pg_attribute a
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
LEFT JOIN pg_collation co ON co.oid = a.attcollation
WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""

# contype 'n' (NOT NULL) exists from PostgreSQL 18 on; the columns carry it.
_CONSTRAINTS = """
SELECT c.conname, pg_get_constraintdef(c.oid) AS def
FROM pg_constraint c
WHERE c.conrelid = $1 AND c.contype <> 'n'
ORDER BY c.conname
"""

_INDEXES = """
SELECT c.relname, pg_get_indexdef(i.indexrelid) AS def
FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
WHERE i.indrelid = $1
ORDER BY c.relname
"""

_TRIGGERS = """
SELECT t.tgname, pg_get_triggerdef(t.oid) AS def
FROM pg_trigger t
WHERE t.tgrelid = $1 AND NOT t.tgisinternal
ORDER BY t.tgname
"""

_VIEW_COMMENT = "SELECT obj_description($1::oid, 'pg_class')"

# Enums and domains; leaves out the row types of relations and array types.
_TYPES = """
SELECT t.oid, t.typname, t.typtype::text,
       format_type(t.typbasetype, t.typtypmod) AS base, t.typnotnull,
       t.typdefault
FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
WHERE n.nspname = $1 AND t.typtype IN ('e', 'd')
ORDER BY t.typname
"""

_ENUM_LABELS = """
SELECT e.enumlabel FROM pg_enum e WHERE e.enumtypid = $1 ORDER BY e.enumsortorder
"""

_DOMAIN_CONSTRAINTS = """
SELECT c.conname, pg_get_constraintdef(c.oid) AS def
FROM pg_constraint c
WHERE c.contypid = $1 AND c.contype <> 'n'
ORDER BY c.conname
"""

_FUNCTIONS = """
SELECT p.proname, pg_get_function_identity_arguments(p.oid) AS args,
       pg_get_function_result(p.oid) AS result, l.lanname, p.prokind::text,
       p.provolatile::text, p.prosecdef, p.proconfig, p.prosrc
FROM pg_proc p
JOIN pg_namespace n ON n.oid = p.pronamespace
JOIN pg_language l ON l.oid = p.prolang
WHERE n.nspname = $1
ORDER BY p.proname, args
"""

_VOLATILITY = {"i": "immutable", "s": "stable", "v": "volatile"}
_PROKIND = {"f": "function", "p": "procedure", "a": "aggregate", "w": "window function"}


def _column(row: Any) -> str:
    parts = [f"    {row['attname']} {row['type']}"]
    if row["collation"]:
        parts.append(f'collate "{row["collation"]}"')
    if row["attnotnull"]:
        parts.append("not null")
    if row["attidentity"]:
        parts.append(f"identity {row['attidentity']}")
    if row["attgenerated"]:
        parts.append(f"generated as ({row['default']}) stored")
    elif row["default"] is not None:
        parts.append(f"default {row['default']}")
    return " ".join(parts)


async def _relation(conn: asyncpg.Connection[Any], schema: str, rel: Any) -> list[str]:
    kind = _RELKINDS.get(rel["relkind"], f"relkind {rel['relkind']}")
    if rel["relpersistence"] == "u":
        kind = f"unlogged {kind}"
    lines = [f"{kind} {schema}.{rel['relname']}"]
    if rel["relkind"] == "S":
        return lines
    lines += [_column(c) for c in await conn.fetch(_COLUMNS, rel["oid"])]
    if rel["relkind"] in ("v", "m"):
        # PostgreSQL 16 stopped qualifying single-table column references when it
        # prints a view back, so the query text is version-dependent: keep the
        # columns (above) and the comment; the definition is in the migration.
        comment = await conn.fetchval(_VIEW_COMMENT, rel["oid"])
        lines.append(f"  comment {comment!r}")
    for c in await conn.fetch(_CONSTRAINTS, rel["oid"]):
        lines.append(f"  constraint {c['conname']} {c['def']}")
    for i in await conn.fetch(_INDEXES, rel["oid"]):
        lines.append(f"  index {i['relname']}: {i['def']}")
    for t in await conn.fetch(_TRIGGERS, rel["oid"]):
        lines.append(f"  trigger {t['tgname']}: {t['def']}")
    return lines


async def _type(conn: asyncpg.Connection[Any], schema: str, typ: Any) -> list[str]:
    if typ["typtype"] == "e":
        labels = [r["enumlabel"] for r in await conn.fetch(_ENUM_LABELS, typ["oid"])]
        return [f"enum {schema}.{typ['typname']} ({', '.join(labels)})"]
    head = f"domain {schema}.{typ['typname']} {typ['base']}"
    if typ["typnotnull"]:
        head += " not null"
    if typ["typdefault"] is not None:
        head += f" default {typ['typdefault']}"
    lines = [head]
    for c in await conn.fetch(_DOMAIN_CONSTRAINTS, typ["oid"]):
        lines.append(f"  constraint {c['conname']} {c['def']}")
    return lines


def _function(schema: str, fn: Any) -> list[str]:
    kind = _PROKIND.get(fn["prokind"], fn["prokind"])
    head = f"{kind} {schema}.{fn['proname']}({fn['args']})"
    if fn["result"]:
        head += f" returns {fn['result']}"
    head += f" language {fn['lanname']} {_VOLATILITY.get(fn['provolatile'], '?')}"
    if fn["prosecdef"]:
        head += " security definer"
    for setting in fn["proconfig"] or ():
        head += f" set {setting}"
    body = str(fn["prosrc"]).strip("\n")
    return [head, "$$", *(line.rstrip() for line in body.splitlines()), "$$"]


async def render_schema(conn: asyncpg.Connection[Any], schema: str) -> str:
    """Every table, column, constraint, index, trigger, type and function of ``schema``."""
    blocks: list[list[str]] = []
    async with conn.transaction():
        await conn.execute("SET LOCAL search_path = pg_catalog")
        for typ in await conn.fetch(_TYPES, schema):
            blocks.append(await _type(conn, schema, typ))
        for rel in await conn.fetch(_TABLES, schema):
            blocks.append(await _relation(conn, schema, rel))
        for fn in await conn.fetch(_FUNCTIONS, schema):
            blocks.append(_function(schema, fn))
    header = [
        f"-- Schema {schema!r} as created by `skiplock migrate` from an empty database,",
        "-- rendered by tests/integration/schemadump.py. Regenerate with",
        "-- SKIPLOCK_UPDATE_SNAPSHOT=1 pytest tests/integration/test_migrations.py",
    ]
    return "\n\n".join("\n".join(b) for b in [header, *blocks]) + "\n"
