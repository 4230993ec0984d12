from __future__ import annotations

import hmac
from pathlib import Path

import pytest

from bgsvc.auth import keys
from bgsvc.auth.addresses import client_address, parse_networks
from bgsvc.auth.base import ApiKey, parse_quota, parse_scopes
from bgsvc.auth.headers import rate_limit_headers
from bgsvc.auth.keys import digest_of, new_secret, verify
from bgsvc.auth.labels import KeyLabels
from bgsvc.auth.sqlite import SqliteKeyStore
from bgsvc.config import Settings
from bgsvc.limits.base import RateDecision

PEPPER = "pepper-for-unit-tests"


def test_secrets_are_prefixed_random_and_only_their_digest_is_stored(tmp_path: Path) -> None:
    secret = new_secret()
    assert secret.startswith("bgsvc_") and len(secret) == 6 + 43
    assert new_secret() != secret
    store = SqliteKeyStore(tmp_path / "keys.sqlite3")
    store.add(ApiKey(name="a", digest=digest_of(secret, PEPPER)))
    store.close()
    raw = (tmp_path / "keys.sqlite3").read_bytes()
    assert secret.encode() not in raw
    assert digest_of(secret, PEPPER) != digest_of(secret, PEPPER + "x")


def test_verify_compares_digests_in_constant_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, str]] = []
    real = hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(keys.hmac, "compare_digest", spy)
    store = SqliteKeyStore(tmp_path / "keys.sqlite3")
    secret = new_secret()
    store.add(ApiKey(name="a", digest=digest_of(secret, PEPPER)))
    found = verify(store, secret, PEPPER)
    assert found is not None and found.name == "a"
    assert calls == [(digest_of(secret, PEPPER), digest_of(secret, PEPPER))]
    assert verify(store, secret, "another-pepper-entirely") is None
    store.close()


def test_scopes_and_quota_parse_or_refuse() -> None:
    assert parse_scopes("remove") == {"remove"}
    assert parse_quota("10000/month") == 10000 and parse_quota("5") == 5
    with pytest.raises(ValueError):
        parse_scopes("remove,admin")
    with pytest.raises(ValueError):
        parse_quota("10/day")


def test_auth_required_refuses_to_start_without_a_pepper() -> None:
    with pytest.raises(ValueError, match="BGSVC_AUTH_PEPPER"):
        Settings(auth="required")
    with pytest.raises(ValueError, match="at least 16"):
        Settings(auth_pepper="short")
    assert Settings(auth="required", auth_pepper=PEPPER).auth == "required"


def test_only_a_trusted_peer_may_name_the_client() -> None:
    trusted = parse_networks("127.0.0.1/32,::1/128,10.0.0.0/8")
    assert client_address("198.51.100.1", "1.2.3.4", trusted) == "198.51.100.1"
    assert client_address("127.0.0.1", "1.2.3.4, 5.6.7.8", trusted) == "5.6.7.8"
    assert client_address("::ffff:127.0.0.1", "1.2.3.4, 10.0.0.5", trusted) == "1.2.3.4"
    assert client_address("127.0.0.1", "10.0.0.9", trusted) == "10.0.0.9"
    assert client_address("127.0.0.1", None, trusted) == "127.0.0.1"


def test_removebg_headers_add_the_unix_reset() -> None:
    decision = RateDecision(True, 100, 42, 12.2, 0, 3600.0)
    headers = rate_limit_headers(decision, removebg=True, now=1_700_000_000.0)
    assert headers == {
        "RateLimit-Policy": '"default";q=100;w=3600',
        "RateLimit": '"default";r=42;t=13',
        "X-RateLimit-Limit": "100",
        "X-RateLimit-Remaining": "42",
        "X-RateLimit-Reset": "1700000013",
    }


def test_key_labels_stop_growing_at_the_limit() -> None:
    labels = KeyLabels(2)
    assert [labels(n) for n in ("a", "b", "c", "a", "d")] == ["a", "b", "other", "a", "other"]
