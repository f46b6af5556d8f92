"""load_image: every pixel mode to 8-bit RGB, text metadata as plain strings, bad input as typed errors."""

from __future__ import annotations

import io
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin, features

from layercast.common import limits
from layercast.common.errors import InputError, UnsupportedImageError
from layercast.sender.image_io import LoadedImage, decode_user_comment, load_image

RNG = np.random.default_rng(7)


def _save(im: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _noise(h: int = 32, w: int = 48) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _patch_ihdr(png: bytes, width: int, height: int) -> bytes:
    """A PNG whose IHDR declares another size, with a valid CRC (so only the size is wrong)."""
    data = bytearray(png)
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


# --- pixels ------------------------------------------------------------------------------------------


def test_rgb_png_is_exact_and_contiguous(tmp_path: Path) -> None:
    a = _noise()
    p = tmp_path / "x.png"
    p.write_bytes(_save(Image.fromarray(a), "PNG"))
    for src in (p, str(p), p.read_bytes()):
        img = load_image(src)
        assert isinstance(img, LoadedImage)
        assert (img.width, img.height, img.format) == (48, 32, "PNG")
        assert img.rgb.dtype == np.uint8 and img.rgb.shape == (32, 48, 3) and img.rgb.flags.c_contiguous
        np.testing.assert_array_equal(img.rgb, a)


def test_rgba_and_la_are_composited_on_white() -> None:
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., :3] = (200, 10, 60)
    rgba[..., 3] = [[0, 128, 255], [255, 64, 0]]
    img = load_image(_save(Image.fromarray(rgba, "RGBA"), "PNG"))
    a = rgba[..., 3:4].astype(np.uint32)
    expected = (rgba[..., :3].astype(np.uint32) * a + 255 * (255 - a) + 127) // 255
    np.testing.assert_array_equal(img.rgb, expected.astype(np.uint8))
    assert tuple(img.rgb[0, 0]) == (255, 255, 255) and tuple(img.rgb[0, 2]) == (200, 10, 60)

    la = Image.fromarray(np.array([[[0, 0], [0, 255]]], np.uint8), "LA")
    np.testing.assert_array_equal(load_image(_save(la, "PNG")).rgb[0], [[255, 255, 255], [0, 0, 0]])


def test_palette_with_and_without_transparency() -> None:
    pal = Image.new("P", (2, 1))
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.putdata([0, 1])
    np.testing.assert_array_equal(load_image(_save(pal, "PNG")).rgb[0], [[255, 0, 0], [0, 0, 255]])
    # tRNS: palette index 0 is fully transparent -> white
    np.testing.assert_array_equal(load_image(_save(pal, "PNG", transparency=0)).rgb[0], [[255, 255, 255], [0, 0, 255]])


def test_grayscale_and_bilevel() -> None:
    g = RNG.integers(0, 256, (5, 7), dtype=np.uint8)
    out = load_image(_save(Image.fromarray(g, "L"), "PNG")).rgb
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], g)
    bw = Image.fromarray(np.array([[True, False]]))
    assert bw.mode == "1"
    np.testing.assert_array_equal(load_image(_save(bw, "PNG")).rgb[0], [[255] * 3, [0] * 3])


def test_16bit_grey_is_scaled_not_clipped() -> None:
    v = np.array([[0, 255, 256, 32896, 65280, 65535]], np.uint16)
    im = Image.fromarray(v)
    assert im.mode.startswith("I;16")
    out = load_image(_save(im, "PNG")).rgb[..., 0]
    np.testing.assert_array_equal(out[0], [0, 1, 1, 128, 254, 255])


def test_32bit_int_and_float_tiff() -> None:
    i32 = Image.fromarray(np.array([[0, 65535]], np.int32), "I")
    np.testing.assert_array_equal(load_image(_save(i32, "TIFF")).rgb[0, :, 0], [0, 255])
    wide = Image.fromarray(np.array([[-1000, 0, 99000]], np.int32), "I")  # outside 16 bit: stretched
    np.testing.assert_array_equal(load_image(_save(wide, "TIFF")).rgb[0, :, 0], [0, 3, 255])
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32), "F")
    np.testing.assert_array_equal(load_image(_save(unit, "TIFF")).rgb[0, :, 0], [0, 128, 255])
    hdr = Image.fromarray(np.array([[2.0, 4.0, np.nan]], np.float32), "F")
    np.testing.assert_array_equal(load_image(_save(hdr, "TIFF")).rgb[0, :, 0], [128, 255, 0])


def test_cmyk() -> None:
    cmyk = Image.new("CMYK", (2, 1))
    cmyk.putdata([(0, 0, 0, 0), (0, 255, 255, 0)])
    img = load_image(_save(cmyk, "TIFF"))
    np.testing.assert_array_equal(img.rgb[0], [[255, 255, 255], [255, 0, 0]])
    jpeg = load_image(_save(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95))
    assert jpeg.format == "JPEG" and np.abs(jpeg.rgb.astype(int) - [255, 0, 0]).max() <= 8


ORIENTED = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: np.rot90(a, 2),
    6: lambda a: np.rot90(a, -1),  # stored rotated: display 90 degrees clockwise
    8: lambda a: np.rot90(a, 1),
}


@pytest.mark.parametrize("orientation", sorted(ORIENTED))
def test_exif_orientation_is_applied(orientation: int) -> None:
    a = _noise(4, 6)
    exif = Image.Exif()
    exif[0x0112] = orientation
    img = load_image(_save(Image.fromarray(a), "PNG", exif=exif))
    expected = ORIENTED[orientation](a)
    assert (img.height, img.width) == expected.shape[:2]
    np.testing.assert_array_equal(img.rgb, expected)


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP", "BMP", "TIFF", "GIF", "AVIF"])
def test_formats(fmt: str) -> None:
    if fmt == "AVIF" and not features.check("avif"):
        pytest.skip("Pillow built without AVIF support")
    a = np.zeros((16, 24, 3), np.uint8)
    a[:, :12] = (250, 20, 20)
    img = load_image(_save(Image.fromarray(a), fmt))
    assert img.format == fmt and img.rgb.shape == (16, 24, 3)
    assert img.rgb[8, 2, 0] > 200 and img.rgb[8, 20].max() < 40


def test_animated_gif_gives_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    data = _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3
    assert tuple(load_image(data).rgb[0, 0]) == (255, 0, 0)


# --- metadata ----------------------------------------------------------------------------------------


def test_png_text_chunks_and_xmp() -> None:
    meta = PngImagePlugin.PngInfo()
    meta.add_text("parameters", "a red bird\nSteps: 20, Sampler: Euler a, Seed: 1")
    meta.add_text("workflow", '{"nodes": []}', zip=True)  # zTXt
    meta.add_itxt("Description", "ein Vogel, 鳥", lang="de")
    meta.add_itxt("XML:com.adobe.xmp", "<x:xmpmeta xmlns:x='adobe:ns:meta/'>p</x:xmpmeta>")
    info = load_image(_save(Image.new("RGB", (4, 4)), "PNG", pnginfo=meta)).info
    assert info["parameters"] == "a red bird\nSteps: 20, Sampler: Euler a, Seed: 1"
    assert info["workflow"] == '{"nodes": []}'
    assert info["Description"] == "ein Vogel, 鳥"
    assert info["XMP"] == "<x:xmpmeta xmlns:x='adobe:ns:meta/'>p</x:xmpmeta>"
    assert "XML:com.adobe.xmp" not in info
    assert all(isinstance(v, str) for v in info.values())


def test_png_text_after_idat_is_read() -> None:
    png = _save(Image.new("RGB", (4, 4)), "PNG")
    body = b"parameters\0late chunk"
    chunk = struct.pack(">I", len(body)) + b"tEXt" + body + struct.pack(">I", zlib.crc32(b"tEXt" + body))
    assert png[-12:-8] == b"\0\0\0\0" and png[-8:-4] == b"IEND"
    assert load_image(png[:-12] + chunk + png[-12:]).info["parameters"] == "late chunk"


TEXT = "a café at night, 東京, (masterpiece:1.2)"


def _user_comment(prefix: bytes, payload: bytes) -> Image.Exif:
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = prefix + payload
    exif[0x010E] = "An image description"
    return exif


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
@pytest.mark.parametrize(
    ("prefix", "payload"),
    [
        (b"UNICODE\0", TEXT.encode("utf-16-be")),  # piexif / A1111
        (b"UNICODE\0", TEXT.encode("utf-16-le")),  # exiftool on little-endian EXIF, others
        (b"ASCII\0\0\0", TEXT.encode("utf-8")),
    ],
)
def test_exif_user_comment_is_decoded(fmt: str, prefix: bytes, payload: bytes) -> None:
    data = _save(Image.new("RGB", (8, 8)), fmt, exif=_user_comment(prefix, payload))
    info = load_image(data).info
    assert info["UserComment"] == TEXT
    assert info["ImageDescription"] == "An image description"


def test_decode_user_comment_forms() -> None:
    assert decode_user_comment(b"UNICODE\0\xff\xfe" + "hi".encode("utf-16-le")) == "hi"
    assert decode_user_comment(b"UNICODE\0\xfe\xff" + "hi".encode("utf-16-be")) == "hi"
    for text in ("東京の夜", "고양이", "猫"):  # no ASCII zero bytes to tell the byte order by
        assert decode_user_comment(b"UNICODE\0" + text.encode("utf-16-be")) == text
        assert decode_user_comment(b"UNICODE\0" + text.encode("utf-16-le")) == text
    assert decode_user_comment(b"\0" * 8 + b"plain\0\0") == "plain"
    assert decode_user_comment(b"JIS\0\0\0\0\0" + "猫".encode("shift_jis")) == "猫"
    assert decode_user_comment(b"no prefix") == "no prefix"
    assert decode_user_comment("already text\0") == "already text"


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_xmp_and_comment(fmt: str) -> None:
    xmp = b"<x:xmpmeta xmlns:x='adobe:ns:meta/'><rdf:RDF/></x:xmpmeta>"
    kw: dict[str, object] = {"xmp": xmp}
    if fmt == "JPEG":
        kw["comment"] = "made by hand"
    info = load_image(_save(Image.new("RGB", (8, 8)), fmt, **kw)).info
    assert info["XMP"] == xmp.decode()
    if fmt == "JPEG":
        assert info["comment"] == "made by hand"


def test_tiff_xmp_and_xp_comment() -> None:
    exif = Image.Exif()
    exif[0x9C9C] = "Windows comment".encode("utf-16-le") + b"\0\0"
    data = _save(Image.new("RGB", (4, 4)), "JPEG", exif=exif)
    assert load_image(data).info["XPComment"] == "Windows comment"
    tiff = _save(Image.new("RGB", (4, 4)), "TIFF", tiffinfo={700: b"<x:xmpmeta>t</x:xmpmeta>"})
    assert load_image(tiff).info["XMP"] == "<x:xmpmeta>t</x:xmpmeta>"


def test_corrupt_exif_is_ignored_not_fatal() -> None:
    png = _save(Image.fromarray(_noise(4, 4)), "PNG")
    body = b"MM\0*\0\0\0\x08\xff\xff"  # IFD with 65535 entries and no data
    chunk = struct.pack(">I", len(body)) + b"eXIf" + body + struct.pack(">I", zlib.crc32(b"eXIf" + body))
    img = load_image(png[:33] + chunk + png[33:])
    assert img.rgb.shape == (4, 4, 3) and "UserComment" not in img.info


# --- bad input ---------------------------------------------------------------------------------------


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file") as exc:
        load_image(tmp_path / "nope.png")
    assert not isinstance(exc.value, UnsupportedImageError)
    with pytest.raises(InputError, match="is a directory"):
        load_image(tmp_path)


def test_bad_paths_and_special_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot open"):
        load_image("bad\0name.png")
    with pytest.raises(UnsupportedImageError, match="empty"):  # a device is never read until EOF
        load_image("/dev/zero")


def test_risky_formats_are_refused(tmp_path: Path) -> None:
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"  # Pillow would run Ghostscript
    with pytest.raises(UnsupportedImageError, match="not an image"):
        load_image(eps)
    tga = io.BytesIO()
    Image.new("RGB", (4, 4)).save(tga, "TGA")
    with pytest.raises(UnsupportedImageError, match="not an image"):
        load_image(tga.getvalue())


def test_empty_file_and_bytes(tmp_path: Path) -> None:
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    with pytest.raises(UnsupportedImageError, match=r"empty \(0 bytes\)"):
        load_image(p)
    with pytest.raises(UnsupportedImageError, match="empty"):
        load_image(b"")


def test_text_file_is_not_an_image(tmp_path: Path) -> None:
    p = tmp_path / "notes.png"
    p.write_text("a red bird on a branch\n")
    with pytest.raises(UnsupportedImageError, match="not an image") as exc:
        load_image(p)
    assert "notes.png" in str(exc.value) and "PNG, JPEG" in str(exc.value)


def test_truncated_png_and_jpeg() -> None:
    png = _save(Image.fromarray(_noise(64, 64)), "PNG")
    with pytest.raises(UnsupportedImageError, match="truncated or corrupt"):
        load_image(png[: len(png) // 2])
    with pytest.raises(UnsupportedImageError, match="header is truncated or corrupt"):
        load_image(png[:20])  # signature and part of IHDR
    jpeg = _save(Image.fromarray(_noise(64, 64)), "JPEG")
    with pytest.raises(UnsupportedImageError, match="truncated or corrupt"):
        load_image(jpeg[: len(jpeg) // 2])


def test_bit_flipped_png_data() -> None:
    png = bytearray(_save(Image.fromarray(_noise(64, 64)), "PNG"))
    idat = png.index(b"IDAT")
    png[idat + 40] ^= 0xFF  # CRC no longer matches
    with pytest.raises(UnsupportedImageError, match="truncated or corrupt"):
        load_image(bytes(png))


def test_zero_size() -> None:
    png = _save(Image.new("RGB", (8, 8)), "PNG")
    with pytest.raises(UnsupportedImageError, match=r"zero size \(0x8\)"):
        load_image(_patch_ihdr(png, 0, 8))


@pytest.mark.parametrize(
    ("w", "h", "why"),
    [
        (100_000, 100_000, "decompression-bomb"),  # over Pillow's error limit
        (10_000, 10_000, "decompression-bomb"),  # over Pillow's warning limit
        (9_000, 9_000, "81000000 pixels"),  # under Pillow's limits, over ours
        (limits.MAX_IMAGE_SIDE + 1, 8, "side over 16384"),
    ],
)
def test_decompression_bomb_is_rejected_from_the_header(w: int, h: int, why: str) -> None:
    bomb = _patch_ihdr(_save(Image.new("RGB", (8, 8)), "PNG"), w, h)
    t = time.perf_counter()
    with pytest.raises(UnsupportedImageError, match="too large") as exc:
        load_image(bomb)
    assert time.perf_counter() - t < 1.0  # nothing was decoded
    assert why in str(exc.value) and "downscale" in str(exc.value)


def test_own_limit_holds_when_pillow_guard_is_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    bomb = _patch_ihdr(_save(Image.new("RGB", (8, 8)), "PNG"), 12_000, 12_000)
    with pytest.raises(UnsupportedImageError, match="144000000 pixels"):
        load_image(bomb)
