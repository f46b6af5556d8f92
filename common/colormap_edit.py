"""Pure edits of a Colormap value (used by `layercast edit`; the caller re-encodes the texture layer)."""

from __future__ import annotations

from collections.abc import Sequence

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
    near = delta_e(srgb8_to_oklab(cm.cells), srgb8_to_oklab(src)) <= tolerance
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
