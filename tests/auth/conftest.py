"""A fake Limits (the protocol of bgsvc.limits.base) and an app with keys required."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from bgsvc.auth.base import ApiKey
from bgsvc.auth.keys import digest_of, new_secret
from bgsvc.auth.sqlite import SqliteKeyStore
from bgsvc.config import get_settings
from bgsvc.limits.base import QuotaDecision, RateDecision, RatePolicy

PEPPER = "test-pepper-0123456789abcdef"


@dataclass
class FakeLimits:
    """Counts in dicts; ``refuse_rate`` / ``failed_auth_budget`` make it say no; ``down``
    answers quotas as a store that fails open does (admitted, nothing recorded)."""

    refuse_rate: bool = False
    down: bool = False
    failed_auth_budget: int = 1000
    hits: list[tuple[str, RatePolicy]] = field(default_factory=list)
    used: dict[str, int] = field(default_factory=dict)
    failed_from: list[str] = field(default_factory=list)
    refunds: list[str] = field(default_factory=list)

    async def hit(self, key_name: str, policy: RatePolicy, cost: int = 1) -> RateDecision:
        self.hits.append((key_name, policy))
        if self.refuse_rate:
            return RateDecision(False, policy.limit, 0, policy.window_s, 7, policy.window_s)
        remaining = policy.limit - len(self.hits)
        return RateDecision(True, policy.limit, remaining, 1.0, 0, policy.window_s)

    async def consume_quota(self, key_name: str, monthly: int, cost: int = 1) -> QuotaDecision:
        if self.down:
            return QuotaDecision(True, monthly, cost, 2e9, recorded=False)
        used = self.used.get(key_name, 0)
        if used + cost > monthly:
            return QuotaDecision(False, monthly, used, 2e9)
        self.used[key_name] = used + cost
        return QuotaDecision(True, monthly, used + cost, 2e9)

    async def refund_quota(self, key_name: str, cost: int = 1) -> None:
        self.refunds.append(key_name)
        self.used[key_name] = max(0, self.used.get(key_name, 0) - cost)

    async def quota_used(self, key_name: str) -> int:
        return self.used.get(key_name, 0)

    async def hit_failed_auth(self, address: str) -> RateDecision:
        self.failed_from.append(address)
        allowed = len(self.failed_from) <= self.failed_auth_budget
        return RateDecision(allowed, self.failed_auth_budget, 0, 60.0, 0 if allowed else 30, 60.0)

    async def aclose(self) -> None:
        return None


def add_key(data_dir: Path, name: str, **fields: Any) -> str:
    """Store a key directly (as `bgsvc keys create` would); returns its secret."""
    secret = new_secret()
    store = SqliteKeyStore(data_dir / "keys.sqlite3")
    try:
        store.add(ApiKey(name=name, digest=digest_of(secret, PEPPER), **fields))
    finally:
        store.close()
    return secret


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def auth_client(
    make_client: Callable[..., TestClient], data_dir: Path
) -> Callable[..., tuple[TestClient, FakeLimits]]:
    def factory(
        limits: FakeLimits | None = None, **overrides: Any
    ) -> tuple[TestClient, FakeLimits]:
        values: dict[str, Any] = {"auth": "required", "auth_pepper": PEPPER, "data_dir": data_dir}
        client = make_client(**{**values, **overrides})
        fake = limits or FakeLimits()
        client.app.state.limits = fake  # type: ignore[attr-defined]
        return client, fake

    return factory


@pytest.fixture
def keys_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The environment `bgsvc keys` runs in: a data directory, the pepper, no Redis."""
    data_dir = tmp_path / "data"
    monkeypatch.setenv("BGSVC_DATA_DIR", str(data_dir))
    monkeypatch.setenv("BGSVC_AUTH_PEPPER", PEPPER)
    monkeypatch.delenv("BGSVC_REDIS_URL", raising=False)
    get_settings.cache_clear()
    yield data_dir
    get_settings.cache_clear()
