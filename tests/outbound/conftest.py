"""Clients for the outbound tests: a fake resolver so that no name leaves the machine."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import pytest
from PIL import Image

from bgsvc.outbound.client import OutboundClient, system_resolver
from bgsvc.outbound.policy import AllowList, OutboundPolicy

T = TypeVar("T")

# Names the tests resolve; anything else goes to the system resolver only for "localhost".
FAKE_DNS: dict[str, list[str]] = {
    "internal.test": ["10.0.0.1"],
    "metadata.test": ["169.254.169.254"],
    "mixed.test": ["8.8.8.8", "127.0.0.1"],
    "v6loop.test": ["::1"],
    "images.test": ["127.0.0.1"],
    "wrong.test": ["127.0.0.1"],
}


class CountingResolver:
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.calls.append(host)
        if host in FAKE_DNS:
            return FAKE_DNS[host]
        if host == "localhost":
            return await system_resolver(host, port)
        raise OSError(f"no such name in the test's DNS: {host}")


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


@pytest.fixture
def resolver() -> CountingResolver:
    return CountingResolver()


@pytest.fixture
def make_client(resolver: CountingResolver) -> Callable[..., OutboundClient]:
    def factory(allow: str = "", **kwargs: Any) -> OutboundClient:
        values: dict[str, Any] = {
            "connect_timeout_s": 2.0,
            "read_timeout_s": 2.0,
            "total_timeout_s": 5.0,
            "resolver": resolver,
        }
        values.update(kwargs)
        return OutboundClient(OutboundPolicy(AllowList.parse(allow)), **values)

    return factory


def png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()
