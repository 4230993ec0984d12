from __future__ import annotations

import pytest
from pydantic import ValidationError

from bgsvc.config import Settings
from bgsvc.outbound.client import OutboundClient
from tests.outbound.conftest import run
from tests.outbound.servers import Handler, serve


def _ok(handler: Handler) -> None:
    handler.reply(200, b"ok")


def test_the_allow_list_and_timeouts_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with serve({"/": _ok}) as server:
        monkeypatch.setenv("BGSVC_OUTBOUND_ALLOW", f"hooks.internal, 127.0.0.1:{server.port}")
        monkeypatch.setenv("BGSVC_OUTBOUND_READ_TIMEOUT_S", "1.5")
        settings = Settings()
        assert settings.outbound_read_timeout_s == 1.5

        async def scenario() -> int:
            async with OutboundClient.from_settings(settings) as client:
                return (await client.fetch(f"{server.base_url}/", max_bytes=10)).status

        assert run(scenario()) == 200


def test_a_malformed_allow_list_stops_the_settings_from_loading(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BGSVC_OUTBOUND_ALLOW", "10.0.0.0/8:80")
    with pytest.raises(ValidationError, match="a network takes no port"):
        Settings()
