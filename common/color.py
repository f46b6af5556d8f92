"""Vectorised colour conversions: sRGB uint8 <-> linear light <-> Oklab (Björn Ottosson's Oklab).

All functions take and return numpy arrays whose last axis holds the three channels. Float results
are float32 unless a float64 array is passed in.
"""

from __future__ import annotations

import numpy as np

_M1 = np.array(  # linear sRGB -> LMS
    [
        [0.4122214708, 0.5363325363, 0.0514459929],
        [0.2119034982, 0.6806995451, 0.1073969566],
        [0.0883024619, 0.2817188376, 0.6299787005],
    ]
)
_M2 = np.array(  # LMS^(1/3) -> Oklab
    [
        [0.2104542553, 0.7936177850, -0.0040720468],
        [1.9779984951, -2.4285922050, 0.4505937099],
        [0.0259040371, 0.7827717662, -0.8086757660],
    ]
)
_M2_INV = np.linalg.inv(_M2)
_M1_INV = np.linalg.inv(_M1)


def _srgb_decode_table() -> np.ndarray:
    v = np.arange(256) / 255.0
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4).astype(np.float32)


_SRGB8_TO_LINEAR = _srgb_decode_table()


def _float(x: np.ndarray) -> np.ndarray:
    return x if x.dtype in (np.float32, np.float64) else x.astype(np.float32)


def srgb8_to_linear(rgb: np.ndarray) -> np.ndarray:
    """uint8 sRGB -> linear light in [0, 1] (float32, via a 256-entry table)."""
    return _SRGB8_TO_LINEAR[np.asarray(rgb, dtype=np.uint8)]


def linear_to_srgb(lin: np.ndarray) -> np.ndarray:
    """Linear light -> sRGB in [0, 1] as float (clipped to the gamut)."""
    x = np.clip(_float(np.asarray(lin)), 0.0, 1.0)
    return np.where(x <= 0.0031308, x * 12.92, 1.055 * np.power(x, 1 / 2.4) - 0.055)


def linear_to_srgb8(lin: np.ndarray) -> np.ndarray:
    """Linear light -> uint8 sRGB (rounded, clipped)."""
    return np.clip(np.rint(linear_to_srgb(lin) * 255.0), 0, 255).astype(np.uint8)


def linear_to_oklab(lin: np.ndarray) -> np.ndarray:
    """Linear sRGB -> Oklab (L in [0, 1], a and b roughly in [-0.4, 0.4])."""
    x = _float(np.asarray(lin))
    lms = x @ _M1.T.astype(x.dtype)
    return np.cbrt(lms) @ _M2.T.astype(x.dtype)


def oklab_to_linear(lab: np.ndarray) -> np.ndarray:
    """Oklab -> linear sRGB (not clipped: out-of-gamut values may leave [0, 1])."""
    x = _float(np.asarray(lab))
    lms = x @ _M2_INV.T.astype(x.dtype)
    return (lms * lms * lms) @ _M1_INV.T.astype(x.dtype)


def srgb8_to_oklab(rgb: np.ndarray) -> np.ndarray:
    """uint8 sRGB -> Oklab (float32)."""
    return linear_to_oklab(srgb8_to_linear(rgb))


def oklab_to_srgb8(lab: np.ndarray) -> np.ndarray:
    """Oklab -> uint8 sRGB (clipped to the gamut)."""
    return linear_to_srgb8(oklab_to_linear(lab))


def delta_e(lab1: np.ndarray, lab2: np.ndarray) -> np.ndarray:
    """Oklab Euclidean distance x 100 (about 1 = just noticeable)."""
    d = np.asarray(lab1, dtype=np.float64) - np.asarray(lab2, dtype=np.float64)
    return np.sqrt((d * d).sum(axis=-1)) * 100.0
