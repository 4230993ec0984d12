"""The fleet over HTTPS (`bgsvc cluster up --tls`): nginx terminates TLS with a throwaway
CA made for the run, offers HTTP/2, sends HSTS, redirects plain HTTP, refuses TLS 1.1."""

from __future__ import annotations

import http.client
import socket
import ssl
import warnings
from collections.abc import Callable
from urllib.parse import urlsplit

import httpx
import pytest

from bgsvc.cluster import Cluster
from tests.cluster.conftest import REMOVE, unique_image

pytestmark = pytest.mark.cluster


@pytest.fixture
def tls_cluster(make_cluster: Callable[..., Cluster]) -> Cluster:
    return make_cluster(nodes=2, tls=True)


def _ca(cluster: Cluster) -> str:
    files = cluster.nginx.tls_files
    assert files is not None and files.ca is not None
    return str(files.ca)


def _handshake(cluster: Cluster, context: ssl.SSLContext) -> ssl.SSLSocket:
    address = urlsplit(cluster.url)
    raw = socket.create_connection((address.hostname, address.port), timeout=10)
    return context.wrap_socket(raw, server_hostname=address.hostname)


def test_tls_handshake_is_13_with_http2_12_allowed_11_and_unknown_ca_refused(
    tls_cluster: Cluster,
) -> None:
    assert tls_cluster.url.startswith("https://")
    context = ssl.create_default_context(cafile=_ca(tls_cluster))
    context.set_alpn_protocols(["h2", "http/1.1"])
    with _handshake(tls_cluster, context) as tls:
        assert tls.version() == "TLSv1.3"
        assert tls.selected_alpn_protocol() == "h2"
    # The key nginx serves is readable by its owner only.
    files = tls_cluster.nginx.tls_files
    assert files is not None and files.key.stat().st_mode & 0o777 == 0o600
    # Without the run's CA the certificate is not trusted.
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(tls_cluster, ssl.create_default_context()).close()

    tls12 = ssl.create_default_context(cafile=_ca(tls_cluster))
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    with _handshake(tls_cluster, tls12) as tls:
        assert tls.version() == "TLSv1.2"
        # Mozilla intermediate: forward-secret AEAD suites only.
        cipher = tls.cipher()
        assert cipher is not None and cipher[0].startswith("ECDHE-") and "GCM" in cipher[0]

    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.load_verify_locations(_ca(tls_cluster))
    # Let this client speak TLS 1.1 at all (OpenSSL 3 refuses it below security level 0),
    # so what refuses it is the server.
    old.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        # Python deprecates TLS 1.1, which is the point: an old client.
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(ssl.SSLError) as refused:
        _handshake(tls_cluster, old).close()
    assert "VERSION" in str(refused.value).upper()


def test_https_serves_removal_with_hsts_and_plain_http_redirects_except_health(
    tls_cluster: Cluster,
) -> None:
    with httpx.Client(
        verify=ssl.create_default_context(cafile=_ca(tls_cluster)), timeout=10
    ) as client:
        ready = client.get(f"{tls_cluster.url}/ready")
        assert ready.status_code == 200
        assert ready.headers["strict-transport-security"] == "max-age=63072000"

    plain = urlsplit(tls_cluster.nginx.plain_url)
    connection = http.client.HTTPConnection(plain.hostname or "", plain.port, timeout=10)
    try:
        connection.request("GET", "/ready?x=1")
        redirect = connection.getresponse()
        redirect.read()
        assert redirect.status == 301
        assert redirect.headers["Location"] == f"{tls_cluster.url}/ready?x=1"
        assert redirect.headers["Strict-Transport-Security"] is None
        # Liveness probes need no certificate and follow no redirect.
        connection.request("GET", "/health")
        health = connection.getresponse()
        assert health.status == 200 and b'"ok"' in health.read()
    finally:
        connection.close()

    with httpx.Client(
        verify=ssl.create_default_context(cafile=_ca(tls_cluster)), timeout=30
    ) as client:
        response = client.post(
            f"{tls_cluster.url}{REMOVE}",
            files={"file": ("img.png", unique_image(1), "image/png")},
        )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.content.startswith(b"\x89PNG")
    assert response.headers["x-served-by"].startswith("node-")
    assert response.headers["strict-transport-security"] == "max-age=63072000"
