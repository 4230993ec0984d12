from __future__ import annotations

import gzip
import tracemalloc
import zlib
from collections.abc import Callable

import pytest

from bgsvc.errors import BgsvcError, UrlFetchFailed, UrlTooLarge
from bgsvc.outbound.client import OutboundClient, OutboundResponse
from bgsvc.outbound.content import sniff_image_format
from tests.outbound.conftest import CountingResolver, png_bytes, run
from tests.outbound.servers import Handler, serve

HOSTILE = [
    ("http://127.0.0.1/", "url_forbidden"),
    ("http://10.0.0.1/", "url_forbidden"),
    ("http://172.16.5.4/", "url_forbidden"),
    ("http://192.168.1.1/", "url_forbidden"),
    ("http://169.254.169.254/latest/meta-data/", "url_forbidden"),
    ("http://100.64.0.1/", "url_forbidden"),
    ("http://0.0.0.0:8000/", "url_forbidden"),
    ("http://224.0.0.1/", "url_forbidden"),
    ("http://255.255.255.255/", "url_forbidden"),
    ("http://240.0.0.1/", "url_forbidden"),
    ("http://192.0.2.1/", "url_forbidden"),
    ("http://198.18.0.1/", "url_forbidden"),
    ("http://2130706433/", "url_forbidden"),
    ("http://0177.0.0.1/", "url_forbidden"),
    ("http://0x7f.1/", "url_forbidden"),
    ("http://127.1/", "url_forbidden"),
    ("http://0x7f000001:8000/", "url_forbidden"),
    ("http://[::1]/", "url_forbidden"),
    ("http://[::]/", "url_forbidden"),
    ("http://[::ffff:127.0.0.1]/", "url_forbidden"),
    ("http://[::ffff:a9fe:a9fe]/", "url_forbidden"),
    ("http://[::127.0.0.1]/", "url_forbidden"),
    ("http://[2002:7f00:1::]/", "url_forbidden"),
    ("http://[64:ff9b::a9fe:a9fe]/", "url_forbidden"),
    ("http://[64:ff9b:1::a00:1]/", "url_forbidden"),
    ("http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/", "url_forbidden"),
    ("http://[fd12:3456::1]/", "url_forbidden"),
    ("http://[fe80::1%25eth0]/", "url_forbidden"),
    ("http://[ff02::1]/", "url_forbidden"),
    ("http://[2001:db8::1]/", "url_forbidden"),
    ("http://localhost:8000/", "url_forbidden"),
    ("http://LOCALHOST./", "url_forbidden"),
    ("http://example.com@127.0.0.1/", "url_forbidden"),
    ("http://internal.test/", "url_forbidden"),
    ("https://metadata.test/", "url_forbidden"),
    ("http://mixed.test/", "url_forbidden"),
    ("http://v6loop.test/", "url_forbidden"),
    ("ftp://example.com/file.png", "url_forbidden"),
    ("file:///etc/passwd", "url_forbidden"),
    ("gopher://127.0.0.1:25/", "url_forbidden"),
    ("http://127.0.0.1\\@example.com/", "url_invalid"),
    ("http:///image.png", "url_invalid"),
    ("http://example.com:99999/", "url_invalid"),
    ("http://example.com/" + "a" * 70_000, "url_invalid"),
]


@pytest.mark.parametrize(("url", "code"), HOSTILE)
def test_hostile_urls_are_refused_before_any_connection(
    make_client: Callable[..., OutboundClient], url: str, code: str
) -> None:
    async def scenario() -> None:
        async with make_client() as client:
            with pytest.raises(BgsvcError) as caught:
                await client.fetch(url, max_bytes=1024, max_redirects=3)
            assert (caught.value.code, caught.value.status) == (code, 400)

    run(scenario())


def _png_as_text(handler: Handler) -> None:
    handler.reply(200, png_bytes(), {"Content-Type": "text/plain"})


def test_an_allow_listed_local_image_is_fetched_and_sniffed_not_trusted(
    make_client: Callable[..., OutboundClient], resolver: CountingResolver
) -> None:
    with serve({"/cat.png": _png_as_text}) as server:

        async def scenario() -> OutboundResponse:
            async with make_client(allow="127.0.0.1") as client:
                return await client.fetch(f"{server.base_url}/cat.png?size=1", max_bytes=10_000)

        response = run(scenario())
    assert response.content == png_bytes()
    assert sniff_image_format(response.content, ["PNG", "JPEG"]) == "PNG"
    assert server.seen[0].path == "/cat.png?size=1"
    assert resolver.calls == []  # a literal is never resolved


def test_a_name_is_resolved_once_and_sent_as_host_while_the_address_is_dialled(
    make_client: Callable[..., OutboundClient], resolver: CountingResolver
) -> None:
    with serve({"/cat.png": _png_as_text}) as server:

        async def scenario() -> OutboundResponse:
            async with make_client(allow="images.test") as client:
                return await client.fetch(
                    f"http://images.test:{server.port}/cat.png", max_bytes=10_000
                )

        response = run(scenario())
    assert resolver.calls == ["images.test"]
    assert response.address == "127.0.0.1"
    assert server.seen[0].headers["host"] == f"images.test:{server.port}"


def test_proxy_variables_in_the_environment_are_ignored(
    make_client: Callable[..., OutboundClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("ALL_PROXY", "http://127.0.0.1:9")
    with serve({"/cat.png": _png_as_text}) as server:

        async def scenario() -> OutboundResponse:
            async with make_client(allow="127.0.0.1") as client:
                return await client.fetch(f"{server.base_url}/cat.png", max_bytes=10_000)

        assert run(scenario()).status == 200


def _redirect_to(location: str) -> Callable[[Handler], None]:
    return lambda handler: handler.reply(302, b"", {"Location": location})


@pytest.mark.parametrize("into", ["loopback", "metadata"])
def test_a_redirect_from_an_allowed_server_into_a_refused_address_is_refused(
    make_client: Callable[..., OutboundClient], into: str
) -> None:
    with serve({"/secret": _png_as_text}) as inner:
        target = {
            "loopback": f"{inner.base_url}/secret",
            "metadata": "http://169.254.169.254/latest/meta-data/",
        }[into]
        with serve({"/go": _redirect_to(target)}) as outer:

            async def scenario() -> None:
                # Only the first server's address and port are opened, not the host.
                async with make_client(allow=f"127.0.0.1:{outer.port}") as client:
                    with pytest.raises(BgsvcError) as caught:
                        await client.fetch(
                            f"{outer.base_url}/go", max_bytes=10_000, max_redirects=3
                        )
                    assert caught.value.code == "url_forbidden"

            run(scenario())
        assert inner.seen == []


def test_redirects_are_followed_up_to_the_limit_and_not_by_default(
    make_client: Callable[..., OutboundClient],
) -> None:
    routes = {
        "/a": _redirect_to("/b"),
        "/b": _redirect_to("/c"),
        "/c": _redirect_to("/cat.png"),
        "/cat.png": _png_as_text,
    }
    with serve(routes) as server:

        async def scenario() -> None:
            async with make_client(allow="127.0.0.1") as client:
                ok = await client.fetch(f"{server.base_url}/a", max_bytes=10_000, max_redirects=3)
                assert ok.content == png_bytes() and len(ok.redirects) == 3
                assert ok.url == f"{server.base_url}/cat.png"
                for limit, words in ((2, "too many redirects"), (0, "not followed")):
                    with pytest.raises(UrlFetchFailed, match=words):
                        await client.fetch(
                            f"{server.base_url}/a", max_bytes=10_000, max_redirects=limit
                        )

        run(scenario())


def _big_declared(handler: Handler) -> None:
    handler.reply(200, b"x" * 5000)


def _big_chunked(handler: Handler) -> None:
    handler.send_response(200)
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    for _ in range(5):
        handler.wfile.write(b"400\r\n" + b"x" * 1024 + b"\r\n")
    handler.wfile.write(b"0\r\n\r\n")


@pytest.mark.parametrize("path", ["/declared", "/chunked"])
def test_a_body_over_the_limit_is_refused_while_streaming(
    make_client: Callable[..., OutboundClient], path: str
) -> None:
    routes = {"/declared": _big_declared, "/chunked": _big_chunked}
    with serve(routes) as server:

        async def scenario() -> None:
            async with make_client(allow="127.0.0.1") as client:
                with pytest.raises(UrlTooLarge) as caught:
                    await client.fetch(f"{server.base_url}{path}", max_bytes=4096)
                assert (caught.value.code, caught.value.status) == ("url_too_large", 400)

        run(scenario())


def _stacked_gzip() -> bytes:
    """256 MiB of zeros gzipped twice: a few hundred bytes on the wire, which an HTTP
    client that decodes "gzip, gzip" inflates a whole read at a time."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(1 << 20)
    inner = b"".join(packer.compress(zeros) for _ in range(256)) + packer.flush()
    return gzip.compress(inner, 9)


def _compressed_anyway(handler: Handler) -> None:
    handler.reply(200, _stacked_gzip(), {"Content-Encoding": "gzip, gzip"})


def test_a_compressed_body_is_neither_asked_for_nor_inflated(
    make_client: Callable[..., OutboundClient],
) -> None:
    # Inflated by httpx before it was counted, 2 KB of "gzip, gzip" took 2.4 GB.
    with serve({"/bomb": _compressed_anyway, "/hook": _compressed_anyway}) as server:

        async def scenario() -> tuple[int, int]:
            async with make_client(allow="127.0.0.1") as client:
                tracemalloc.start()
                try:
                    with pytest.raises(UrlFetchFailed, match="not asked for"):
                        await client.fetch(f"{server.base_url}/bomb", max_bytes=4096)
                    # A webhook's reply is kept as it came, cut at its limit.
                    reply = await client.post(
                        f"{server.base_url}/hook", content=b"{}", headers={}, max_bytes=64
                    )
                    return len(reply.content), tracemalloc.get_traced_memory()[1]
                finally:
                    tracemalloc.stop()

        kept, peak = run(scenario())
    assert [s.headers["accept-encoding"] for s in server.seen] == ["identity"] * 2
    assert kept == 64
    assert peak < 16 << 20


def _stalls(handler: Handler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Length", "100")
    handler.end_headers()
    handler.wfile.write(b"x" * 10)
    handler.wfile.flush()
    handler.pause(5)


def _drips(handler: Handler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Length", "100")
    handler.end_headers()
    for _ in range(100):
        handler.wfile.write(b"x")
        handler.wfile.flush()
        handler.pause(0.05)
        if handler.server.state.stopping.is_set():
            return


@pytest.mark.parametrize(
    ("path", "words"), [("/stalls", "read timeout"), ("/drips", "longer than 0.6 s")]
)
def test_a_slow_body_hits_the_read_or_the_total_timeout(
    make_client: Callable[..., OutboundClient], path: str, words: str
) -> None:
    with serve({"/stalls": _stalls, "/drips": _drips}) as server:

        async def scenario() -> None:
            async with make_client(
                allow="127.0.0.1", read_timeout_s=0.3, total_timeout_s=0.6
            ) as client:
                with pytest.raises(UrlFetchFailed, match=words) as caught:
                    await client.fetch(f"{server.base_url}{path}", max_bytes=10_000)
                assert caught.value.code == "url_fetch_failed"

        run(scenario())


def test_an_error_status_or_a_closed_port_fails_the_fetch(
    make_client: Callable[..., OutboundClient],
) -> None:
    with serve({}) as server:

        async def scenario() -> None:
            async with make_client(allow="127.0.0.1") as client:
                with pytest.raises(UrlFetchFailed, match="answered 404"):
                    await client.fetch(f"{server.base_url}/missing", max_bytes=100)

        run(scenario())
    closed = server.base_url  # the server is stopped: nothing listens there now

    async def refused() -> None:
        async with make_client(allow="127.0.0.1") as client:
            with pytest.raises(UrlFetchFailed, match="could not be reached"):
                await client.fetch(f"{closed}/x", max_bytes=100)

    run(refused())


def test_post_returns_any_status_and_never_follows_a_redirect(
    make_client: Callable[..., OutboundClient],
) -> None:
    with serve({"/hook": _redirect_to("/elsewhere"), "/elsewhere": _png_as_text}) as server:

        async def scenario() -> OutboundResponse:
            async with make_client(allow="127.0.0.1") as client:
                return await client.post(
                    f"{server.base_url}/hook", content=b"{}", headers={"X-A": "1"}
                )

        response = run(scenario())
    assert response.status == 302
    assert [s.path for s in server.seen] == ["/hook"]
    assert server.seen[0].body == b"{}" and server.seen[0].headers["x-a"] == "1"
