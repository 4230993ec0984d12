"""Keys in Redis (BGSVC_REDIS_URL): shared by every node, so a revocation holds at once."""

from __future__ import annotations

import json
from dataclasses import fields, replace
from typing import Any

from bgsvc.auth.base import ApiKey, KeyExists, KeyNotFound

PREFIX = "bgsvc:apikey:"
_FIELDS = frozenset(f.name for f in fields(ApiKey))


def _dump(key: ApiKey) -> str:
    return json.dumps(
        {
            "name": key.name,
            "digest": key.digest,
            "scopes": sorted(key.scopes),
            "rate": key.rate,
            "burst": key.burst,
            "quota": key.quota,
            "created_at": key.created_at,
            "revoked_at": key.revoked_at,
        }
    )


def _load(raw: bytes | str, webhook_salt: bytes | str | None = None) -> ApiKey:
    data: dict[str, Any] = json.loads(raw)
    if isinstance(webhook_salt, bytes):
        webhook_salt = webhook_salt.decode()
    # Fields a newer version may add to the JSON are left out rather than refused.
    known = {k: v for k, v in data.items() if k in _FIELDS}
    return ApiKey(**{**known, "scopes": frozenset(data["scopes"]), "webhook_salt": webhook_salt})


class RedisKeyStore:
    """``PREFIX name:<name>`` holds the record (JSON); ``PREFIX digest:<hex>`` its name;
    ``PREFIX webhook:<name>`` its webhook salt. The salt is kept out of the record: a node
    still running an older version builds ApiKey from every field of the JSON and would
    refuse a record with one it does not know, and a rotation and a revocation at the same
    moment cannot undo each other when they write different keys."""

    def __init__(self, url: str, socket_timeout_s: float) -> None:
        # Imported here: redis pulls in OpenTelemetry's SDK, and only Redis users pay for it.
        import redis

        self._redis = redis.Redis.from_url(
            url, socket_timeout=socket_timeout_s, socket_connect_timeout=socket_timeout_s
        )

    def add(self, key: ApiKey) -> None:
        name_key = f"{PREFIX}name:{key.name}"
        # SET NX claims the name atomically; the digest index follows the claim.
        if not self._redis.set(name_key, _dump(key), nx=True):
            raise KeyExists(f"a key named {key.name!r} exists already")
        if key.webhook_salt is not None:
            self._redis.set(f"{PREFIX}webhook:{key.name}", key.webhook_salt)
        self._redis.set(f"{PREFIX}digest:{key.digest}", key.name)

    def by_digest(self, digest: str) -> ApiKey | None:
        name = self._redis.get(f"{PREFIX}digest:{digest}")
        if name is None:
            return None
        if isinstance(name, bytes):
            name = name.decode()
        return self.by_name(name)

    def by_name(self, name: str) -> ApiKey | None:
        raw, salt = self._redis.mget([f"{PREFIX}name:{name}", f"{PREFIX}webhook:{name}"])
        return None if raw is None else _load(raw, salt)

    def set_webhook_salt(self, name: str, salt: str) -> ApiKey:
        # Keys are never deleted, so a name seen here still exists when the salt is set.
        raw = self._redis.get(f"{PREFIX}name:{name}")
        if raw is None:
            raise KeyNotFound(f"no key named {name!r}")
        self._redis.set(f"{PREFIX}webhook:{name}", salt)
        return _load(raw, salt)

    def all(self) -> list[ApiKey]:
        prefix = f"{PREFIX}name:"
        names = [
            (k.decode() if isinstance(k, bytes) else str(k))[len(prefix) :]
            for k in self._redis.scan_iter(f"{prefix}*", count=500)
        ]
        found = (self.by_name(name) for name in names)
        return sorted((key for key in found if key is not None), key=lambda k: k.name)

    def revoke(self, name: str, at: float) -> ApiKey:
        name_key = f"{PREFIX}name:{name}"
        raw = self._redis.get(name_key)
        if raw is None:
            raise KeyNotFound(f"no key named {name!r}")
        key = _load(raw, self._redis.get(f"{PREFIX}webhook:{name}"))
        if key.revoked_at is None:
            key = replace(key, revoked_at=at)
            self._redis.set(name_key, _dump(key))
        return key

    def close(self) -> None:
        self._redis.close()
