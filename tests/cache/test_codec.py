from __future__ import annotations

import pytest

from bgsvc.cache import CachedResult
from bgsvc.cache.codec import CorruptEntry, dumps, loads
from bgsvc.imaging.compose import Box


def test_round_trip_keeps_every_field_and_the_exact_body() -> None:
    entry = CachedResult(
        body=bytes(range(256)) * 10,
        media_type="image/webp",
        format="webp",
        width=640,
        height=480,
        box=Box(3, 4, 100, 200),
        model="tiny",
        source_size=(1280, 960),
    )
    assert loads(dumps(entry)) == entry


@pytest.mark.parametrize(
    "data", [b"", b"BGR1", b"XXXX\x00\x00\x00\x02{}", b"BGR1\x00\x00\x00\x02{}"]
)
def test_foreign_or_truncated_bytes_are_refused(data: bytes) -> None:
    with pytest.raises(CorruptEntry):
        loads(data)
