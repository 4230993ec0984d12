"""Each API key's own webhook signing secret: derived from a stored salt and the pepper,
kept by both key stores, printed by `bgsvc keys create` and rotated by
`bgsvc keys webhook-secret`."""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from bgsvc.auth.base import ApiKey, KeyNotFound, KeyStore
from bgsvc.auth.keys import (
    digest_of,
    new_secret,
    new_webhook_salt,
    rotate_webhook_secret,
    webhook_secret_of,
)
from bgsvc.auth.redis import PREFIX, RedisKeyStore
from bgsvc.auth.sqlite import SqliteKeyStore
from bgsvc.cli import main
from bgsvc.config import Settings, get_settings
from bgsvc.jobs.notify import Notifier
from bgsvc.outbound.signing import decode_secret, generate_secret
from bgsvc.outbound.webhooks import BATCH_COMPLETED, DeliveryAttempt
from tests.auth.conftest import PEPPER
from tests.outbound.servers import Seen, serve
from tests.redis_server import RedisServer, redis_server  # noqa: F401

# The table as versions before per-key webhook secrets made it.
OLD_SCHEMA = """
CREATE TABLE api_keys (
    name TEXT PRIMARY KEY,
    digest TEXT NOT NULL UNIQUE,
    scopes TEXT NOT NULL,
    rate TEXT,
    burst INTEGER,
    quota INTEGER,
    created_at REAL NOT NULL,
    revoked_at REAL
)
"""


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def key_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KeyStore]:
    store: KeyStore
    if request.param == "sqlite":
        store = SqliteKeyStore(tmp_path / "keys.sqlite3")
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        store = RedisKeyStore(server.url, 2.0)
    yield store
    store.close()


def test_a_webhook_secret_is_32_bytes_that_only_the_salt_and_the_pepper_together_give() -> None:
    salt = new_webhook_salt()
    secret = webhook_secret_of(salt, PEPPER)
    assert secret.startswith("whsec_") and len(decode_secret(secret)) == 32
    assert webhook_secret_of(salt, PEPPER) == secret
    assert webhook_secret_of(new_webhook_salt(), PEPPER) != secret
    assert webhook_secret_of(salt, PEPPER + "x") != secret
    # Not the digest an API secret equal to the salt would be stored under.
    assert base64.b64decode(secret[6:]).hex() != digest_of(salt, PEPPER)


def test_keys_made_before_webhook_secrets_have_none_until_given_one(
    key_store: KeyStore,
) -> None:
    key_store.add(ApiKey(name="old", digest=digest_of(new_secret(), PEPPER)))
    found = key_store.by_name("old")
    assert found is not None and found.webhook_salt is None
    assert found.webhook_secret(PEPPER) is None
    secret = rotate_webhook_secret(key_store, "old", PEPPER)
    found = key_store.by_name("old")
    assert found is not None and found.webhook_secret(PEPPER) == secret


def test_both_stores_keep_the_salt_and_find_a_key_by_name_or_digest(key_store: KeyStore) -> None:
    api_secret = new_secret()
    salt = new_webhook_salt()
    key_store.add(ApiKey(name="a", digest=digest_of(api_secret, PEPPER), webhook_salt=salt))
    key_store.add(ApiKey(name="b", digest=digest_of(new_secret(), PEPPER)))
    by_name = key_store.by_name("a")
    by_digest = key_store.by_digest(digest_of(api_secret, PEPPER))
    assert by_name is not None and by_name.webhook_salt == salt
    assert by_digest == by_name
    assert key_store.by_name("nobody") is None
    assert [(k.name, k.webhook_salt) for k in key_store.all()] == [("a", salt), ("b", None)]


def test_rotating_replaces_the_secret_and_keeps_a_revocation(key_store: KeyStore) -> None:
    key_store.add(ApiKey(name="a", digest="d" * 64, webhook_salt=new_webhook_salt()))
    before = key_store.by_name("a")
    assert before is not None
    key_store.revoke("a", 1234.0)
    rotated = rotate_webhook_secret(key_store, "a", PEPPER)
    after = key_store.by_name("a")
    assert after is not None and after.revoked_at == 1234.0
    assert rotated == after.webhook_secret(PEPPER) != before.webhook_secret(PEPPER)
    # A later revocation keeps the salt.
    assert key_store.revoke("a", 9999.0).webhook_salt == after.webhook_salt
    with pytest.raises(KeyNotFound):
        rotate_webhook_secret(key_store, "nobody", PEPPER)


def test_the_sqlite_store_adds_the_salt_column_to_a_table_an_older_version_made(
    tmp_path: Path,
) -> None:
    path = tmp_path / "keys.sqlite3"
    db = sqlite3.connect(path)
    db.execute(OLD_SCHEMA)
    db.execute(
        "INSERT INTO api_keys VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        ("legacy", "f" * 64, "jobs,remove", "60/min", 5, 100, 1000.0, None),
    )
    db.commit()
    db.close()
    store = SqliteKeyStore(path)
    legacy = store.by_name("legacy")
    assert legacy == ApiKey(
        name="legacy",
        digest="f" * 64,
        rate="60/min",
        burst=5,
        quota=100,
        created_at=1000.0,
        webhook_salt=None,
    )
    secret = rotate_webhook_secret(store, "legacy", PEPPER)
    store.close()
    # Opening the migrated file again changes nothing and keeps the salt.
    again = SqliteKeyStore(path)
    found = again.by_name("legacy")
    again.close()
    assert found is not None and found.webhook_secret(PEPPER) == secret
    db = sqlite3.connect(path)
    columns = [row[1] for row in db.execute("PRAGMA table_info(api_keys)")]
    stored = db.execute("SELECT webhook_salt FROM api_keys").fetchone()[0]
    db.close()
    assert columns.count("webhook_salt") == 1
    assert stored == found.webhook_salt and secret.encode() not in path.read_bytes()


@pytest.mark.redis
def test_a_redis_record_without_the_salt_stays_readable_by_older_versions(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    store = RedisKeyStore(redis_server.url, 2.0)
    salt = new_webhook_salt()
    store.add(ApiKey(name="a", digest="d" * 64, webhook_salt=salt))
    store.close()
    with redis_server.client() as client:
        record = json.loads(client.get(f"{PREFIX}name:a") or b"{}")
        dumped = b"".join(client.get(k) or b"" for k in client.keys(f"{PREFIX}*"))
    # Older versions build ApiKey from every field of the record: a new one would break them.
    assert set(record) == {
        "name",
        "digest",
        "scopes",
        "rate",
        "burst",
        "quota",
        "created_at",
        "revoked_at",
    }
    assert salt.encode() in dumped and webhook_secret_of(salt, PEPPER).encode() not in dumped


def _deliver_for(settings: Settings, tenant: str) -> list[Seen]:
    """One batch.completed delivery for ``tenant`` through the service's notifier, to a
    local receiver; what the receiver saw."""

    async def run(url: str) -> None:
        store = SqliteKeyStore(settings.data_dir / "keys.sqlite3")
        notifier = Notifier.from_settings(settings, None, store)
        assert notifier is not None
        attempts: list[DeliveryAttempt] = []

        async def record(attempt: DeliveryAttempt) -> None:
            attempts.append(attempt)

        try:
            result = await notifier.deliver(
                url,
                BATCH_COMPLETED,
                {"id": "batch_1"},
                event_id="msg_batch_1",
                on_attempt=record,
                tenant=tenant,
            )
        finally:
            await notifier.aclose()
            store.close()
        assert result.delivered, attempts

    with serve({"/hook": lambda h: h.reply(204)}) as receiver:
        asyncio.run(run(f"{receiver.base_url}/hook"))
    return receiver.seen


def _printed_webhook_secret(err: str) -> str:
    return next(w for w in err.split() if w.startswith("whsec_"))


def test_keys_create_prints_a_webhook_secret_that_verifies_the_keys_deliveries(
    keys_env: Path,
    make_settings: Callable[..., Settings],
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["keys", "create", "shop"]) == 0
    out, err = capsys.readouterr()
    assert out.count("\n") == 1 and out.startswith("bgsvc_")
    shop_secret = _printed_webhook_secret(err)
    assert main(["keys", "create", "other"]) == 0
    other_secret = _printed_webhook_secret(capsys.readouterr().err)
    settings = make_settings(
        auth="required", auth_pepper=PEPPER, data_dir=keys_env, outbound_allow="127.0.0.1"
    )
    seen = _deliver_for(settings, "shop")
    assert len(seen) == 1
    event: Any = Webhook(shop_secret).verify(seen[0].body, seen[0].headers)
    assert event["data"] == {"id": "batch_1"}
    with pytest.raises(WebhookVerificationError):
        Webhook(other_secret).verify(seen[0].body, seen[0].headers)


def test_keys_webhook_secret_prints_a_new_secret_alone_and_the_old_one_stops_verifying(
    keys_env: Path,
    make_settings: Callable[..., Settings],
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["keys", "create", "shop"]) == 0
    first = _printed_webhook_secret(capsys.readouterr().err)
    assert main(["keys", "webhook-secret", "shop"]) == 0
    out, err = capsys.readouterr()
    rotated = out.strip()
    assert rotated.startswith("whsec_") and out == rotated + "\n"
    assert rotated != first and rotated not in err
    settings = make_settings(
        auth="required", auth_pepper=PEPPER, data_dir=keys_env, outbound_allow="127.0.0.1"
    )
    seen = _deliver_for(settings, "shop")
    Webhook(rotated).verify(seen[0].body, seen[0].headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(first).verify(seen[0].body, seen[0].headers)
    assert main(["keys", "webhook-secret", "nobody"]) == 2
    assert "no key named 'nobody'" in capsys.readouterr().err


@pytest.mark.redis
def test_keys_webhook_secret_rotates_a_key_kept_in_redis(
    keys_env: Path,
    redis_server: RedisServer,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("BGSVC_REDIS_URL", redis_server.url)
    get_settings.cache_clear()
    assert main(["keys", "create", "shared"]) == 0
    first = _printed_webhook_secret(capsys.readouterr().err)
    assert main(["keys", "webhook-secret", "shared"]) == 0
    rotated = capsys.readouterr().out.strip()
    store = RedisKeyStore(redis_server.url, 2.0)
    key = store.by_name("shared")
    store.close()
    assert key is not None and key.webhook_secret(PEPPER) == rotated != first


def test_keys_webhook_secret_refuses_without_a_pepper(
    keys_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BGSVC_AUTH_PEPPER")
    get_settings.cache_clear()
    with pytest.raises(SystemExit, match="BGSVC_AUTH_PEPPER"):
        main(["keys", "webhook-secret", "x"])


def test_a_global_secret_is_not_needed_for_a_notifier_when_keys_are_required(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    store = SqliteKeyStore(tmp_path / "keys.sqlite3")
    required = make_settings(auth="required", auth_pepper=PEPPER)
    off = make_settings(auth="off")
    notifiers = [
        Notifier.from_settings(required, None, store),
        Notifier.from_settings(off, None, store),
        Notifier.from_settings(make_settings(webhook_secret=generate_secret())),
    ]
    for notifier in notifiers:
        if notifier is not None:
            asyncio.run(notifier.aclose())
    store.close()
    assert [n is not None for n in notifiers] == [True, False, True]
