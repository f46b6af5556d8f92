"""Structure extractor: thin Canny edge maps at a working resolution chosen by rate control.

Pure functions, ndarray in, ndarray out. The knobs rate control turns to trade bytes for detail are
`long_side` (working resolution), `threshold_scale` (higher = fewer, stronger edges) and `min_length`
(drop short edge fragments); each more aggressive setting gives (roughly) fewer edge pixels.
"""

from __future__ import annotations

import numpy as np

from layercast.common.errors import InputError

BLUR_SIGMA = 0.8
"""Gaussian blur sigma (working-resolution pixels) applied before Canny."""

HIGH_PER_OTSU = 2.0
"""Canny high threshold per unit of the image's Otsu level (about ControlNet's 100/200 on typical images)."""

LOW_RATIO = 0.5
"""Canny low threshold as a fraction of the high threshold."""

MIN_OTSU = 20.0
"""Floor of the Otsu level used for thresholds, so near-flat images stay (almost) empty."""


def edge_size_for(width: int, height: int, long_side: int) -> tuple[int, int]:
    """Working size (w, h) of an edge map: `long_side` on the image's longer side, aspect kept, >= 1."""
    if width < 1 or height < 1:
        raise InputError(f"image size {width}x{height} is empty")
    if long_side < 1:
        raise InputError(f"edge long side must be >= 1, got {long_side}")
    scale = long_side / max(width, height)
    return (max(1, round(width * scale)), max(1, round(height * scale)))


def grayscale(rgb: np.ndarray) -> np.ndarray:
    """uint8 grayscale from an HxW, HxWx1, HxWx3 (RGB) or HxWx4 (RGBA) array of any integer/float type
    (a contiguous uint8 HxW array comes back as it is, so `canny_edges` may be given one computed once)."""
    import cv2

    a = np.asarray(rgb)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise InputError(f"expected an HxW, HxWx3 or HxWx4 image array, got shape {a.shape}")
    if a.shape[0] < 1 or a.shape[1] < 1:
        raise InputError(f"image array {a.shape} is empty")
    if a.dtype != np.uint8:
        if a.dtype == np.uint16:
            a = (a >> 8).astype(np.uint8)
        elif a.dtype.kind == "f":
            a = np.clip(np.nan_to_num(a) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        else:
            a = np.clip(a, 0, 255).astype(np.uint8)
    if a.ndim == 2:
        return np.ascontiguousarray(a)
    return cv2.cvtColor(np.ascontiguousarray(a[:, :, :3]), cv2.COLOR_RGB2GRAY)


def thin_staircases(edges: np.ndarray) -> np.ndarray:
    """Remove redundant staircase (L-corner) pixels of an 8-connected bool map without breaking lines.

    A pixel whose two orthogonal neighbours forming an L are set, and whose three opposite neighbours are
    clear, only duplicates the diagonal link between those two; removing it keeps every 8-connected
    component intact. One orientation per pass makes simultaneous removals safe.
    """
    src = np.asarray(edges)
    h, w = src.shape
    if h < 2 or w < 2:
        return src.astype(bool, copy=True)
    # The map lives inside a zero border: the neighbour views below see each removal as it happens, with
    # no re-padding, and the masks are computed into two reused buffers.
    p = np.zeros((h + 2, w + 2), bool)
    e = p[1 : 1 + h, 1 : 1 + w]
    np.not_equal(src, 0, out=e)
    rm = np.empty((h, w), bool)
    clear = np.empty((h, w), bool)
    for _ in range(2):
        changed = False
        # (a, b) = the L's orthogonal neighbours; (c, d, f) = the opposite neighbours that must be clear.
        for dy, dx in ((-1, 1), (1, 1), (1, -1), (-1, -1)):
            a = p[1 + dy : 1 + dy + h, 1 : 1 + w]  # vertical arm
            b = p[1 : 1 + h, 1 + dx : 1 + dx + w]  # horizontal arm
            c = p[1 - dy : 1 - dy + h, 1 : 1 + w]  # opposite vertical
            d = p[1 : 1 + h, 1 - dx : 1 - dx + w]  # opposite horizontal
            f = p[1 - dy : 1 - dy + h, 1 - dx : 1 - dx + w]  # opposite diagonal
            np.logical_and(a, b, out=rm)
            rm &= e
            np.logical_or(c, d, out=clear)
            clear |= f
            np.logical_not(clear, out=clear)
            rm &= clear
            if rm.any():
                np.logical_not(rm, out=rm)
                e &= rm
                changed = True
        if not changed:
            break
    return e.copy()


def drop_short(edges: np.ndarray, min_length: int) -> np.ndarray:
    """Drop 8-connected components with fewer than `min_length` pixels."""
    if min_length <= 1 or not edges.any():
        return edges
    import cv2

    _n, labels, stats, _ = cv2.connectedComponentsWithStats(edges.astype(np.uint8), connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_length
    keep[0] = False
    return np.asarray(keep[labels], dtype=bool)


def canny_edges(
    rgb: np.ndarray, long_side: int = 192, *, threshold_scale: float = 1.0, min_length: int = 0
) -> np.ndarray:
    """Thin Canny edge map (bool HxW) of an image at working resolution `long_side` (aspect kept).

    Steps: resize (INTER_AREA when shrinking, INTER_LINEAR when enlarging), grayscale, light Gaussian
    blur, Canny with automatic thresholds (high = HIGH_PER_OTSU * max(Otsu level, MIN_OTSU) *
    threshold_scale, low = LOW_RATIO * high), staircase thinning to 1 px, then components shorter than
    `min_length` pixels dropped.
    """
    import cv2

    if not threshold_scale > 0:
        raise InputError(f"threshold_scale must be > 0, got {threshold_scale}")
    gray = grayscale(rgb)
    h0, w0 = gray.shape
    w, h = edge_size_for(w0, h0, long_side)
    if (w, h) != (w0, h0):
        interp = cv2.INTER_AREA if w * h < w0 * h0 else cv2.INTER_LINEAR
        gray = cv2.resize(gray, (w, h), interpolation=interp)
    if h < 3 or w < 3:
        return np.zeros((h, w), dtype=bool)
    blurred = cv2.GaussianBlur(gray, (3, 3), BLUR_SIGMA)
    otsu, _ = cv2.threshold(blurred, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    high = HIGH_PER_OTSU * max(float(otsu), MIN_OTSU) * threshold_scale
    low = LOW_RATIO * high
    edges = cv2.Canny(blurred, low, high) > 0
    edges = thin_staircases(edges)
    return drop_short(edges, min_length)
