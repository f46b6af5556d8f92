"""Open an input image safely: bounded size, any common mode -> 8-bit RGB, text metadata as plain strings.

This module is the one choke point where Pillow errors become :mod:`layercast.common.errors` errors.
The declared size is checked from the header *before* any pixel is decoded, so a decompression bomb
costs a few header bytes, never its declared memory.

Keys of :attr:`LoadedImage.info` and where each comes from:

========================  ==========================================================================
key                       source
========================  ==========================================================================
*any PNG text key*        PNG tEXt / zTXt / iTXt chunks, key as written ("parameters" (A1111/Forge),
                          "prompt" / "workflow" (ComfyUI), "invokeai_metadata", "sd-metadata",
                          "Dream" (InvokeAI), "Software" / "Description" / "Comment" / "Source" (NovelAI))
``"XMP"``                 the XMP packet: PNG iTXt "XML:com.adobe.xmp", JPEG APP1, WebP "XMP " chunk,
                          TIFF tag 700
``"UserComment"``         EXIF tag 0x9286, its 8-byte charset prefix decoded (UNICODE in either byte
                          order, ASCII, JIS, undefined); A1111 writes its "parameters" text here for
                          JPEG and WebP
``"ImageDescription"``    EXIF tag 0x010E
``"Software"``            EXIF tag 0x0131 (a PNG "Software" text chunk wins)
``"Make"``, ``"Model"``  EXIF tags 0x010F / 0x0110 (ComfyUI's WebP saver writes "prompt:{json}" and
                          "workflow:{json}" into Make and ImageDescription)
``"XPComment"``           EXIF tag 0x9C9C (Windows, UTF-16LE)
``"comment"``             JPEG COM marker / GIF comment extension
========================  ==========================================================================
"""

from __future__ import annotations

import contextlib
import io
import itertools
import stat
import struct
import warnings
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from layercast.common import limits
from layercast.common.errors import InputError, UnsupportedImageError

IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".avif", ".gif"})
"""File name extensions taken as images when a folder is given (or watched)."""

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_EXIF_IFD = 0x8769
_TAG_USER_COMMENT = 0x9286
_TAG_IMAGE_DESCRIPTION = 0x010E
_TAG_SOFTWARE = 0x0131
_TAG_MAKE = 0x010F
_TAG_MODEL = 0x0110
_TAG_XMP = 0x02BC
_TAG_XP_COMMENT = 0x9C9C
_XMP_PNG_KEY = "XML:com.adobe.xmp"

# What Pillow raises on bytes it cannot decode (decoders, header parsers, EXIF readers).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, IndexError, KeyError)
_BOMB_ERRORS = (Image.DecompressionBombError, Image.DecompressionBombWarning)
_FORMATS = ("PNG", "JPEG", "MPO", "WEBP", "AVIF", "HEIF", "BMP", "GIF", "TIFF", "PPM")
"""Formats opened (where Pillow has the plugin). Others (EPS runs Ghostscript; TGA has no magic number
and "identifies" random bytes) are refused as not an image."""
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


@dataclass(frozen=True, eq=False)
class LoadedImage:
    """An opened input image: 8-bit RGB pixels (EXIF orientation applied, alpha composited on white).

    `rgb` is uint8, C-contiguous, shape (height, width, 3). `format` is Pillow's format name ("PNG",
    "JPEG", "WEBP", ...). `info` holds the text metadata (see the module docstring for its keys).
    """

    rgb: np.ndarray
    width: int
    height: int
    format: str
    info: dict[str, str] = field(default_factory=dict)


def load_image(source: str | Path | bytes) -> LoadedImage:
    """Open an image file (path) or image bytes.

    Raises InputError for a missing file, UnsupportedImageError for anything that is not a usable image
    (not an image, empty, truncated, zero-size, larger than limits.MAX_IMAGE_SIDE per side or
    limits.MAX_INPUT_PIXELS in all, an unsupported pixel mode). Animated images give their first frame.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        if not data:
            raise UnsupportedImageError("the image data is empty (0 bytes); pass a PNG, JPEG or WebP file")
        return _load(io.BytesIO(data), "<bytes>")
    path = Path(source)
    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise InputError(f"{path}: no such file; check the path") from exc
    except (OSError, ValueError) as exc:  # permission, name too long, NUL in the name
        raise InputError(f"{path}: cannot open ({exc})") from exc
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{path}: is a directory, not an image file")
    if st.st_size == 0:  # also FIFOs and devices: never block reading them
        raise UnsupportedImageError(f"{path}: the file is empty (0 bytes), not an image")
    try:
        f = open(path, "rb")  # noqa: SIM115 (closed by the with below; open errors mapped here)
    except OSError as exc:
        raise InputError(f"{path}: cannot open ({exc})") from exc
    with f:
        return _load(f, str(path))


def _load(fp: IO[bytes], name: str) -> LoadedImage:
    with warnings.catch_warnings():
        # Pillow warns (then errors) on huge images; make its warning an error we can map.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(fp, formats=_formats())
        except _BOMB_ERRORS as exc:
            raise _too_large(name, f"Pillow's decompression-bomb guard tripped ({exc})") from exc
        except UnidentifiedImageError as exc:
            raise _unidentified(fp, name) from exc
        except _DECODE_ERRORS as exc:
            raise UnsupportedImageError(
                f"{name}: the image header is truncated or corrupt ({exc}); re-export or re-download the file"
            ) from exc
        with im:
            _check_size(im.size, name)
            try:
                im.load()
            except _BOMB_ERRORS as exc:
                raise _too_large(name, str(exc)) from exc
            except _DECODE_ERRORS as exc:
                raise UnsupportedImageError(
                    f"{name}: the {im.format or 'image'} data is truncated or corrupt ({exc}); "
                    "re-export or re-download the file"
                ) from exc
            fmt = im.format or ""
            info = read_text_metadata(im)
            with contextlib.suppress(*_DECODE_ERRORS):  # unreadable EXIF: keep the stored orientation
                ImageOps.exif_transpose(im, in_place=True)
            rgb = to_rgb(im, name)
    h, w = rgb.shape[:2]
    return LoadedImage(rgb=rgb, width=int(w), height=int(h), format=fmt, info=info)


def _formats() -> list[str]:
    Image.init()
    return [f for f in _FORMATS if f in Image.OPEN]


def _check_size(size: tuple[int, int], name: str) -> None:
    w, h = size
    if w <= 0 or h <= 0:
        raise UnsupportedImageError(f"{name}: the image has zero size ({w}x{h}); nothing to encode")
    if w > limits.MAX_IMAGE_SIDE or h > limits.MAX_IMAGE_SIDE:
        raise _too_large(name, f"{w}x{h} has a side over {limits.MAX_IMAGE_SIDE} px")
    if w * h > limits.MAX_INPUT_PIXELS:
        raise _too_large(name, f"{w}x{h} is {w * h} pixels, over {limits.MAX_INPUT_PIXELS}")


def _too_large(name: str, why: str) -> UnsupportedImageError:
    return UnsupportedImageError(
        f"{name}: image too large: {why} (possible decompression bomb); "
        f"downscale it to at most {limits.MAX_IMAGE_SIDE} px per side and "
        f"{limits.MAX_INPUT_PIXELS} pixels"
    )


def _unidentified(fp: IO[bytes], name: str) -> UnsupportedImageError:
    """Explain a file Pillow cannot identify; a PNG whose header declares 0x0 gets a precise message."""
    try:
        fp.seek(0)
        head = fp.read(24)
    except OSError:
        head = b""
    if head.startswith(_PNG_SIGNATURE) and len(head) >= 24 and head[12:16] == b"IHDR":
        w, h = struct.unpack(">II", head[16:24])
        if w == 0 or h == 0:
            return UnsupportedImageError(f"{name}: the image has zero size ({w}x{h}); nothing to encode")
        return UnsupportedImageError(f"{name}: the PNG header is truncated or corrupt; re-export the file")
    return UnsupportedImageError(
        f"{name}: not an image (the format is not recognised); pass a PNG, JPEG, WebP, AVIF, BMP, GIF, TIFF or PPM file"
    )


# --- pixels ------------------------------------------------------------------------------------------


def to_rgb(im: Image.Image, name: str = "<image>") -> np.ndarray:
    """Any Pillow image -> uint8 RGB (H, W, 3), C-contiguous.

    Alpha and palette/tRNS transparency are composited on white. 16-bit grey ("I;16*", and "I" within
    0..65535) is scaled by 255/65535 with rounding; other "I" and non-[0, 1] "F" images are min-max
    stretched; "F" in [0, 1] is scaled by 255. CMYK, YCbCr, LAB, HSV and "1" go through Pillow's convert.
    """
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        arr = np.asarray(im)
    elif mode.startswith("I;16"):
        arr = _gray3(_scale16(np.asarray(im).astype(np.uint32)))  # 4 bytes/pixel, scaled in place
    elif mode == "I":
        a = np.asarray(im).astype(np.int64)
        lo, hi = int(a.min()), int(a.max())
        arr = _gray3(_scale16(a) if lo >= 0 and hi <= 65535 else _stretch(a.astype(np.float64)))
    elif mode == "F":
        a = np.nan_to_num(np.asarray(im).astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        unit = a.min() >= 0.0 and a.max() <= 1.0
        arr = _gray3(np.rint(a * 255.0).astype(np.uint8) if unit else _stretch(a))
    elif mode in _ALPHA_MODES or "transparency" in im.info:
        arr = _on_white(np.asarray(_convert(im, "RGBA", name)))
    else:
        arr = np.asarray(_convert(im, "RGB", name))
    return np.ascontiguousarray(arr, dtype=np.uint8)


def _convert(im: Image.Image, mode: str, name: str) -> Image.Image:
    try:
        return im.convert(mode)
    except ValueError as exc:
        raise UnsupportedImageError(
            f"{name}: pixel mode {im.mode!r} cannot be converted to {mode} ({exc}); save it as 8-bit RGB"
        ) from exc


def _scale16(a: np.ndarray) -> np.ndarray:
    """0..65535 -> 0..255, rounded; `a` (a fresh uint32/int64 copy) is overwritten to bound memory."""
    a *= 255
    a += 32767
    a //= 65535
    return a.astype(np.uint8)


def _stretch(a: np.ndarray) -> np.ndarray:
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    return np.rint((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _gray3(g: np.ndarray) -> np.ndarray:
    return np.repeat(g[:, :, None], 3, axis=2)


def _on_white(rgba: np.ndarray) -> np.ndarray:
    a = rgba[:, :, 3:4].astype(np.uint32)
    rgb = rgba[:, :, :3].astype(np.uint32)
    return ((rgb * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


# --- metadata ----------------------------------------------------------------------------------------


def read_text_metadata(im: Image.Image) -> dict[str, str]:
    """The text metadata of an opened, loaded image as plain strings (keys: see the module docstring)."""
    out: dict[str, str] = {}
    text = getattr(im, "text", None)  # PNG: tEXt/zTXt/iTXt, including those after IDAT
    if isinstance(text, Mapping):
        for k, v in text.items():
            if isinstance(k, str) and isinstance(v, str):
                out[k] = _clean(v)
    xmp = im.info.get("xmp") or out.pop(_XMP_PNG_KEY, None)
    out.pop(_XMP_PNG_KEY, None)
    comment = im.info.get("comment")
    if isinstance(comment, bytes | str) and comment:
        out["comment"] = _clean(_bytes_text(comment))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "Corrupt EXIF data": metadata is best-effort
            exif = im.getexif()
            exif_ifd = exif.get_ifd(_EXIF_IFD)
    except (*_DECODE_ERRORS, TypeError, ZeroDivisionError):
        exif, exif_ifd = None, {}
    if exif is not None:
        user_comment = exif_ifd.get(_TAG_USER_COMMENT)
        if isinstance(user_comment, bytes | str) and user_comment:
            decoded = decode_user_comment(user_comment)
            if decoded:
                out["UserComment"] = decoded
        for tag, key in (
            (_TAG_IMAGE_DESCRIPTION, "ImageDescription"),
            (_TAG_SOFTWARE, "Software"),
            (_TAG_MAKE, "Make"),
            (_TAG_MODEL, "Model"),
        ):
            value = exif.get(tag)
            if isinstance(value, bytes | str) and value:
                out.setdefault(key, _clean(_bytes_text(value)))
        xp = exif.get(_TAG_XP_COMMENT)
        if isinstance(xp, tuple) and all(isinstance(b, int) and 0 <= b < 256 for b in xp):
            xp = bytes(xp)
        if isinstance(xp, bytes) and xp:
            out["XPComment"] = _clean(xp.decode("utf-16-le", "replace"))
        xmp = xmp or exif.get(_TAG_XMP)
    if isinstance(xmp, bytes | str) and xmp:
        out["XMP"] = _clean(decode_xmp(xmp))
    return {k: v for k, v in out.items() if v}


def decode_user_comment(value: bytes | str) -> str:
    """Decode an EXIF UserComment: an 8-byte charset prefix, then text.

    "UNICODE\\0" is UTF-16 whose byte order is not fixed in practice (piexif/A1111 write big-endian,
    others little-endian): a BOM decides, else where the zero bytes of ASCII characters fall.
    """
    if isinstance(value, str):
        return _clean(value)
    prefix, body = value[:8], value[8:]
    if prefix == b"UNICODE\0":
        return _clean(_utf16(body))
    if prefix == b"ASCII\0\0\0" or prefix == b"\0" * 8:
        return _clean(body.decode("utf-8", "replace"))
    if prefix == b"JIS\0\0\0\0\0":
        return _clean(body.decode("shift_jis", "replace"))
    return _clean(value.decode("utf-8", "replace"))


def _utf16(body: bytes) -> str:
    if body[:2] == b"\xff\xfe":
        return body[2:].decode("utf-16-le", "replace")
    if body[:2] == b"\xfe\xff":
        return body[2:].decode("utf-16-be", "replace")
    body = body[: len(body) // 2 * 2]
    zeros_even = body[0::2].count(0)  # high byte first: big-endian ASCII
    zeros_odd = body[1::2].count(0)
    if zeros_odd > zeros_even:
        return body.decode("utf-16-le", "replace")
    if zeros_even > zeros_odd:
        return body.decode("utf-16-be", "replace")
    # No ASCII to tell by (e.g. all CJK): the order whose text stays in common scripts wins.
    be, le = body.decode("utf-16-be", "replace"), body.decode("utf-16-le", "replace")
    return le if _plausibility(le) > _plausibility(be) else be


_SCRIPTS = (
    (0x20, 0x24F, 1),  # Latin
    (0x370, 0x4FF, 2),  # Greek, Cyrillic
    (0x2000, 0x206F, 1),  # general punctuation
    (0x3000, 0x30FF, 3),  # CJK punctuation, kana
    (0x4E00, 0x9FFF, 3),  # CJK ideographs
    (0xAC00, 0xD7A3, 4),  # Hangul
    (0xFF00, 0xFFEF, 3),  # full-width forms
)


def _script(c: str) -> int:
    o = ord(c)
    return next((k for lo, hi, k in _SCRIPTS if lo <= o <= hi), 0)


def _plausibility(s: str) -> int:
    """Characters in common scripts, plus neighbours in the same script (byte-swapped text scatters)."""
    classes = [_script(c) for c in s]
    return sum(1 for k in classes if k) + sum(1 for a, b in itertools.pairwise(classes) if a and a == b)


def decode_xmp(value: bytes | str) -> str:
    """An XMP packet as text (UTF-8, or UTF-16 with a BOM)."""
    if isinstance(value, str):
        return value
    if value[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return value.decode("utf-16", "replace")
    return value.decode("utf-8-sig", "replace")


def _bytes_text(value: bytes | str) -> str:
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def _clean(s: str) -> str:
    return s.replace("\0", "").strip()


def find_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files named in `inputs`, or found (non-recursively, sorted) in the folders named there.

    InputError for a name that does not exist, a folder that cannot be listed, or when no image is found.
    """
    out: list[Path] = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            try:
                out.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file()))
            except OSError as exc:
                raise InputError(f"{path}: cannot list the folder ({exc.strerror or exc})") from None
        elif path.exists():
            out.append(path)
        else:
            raise InputError(f"no such file or folder: {name}")
    if not out:
        names = ", ".join(str(x) for x in inputs)
        raise InputError(f"no images found in {names} (extensions: {', '.join(sorted(IMAGE_EXTS))})")
    return out


def resize_rgb(rgb: np.ndarray, size: tuple[int, int] | int | None) -> np.ndarray:
    """Resize to `size` = (width, height), or so the long side is `size`; area interpolation when shrinking."""
    if size is None:
        return rgb
    import cv2

    h, w = rgb.shape[:2]
    if isinstance(size, tuple):
        tw, th = size
    else:
        scale = size / max(w, h)
        tw, th = max(1, round(w * scale)), max(1, round(h * scale))
    if tw < 1 or th < 1:
        raise InputError(f"resize target must be at least 1x1, got {tw}x{th}")
    if (tw, th) == (w, h):
        return rgb
    interp = cv2.INTER_AREA if tw < w else cv2.INTER_CUBIC
    return np.ascontiguousarray(cv2.resize(rgb, (tw, th), interpolation=interp))


def from_pil(im: Image.Image, name: str = "<PIL image>") -> LoadedImage:
    """An already opened Pillow image as a LoadedImage (size limits, mode conversion and text metadata as
    :func:`load_image` applies them; EXIF orientation is applied to a copy)."""
    _check_size(im.size, name)
    info = read_text_metadata(im)
    oriented = im
    with contextlib.suppress(*_DECODE_ERRORS):  # unreadable EXIF: keep the stored orientation
        oriented = ImageOps.exif_transpose(im) or im
    rgb = to_rgb(oriented, name)
    h, w = rgb.shape[:2]
    return LoadedImage(rgb=rgb, width=int(w), height=int(h), format=im.format or "", info=info)


def from_array(a: np.ndarray, name: str = "<array>") -> LoadedImage:
    """A uint8 array as a LoadedImage: (H, W, 3) RGB, (H, W, 4) RGBA (composited on white) or (H, W) grey."""
    arr = np.asarray(a)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise InputError(
            f"{name}: expected a uint8 array of shape (H, W), (H, W, 3) or (H, W, 4), got {arr.dtype} {arr.shape}"
        )
    _check_size((int(arr.shape[1]), int(arr.shape[0])), name)
    if arr.ndim == 2:
        rgb = _gray3(arr)
    elif arr.shape[2] == 4:
        rgb = _on_white(arr)
    else:
        rgb = arr
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    return LoadedImage(rgb=rgb, width=int(rgb.shape[1]), height=int(rgb.shape[0]), format="", info={})
