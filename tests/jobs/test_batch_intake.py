"""A batch's zip is refused from its end record when it holds too many entries of any kind,
before its directory is parsed, and its directory's size bounds the parse when the record
lies about the count."""

from __future__ import annotations

import io
import zipfile

import pytest

from bgsvc.batches.intake import Limits, base_name, check_entries, declared_directory, unzip
from bgsvc.errors import BatchTooLarge, InvalidArchive
from tests.zips import directory_zip

LIMITS = Limits(max_items=10, max_item_bytes=1000, max_total_bytes=10_000)


def zip_of(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_the_end_record_gives_the_entry_count_and_directory_size() -> None:
    plain = zip_of({"a/": b"", "a/b.png": b"x", "c.png": b"y"})
    entries, size = declared_directory(plain)
    assert entries == 3 and 3 * 46 < size < 3 * 46 + 64
    # zip64 end records, as written past 65,535 entries, are read too.
    assert declared_directory(directory_zip(70_000))[0] == 70_000


def test_directories_and_skipped_files_count_against_the_entry_cap() -> None:
    skipped = {f"dir{i}/": b"" for i in range(6)} | {"__MACOSX/._a.png": b"", ".hidden": b""}
    data = zip_of({**skipped, "a.png": b"image"})
    with pytest.raises(BatchTooLarge, match="at most 5 entries"):
        unzip(data, LIMITS, max_entries=5)
    items = unzip(data, LIMITS, max_entries=9)
    assert [item.name for item in items] == ["a.png"]


def test_200000_directories_are_refused_from_the_end_record_alone() -> None:
    data = directory_zip(200_000)
    # Only the trailing records are read: with the directory cut off, the answer is the same.
    tail = data[-200:]
    with pytest.raises(BatchTooLarge, match="200000"):
        check_entries(tail, 500)
    with pytest.raises(BatchTooLarge, match="200000"):
        unzip(data, LIMITS, max_entries=500)


def test_an_end_record_that_understates_its_entries_is_caught_by_the_directory_size() -> None:
    lying = directory_zip(20_000, declared=3)
    with pytest.raises(BatchTooLarge, match="directory"):
        unzip(lying, LIMITS, max_entries=10)
    # A count that lies within what the directory's size allows is caught once parsed.
    small_lie = directory_zip(30, declared=3)
    with pytest.raises(BatchTooLarge, match="at most 10 entries"):
        unzip(small_lie, LIMITS, max_entries=10)


def test_a_zip_without_an_end_record_is_invalid() -> None:
    with pytest.raises(InvalidArchive):
        unzip(b"PK\x03\x04 and nothing else", LIMITS, max_entries=10)


def test_item_names_lose_directories_and_control_characters() -> None:
    assert base_name("../../etc/a\nb\x1b[31m.png", 0) == "a_b_[31m.png"
    assert base_name("C:\\photos\\shoe\r.jpg", 1) == "shoe_.jpg"
    assert base_name("dir/", 2) == "item-3"
