"""What an AVIF file's pictures really measure, read from its AV1 bitstream before decoding.

An AVIF still names its size in an ``ispe`` property, and that is what Pillow reports and
what the pixel guard checks. libavif, however, decodes whatever frame the AV1 data holds
and scales it to the ``ispe`` size afterwards: a file whose property says 80x60 over an
8000x6000 frame passes the guard and costs a full 48 MP decode. Every AV1 image item's
data carries a sequence header (AVIF items are AV1 sync samples, and those must), whose
maximum frame size bounds every frame it governs. ``check`` reads it for each AV1 item
and refuses the file when it exceeds that item's ``ispe``, or the primary item's (what
Pillow reports: for a grid, the grid's, which its tiles never exceed): then the header's
size bounds the decode, as for every other format.

Image sequences (a ``moov`` box: animated AVIF) are refused: libavif prefers the track
over the still item, and its samples may change the sequence header midway.

Only what is needed is parsed (ISO BMFF boxes ``meta``/``iinf``/``iloc``/``iprp``, and the
first part of an AV1 sequence header), every count and offset is checked against the
file's length, and the work is bounded by the number of boxes and items read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from bgsvc.errors import InvalidImage, UnsupportedFormat

# More boxes, items or extents than any real still has: a file beyond them is refused
# rather than walked.
MAX_BOXES = 4096
MAX_ITEMS = 1024
MAX_EXTENTS = 64
MAX_PROPERTIES = 32
# Sequence header OBUs are a few bytes; an item is scanned this far for one.
SCAN_BYTES = 1 << 16
# OBUs stepped over in all items together before their sequence headers. A real item
# opens with its sequence header (behind a temporal delimiter at most); without a shared
# bound, a thousand items pointing at one extent of empty OBUs cost tens of CPU seconds.
MAX_OBUS = 4 * MAX_ITEMS
OBU_SEQUENCE_HEADER = 1


class _Truncated(Exception):
    """A box or field runs past the end of the data it is read from."""


@dataclass
class _Item:
    kind: bytes = b""
    extents: list[tuple[int, int]] = field(default_factory=list)
    # 0: offsets into the file; 1: offsets into the ``idat`` box.
    construction: int = 0
    properties: list[int] = field(default_factory=list)


def _u(data: bytes, at: int, size: int) -> int:
    if size == 0:
        return 0
    if at < 0 or at + size > len(data):
        raise _Truncated
    return int.from_bytes(data[at : at + size], "big")


def _boxes(
    data: bytes, start: int, end: int, budget: list[int]
) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, payload end) of each box in data[start:end]."""
    at = start
    while at < end:
        budget[0] -= 1
        if budget[0] < 0:
            raise InvalidImage("The AVIF file has too many boxes.")
        size = _u(data, at, 4)
        kind = data[at + 4 : at + 8]
        header = 8
        if size == 1:
            size = _u(data, at + 8, 8)
            header = 16
        elif size == 0:
            size = end - at
        if size < header or at + size > end:
            raise _Truncated
        yield kind, at + header, at + size
        at += size


def _child(data: bytes, start: int, end: int, kind: bytes, budget: list[int]) -> tuple[int, int]:
    for found, s, e in _boxes(data, start, end, budget):
        if found == kind:
            return s, e
    raise _Truncated


def _items(data: bytes, start: int, end: int, budget: list[int]) -> dict[int, _Item]:
    items: dict[int, _Item] = {}

    def item(item_id: int) -> _Item:
        if item_id not in items and len(items) >= MAX_ITEMS:
            raise InvalidImage("The image file has too many items.")
        return items.setdefault(item_id, _Item())

    for kind, s, e in _boxes(data, start, end, budget):
        if kind == b"iinf":
            version = data[s]
            count_size = 2 if version == 0 else 4
            for entry, es, _ in _boxes(data, s + 4 + count_size, e, budget):
                if entry != b"infe" or data[es] < 2:
                    continue  # versions 0 and 1 name no item type: not AV1 items
                id_size = 2 if data[es] == 2 else 4
                item_id = _u(data, es + 4, id_size)
                at = es + 4 + id_size + 2
                item(item_id).kind = data[at : at + 4]
        elif kind == b"iloc":
            _locations(data, s, e, item)
        elif kind == b"iprp":
            ipco = _child(data, s, e, b"ipco", budget)
            properties = [(k, ps, pe) for k, ps, pe in _boxes(data, *ipco, budget)]
            for assoc, ms, me in _boxes(data, s, e, budget):
                if assoc == b"ipma":
                    _associations(data, ms, me, properties, item)
    return items


_Properties = list[tuple[bytes, int, int]]
_ItemOf = Callable[[int], _Item]


def _associations(data: bytes, s: int, e: int, properties: _Properties, item: _ItemOf) -> None:
    version, flags = data[s], _u(data, s + 1, 3)
    count = _u(data, s + 4, 4)
    at = s + 8
    for _ in range(min(count, MAX_ITEMS + 1)):
        id_size = 2 if version < 1 else 4
        owner = item(_u(data, at, id_size))
        at += id_size
        n = _u(data, at, 1)
        at += 1
        if n > MAX_PROPERTIES:
            raise InvalidImage("An AVIF item has too many properties.")
        for _ in range(n):
            wide = flags & 1
            value = _u(data, at, 2 if wide else 1)
            at += 2 if wide else 1
            index = value & (0x7FFF if wide else 0x7F)
            if 1 <= index <= len(properties):
                owner.properties.append(index - 1)
        if at > e:
            raise _Truncated


def _locations(data: bytes, s: int, e: int, item: _ItemOf) -> None:
    version = data[s]
    sizes = _u(data, s + 4, 2)
    offset_size, length_size = sizes >> 12, (sizes >> 8) & 0xF
    base_size = (sizes >> 4) & 0xF
    index_size = sizes & 0xF if version in (1, 2) else 0
    at = s + 6
    count_size = 2 if version < 2 else 4
    count = _u(data, at, count_size)
    at += count_size
    if count > MAX_ITEMS:
        raise InvalidImage("The image file has too many items.")
    for _ in range(count):
        id_size = 2 if version < 2 else 4
        entry = item(_u(data, at, id_size))
        at += id_size
        if version in (1, 2):
            entry.construction = _u(data, at, 2) & 0xF
            at += 2
        at += 2  # data_reference_index
        base = _u(data, at, base_size)
        at += base_size
        extents = _u(data, at, 2)
        at += 2
        if extents > MAX_EXTENTS:
            raise InvalidImage("An AVIF item has too many extents.")
        for _ in range(extents):
            at += index_size
            offset = _u(data, at, offset_size)
            at += offset_size
            length = _u(data, at, length_size)
            at += length_size
            entry.extents.append((base + offset, length))
        if at > e:
            raise _Truncated


class _Bits:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def read(self, n: int) -> int:
        value = 0
        for _ in range(n):
            byte = self.at >> 3
            if byte >= len(self.data):
                raise _Truncated
            value = (value << 1) | ((self.data[byte] >> (7 - (self.at & 7))) & 1)
            self.at += 1
        return value

    def uvlc(self) -> int:
        zeros = 0
        while self.read(1) == 0:
            zeros += 1
            if zeros >= 32:
                return (1 << 32) - 1
        return self.read(zeros) + (1 << zeros) - 1


def _frame_size(header: bytes) -> tuple[int, int]:
    """max_frame_width/height of an AV1 sequence header OBU's payload (AV1 spec 5.5)."""
    bits = _Bits(header)
    bits.read(3)  # seq_profile
    bits.read(1)  # still_picture
    if bits.read(1):  # reduced_still_picture_header
        bits.read(5)
    else:
        decoder_model = False
        buffer_delay_bits = 0
        if bits.read(1):  # timing_info_present_flag
            bits.read(32)
            bits.read(32)
            if bits.read(1):
                bits.uvlc()
            decoder_model = bool(bits.read(1))
            if decoder_model:
                buffer_delay_bits = bits.read(5) + 1
                bits.read(32)
                bits.read(5)
                bits.read(5)
        initial_delay = bits.read(1)
        for _ in range(bits.read(5) + 1):
            bits.read(12)
            if bits.read(5) > 7:
                bits.read(1)
            if decoder_model and bits.read(1):
                bits.read(buffer_delay_bits)
                bits.read(buffer_delay_bits)
                bits.read(1)
            if initial_delay and bits.read(1):
                bits.read(4)
    width_bits = bits.read(4) + 1
    height_bits = bits.read(4) + 1
    return bits.read(width_bits) + 1, bits.read(height_bits) + 1


def _leb128(data: bytes, at: int) -> tuple[int, int]:
    value = 0
    for i in range(8):
        byte = _u(data, at + i, 1)
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, at + i + 1
    raise _Truncated


def _sequence_header_size(obus: bytes, budget: list[int]) -> tuple[int, int] | None:
    """The frame size of the first sequence header among ``obus`` (sized OBUs)."""
    at = 0
    while at < len(obus):
        budget[0] -= 1
        if budget[0] < 0:
            raise InvalidImage("The AVIF file's pictures hold too many OBUs.")
        header = obus[at]
        kind = (header >> 3) & 0xF
        at += 2 if header & 0x04 else 1
        if not header & 0x02:
            return None  # unsized OBUs are not allowed in AVIF items
        size, at = _leb128(obus, at)
        if kind == OBU_SEQUENCE_HEADER:
            return _frame_size(obus[at : at + size])
        at += size
    return None


def _item_bytes(data: bytes, item: _Item, idat: tuple[int, int] | None) -> bytes:
    # 2 (data by item reference) is not used by AV1 stills: not followed.
    if item.construction not in (0, 1) or (item.construction == 1 and idat is None):
        raise _Truncated
    origin, end = (0, len(data)) if item.construction == 0 else idat  # type: ignore[misc]
    parts = []
    wanted = SCAN_BYTES
    for offset, length in item.extents:
        start = origin + offset
        stop = end if length == 0 else start + length
        if start < origin or stop > end or start > stop:
            raise _Truncated
        parts.append(data[start : min(stop, start + wanted)])
        wanted -= len(parts[-1])
        if wanted <= 0:
            break
    return b"".join(parts)


def check(data: bytes) -> None:
    """Refuse an AVIF still whose AV1 frames are not the size its header reports (or that
    cannot be told): InvalidImage; an image sequence: UnsupportedFormat."""
    budget = [MAX_BOXES]
    try:
        top = {kind: (s, e) for kind, s, e in _boxes(data, 0, len(data), budget)}
        if b"moov" in top:
            raise UnsupportedFormat("Animated AVIF (an image sequence) is not supported.")
        meta = top.get(b"meta")
        if meta is None:
            raise _Truncated
        start = meta[0] + 4  # a full box: version and flags first
        idat = next(
            ((s, e) for kind, s, e in _boxes(data, start, meta[1], budget) if kind == b"idat"),
            None,
        )
        items = _items(data, start, meta[1], budget)
        properties = _property_sizes(data, start, meta[1], budget)
        coded = [item for item in items.values() if item.kind == b"av01"]
        if not coded:
            raise _Truncated
        # What Pillow reports (and the pixel guard checks) is the primary item's size: for
        # a grid, the grid's. A tile is never larger than the grid it builds (libavif's
        # layout rules make the tiles cover it once, overhanging by less than a tile),
        # except a 1x1 grid's, which nothing bounds: an 8000x6000 tile behind a 64x64 grid
        # passed every per-item check.
        primary = _size_of(items.get(_primary_id(data, start, meta[1], budget)), properties)
        if primary is None:
            raise InvalidImage("The AVIF image has no size property.")
        obus = [MAX_OBUS]
        for item in coded:
            size = _sequence_header_size(_item_bytes(data, item, idat), obus)
            if size is None:
                raise InvalidImage("An AVIF picture has no AV1 sequence header.")
            declared = _size_of(item, properties)
            if declared is None:
                raise InvalidImage("An AVIF picture has no size property.")
            # A smaller frame is enlarged to the declared size (cheap); a larger one would
            # cost more than the pixel guard was told.
            if size[0] > declared[0] or size[1] > declared[1]:
                raise InvalidImage(
                    f"An AVIF picture is up to {size[0]}x{size[1]} but its header says "
                    f"{declared[0]}x{declared[1]}."
                )
            if size[0] > primary[0] or size[1] > primary[1]:
                raise InvalidImage(
                    f"An AVIF picture is up to {size[0]}x{size[1]} but the image it is part "
                    f"of is {primary[0]}x{primary[1]}."
                )
    except _Truncated:
        raise InvalidImage("The AVIF file's structure could not be read.") from None
    except IndexError:
        raise InvalidImage("The AVIF file's structure could not be read.") from None


# Item types that are coded pictures, each decoded whole when anything refers to it (a
# grid's or overlay's tiles, an alpha or depth image): HEVC, AV1, H.264, JPEG, VVC,
# JPEG 2000 and uncompressed.
CODED_ITEMS = frozenset({b"hvc1", b"av01", b"avc1", b"jpeg", b"vvc1", b"j2k1", b"unci"})


def coded_pixels(data: bytes) -> int:
    """The pixels a HEIF or AVIF file's coded pictures declare, all together (each its
    ``ispe``; one without counts as too many). Pillow reports only the primary item's
    size: a 64x64 grid or overlay built from a thousand 4096x4096 tiles, or a 64x64
    picture with a 4096x4096 alpha image, is a few KB whose decode costs gigapixels.
    InvalidImage where the structure cannot be read."""
    budget = [MAX_BOXES]
    try:
        top = {kind: (s, e) for kind, s, e in _boxes(data, 0, len(data), budget)}
        meta = top.get(b"meta")
        if meta is None:
            raise _Truncated
        start = meta[0] + 4  # a full box: version and flags first
        items = _items(data, start, meta[1], budget)
        properties = _property_sizes(data, start, meta[1], budget)
        total = 0
        for item in items.values():
            if item.kind in CODED_ITEMS:
                size = _size_of(item, properties)
                total += size[0] * size[1] if size is not None else 1 << 62
        return total
    except (_Truncated, IndexError):
        raise InvalidImage("The image file's structure could not be read.") from None


def _primary_id(data: bytes, start: int, end: int, budget: list[int]) -> int:
    """The primary item's id (``pitm``)."""
    s, _ = _child(data, start, end, b"pitm", budget)
    return _u(data, s + 4, 2 if _u(data, s, 1) == 0 else 4)


def _size_of(item: _Item | None, properties: dict[int, tuple[int, int]]) -> tuple[int, int] | None:
    """The first ``ispe`` size among ``item``'s properties."""
    if item is None:
        return None
    return next((properties[i] for i in item.properties if i in properties), None)


def _property_sizes(
    data: bytes, start: int, end: int, budget: list[int]
) -> dict[int, tuple[int, int]]:
    """The ``ispe`` sizes among the item properties, by their index in ``ipco``."""
    iprp = _child(data, start, end, b"iprp", budget)
    ipco = _child(data, *iprp, b"ipco", budget)
    return {
        index: (_u(data, s + 4, 4), _u(data, s + 8, 4))
        for index, (kind, s, _) in enumerate(_boxes(data, *ipco, budget))
        if kind == b"ispe"
    }
