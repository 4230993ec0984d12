"""Keys in Redis (BGSVC_REDIS_URL): shared by every node, so a revocation holds at once."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from bgsvc.auth.keys import ApiKey, KeyExists, KeyNotFound

PREFIX = "bgsvc:apikey:"


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


def _load(raw: bytes | str) -> ApiKey:
    data: dict[str, Any] = json.loads(raw)
    return ApiKey(**{**data, "scopes": frozenset(data["scopes"])})


class RedisKeyStore:
    """``PREFIX name:<name>`` holds the record (JSON); ``PREFIX digest:<hex>`` its name."""

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
        self._redis.set(f"{PREFIX}digest:{key.digest}", key.name)

    def by_digest(self, digest: str) -> ApiKey | None:
        name = self._redis.get(f"{PREFIX}digest:{digest}")
        if name is None:
            return None
        if isinstance(name, bytes):
            name = name.decode()
        raw = self._redis.get(f"{PREFIX}name:{name}")
        return None if raw is None else _load(raw)

    def all(self) -> list[ApiKey]:
        raws = [self._redis.get(k) for k in self._redis.scan_iter(f"{PREFIX}name:*", count=500)]
        return sorted((_load(raw) for raw in raws if raw is not None), key=lambda k: k.name)

    def revoke(self, name: str, at: float) -> ApiKey:
        name_key = f"{PREFIX}name:{name}"
        raw = self._redis.get(name_key)
        if raw is None:
            raise KeyNotFound(f"no key named {name!r}")
        key = _load(raw)
        if key.revoked_at is None:
            key = replace(key, revoked_at=at)
            self._redis.set(name_key, _dump(key))
        return key

    def close(self) -> None:
        self._redis.close()
