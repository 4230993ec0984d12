from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from bgsvc.cli import main
from bgsvc.config import get_settings
from tests.auth.conftest import PEPPER
from tests.conftest import encode_image, subject_image
from tests.redis_server import RedisServer, redis_server  # noqa: F401


def _create_list_revoke(capsys: pytest.CaptureFixture[str]) -> str:
    assert (
        main(
            [
                "keys",
                "create",
                "ci",
                "--rate",
                "60/min",
                "--burst",
                "5",
                "--quota",
                "10000/month",
                "--scopes",
                "remove",
            ]
        )
        == 0
    )
    out, err = capsys.readouterr()
    secret = out.strip()
    assert secret.startswith("bgsvc_") and "\n" not in secret
    assert "created key 'ci'" in err and secret not in err
    assert main(["keys", "create", "ci"]) == 2
    assert "exists already" in capsys.readouterr().err
    assert main(["keys", "list"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["NAME", "SCOPES", "RATE", "BURST", "QUOTA", "CREATED", "REVOKED"]
    assert table[1].split()[:5] == ["ci", "remove", "60/min", "5", "10000/month"]
    assert table[1].split()[-1] == "-"
    assert main(["keys", "revoke", "ci"]) == 0
    assert main(["keys", "revoke", "nobody"]) == 2
    capsys.readouterr()
    main(["keys", "list"])
    assert capsys.readouterr().out.splitlines()[1].split()[-1] != "-"
    return secret


def test_cli_create_list_revoke_on_sqlite(
    keys_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _create_list_revoke(capsys)
    assert (keys_env / "keys.sqlite3").is_file()


@pytest.mark.redis
def test_cli_create_list_revoke_on_redis(
    keys_env: Path,
    redis_server: RedisServer,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("BGSVC_REDIS_URL", redis_server.url)
    get_settings.cache_clear()
    secret = _create_list_revoke(capsys)
    assert not (keys_env / "keys.sqlite3").exists()
    with redis_server.client() as client:
        dumped = b"".join(client.get(k) or b"" for k in client.keys("bgsvc:apikey:*"))
    assert b'"name": "ci"' in dumped and secret.encode() not in dumped


def test_create_refuses_without_a_pepper(
    keys_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("BGSVC_AUTH_PEPPER")
    get_settings.cache_clear()
    with pytest.raises(SystemExit, match="BGSVC_AUTH_PEPPER"):
        main(["keys", "create", "x"])


def test_no_secret_in_any_log_line(
    keys_env: Path,
    make_client: Callable[..., TestClient],
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    photo_png: bytes,
) -> None:
    caplog.set_level(logging.DEBUG)
    assert main(["keys", "create", "logged"]) == 0
    secret = capsys.readouterr().out.strip()
    client = make_client(auth="required", auth_pepper=PEPPER, data_dir=keys_env)
    files = {"file": ("a.png", photo_png, "image/png")}
    ok = client.post("/remove-background", files=files, headers={"X-Api-Key": secret})
    wrong = client.post("/remove-background", files=files, headers={"X-Api-Key": secret + "x"})
    assert (ok.status_code, wrong.status_code) == (200, 401)
    main(["keys", "revoke", "logged"])
    revoked = client.post("/remove-background", files=files, headers={"X-Api-Key": secret})
    assert revoked.status_code == 403
    lines = [record.getMessage() for record in caplog.records]
    assert any("/remove-background" in line for line in lines)  # the access log did run
    out, err = capsys.readouterr()
    assert not [line for line in [*lines, out, err] if secret[6:20] in line]


def test_serve_refuses_to_start_when_keys_are_required_without_a_pepper(
    keys_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("BGSVC_AUTH_PEPPER")
    monkeypatch.setenv("BGSVC_AUTH", "required")
    get_settings.cache_clear()
    assert main(["serve"]) == 2
    assert capsys.readouterr().err == (
        "bgsvc: error: BGSVC_AUTH=required needs BGSVC_AUTH_PEPPER (e.g. openssl rand -base64 32)\n"
    )


@pytest.mark.redis
def test_a_key_revoked_in_redis_is_refused_at_once(
    keys_env: Path,
    redis_server: RedisServer,  # noqa: F811
    make_client: Callable[..., TestClient],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("BGSVC_REDIS_URL", redis_server.url)
    get_settings.cache_clear()
    assert main(["keys", "create", "shared", "--scopes", "jobs"]) == 0
    secret = capsys.readouterr().out.strip()
    client = make_client(auth="required", auth_pepper=PEPPER, redis_url=redis_server.url)
    headers = {"Authorization": f"Bearer {secret}"}
    assert client.get("/jobs/job_unknown", headers=headers).status_code == 404
    assert main(["keys", "revoke", "shared"]) == 0
    assert client.get("/jobs/job_unknown", headers=headers).status_code == 403


@pytest.mark.redis
def test_with_the_key_store_down_known_keys_are_served_and_unknown_ones_are_503(
    keys_env: Path,
    redis_server: RedisServer,  # noqa: F811
    make_client: Callable[..., TestClient],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("BGSVC_REDIS_URL", redis_server.url)
    get_settings.cache_clear()
    assert main(["keys", "create", "seen", "--rate", "100/min"]) == 0
    seen = capsys.readouterr().out.strip()
    assert main(["keys", "create", "unseen"]) == 0
    unseen = capsys.readouterr().out.strip()
    assert main(["keys", "create", "gone"]) == 0
    gone = capsys.readouterr().out.strip()
    client = make_client(auth="required", auth_pepper=PEPPER, redis_url=redis_server.url)
    image = encode_image(subject_image())
    files = {"file": ("p.png", image, "image/png")}

    def post(secret: str) -> int:
        headers = {"X-Api-Key": secret}
        return client.post("/remove-background", files=files, headers=headers).status_code

    assert post(seen) == 200
    assert main(["keys", "revoke", "gone"]) == 0
    assert post(gone) == 403
    redis_server.stop()
    # Redis is down: the key seen valid is still served (its limits fail open), the key
    # seen revoked is still refused, and a key this process never saw cannot be checked.
    assert post(seen) == 200
    assert post(gone) == 403
    assert post(unseen) == 503
