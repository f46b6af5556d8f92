"""A fast PNG writer for decoded stages: one filter for every row, computed with numpy, then zlib.

libpng (behind OpenCV and Pillow) picks a filter per row by trying all five, and on a slow core that costs
as much as the compression: 25-34 ms for a 512 x 512 stage on this project's 2-core machine, a third to
half of a preview receiver's time per image. Here every row uses the Sub filter (PNG spec, section 9.2:
each byte minus the byte of the pixel to its left, mod 256: one vectorised subtraction) and zlib compresses
at level 1 with its run-length strategy. Measured on 12 shared images (every 8th; 2026-12-03, 3 rounds
interleaved): half the time of OpenCV at level 1 (edge-aware previews 14.1-14.6 ms against 25.2-28.2, the
AIGIs themselves 17.1-19.1 against 29.1-33.9), files about its size (previews 190 KB against 192, AIGIs 393
against 374). zlib and numpy release the GIL, so decode threads write in parallel.

Any PNG reader reads the output: one IHDR (8-bit RGB, no interlace), one IDAT, IEND.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

from layercast.common.errors import InputError

SIGNATURE = b"\x89PNG\r\n\x1a\n"
SUB = 1
"""PNG filter type 1 (Sub)."""
_MAX_IDAT = (1 << 31) - 1
"""Largest chunk length the format allows."""


def _chunk(kind: bytes, data: bytes) -> bytes:
    """A PNG chunk: length, type, data, CRC-32 of type and data (computed without joining them)."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def encode_png(rgb: np.ndarray) -> bytes:
    """PNG bytes of an RGB uint8 image (height, width, 3): Sub-filtered rows, zlib level 1, RLE strategy."""
    a = np.asarray(rgb)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3 or a.shape[0] < 1 or a.shape[1] < 1:
        raise InputError(f"a PNG stage must be uint8 RGB (height, width, 3), not {a.dtype} {a.shape}")
    h, w = a.shape[:2]
    rows = a.reshape(h, w * 3)
    raw = np.empty((h, w * 3 + 1), np.uint8)
    raw[:, 0] = SUB
    raw[:, 1:] = rows
    np.subtract(rows[:, 3:], rows[:, :-3], out=raw[:, 4:])  # uint8: wraps mod 256, as the filter defines
    z = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    idat = z.compress(raw.data) + z.flush()
    if len(idat) > _MAX_IDAT:
        raise InputError(f"a {w}x{h} stage is too large for one PNG chunk")
    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8 bits, RGB, deflate, adaptive filters, no interlace
    return SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
