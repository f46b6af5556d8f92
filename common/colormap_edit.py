"""Pure edits of a Colormap value (used by `layercast edit`; the caller re-encodes the texture layer)."""

from __future__ import annotations

from collections.abc import Sequence
from math import ceil

import numpy as np

from layercast.common.color import delta_e, oklab_to_srgb8, srgb8_to_oklab
from layercast.common.errors import EditError
from layercast.common.types import Colormap


def _rgb(value: Sequence[int] | np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.shape != (3,) or not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0 or arr.max() > 255:
        raise EditError(f"{what} must be three integers 0..255 (R, G, B), got {value!r}")
    return arr.astype(np.uint8)


def hue_shift(cm: Colormap, degrees: float) -> Colormap:
    """Rotate every cell's hue by `degrees` in Oklab (lightness and chroma kept)."""
    lab = srgb8_to_oklab(cm.cells).astype(np.float64)
    t = np.deg2rad(float(degrees))
    a, b = lab[..., 1], lab[..., 2]
    rot = np.stack([lab[..., 0], a * np.cos(t) - b * np.sin(t), a * np.sin(t) + b * np.cos(t)], axis=-1)
    return Colormap(cells=oklab_to_srgb8(rot))


def map_color(cm: Colormap, src_rgb: Sequence[int], dst_rgb: Sequence[int], tolerance: float = 10.0) -> Colormap:
    """Cells within `tolerance` (Oklab distance x 100) of `src_rgb` become `dst_rgb`; others stay."""
    src, dst = _rgb(src_rgb, "source colour"), _rgb(dst_rgb, "target colour")
    if not tolerance >= 0:
        raise EditError(f"tolerance must be >= 0 (Oklab distance x 100), got {tolerance!r}")
    # the exact colour always matches: float32 Oklab of the same uint8 triple can differ by ~1e-6 between an
    # array and a single colour (numpy's matrix products take different paths), so tolerance 0 needs this
    near = (delta_e(srgb8_to_oklab(cm.cells), srgb8_to_oklab(src)) <= tolerance) | (cm.cells == src).all(axis=-1)
    cells = cm.cells.copy()
    cells[near] = dst
    return Colormap(cells=cells)


def set_cell(cm: Colormap, row: int, col: int, rgb: Sequence[int]) -> Colormap:
    """Set one cell to `rgb`; EditError when (row, col) is outside the grid."""
    gh, gw = cm.grid
    if not (0 <= row < gh and 0 <= col < gw):
        raise EditError(f"cell ({row}, {col}) is outside the {gh}x{gw} colormap (rows 0..{gh - 1}, cols 0..{gw - 1})")
    cells = cm.cells.copy()
    cells[row, col] = _rgb(rgb, "cell colour")
    return Colormap(cells=cells)


def reframe(cm: Colormap, box: Sequence[float], grid: tuple[int, int]) -> Colormap:
    """Re-grid the colour field under `box` (x0, y0, x1, y1: fractions of the old frame) onto `grid` cells.

    The colormap is read as the receiver reads it: a smooth field, bicubic in Oklab through the cell
    centres. Each new cell (grid = (rows, cols), spanning the box) takes the field at its centre when it
    is no larger than an old cell, and when larger (zooming out) the Oklab mean over a lattice of points
    as dense as the old cells, so no detail aliases. A box reaching outside 0..1 continues the border
    colours, as the field itself does at the frame's edge.
    """
    import cv2

    (gh, gw), (oh, ow) = grid, cm.grid
    x0, y0, x1, y1 = (float(v) for v in box)
    sx, sy = max(1, ceil((x1 - x0) * ow / gw)), max(1, ceil((y1 - y0) * oh / gh))  # old cells per new cell
    # sample points as fractions of the new frame -> old cell coordinates (cell i's centre at i)
    xs = (x0 + (np.arange(gw * sx) + 0.5) / (gw * sx) * (x1 - x0)) * ow - 0.5
    ys = (y0 + (np.arange(gh * sy) + 0.5) / (gh * sy) * (y1 - y0)) * oh - 0.5
    map_x, map_y = np.meshgrid(xs.astype(np.float32), ys.astype(np.float32))
    lab = srgb8_to_oklab(cm.cells).astype(np.float32)
    field = cv2.remap(lab, map_x, map_y, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
    return Colormap(cells=oklab_to_srgb8(field.reshape(gh, sy, gw, sx, 3).mean(axis=(1, 3))))
