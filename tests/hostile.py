"""Hostile inputs the data tests share: files whose headers claim what their content is not."""

from __future__ import annotations

import struct
import zlib


def png_claiming(w: int, h: int) -> bytes:
    """A tiny PNG whose header claims ``w``×``h`` RGB pixels (its data holds almost none)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(10))) + chunk(b"IEND", b"")
