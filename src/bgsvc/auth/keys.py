"""What a key is, how its secret is made and stored, and the store interface."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from bgsvc.limits.api import RatePolicy
from bgsvc.outbound.signing import SECRET_PREFIX as WEBHOOK_SECRET_PREFIX

if TYPE_CHECKING:
    from bgsvc.config import Settings

SCOPES = frozenset({"remove", "jobs"})
SECRET_PREFIX = "bgsvc_"
# 32 random bytes: 256 bits, far beyond guessing; urlsafe so it survives headers and shells.
SECRET_BYTES = 32
# The salt a key's webhook secret is derived from: unique per key and per rotation, which is
# all it needs to be; the pepper supplies the secrecy.
WEBHOOK_SALT_BYTES = 16
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_QUOTA = re.compile(r"^\s*(\d+)\s*(?:/\s*(?:month|mo))?\s*$", re.IGNORECASE)


class KeyExists(ValueError):
    """A key with this name exists already (names are unique, revoked ones included)."""


class KeyNotFound(LookupError):
    """No key has this name."""


@dataclass(frozen=True)
class ApiKey:
    """A key's record; the secret itself is never kept, only its keyed digest."""

    name: str
    digest: str
    scopes: frozenset[str] = field(default=SCOPES)
    rate: str | None = None  # e.g. "60/min"; None: no rate limit
    burst: int | None = None
    quota: int | None = None  # credits per calendar month (UTC); None: unlimited
    created_at: float = field(default_factory=time.time)
    revoked_at: float | None = None
    # What the key's webhook signing secret is derived from (webhook_secret_of); None for
    # keys made before keys had their own, until `bgsvc keys webhook-secret` gives one.
    webhook_salt: str | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def webhook_secret(self, pepper: str) -> str | None:
        """The secret this key's webhooks are signed with; None when it has no salt yet."""
        return None if self.webhook_salt is None else webhook_secret_of(self.webhook_salt, pepper)

    @property
    def policy(self) -> RatePolicy | None:
        return None if self.rate is None else RatePolicy.parse(self.rate, self.burst)


def new_secret() -> str:
    """A fresh secret; shown once by ``bgsvc keys create`` and never stored."""
    return SECRET_PREFIX + secrets.token_urlsafe(SECRET_BYTES)


def digest_of(secret: str, pepper: str) -> str:
    """HMAC-SHA256 of the secret under the server's pepper: a stolen store alone gives
    nothing to replay, and nothing to brute-force without the pepper."""
    return hmac.new(pepper.encode(), secret.encode(), hashlib.sha256).hexdigest()


def new_webhook_salt() -> str:
    return secrets.token_hex(WEBHOOK_SALT_BYTES)


def webhook_secret_of(salt: str, pepper: str) -> str:
    """``whsec_`` + base64 of HMAC-SHA256(pepper, "webhook:" + salt): 32 bytes in the
    Standard Webhooks format. Derived, never stored: the store holds only the salt, which
    without the pepper reveals nothing. The "webhook:" prefix keeps these MACs apart from
    the digests of API secrets, made under the same pepper."""
    mac = hmac.new(pepper.encode(), f"webhook:{salt}".encode(), hashlib.sha256).digest()
    return WEBHOOK_SECRET_PREFIX + base64.b64encode(mac).decode("ascii")


def rotate_webhook_secret(store: KeyStore, name: str, pepper: str) -> str:
    """Give the key a fresh salt and return its new webhook secret (KeyNotFound when
    unknown); the old secret signs nothing more once the service's cache of it expires."""
    salt = new_webhook_salt()
    store.set_webhook_salt(name, salt)
    return webhook_secret_of(salt, pepper)


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"key name {name!r}: 1 to 64 of A-Z a-z 0-9 . _ -")
    return name


def parse_scopes(text: str) -> frozenset[str]:
    scopes = frozenset(s.strip() for s in text.split(",") if s.strip())
    unknown = scopes - SCOPES
    if unknown or not scopes:
        raise ValueError(f"scopes {text!r}: a comma-separated subset of {sorted(SCOPES)}")
    return scopes


def parse_quota(text: str) -> int:
    """ "10000/month" or "10000"."""
    match = _QUOTA.match(text)
    if match is None or int(match.group(1)) < 1:
        raise ValueError(f"quota {text!r}: expected N/month")
    return int(match.group(1))


class KeyStore(Protocol):
    """Where keys live. Synchronous (the CLI uses it directly; the service from a thread)."""

    def add(self, key: ApiKey) -> None:
        """Store a new key; KeyExists when the name is taken."""
        ...

    def by_digest(self, digest: str) -> ApiKey | None:
        """The key whose secret has this digest, revoked or not."""
        ...

    def by_name(self, name: str) -> ApiKey | None:
        """The key with this name, revoked or not."""
        ...

    def set_webhook_salt(self, name: str, salt: str) -> ApiKey:
        """Replace the key's webhook salt (KeyNotFound when unknown); returns the record."""
        ...

    def all(self) -> list[ApiKey]: ...

    def revoke(self, name: str, at: float) -> ApiKey:
        """Mark the key revoked (KeyNotFound when unknown); revoking twice keeps the first."""
        ...

    def close(self) -> None: ...


def open_store(settings: Settings) -> KeyStore:
    """Redis when BGSVC_REDIS_URL is set (every node sees a revocation at once), else a
    SQLite file in the data directory."""
    if settings.redis_url:
        from bgsvc.auth.redis_store import RedisKeyStore

        return RedisKeyStore(settings.redis_url, settings.redis_socket_timeout_s)
    from bgsvc.auth.sqlite_store import SqliteKeyStore

    return SqliteKeyStore(settings.data_dir / "keys.sqlite3")


def verify(store: KeyStore, secret: str, pepper: str) -> ApiKey | None:
    """The key this secret belongs to, or None."""
    digest = digest_of(secret, pepper)
    key = store.by_digest(digest)
    # The lookup is by digest already; comparing the digests again in constant time keeps
    # the decision itself free of timing that depends on the stored value.
    if key is None or not hmac.compare_digest(key.digest, digest):
        return None
    return key
