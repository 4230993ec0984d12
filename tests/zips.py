"""Zip archives built byte by byte, for batch intake tests: as many entries as an attack
uses (zipfile takes seconds to write 200,000), and end records that lie."""

from __future__ import annotations

import struct

LOCAL = struct.Struct("<4s5H3I2H")  # 30 bytes, then the name
CENTRAL = struct.Struct("<4s6H3I5HII")  # 46 bytes, then the name
END64 = struct.Struct("<4sQ2H2I4Q")  # 56 bytes
LOCATOR = struct.Struct("<4sIQI")  # 20 bytes
END = struct.Struct("<4s4H2IH")  # 22 bytes
DIRECTORY_ATTRIBUTE = 0x10  # MS-DOS "directory"


def directory_zip(count: int, declared: int | None = None) -> bytes:
    """A zip of ``count`` empty directories whose end records declare ``declared``
    entries (default: the truth). zip64 end records are written whatever the count, as
    archivers do past 65,535 entries."""
    declared = count if declared is None else declared
    local: list[bytes] = []
    central: list[bytes] = []
    offset = 0
    for i in range(count):
        name = b"d%06d/" % i
        header = LOCAL.pack(b"PK\x03\x04", 20, 0, 0, 0, 0, 0, 0, 0, len(name), 0)
        central.append(
            CENTRAL.pack(
                b"PK\x01\x02",
                20,
                20,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                len(name),
                0,
                0,
                0,
                0,
                DIRECTORY_ATTRIBUTE,
                offset,
            )
            + name
        )
        local.append(header + name)
        offset += len(header) + len(name)
    directory = b"".join(central)
    end64 = END64.pack(b"PK\x06\x06", 44, 45, 45, 0, 0, declared, declared, len(directory), offset)
    locator = LOCATOR.pack(b"PK\x06\x07", 0, offset + len(directory), 1)
    small = min(declared, 0xFFFF)
    end = END.pack(b"PK\x05\x06", 0, 0, small, small, len(directory), offset, 0)
    return b"".join(local) + directory + end64 + locator + end
