"""https to a checked address: the name still goes out as SNI and the certificate is still
verified against it, not against the address dialled."""

from __future__ import annotations

import ssl
from collections.abc import Callable

import pytest
import trustme

from bgsvc.errors import UrlFetchFailed
from bgsvc.outbound.client import OutboundClient
from tests.outbound.conftest import png_bytes, run
from tests.outbound.servers import Handler, serve


def _png(handler: Handler) -> None:
    handler.reply(200, png_bytes(), {"Content-Type": "image/png"})


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def _server_context(ca: trustme.CA, name: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(name).configure_cert(context)
    return context


def _client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def test_https_by_address_sends_the_name_as_sni_and_verifies_it(
    make_client: Callable[..., OutboundClient], ca: trustme.CA
) -> None:
    with serve({"/cat.png": _png}, tls=_server_context(ca, "images.test")) as server:

        async def scenario() -> bytes:
            async with make_client(allow="images.test", verify=_client_context(ca)) as client:
                url = f"https://images.test:{server.port}/cat.png"
                return (await client.fetch(url, max_bytes=10_000)).content

        assert run(scenario()) == png_bytes()
    assert server.sni == ["images.test"]
    assert server.seen[0].headers["host"] == f"images.test:{server.port}"


def test_a_certificate_for_another_name_fails_the_fetch(
    make_client: Callable[..., OutboundClient], ca: trustme.CA
) -> None:
    # wrong.test resolves to the same address, but the server proves only images.test.
    with serve({"/cat.png": _png}, tls=_server_context(ca, "images.test")) as server:

        async def scenario() -> None:
            async with make_client(allow="wrong.test", verify=_client_context(ca)) as client:
                with pytest.raises(UrlFetchFailed, match="certificate"):
                    await client.fetch(f"https://wrong.test:{server.port}/cat.png", max_bytes=100)

        run(scenario())
    assert server.seen == []
