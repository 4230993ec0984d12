"""What a key is (its record and the rules for its fields) and the key-store interface."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Protocol

from bgsvc.auth.keys import webhook_secret_of
from bgsvc.limits.base import RatePolicy

SCOPES = frozenset({"remove", "jobs"})
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
