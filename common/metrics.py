"""Image quality and rate metrics (numpy/OpenCV only)."""

from __future__ import annotations

import cv2
import numpy as np


def bpp(nbytes: int, width: int, height: int) -> float:
    """Bits per pixel of `nbytes` for a width x height image."""
    return 8.0 * nbytes / float(width * height)


def budget_bytes(bits_per_pixel: float, width: int, height: int) -> int:
    """Largest whole number of bytes within `bits_per_pixel` at width x height (0.02 bpp at 512x512 -> 655)."""
    return int(bits_per_pixel * width * height / 8.0)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB between two uint8 images of the same shape (inf when identical)."""
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {a.shape} vs {b.shape}")
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM (Wang et al. 2004, 11x11 Gaussian, sigma 1.5) on luma of two uint8 images."""
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {a.shape} vs {b.shape}")
    x = _luma(a)
    y = _luma(b)
    c1 = (0.01 * 255) ** 2
    c2 = (0.03 * 255) ** 2

    def blur(z: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(z, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)

    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    num = (2 * mx * my + c1) * (2 * sxy + c2)
    den = (mx * mx + my * my + c1) * (sxx + syy + c2)
    return float(np.mean(num / den))


def _luma(img: np.ndarray) -> np.ndarray:
    f = img.astype(np.float64)
    if f.ndim == 2:
        return f
    return 0.299 * f[..., 0] + 0.587 * f[..., 1] + 0.114 * f[..., 2]
