"""API keys (stored hashed, mapped to a tenant and scopes) and signed share tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime

import orjson

from skiplock.queue.store import ApiKey, Executor, Store

__all__ = [
    "SCOPES",
    "Authenticator",
    "NewApiKey",
    "Principal",
    "create_api_key",
    "hash_key",
    "sign_share_token",
    "verify_share_token",
]

SCOPES = ("read", "write", "admin")
KEY_PREFIX = "skl_"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a tenant with scopes (an API key or a share token)."""

    tenant: str
    scopes: frozenset[str]
    key_id: uuid.UUID | None = None
    share_job: uuid.UUID | None = None  # share tokens see this one job only
    expires_at: float | None = None  # unix time: a share token's or an API key's expiry

    @property
    def is_admin(self) -> bool:
        """An API key with the ``admin`` scope: it may act on every tenant's jobs."""
        return self.share_job is None and "admin" in self.scopes

    def can(self, scope: str) -> bool:
        """Whether the caller holds ``scope`` (admin implies write implies read)."""
        if "admin" in self.scopes:
            return True
        if scope == "read":
            return bool(self.scopes & {"read", "write"})
        return scope in self.scopes


@dataclass(frozen=True, slots=True)
class NewApiKey:
    """A freshly made key: ``secret`` is shown once and never stored."""

    key: ApiKey
    secret: str


def hash_key(secret: str) -> bytes:
    """SHA-256 of a key secret (the secret is 256 random bits: no slow hash needed)."""
    return hashlib.sha256(secret.encode()).digest()


async def create_api_key(
    store: Store,
    ex: Executor,
    *,
    tenant: str,
    scopes: tuple[str, ...] | list[str],
    name: str,
    expires_at: datetime | None = None,
) -> NewApiKey:
    """Make a key for ``tenant`` with ``scopes``; store only its hash."""
    bad = sorted(set(scopes) - set(SCOPES))
    if bad or not scopes:
        raise ValueError(
            f"scopes must be among {', '.join(SCOPES)} (got {', '.join(bad) or 'none'})"
        )
    if not tenant or len(tenant) > 256:
        raise ValueError("tenant must be 1 to 256 characters")
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    key = await store.create_api_key(
        ex,
        key_id=uuid.uuid4(),
        name=name or "unnamed",
        tenant=tenant,
        scopes=sorted(set(scopes)),
        key_hash=hash_key(secret),
        expires_at=expires_at,
    )
    return NewApiKey(key=key, secret=secret)


class Authenticator:
    """Resolves ``Authorization: Bearer <key>`` to a :class:`Principal`.

    Valid keys are cached for ``cache_seconds`` (bounded LRU), so a revoked key
    stops working within that time; an expired key stops at its expiry (the
    principal carries it); unknown keys are never cached.
    """

    def __init__(self, store: Store, ex: Executor, *, cache_seconds: float, size: int = 10_000):
        self._store = store
        self._ex = ex
        self._ttl = cache_seconds
        self._size = size
        self._cache: OrderedDict[bytes, tuple[float, Principal]] = OrderedDict()

    async def authenticate(self, secret: str) -> Principal | None:
        """The principal for ``secret``, or None when it is unknown, revoked or expired."""
        if not secret.startswith(KEY_PREFIX) or len(secret) > 200:
            return None
        digest = hash_key(secret)
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > now and not _expired(hit[1]):
            self._cache.move_to_end(digest)
            return hit[1]
        key = await self._store.get_api_key(self._ex, digest)
        if key is None:
            self._cache.pop(digest, None)
            return None
        principal = Principal(
            tenant=key.tenant,
            scopes=frozenset(key.scopes),
            key_id=key.id,
            expires_at=None if key.expires_at is None else key.expires_at.timestamp(),
        )
        if self._ttl > 0:
            self._cache[digest] = (now + self._ttl, principal)
            while len(self._cache) > self._size:
                self._cache.popitem(last=False)
        return principal

    def forget(self) -> None:
        """Drop every cached key (after a revocation in this process)."""
        self._cache.clear()


def _expired(principal: Principal) -> bool:
    return principal.expires_at is not None and principal.expires_at <= time.time()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign_share_token(job_id: uuid.UUID, tenant: str, expires_at: float, secret: str) -> str:
    """A token that lets anyone holding it read one job until ``expires_at`` (unix time)."""
    payload = _b64(orjson.dumps({"j": str(job_id), "t": tenant, "e": int(expires_at)}))
    mac = hmac.new(secret.encode(), payload.encode(), hashlib.sha256).digest()
    return f"{payload}.{_b64(mac)}"


def verify_share_token(token: str, secret: str, *, now: float | None = None) -> Principal | None:
    """The read-only principal of a valid, unexpired share token, else None."""
    try:
        payload, mac = token.split(".", 1)
        expected = hmac.new(secret.encode(), payload.encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(expected, _unb64(mac)):
            return None
        data = orjson.loads(_unb64(payload))
        job_id, tenant, expires = uuid.UUID(data["j"]), str(data["t"]), float(data["e"])
    except (ValueError, KeyError, TypeError, orjson.JSONDecodeError):
        return None
    if expires <= (time.time() if now is None else now):
        return None
    return Principal(
        tenant=tenant, scopes=frozenset({"read"}), share_job=job_id, expires_at=expires
    )
