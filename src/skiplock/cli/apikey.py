"""``skiplock apikey create|list|revoke``: status-API keys."""

from __future__ import annotations

import click
import orjson

from skiplock.cli.common import (
    EXIT_USAGE,
    fail,
    settings_of,
    with_store,
)


@click.group("apikey")
def apikey_group() -> None:
    """Create, list and revoke status-API keys."""


@apikey_group.command("create")
@click.option("--tenant", required=True)
@click.option("--scopes", default="read,write", show_default=True, help="read, write, admin")
@click.option("--name", default="", help="A label to recognise the key by.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def apikey_create(ctx: click.Context, tenant: str, scopes: str, name: str, as_json: bool) -> None:
    """Make a key; its secret is printed once and never stored."""
    from skiplock.api.auth import create_api_key

    wanted = [s.strip() for s in scopes.split(",") if s.strip()]
    made = with_store(
        settings_of(ctx),
        lambda store, conn: create_api_key(
            store, conn, tenant=tenant, scopes=wanted, name=name or f"{tenant} key"
        ),
    )
    if as_json:
        click.echo(
            orjson.dumps(
                {
                    "id": str(made.key.id),
                    "tenant": tenant,
                    "scopes": list(made.key.scopes),
                    "secret": made.secret,
                }
            ).decode()
        )
    else:
        click.echo(f"key {made.key.id} for tenant {tenant!r} ({', '.join(made.key.scopes)})")
        click.echo(f"secret (shown once): {made.secret}")


@apikey_group.command("list")
@click.option("--tenant", default=None)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def apikey_list(ctx: click.Context, tenant: str | None, as_json: bool) -> None:
    """List keys (never their secrets)."""
    keys = with_store(settings_of(ctx), lambda store, conn: store.list_api_keys(conn, tenant))
    rows = [
        {
            "id": str(k.id),
            "name": k.name,
            "tenant": k.tenant,
            "scopes": list(k.scopes),
            "created_at": k.created_at.isoformat(),
            "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None,
        }
        for k in keys
    ]
    if as_json:
        click.echo(orjson.dumps(rows).decode())
        return
    for r in rows:
        status = "revoked" if r["revoked_at"] else "active"
        click.echo(
            f"{r['id']}  {r['tenant']:<20} {','.join(r['scopes']):<18} {status:<8} {r['name']}"
        )


@apikey_group.command("revoke")
@click.argument("key_id")
@click.pass_context
def apikey_revoke(ctx: click.Context, key_id: str) -> None:
    """Revoke a key by id (effective within the API's key cache time)."""
    import uuid

    try:
        parsed = uuid.UUID(key_id)
    except ValueError:
        fail(f"not a key id: {key_id!r}", EXIT_USAGE)
        return
    key = with_store(settings_of(ctx), lambda store, conn: store.revoke_api_key(conn, parsed))
    if key is None:
        fail(f"no key {key_id}", 4)
    click.echo(f"revoked {key_id}")
