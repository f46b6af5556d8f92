"""Edit a layered stream without decoding the image: each edit re-encodes only the layers it touches.

Every edit takes an EncodedImage and returns a new one; untouched layers keep their exact bytes.
Geometric edits (`transform`: flip, rotate, crop, scale) move every spatial layer, structure and texture,
so they stay aligned, and update the header's width/height so the frame follows.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import NamedTuple

import cv2
import numpy as np

from layercast.common import colormap_edit
from layercast.common.errors import EditError
from layercast.common.registry import get_codec
from layercast.common.types import Colormap, EdgeMap, EncodedImage, EncodedLayer, LayerKind, PoseLayer, Prompt
from layercast.proto import pb
from layercast.proto.framing import edge_geometry

TRANSFORMS = ("flip-h", "flip-v", "rotate90", "rotate180", "rotate270", "crop", "scale")


def _replace(img: EncodedImage, family: str, new: EncodedLayer | None) -> EncodedImage:
    out = EncodedImage(header=copy.deepcopy(img.header), stream_id=img.stream_id, image_id=img.image_id)
    replaced = False
    for layer in img.layers:
        if layer.kind.family == family:
            replaced = True
            if new is not None:
                out.layers.append(new)
        else:
            out.layers.append(layer)
    if not replaced and new is not None:
        out.layers.append(new)
    return out


def _require(img: EncodedImage, family: str) -> EncodedLayer:
    layer = img.layer(family)
    if layer is None:
        raise EditError(f"the stream has no {family} layer to edit (layers: {_families(img)})")
    return layer


def _decode(layer: EncodedLayer) -> object:
    return get_codec(layer.descriptor.codec).decompress(layer.descriptor, list(layer.units))


def _reencode(layer: EncodedLayer, value: object) -> EncodedLayer:
    """Re-encode `value` with the same codec and parameters as `layer`."""
    codec = get_codec(layer.descriptor.codec)
    d = layer.descriptor
    if layer.kind == LayerKind.TEXTURE:
        return codec.compress(value, quality=d.colormap.quality)
    if layer.kind == LayerKind.STRUCTURE_EDGES:
        return codec.compress(value, **_edge_options(d.edges))
    return codec.compress(value)


def _edge_options(e: pb.EdgeParams) -> dict[str, int]:
    """The edge codec options that code a map as the layer `e` describes was coded: its model version (a v2
    or v3 layer stays one, readable by the same builds), stripe rows and stripe group, and its source.
    stripe_rows always still fits a transformed map: at most MAX_EDGE_SIDE rows a stripe and a map, so at
    most MAX_EDGE_SIDE (< MAX_UNITS) stripes. stripe_group 0 is the codec's default for the version."""
    options = {"model_version": int(e.model_version), "stripe_rows": edge_geometry(e)[2], "source": int(e.source)}
    if e.stripe_group:
        options["stripe_group"] = int(e.stripe_group)
    return options


def _reencode_within(layer: EncodedLayer, cm: Colormap) -> EncodedLayer:
    """Re-encode a re-gridded colormap at the finest quality (never below the layer's) within the layer's bytes.

    Re-gridding quantises the colours a second time; a re-gridded field is smoother and codes in fewer
    bytes, and spending them on a finer step keeps the edited colours close without growing the stream.
    """
    codec = get_codec(layer.descriptor.codec)
    lo, hi = layer.descriptor.colormap.quality, 100
    best = codec.compress(cm, quality=lo)
    while lo < hi:  # bytes grow with quality: binary search the finest that fits
        mid = (lo + hi + 1) // 2
        trial = codec.compress(cm, quality=mid)
        if trial.nbytes <= layer.nbytes:
            lo, best = mid, trial
        else:
            hi = mid - 1
    return best


def edit_prompt(
    img: EncodedImage, *, text: str | None = None, append: str | None = None, negative: str | None = None
) -> EncodedImage:
    """Replace the prompt (`text`), append to it (`append`, joined with ", "), or set the negative prompt."""
    from layercast.common.codecs.prompt import compress_prompt

    layer = img.layer("semantic")
    old = _decode(layer) if layer is not None else Prompt("")
    assert isinstance(old, Prompt)
    new_text = old.text if text is None else text
    if append:
        new_text = f"{new_text}, {append}" if new_text else append
    new = Prompt(new_text, old.negative if negative is None else negative)
    return _replace(img, "semantic", compress_prompt(new))


def recolor(img: EncodedImage, op: Callable[[Colormap], Colormap]) -> EncodedImage:
    """Apply a colormap operation (see common.colormap_edit) to the texture layer."""
    layer = _require(img, "texture")
    value = _decode(layer)
    assert isinstance(value, Colormap)
    return _replace(img, "texture", _reencode(layer, op(value)))


def drop_layer(img: EncodedImage, family: str) -> EncodedImage:
    """Remove a layer family from the stream."""
    _require(img, family)
    return _replace(img, family, None)


class Transformed(NamedTuple):
    """The result of `transform`: the edited image and the layer families it re-encoded (stream order)."""

    image: EncodedImage
    changed: tuple[str, ...]


def transform(img: EncodedImage, op: str, arg: object = None) -> Transformed:
    """Geometric edit of the frame: every spatial layer (structure and texture) moves with it.

    ops: flip-h, flip-v, rotate90 (clockwise), rotate180, rotate270, crop (arg = (x0, y0, x1, y1) as
    fractions 0..1 of the frame), scale (arg = factor > 0: content zoomed about the centre, frame kept).
    The header's size follows (rotate90/270 swap it, crop scales it to the box). Flips and rotations
    permute the colormap's cells; crop and scale re-grid its colour field (`colormap_edit.reframe`),
    keeping its number of cells on the long side, at the finest quality that fits its old bytes. The
    semantic layer keeps its bytes. Returns the image and the families re-encoded; EditError when the
    stream has no spatial layer.
    """
    if op not in TRANSFORMS:
        raise EditError(f"unknown transform {op!r}; choose one of {', '.join(TRANSFORMS)}")
    box, factor = None, 1.0
    if op == "crop":
        box = _check_box(arg)
    if op == "scale":
        if not isinstance(arg, (int, float)) or not 0.05 <= float(arg) <= 20:
            raise EditError(f"scale factor must be a number in 0.05..20, got {arg!r}")
        factor = float(arg)
    families = [f for f in ("structure", "texture") if img.layer(f) is not None]
    if not families:
        raise EditError(f"the stream has no structure or texture layer to transform (layers: {_families(img)})")
    width, height = img.header.width, img.header.height
    if op in ("rotate90", "rotate270"):
        width, height = height, width
    elif box is not None:
        width, height = max(1, round(width * (box[2] - box[0]))), max(1, round(height * (box[3] - box[1])))
    out = img
    for family in families:
        layer = _require(img, family)
        value = _decode(layer)
        if isinstance(value, Colormap):
            moved = _transform_colormap(value, op, box, factor, (width, height))
            encoded = _reencode_within(layer, moved) if op in ("crop", "scale") else _reencode(layer, moved)
        elif isinstance(value, EdgeMap):
            edges = _transform_bits(value.edges, op, box, factor)
            encoded = _reencode(layer, EdgeMap(edges=edges, source=value.source))
        elif isinstance(value, PoseLayer):
            encoded = _reencode(layer, _transform_pose(value, op, box, factor))
        else:
            raise EditError(f"cannot transform a {family} value of type {type(value).__name__}")
        out = _replace(out, family, encoded)
    out.header.width, out.header.height = width, height
    return Transformed(out, tuple(f for f in _families(out) if f in families))


def _families(img: EncodedImage) -> list[str]:
    return [x.kind.family for x in img.layers]


def _check_box(arg: object) -> tuple[float, float, float, float]:
    try:
        x0, y0, x1, y1 = (float(v) for v in arg)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        raise EditError(f"crop box must be four numbers x0,y0,x1,y1 (fractions 0..1), got {arg!r}") from None
    if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
        raise EditError(f"crop box {x0},{y0},{x1},{y1} must satisfy 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1")
    return x0, y0, x1, y1


_QUARTER_TURNS = {"rotate90": -1, "rotate180": 2, "rotate270": 1}
"""np.rot90's k for each rotation (clockwise = negative k)."""


def _permute(grid: np.ndarray, op: str) -> np.ndarray:
    """Flip or rotate the first two axes of a grid (edge map bits, colormap cells): an exact permutation."""
    if op == "flip-h":
        return grid[:, ::-1].copy()
    if op == "flip-v":
        return grid[::-1].copy()
    return np.rot90(grid, k=_QUARTER_TURNS[op]).copy()


def _transform_bits(
    bits: np.ndarray, op: str, box: tuple[float, float, float, float] | None, factor: float
) -> np.ndarray:
    if op not in ("crop", "scale"):
        return _permute(bits, op)
    h, w = bits.shape
    if box is not None:  # crop: the box rounded to whole edge pixels
        x0, y0, x1, y1 = box
        c0, r0 = min(round(x0 * w), w - 1), min(round(y0 * h), h - 1)
        return bits[r0 : max(r0 + 1, round(y1 * h)), c0 : max(c0 + 1, round(x1 * w))].copy()
    # scale about the centre, frame kept
    m = np.array([[factor, 0, (1 - factor) * (w - 1) / 2], [0, factor, (1 - factor) * (h - 1) / 2]], dtype=np.float64)
    warped = cv2.warpAffine(
        bits.astype(np.uint8) * 255, m, (w, h), flags=cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
    )
    return warped > 64


def _transform_colormap(
    cm: Colormap, op: str, box: tuple[float, float, float, float] | None, factor: float, frame: tuple[int, int]
) -> Colormap:
    """Flips and rotations permute the cells; a crop re-grids the box onto a grid for the new `frame`
    (width, height) with as many cells on its long side as before; a scale re-grids in place."""
    if op not in ("crop", "scale"):
        return Colormap(cells=_permute(cm.cells, op))
    if box is None:  # scale: the new frame shows the old frame's central 1/factor
        half = 0.5 / factor
        return colormap_edit.reframe(cm, (0.5 - half, 0.5 - half, 0.5 + half, 0.5 + half), cm.grid)
    width, height = frame
    long_cells = max(cm.grid)
    short_cells = max(1, round(long_cells * min(width, height) / max(width, height)))
    grid = (long_cells, short_cells) if height >= width else (short_cells, long_cells)
    return colormap_edit.reframe(cm, box, grid)


def _transform_pose(
    pose: PoseLayer, op: str, box: tuple[float, float, float, float] | None, factor: float
) -> PoseLayer:
    w, h = pose.width, pose.height
    people = []
    fw, fh = w, h
    for p in pose.people:
        q = p.astype(np.float32).copy()
        x, y = q[:, 0].copy(), q[:, 1].copy()
        if op == "flip-h":
            q[:, 0] = (w - 1) - x
        elif op == "flip-v":
            q[:, 1] = (h - 1) - y
        elif op == "rotate90":
            q[:, 0], q[:, 1] = (h - 1) - y, x
        elif op == "rotate180":
            q[:, 0], q[:, 1] = (w - 1) - x, (h - 1) - y
        elif op == "rotate270":
            q[:, 0], q[:, 1] = y, (w - 1) - x
        elif op == "crop":
            assert box is not None
            q[:, 0] = x - box[0] * w
            q[:, 1] = y - box[1] * h
        elif op == "scale":
            q[:, 0] = (x - (w - 1) / 2) * factor + (w - 1) / 2
            q[:, 1] = (y - (h - 1) / 2) * factor + (h - 1) / 2
        people.append(q)
    if op in ("rotate90", "rotate270"):
        fw, fh = h, w
    elif op == "crop":
        assert box is not None
        fw, fh = max(1, round(w * (box[2] - box[0]))), max(1, round(h * (box[3] - box[1])))
    for q in people:
        outside = (q[:, 0] < 0) | (q[:, 1] < 0) | (q[:, 0] > fw - 1) | (q[:, 1] > fh - 1)
        q[outside, 2] = 0
        q[:, 0] = np.clip(q[:, 0], 0, fw - 1)
        q[:, 1] = np.clip(q[:, 1], 0, fh - 1)
    return PoseLayer(people=people, width=fw, height=fh)
