from __future__ import annotations

import pytest

from bgsvc.errors import InvalidParameter
from bgsvc.options import parse_color, parse_format, parse_margin


@pytest.mark.parametrize(
    ("text", "rgba"),
    [
        ("#ff0000", (255, 0, 0, 255)),
        ("#00ff0080", (0, 255, 0, 128)),
        ("81d4fa", (129, 212, 250, 255)),
        ("white", (255, 255, 255, 255)),
        ("10,20,30", (10, 20, 30, 255)),
        ("(10, 20, 30, 40)", (10, 20, 30, 40)),
    ],
)
def test_parses_colours(text: str, rgba: tuple[int, int, int, int]) -> None:
    assert parse_color(text) == rgba


@pytest.mark.parametrize("text", ["nocolour", "#12", "300,0,0", "1,2"])
def test_rejects_bad_colours(text: str) -> None:
    with pytest.raises(InvalidParameter):
        parse_color(text)


def test_margin_forms() -> None:
    assert parse_margin("10").resolve(100, 100) == (10, 10, 10, 10)
    assert parse_margin("10px 20px").resolve(100, 100) == (10, 20, 10, 20)
    assert parse_margin("1px 2px 3px 4px").resolve(100, 100) == (1, 2, 3, 4)
    assert parse_margin("10%").resolve(200, 100) == (10, 20, 10, 20)


def test_margin_is_capped_at_half_the_subject_or_500px() -> None:
    assert parse_margin("90%").resolve(100, 100) == (50, 50, 50, 50)
    assert parse_margin("900px").resolve(100, 100) == (500, 500, 500, 500)


@pytest.mark.parametrize("text", ["10em", "1px 2px 3px", "-5px"])
def test_rejects_bad_margins(text: str) -> None:
    with pytest.raises(InvalidParameter):
        parse_margin(text)


def test_format_aliases_and_errors() -> None:
    assert parse_format("JPEG") == "jpg"
    assert parse_format(None) == "png"
    with pytest.raises(InvalidParameter):
        parse_format("bmp")


def test_background_images_key_the_result_cache_by_digest_not_by_bytes() -> None:
    from bgsvc.cache.base import cache_key
    from bgsvc.options import RemovalOptions

    one, other = RemovalOptions(bg_image=b"a" * 100_000), RemovalOptions(bg_image=b"b" * 100_000)
    assert "aaaa" not in repr(one) and one.bg_image_digest in repr(one)
    assert cache_key(b"photo", one, "m", "v") != cache_key(b"photo", other, "m", "v")
    assert cache_key(b"photo", one, "m", "v") == cache_key(
        b"photo", RemovalOptions(bg_image=b"a" * 100_000), "m", "v"
    )
