"""``skiplock apikey create|list|revoke``: status-API keys."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click
import orjson

from skiplock.cli.common import (
    EXIT_NOT_FOUND,
    EXIT_USAGE,
    EXPIRY,
    fail,
    settings_of,
    ts,
    with_store,
)
from skiplock.queue.store import ApiKey


@click.group("apikey")
def apikey_group() -> None:
    """Create, list and revoke status-API keys."""


def _key_json(key: ApiKey) -> dict[str, Any]:
    """A key as JSON (never its secret, which is not stored)."""
    return {
        "id": str(key.id),
        "name": key.name,
        "tenant": key.tenant,
        "scopes": list(key.scopes),
        "created_at": key.created_at.isoformat(),
        "expires_at": ts(key.expires_at),
        "revoked_at": ts(key.revoked_at),
    }


@apikey_group.command("create")
@click.option("--tenant", required=True)
@click.option("--scopes", default="read,write", show_default=True, help="read, write, admin")
@click.option("--name", default="", help="A label to recognise the key by.")
@click.option(
    "--expires",
    type=EXPIRY,
    default=None,
    help="When the key stops working: a duration from now (30d, 12h, 1d12h) or an ISO-8601"
    " time (2030-01-31T12:00:00Z; UTC without an offset). Default: never.",
)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def apikey_create(
    ctx: click.Context,
    tenant: str,
    scopes: str,
    name: str,
    expires: datetime | None,
    as_json: bool,
) -> None:
    """Make a key; its secret is printed once and never stored."""
    from skiplock.api.auth import create_api_key

    wanted = [s.strip() for s in scopes.split(",") if s.strip()]
    made = with_store(
        settings_of(ctx),
        lambda store, conn: create_api_key(
            store,
            conn,
            tenant=tenant,
            scopes=wanted,
            name=name or f"{tenant} key",
            expires_at=expires,
        ),
    )
    if as_json:
        click.echo(
            orjson.dumps(
                {
                    "id": str(made.key.id),
                    "tenant": tenant,
                    "scopes": list(made.key.scopes),
                    "expires_at": ts(made.key.expires_at),
                    "secret": made.secret,
                }
            ).decode()
        )
    else:
        click.echo(f"key {made.key.id} for tenant {tenant!r} ({', '.join(made.key.scopes)})")
        if made.key.expires_at is not None:
            click.echo(f"expires: {made.key.expires_at.isoformat()}")
        click.echo(f"secret (shown once): {made.secret}")


@apikey_group.command("list")
@click.option("--tenant", default=None)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def apikey_list(ctx: click.Context, tenant: str | None, as_json: bool) -> None:
    """List keys (never their secrets)."""
    keys = with_store(settings_of(ctx), lambda store, conn: store.list_api_keys(conn, tenant))
    rows = [_key_json(k) for k in keys]
    now = datetime.now(UTC)
    if as_json:
        click.echo(orjson.dumps(rows).decode())
        return
    for r in rows:
        expires = datetime.fromisoformat(r["expires_at"]) if r["expires_at"] else None
        if r["revoked_at"]:
            status = "revoked"
        elif expires is not None and expires <= now:
            status = "expired"
        else:
            status = "active"
        until = expires.strftime("%Y-%m-%d %H:%M:%S%z") if expires else "-"
        click.echo(
            f"{r['id']}  {r['tenant']:<20} {','.join(r['scopes']):<18} {status:<8}"
            f" {until:<24} {r['name']}"
        )


@apikey_group.command("revoke")
@click.argument("key_id")
@click.option(
    "--json", "as_json", is_flag=True, help="Print the revoked key as `list --json` does."
)
@click.pass_context
def apikey_revoke(ctx: click.Context, key_id: str, as_json: bool) -> None:
    """Revoke a key by id (effective within the API's key cache time)."""
    import uuid

    try:
        parsed = uuid.UUID(key_id)
    except ValueError:
        fail(f"not a key id: {key_id!r}", EXIT_USAGE)
        return
    key = with_store(settings_of(ctx), lambda store, conn: store.revoke_api_key(conn, parsed))
    if key is None:
        fail(f"no key {key_id}", EXIT_NOT_FOUND)
    if as_json:
        click.echo(orjson.dumps(_key_json(key)).decode())
    else:
        click.echo(f"revoked {key_id}")
