"""Texture extractor: the image area-averaged (in linear light) to a small colour grid that keeps aspect."""

from __future__ import annotations

import numpy as np

from layercast.common import limits
from layercast.common.color import linear_to_srgb8, srgb8_to_linear
from layercast.common.errors import InputError
from layercast.common.types import Colormap

DEFAULT_CELLS_LONG = 8
"""Cells along the long side (8x8 for a square image, as in the paper)."""


def grid_for(width: int, height: int, cells_long: int = DEFAULT_CELLS_LONG) -> tuple[int, int]:
    """(grid_height, grid_width): the long side gets `cells_long` cells, the short side keeps aspect."""
    if width < 1 or height < 1:
        raise InputError(f"image size {width}x{height} must be at least 1x1")
    if not 1 <= cells_long <= limits.MAX_GRID_SIDE:
        raise InputError(f"cells_long={cells_long} must be in 1..{limits.MAX_GRID_SIDE}")
    long_side, short_side = max(width, height), min(width, height)
    short_cells = max(1, round(cells_long * short_side / long_side))
    return (cells_long, short_cells) if height >= width else (short_cells, cells_long)


def _bin_matrix(n: int, cells: int) -> np.ndarray:
    """(cells, n) weights: fraction of each pixel that falls into each cell, rows normalised to 1."""
    edges = np.arange(cells + 1) * (n / cells)
    lo = np.arange(n)
    overlap = np.clip(np.minimum(lo[None, :] + 1, edges[1:, None]) - np.maximum(lo[None, :], edges[:-1, None]), 0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


def colormap(rgb: np.ndarray, cells_long: int = DEFAULT_CELLS_LONG) -> Colormap:
    """Area-average a uint8 RGB image (H, W, 3) to a Colormap grid, averaging in linear light.

    Cells are exact area averages (pixels straddling a cell border are split by area), so any image
    size works, including one smaller than the grid.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise InputError(f"colormap needs a uint8 RGB image (H, W, 3), got {rgb.dtype} {rgb.shape}")
    return colormap_of_linear(srgb8_to_linear(rgb), cells_long)


def colormap_of_linear(lin: np.ndarray, cells_long: int = DEFAULT_CELLS_LONG) -> Colormap:
    """`colormap` of an image already in linear light (float (H, W, 3), `srgb8_to_linear`): for callers that
    cut one image into several grids."""
    h, w = lin.shape[:2]
    gh, gw = grid_for(w, h, cells_long)
    if h >= gh and w >= gw:  # OpenCV's area resampling: the same area averages (in float32), ~3x faster
        import cv2

        return Colormap(cells=linear_to_srgb8(np.asarray(cv2.resize(lin, (gw, gh), interpolation=cv2.INTER_AREA))))
    by_rows = (_bin_matrix(h, gh) @ lin.reshape(h, w * 3).astype(np.float64)).reshape(gh, w, 3)
    cells = np.einsum("gwc,kw->gkc", by_rows, _bin_matrix(w, gw))
    return Colormap(cells=linear_to_srgb8(cells))
