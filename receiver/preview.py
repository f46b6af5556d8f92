"""CPU preview decoder: colormap + structure -> image, with no model weights (about 20-40 ms at 512x512).

Colours: the colormap is spread with the edge map as boundaries (receiver.colorize: colourisation by
optimisation, Levin et al. 2004, with the cells' means as constraints and edges as affinity breaks, then a
small fitted correction of the bias of linear-light cell means), so a colour stops at the edges that bound
its region instead of smearing across them. Without edges (or with
`colour="bicubic"`) the colormap is upsampled bicubically in Oklab (a smooth field through the cell centres:
as close to the image as the constrained field there, and four times faster).

Styles: "clean" (default) shows the colour alone, the edges used only as boundaries; "sketch" also draws
the edges as soft dark lines over it (lightness pulled down where the edge map is set). A stage with edges
but no colour always draws them (grey with dark lines), whatever the style, so it still shows what arrived.
Regions whose structure did not arrive (`EdgeMap.known` False) get no lines and no boundaries; they are
shown desaturated with a faint diagonal hatch, so "unknown" never looks like "no edges". A pose is drawn
over the colours in the OpenPose style. Missing texture -> neutral grey; nothing -> flat grey.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from layercast.common.color import oklab_image_to_srgb8, srgb8_to_oklab
from layercast.common.errors import InputError
from layercast.common.types import Colormap, EdgeMap, LayerSet, PoseLayer, Structure
from layercast.receiver.decoder import StepCallback

GREY = 128
"""Neutral grey of a preview without texture."""
STYLES = ("clean", "sketch")
"""Preview styles: colour only (edges as boundaries), or colour with the edges drawn as dark lines."""
COLOURS = ("edge-aware", "bicubic")
"""How the colormap becomes a colour field: spread with the edges as boundaries, or plain bicubic."""
EDGE_DARKEN = 0.55
"""How far an edge pixel is pulled towards black (0 = no lines, 1 = black lines)."""
UNKNOWN_SATURATION = 0.35
"""Colour kept (fraction) in regions whose structure is unknown."""
HATCH_PERIOD = 8
"""Pixels between the diagonal hatch lines of unknown regions."""
HATCH_DELTA = 14
"""Brightness change of the hatch lines (uint8 levels)."""
_WORK_SIDE = 128
"""Long side of the grid where the colour field is interpolated before a cheap linear upscale."""


def _check_size(width: int, height: int) -> None:
    if width < 1 or height < 1:
        raise InputError(f"output size {width}x{height} must be at least 1x1")


def smooth_colormap(cm: Colormap, width: int, height: int) -> np.ndarray:
    """Bicubic Oklab upsampling of a colormap to uint8 RGB (height, width, 3).

    The field is interpolated in Oklab on a grid of long side `_WORK_SIDE`, converted to sRGB there,
    and upscaled bilinearly in uint8 (the field is smooth, so this costs under one level of error).
    """
    import cv2

    _check_size(width, height)
    scale = min(1.0, _WORK_SIDE / max(width, height))
    ww, wh = max(1, round(width * scale)), max(1, round(height * scale))
    lab = srgb8_to_oklab(cm.cells).astype(np.float32)
    field = cv2.resize(lab, (ww, wh), interpolation=cv2.INTER_CUBIC).reshape(wh, ww, 3)
    srgb = oklab_image_to_srgb8(field)
    if (ww, wh) == (width, height):
        return srgb
    return np.asarray(cv2.resize(srgb, (width, height), interpolation=cv2.INTER_LINEAR)).reshape(height, width, 3)


def render_colormap(cm: Colormap, width: int, height: int, smooth: bool = False) -> np.ndarray:
    """The colormap as an image: nearest-neighbour cells, or the smooth field when `smooth`."""
    import cv2

    _check_size(width, height)
    if smooth:
        return smooth_colormap(cm, width, height)
    out = cv2.resize(np.ascontiguousarray(cm.cells), (width, height), interpolation=cv2.INTER_NEAREST)
    return out.reshape(height, width, 3)


def _resize_mask(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    """A bool/float HxW mask as float32 coverage at (height, width): area-averaged when shrinking."""
    import cv2

    m = mask.astype(np.float32)
    if m.shape == (height, width):
        return m
    shrink = width * height < m.shape[0] * m.shape[1]
    out = cv2.resize(m, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return out.reshape(height, width)


def _known_mask(edges: EdgeMap, width: int, height: int) -> np.ndarray | None:
    """Bool (height, width): True where the structure arrived; None when all of it did."""
    import cv2

    if edges.known is None or bool(edges.known.all()):
        return None
    k = cv2.resize(edges.known.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
    return k.reshape(height, width).astype(bool)


def _edge_strength(edges: EdgeMap, width: int, height: int) -> np.ndarray:
    """uint8 (height, width), 0..255: soft edge lines at output size (uint8 OpenCV ops throughout)."""
    import cv2

    m = edges.edges.astype(np.uint8) * np.uint8(255)
    eh, ew = m.shape
    if (eh, ew) == (height, width):
        return m
    shrink = width * height < eh * ew
    cover = cv2.resize(m, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    cover = cover.reshape(height, width)
    if height > eh:  # enlarging thin lines: soften them to about one output line width
        return cv2.convertScaleAbs(cv2.GaussianBlur(cover, (3, 3), 0.8), alpha=1.6)
    return cv2.convertScaleAbs(cover, alpha=eh / max(height, 1))


def render_structure(structure: Structure, width: int, height: int) -> np.ndarray:
    """The structure layer as an image: edges white on black (unknown regions mid-grey), or the pose."""
    _check_size(width, height)
    if isinstance(structure, PoseLayer):
        from layercast.receiver.pose_draw import draw_openpose

        return draw_openpose(structure, width, height)
    gray = (_resize_mask(structure.edges, width, height) > 0).astype(np.uint8) * 255
    known = _known_mask(structure, width, height)
    if known is not None:
        gray[~known] = GREY
    return np.repeat(gray[:, :, None], 3, axis=2)


def _mark_unknown(img: np.ndarray, unknown: np.ndarray) -> None:
    """Desaturate and hatch `img` (uint8 RGB, in place) where `unknown` is True."""
    region = img[unknown].astype(np.float32)
    luma = region @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    region = luma[:, None] + UNKNOWN_SATURATION * (region - luma[:, None])
    ys, xs = np.nonzero(unknown)
    hatch = ((xs + ys) % HATCH_PERIOD) < 2
    region[hatch] += np.where(luma[hatch] > 128, -HATCH_DELTA, HATCH_DELTA)[:, None]
    img[unknown] = np.clip(region + 0.5, 0, 255).astype(np.uint8)


def _draw_edges(img: np.ndarray, edges: EdgeMap) -> np.ndarray:
    import cv2

    h, w = img.shape[:2]
    strength = cv2.convertScaleAbs(_edge_strength(edges, w, h), alpha=EDGE_DARKEN)
    known = _known_mask(edges, w, h)
    if known is not None:
        strength[~known] = 0
    keep = cv2.subtract(np.full_like(strength, 255), strength)  # 255 = untouched, 255 - 255*darken = edge
    out = cv2.multiply(img, cv2.merge([keep, keep, keep]), scale=1.0 / 255.0)
    if known is not None:
        _mark_unknown(out, ~known)
    return out


def _draw_pose(img: np.ndarray, pose: PoseLayer) -> np.ndarray:
    from layercast.receiver.pose_draw import draw_openpose

    h, w = img.shape[:2]
    drawing = draw_openpose(pose, w, h)
    drawn = drawing.any(axis=2)
    out = img.copy()
    out[drawn] = drawing[drawn]
    return out


def _check_style(style: str, colour: str) -> None:
    if style not in STYLES:
        raise InputError(f"unknown preview style {style!r}; use {' or '.join(STYLES)}")
    if colour not in COLOURS:
        raise InputError(f"unknown preview colour {colour!r}; use {' or '.join(COLOURS)}")


def colour_field(cm: Colormap, edges: EdgeMap | None, width: int, height: int) -> np.ndarray:
    """uint8 RGB (height, width, 3): the colormap spread with `edges` (where known) as boundaries; the
    bicubic field (`smooth_colormap`) when there are none."""
    from layercast.receiver.colorize import colorize

    _check_size(width, height)
    if edges is None:
        return smooth_colormap(cm, width, height)
    boundaries = edges.edges.astype(bool)
    if edges.known is not None:
        boundaries = boundaries & edges.known.astype(bool)
    if not boundaries.any():
        return smooth_colormap(cm, width, height)
    return colorize(cm.cells, boundaries, width, height)


def preview(layers: LayerSet, *, style: str = "clean", colour: str = "edge-aware") -> np.ndarray:
    """Preview image of any subset of layers: uint8 RGB (layers.height, layers.width, 3).

    `style` "clean" (default): the colour alone, edges only as its boundaries; "sketch": edges also drawn as
    dark lines. Edges without colour are always drawn. `colour`: "edge-aware" (default) or "bicubic"."""
    _check_style(style, colour)
    w, h = layers.width, layers.height
    edges = layers.structure if isinstance(layers.structure, EdgeMap) else None
    if layers.texture is None:
        img = np.full((h, w, 3), GREY, dtype=np.uint8)
        if edges is not None:
            return _draw_edges(img, edges)
    elif colour == "bicubic":
        img = smooth_colormap(layers.texture, w, h)
    else:
        img = colour_field(layers.texture, edges, w, h)
    if edges is not None:
        if style == "sketch":
            return _draw_edges(img, edges)
        known = _known_mask(edges, w, h)
        if known is not None:
            _mark_unknown(img, ~known)
    elif isinstance(layers.structure, PoseLayer):
        img = _draw_pose(img, layers.structure)
    return img


class PreviewDecoder:
    """The CPU preview decoder (no weights): colours from the colormap placed by the structure.

    `style`: "clean" (default; edges are only the colour's boundaries), "sketch" (edges drawn as lines) or
    "fast" (the colormap upsampled bicubically, no lines: ~1.5 ms instead of ~22-45 ms per 512x512 decode, for
    receivers that must keep up with many images per second)."""

    name = "preview"
    light = True
    """Decodes take milliseconds on the CPU: `ReceiveSession` runs them on its layer worker threads."""

    def __init__(self, style: str = "clean") -> None:
        if style == "fast":
            self._style, self._colour = "clean", "bicubic"
        else:
            _check_style(style, COLOURS[0])
            self._style, self._colour = style, COLOURS[0]
        self.style = style

    def decode(
        self,
        layers: LayerSet,
        *,
        on_step: StepCallback | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> np.ndarray:
        """Decode to uint8 RGB (layers.height, layers.width, 3); one step, reported to `on_step`."""
        img = preview(layers, style=self._style, colour=self._colour)
        if on_step is not None:
            on_step(1, 1, img)
        return img
