"""URL inputs through the compat routes: hostile URLs refused with a 400 and a clear code,
an allow-listed local image processed as if uploaded. Loopback only: names are resolved by
the outbound tests' fake DNS, and every server is a local one."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from bgsvc.app import create_app
from bgsvc.config import Settings
from tests.conftest import encode_image, subject_image, wait_ready
from tests.jobs.conftest import wait_status
from tests.models import TINY_SIZE
from tests.outbound.conftest import CountingResolver
from tests.outbound.servers import Handler, Server, serve

# The TestClient answers with httpx's or httpx2's Response, whichever is installed.
Response = Any

PHOTO = encode_image(subject_image())
MAX_UPLOAD = 256 * 1024
HUGE = 64 * 1024 * 1024


class _Streamed:
    """How many bytes the streaming handler got out before the client hung up."""

    sent = 0


def _settings(model: Path, workdir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "model_dir": workdir / "models",
        "data_dir": workdir / "data",
        "default_model": "tiny",
        "custom_models": {"tiny": {"path": model, "profile": "imgly", "input_size": TINY_SIZE}},
        "intra_op_threads": 1,
        "node_name": "test-node",
        "url_inputs": True,
        "max_upload_bytes": MAX_UPLOAD,
        # Both results computed, so "identical to the upload" compares two inferences.
        "result_cache_bytes": 0,
        "outbound_connect_timeout_s": 2.0,
        "outbound_read_timeout_s": 0.5,
        "outbound_total_timeout_s": 5.0,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="module")
def start(
    tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., TestClient]]:
    with ExitStack() as stack:

        def factory(**overrides: Any) -> TestClient:
            settings = _settings(tiny_model_path, tmp_path_factory.mktemp("urls"), **overrides)
            app = create_app(
                settings, on_load_failure=lambda: None, outbound_resolver=CountingResolver()
            )
            client = stack.enter_context(TestClient(app, raise_server_exceptions=False))
            wait_ready(client)
            return client

        yield factory


# --- The local servers: an image, and every way a server can misbehave. ---------------


def _image_as_octets(handler: Handler) -> None:
    handler.reply(200, PHOTO, {"Content-Type": "application/octet-stream"})


def _html_claiming_png(handler: Handler) -> None:
    handler.reply(200, b"<html><body>not an image</body></html>", {"Content-Type": "image/png"})


def _redirect(location: str) -> Callable[[Handler], None]:
    return lambda handler: handler.reply(302, b"", {"Location": location})


def _declared_huge(handler: Handler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "image/png")
    handler.send_header("Content-Length", str(HUGE))
    handler.end_headers()


def _streams_huge(handler: Handler) -> None:
    # No length announced: only counting while streaming can stop this one.
    handler.send_response(200)
    handler.send_header("Content-Type", "image/png")
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    chunk = b"\x89" * 65536
    frame = b"%x\r\n%s\r\n" % (len(chunk), chunk)
    try:
        while _Streamed.sent < HUGE:
            handler.wfile.write(frame)
            _Streamed.sent += len(chunk)
        handler.wfile.write(b"0\r\n\r\n")
    except OSError:
        pass  # the client hung up: what the test wants


def _stalls(handler: Handler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Length", str(len(PHOTO)))
    handler.end_headers()
    handler.wfile.write(PHOTO[:16])
    handler.wfile.flush()
    handler.pause(5)


@pytest.fixture(scope="module")
def inner() -> Iterator[Server]:
    """A server with a real image that only a redirect points to, and that is not allowed."""
    with serve({"/cat.png": _image_as_octets}) as server:
        yield server


@pytest.fixture(scope="module")
def outer(inner: Server) -> Iterator[Server]:
    routes = {
        "/cat.bin": _image_as_octets,
        "/page.png": _html_claiming_png,
        "/to-loopback": _redirect(f"{inner.base_url}/cat.png"),
        "/to-metadata": _redirect("http://169.254.169.254/latest/meta-data/"),
        "/r1": _redirect("/r2"),
        "/r2": _redirect("/r3"),
        "/r3": _redirect("/r4"),
        "/r4": _redirect("/cat.bin"),
        "/huge-declared": _declared_huge,
        "/huge-streamed": _streams_huge,
        "/stalls": _stalls,
    }
    with serve(routes) as server:
        yield server


@pytest.fixture(scope="module")
def guarded(start: Callable[..., TestClient], outer: Server) -> TestClient:
    """URL inputs on; only the outer server's port is let through the policy."""
    return start(outbound_allow=f"127.0.0.1:{outer.port}")


def _via_rembg(client: TestClient, url: str) -> Response:
    return client.get("/api/remove", params={"url": url})


def _via_removebg(client: TestClient, url: str) -> Response:
    return client.post("/v1.0/removebg", data={"image_url": url, "size": "full"})


def _via_removebg_json(client: TestClient, url: str) -> Response:
    return client.post("/v1.0/removebg", json={"image_url": url, "size": "full"})


ROUTES = {"rembg": _via_rembg, "removebg": _via_removebg, "removebg-json": _via_removebg_json}


def _code(response: Response) -> str:
    body = response.json()
    return str(body["errors"][0]["code"] if "errors" in body else body["code"])


HOSTILE = [
    ("http://127.0.0.1/", "url_forbidden"),
    ("http://10.0.0.1/", "url_forbidden"),
    ("http://172.16.0.1/", "url_forbidden"),
    ("http://192.168.1.1/", "url_forbidden"),
    ("http://169.254.169.254/latest/meta-data/", "url_forbidden"),
    ("http://100.64.0.1/", "url_forbidden"),
    ("http://0.0.0.0/", "url_forbidden"),
    ("http://[::1]/", "url_forbidden"),
    ("http://[::ffff:127.0.0.1]/", "url_forbidden"),
    ("http://[::ffff:a9fe:a9fe]/", "url_forbidden"),
    ("http://[2002:7f00:1::]/", "url_forbidden"),
    ("http://[64:ff9b::7f00:1]/", "url_forbidden"),
    ("http://2130706433/", "url_forbidden"),
    ("http://0177.0.0.1/", "url_forbidden"),
    ("http://127.1/", "url_forbidden"),
    ("http://0x7f.1/", "url_forbidden"),
    ("http://[fe80::1]/", "url_forbidden"),
    ("http://224.0.0.1/", "url_forbidden"),
    ("http://images.test/cat.png", "url_forbidden"),  # a name that resolves to 127.0.0.1
    ("http://metadata.test/", "url_forbidden"),  # ... and one to 169.254.169.254
    ("http://localhost/", "url_forbidden"),
    ("ftp://example.com/cat.png", "url_forbidden"),
    ("file:///etc/passwd", "url_forbidden"),
    ("http://127.0.0.1\\@example.com/", "url_invalid"),
    ("http:///cat.png", "url_invalid"),
]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(("url", "code"), HOSTILE)
def test_hostile_urls_are_refused_with_a_400_and_a_clear_code(
    guarded: TestClient, outer: Server, route: str, url: str, code: str
) -> None:
    response = ROUTES[route](guarded, url)
    assert (response.status_code, _code(response)) == (400, code)


# Through the allowed server: each would be fetched by a naive client.
SERVED = [
    ("/to-loopback", "url_forbidden"),  # a redirect into 127.0.0.1 (another port)
    ("/to-metadata", "url_forbidden"),  # a redirect into 169.254.169.254
    ("/r1", "url_fetch_failed"),  # four redirects
    ("/huge-declared", "url_too_large"),
    ("/huge-streamed", "url_too_large"),
    ("/stalls", "url_fetch_failed"),  # the read timeout
]


@pytest.mark.parametrize("route", ["rembg", "removebg"])
@pytest.mark.parametrize(("path", "code"), SERVED)
def test_redirects_oversized_and_slow_bodies_are_refused_with_a_400(
    guarded: TestClient, outer: Server, inner: Server, route: str, path: str, code: str
) -> None:
    before = len(inner.seen)
    response = ROUTES[route](guarded, f"{outer.base_url}{path}")
    assert (response.status_code, _code(response)) == (400, code)
    assert len(inner.seen) == before  # the redirect target was never contacted


def test_a_streamed_body_over_the_limit_is_cut_off_long_before_its_end(
    guarded: TestClient, outer: Server
) -> None:
    _Streamed.sent = 0
    response = _via_rembg(guarded, f"{outer.base_url}/huge-streamed")
    assert _code(response) == "url_too_large"
    assert MAX_UPLOAD < _Streamed.sent < HUGE // 4


def test_the_read_timeout_is_named_in_the_message(guarded: TestClient, outer: Server) -> None:
    response = _via_rembg(guarded, f"{outer.base_url}/stalls")
    assert "read timeout" in response.json()["message"]


def test_the_content_type_is_sniffed_not_trusted(guarded: TestClient, outer: Server) -> None:
    html = _via_removebg(guarded, f"{outer.base_url}/page.png")
    assert (html.status_code, _code(html)) == (415, "unsupported_format")
    octets = _via_rembg(guarded, f"{outer.base_url}/cat.bin")
    assert (octets.status_code, octets.headers["content-type"]) == (200, "image/png")


def test_three_redirects_are_followed(guarded: TestClient, outer: Server) -> None:
    response = _via_rembg(guarded, f"{outer.base_url}/r2")
    assert response.status_code == 200


@pytest.mark.parametrize("route", ["rembg", "removebg"])
def test_an_allow_listed_local_image_gives_the_same_cutout_as_its_upload(
    start: Callable[..., TestClient], route: str
) -> None:
    with serve({"/cat.bin": _image_as_octets}) as server:
        client = start(outbound_allow="127.0.0.1")
        url = f"{server.base_url}/cat.bin"
        if route == "rembg":
            fetched = _via_rembg(client, url)
            uploaded = client.post("/api/remove", files={"file": ("a.png", PHOTO, "image/png")})
        else:
            fetched = _via_removebg(client, url)
            uploaded = client.post(
                "/v1.0/removebg", files={"image_file": PHOTO}, data={"size": "full"}
            )
        assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/png"
        assert fetched.content[:8] == b"\x89PNG\r\n\x1a\n"
        assert fetched.content == uploaded.content
        assert (
            len(server.seen) == 1 and server.seen[0].headers["host"] == f"127.0.0.1:{server.port}"
        )


def test_the_native_route_takes_image_url_too(guarded: TestClient, outer: Server) -> None:
    url = f"{outer.base_url}/cat.bin"
    fetched = guarded.post("/remove-background", params={"image_url": url})
    uploaded = guarded.post("/remove-background", files={"file": PHOTO})
    assert fetched.status_code == 200 and fetched.content == uploaded.content
    refused = guarded.post("/remove-background", data={"image_url": "http://127.1/"})
    assert (refused.status_code, _code(refused)) == (400, "url_forbidden")


def test_a_job_takes_image_url_and_refuses_a_hostile_one_at_submission(
    guarded: TestClient, outer: Server
) -> None:
    accepted = guarded.post("/jobs", data={"image_url": f"{outer.base_url}/cat.bin"})
    assert accepted.status_code == 202, accepted.text
    wait_status(guarded, accepted.json()["id"], ("succeeded",))
    result = guarded.get(accepted.json()["result_url"])
    uploaded = guarded.post("/remove-background", files={"file": PHOTO})
    assert result.status_code == 200 and result.content == uploaded.content
    for url, code in (
        ("http://169.254.169.254/", "url_forbidden"),
        ("gopher://x/", "url_forbidden"),
    ):
        refused = guarded.post("/jobs", params={"image_url": url})
        assert (refused.status_code, _code(refused)) == (400, code)


def test_a_bad_option_is_refused_before_anything_is_fetched(
    guarded: TestClient, outer: Server
) -> None:
    before = len(outer.seen)
    url = f"{outer.base_url}/cat.bin"
    bad = guarded.post("/v1.0/removebg", data={"image_url": url, "size": "gigantic"})
    native = guarded.post("/remove-background", params={"image_url": url, "format": "bmp"})
    job = guarded.post("/jobs", data={"image_url": url, "model": "u2net"})
    assert [r.status_code for r in (bad, native, job)] == [400, 400, 400]
    assert len(outer.seen) == before


def test_an_image_and_a_url_together_are_refused(guarded: TestClient, outer: Server) -> None:
    url = f"{outer.base_url}/cat.bin"
    both = guarded.post("/v1.0/removebg", files={"image_file": PHOTO}, data={"image_url": url})
    assert (both.status_code, _code(both)) == (400, "invalid_parameter")
    missing = guarded.get("/api/remove")
    assert (missing.status_code, _code(missing)) == (400, "missing_image")


def test_url_inputs_are_refused_while_the_setting_is_off(
    start: Callable[..., TestClient], outer: Server
) -> None:
    client = start(url_inputs=False, outbound_allow="127.0.0.1")
    before = len(outer.seen)
    url = f"{outer.base_url}/cat.bin"
    for response in (
        _via_rembg(client, url),
        _via_removebg(client, url),
        client.post("/remove-background", params={"image_url": url}),
    ):
        assert (response.status_code, _code(response)) == (400, "invalid_parameter")
        assert "BGSVC_URL_INPUTS" in response.text
    assert len(outer.seen) == before


def test_a_slow_fetch_holds_a_fetch_place_and_no_admission_place(
    start: Callable[..., TestClient],
) -> None:
    # One admission place and one fetch place: while a slow origin trickles its image, an
    # upload still gets the admission place (a slow origin delays only its own request),
    # and a second URL is refused with 429 before anything is fetched for it.
    with serve({"/stalls": _stalls, "/cat.bin": _image_as_octets}) as server:
        client = start(
            outbound_allow="127.0.0.1", max_concurrency=1, max_queue=0, max_concurrent_uploads=1
        )
        scheduler = client.app.state.bgsvc.scheduler  # type: ignore[attr-defined]
        slow: list[Response] = []
        worker = threading.Thread(
            target=lambda: slow.append(_via_rembg(client, f"{server.base_url}/stalls"))
        )
        worker.start()
        try:
            for _ in range(500):  # the slow fetch reaches the server within 5 s
                if server.seen:
                    break
                server.stopping.wait(0.01)
            held = scheduler.admitted
            upload = client.post("/remove-background", files={"image_file": ("a.png", PHOTO)})
            busy = _via_rembg(client, f"{server.base_url}/cat.bin")
        finally:
            worker.join(timeout=10)
        assert held == 0
        assert upload.status_code == 200
        assert (busy.status_code, _code(busy)) == (429, "overloaded")
        assert "URLs being fetched" in busy.json()["message"]
        assert [seen.path for seen in server.seen] == ["/stalls"]
        assert _code(slow[0]) == "url_fetch_failed"
        assert scheduler.admitted == 0


def test_fetches_are_counted_by_outcome(guarded: TestClient, outer: Server) -> None:
    _via_rembg(guarded, "http://10.0.0.1/")
    _via_rembg(guarded, f"{outer.base_url}/cat.bin")
    text = guarded.get("/metrics").text
    assert 'bgsvc_url_fetches_total{outcome="url_forbidden"}' in text
    assert 'bgsvc_url_fetches_total{outcome="fetched"}' in text
    assert 'bgsvc_url_fetch_seconds_count{outcome="fetched"}' in text


def test_removebg_background_by_url_goes_through_the_same_guard(
    guarded: TestClient, outer: Server
) -> None:
    url = f"{outer.base_url}/cat.bin"
    fetched = guarded.post(
        "/v1.0/removebg", files={"image_file": PHOTO}, data={"bg_image_url": url, "format": "png"}
    )
    uploaded = guarded.post(
        "/v1.0/removebg",
        files={"image_file": PHOTO, "bg_image_file": ("bg.png", PHOTO, "image/png")},
        data={"format": "png"},
    )
    assert fetched.status_code == 200 and fetched.content == uploaded.content
    for hostile, code in HOSTILE[:3] + HOSTILE[-4:-2]:
        refused = guarded.post(
            "/v1.0/removebg", files={"image_file": PHOTO}, data={"bg_image_url": hostile}
        )
        assert (refused.status_code, _code(refused)) == (400, code), hostile
    both = guarded.post(
        "/v1.0/removebg",
        files={"image_file": PHOTO, "bg_image_file": ("bg.png", PHOTO, "image/png")},
        data={"bg_image_url": url},
    )
    assert both.status_code == 400
