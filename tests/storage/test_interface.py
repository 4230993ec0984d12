"""Both backends through the ResultStore interface: same calls, same answers."""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable

import pytest

from bgsvc.storage import ResultStore

PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(4096)


def test_put_then_get_returns_the_bytes_and_the_content_type(
    make_store: Callable[..., ResultStore],
) -> None:
    store = make_store()
    store.put("jobs/j1/result.png", PNG, "image/png")
    got = store.get("jobs/j1/result.png")
    assert got is not None
    assert (got.key, got.data, got.content_type, got.size) == (
        "jobs/j1/result.png",
        PNG,
        "image/png",
        len(PNG),
    )
    assert abs(got.modified - time.time()) < 600


def test_get_of_a_missing_key_is_none(make_store: Callable[..., ResultStore]) -> None:
    store = make_store()
    assert store.get("jobs/nothing/result.png") is None
    store.put("jobs/j1/result.png", PNG, "image/png")
    assert store.get("jobs/j1") is None  # a prefix is not an object


def test_put_replaces_an_existing_object_with_its_new_type(
    make_store: Callable[..., ResultStore],
) -> None:
    store = make_store()
    store.put("r", b"first", "image/png")
    store.put("r", b"second", "image/webp")
    got = store.get("r")
    assert got is not None and (got.data, got.content_type) == (b"second", "image/webp")


def test_put_reads_a_file_object_to_its_end(make_store: Callable[..., ResultStore]) -> None:
    store = make_store()
    data = os.urandom(3 * 1024 * 1024 + 17)  # several copy chunks, not a round number
    store.put("originals/j1.jpg", io.BytesIO(data), "image/jpeg")
    got = store.get("originals/j1.jpg")
    assert got is not None and got.data == data and got.content_type == "image/jpeg"


def test_delete_removes_the_object_and_ignores_a_missing_one(
    make_store: Callable[..., ResultStore],
) -> None:
    store = make_store()
    store.put("jobs/j1/result.png", PNG, "image/png")
    store.put("jobs/j2/result.png", PNG, "image/png")
    store.delete("jobs/j1/result.png")
    store.delete("jobs/j1/result.png")
    store.delete("never/there")
    assert store.get("jobs/j1/result.png") is None
    assert store.get("jobs/j2/result.png") is not None


def test_an_object_past_the_ttl_is_not_served(make_store: Callable[..., ResultStore]) -> None:
    later = [time.time()]
    store = make_store(ttl_s=60.0, clock=lambda: later[0])
    store.put("jobs/j1/result.png", PNG, "image/png")
    assert store.get("jobs/j1/result.png") is not None
    later[0] += 3600
    assert store.get("jobs/j1/result.png") is None


BAD_KEYS = ["", "/abs", "../up", "a/../b", "a//b", ".hidden", "a/.meta", "sp ace", "a\\b"]


def test_keys_that_could_escape_or_collide_are_refused(
    make_store: Callable[..., ResultStore],
) -> None:
    store = make_store()
    for key in BAD_KEYS:
        with pytest.raises(ValueError, match="invalid store key"):
            store.put(key, PNG, "image/png")
        with pytest.raises(ValueError, match="invalid store key"):
            store.get(key)
        with pytest.raises(ValueError, match="invalid store key"):
            store.delete(key)
        with pytest.raises(ValueError, match="invalid store key"):
            store.url(key)


def test_without_presigning_there_is_no_external_url(
    make_store: Callable[..., ResultStore],
) -> None:
    store = make_store()
    store.put("jobs/j1/result.png", PNG, "image/png")
    assert store.url("jobs/j1/result.png") is None
    assert "://" in store.describe()
