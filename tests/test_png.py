"""receiver.png: the stage PNG writer must give files any reader decodes to the exact pixels."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from layercast.common.errors import InputError
from layercast.receiver.png import encode_png


def _read(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        im.verify()  # chunk CRCs and structure
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == "RGB"
        return np.asarray(im)


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (5, 1), (3, 2), (17, 33), (64, 48), (512, 512)])
def test_round_trip_exact_with_pillow_and_opencv(shape: tuple[int, int]) -> None:
    import cv2

    rng = np.random.default_rng(shape[0] * 1000 + shape[1])
    noise = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    ramp = (np.arange(shape[0] * shape[1] * 3) % 256).astype(np.uint8).reshape(*shape, 3)
    for rgb in (noise, ramp, np.zeros((*shape, 3), np.uint8), np.full((*shape, 3), 255, np.uint8)):
        data = encode_png(rgb)
        assert np.array_equal(_read(data), rgb)
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        assert bgr is not None
        assert np.array_equal(bgr[:, :, ::-1].reshape(rgb.shape), rgb)


def test_layout_and_compression() -> None:
    """One IHDR (8-bit RGB), one IDAT of Sub-filtered rows, IEND; a smooth stage compresses well."""
    y, x = np.mgrid[0:256, 0:384]
    rgb = np.stack([x % 256, y, (x + y) // 3], axis=2).astype(np.uint8)
    data = encode_png(rgb)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, pos = [], 8
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        assert struct.unpack(">I", data[pos + 8 + n : pos + 12 + n])[0] == zlib.crc32(kind + body)
        chunks.append((kind, body))
        pos += 12 + n
    assert [k for k, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"]
    assert struct.unpack(">IIBBBBB", chunks[0][1]) == (384, 256, 8, 2, 0, 0, 0)
    raw = zlib.decompress(chunks[1][1])
    assert len(raw) == 256 * (1 + 384 * 3) and set(raw[:: 1 + 384 * 3]) == {1}  # every row: filter Sub
    assert len(data) < rgb.nbytes / 4
    assert np.array_equal(_read(data), rgb)


def test_non_contiguous_input() -> None:
    rgb = np.random.default_rng(3).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    view = rgb[::2, ::3]
    assert np.array_equal(_read(encode_png(view)), view)
    assert np.array_equal(_read(encode_png(rgb[:, :, ::-1])), rgb[:, :, ::-1])


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((4, 4), np.uint8),
        np.zeros((4, 4, 4), np.uint8),
        np.zeros((4, 4, 3), np.float32),
        np.zeros((0, 4, 3), np.uint8),
    ],
)
def test_refuses_what_is_not_an_rgb_stage(bad: np.ndarray) -> None:
    with pytest.raises(InputError, match="uint8 RGB"):
        encode_png(bad)
