"""Edit a layered stream without decoding the image: each edit re-encodes only the layer it touches.

Every function takes an EncodedImage and returns a new one; untouched layers keep their exact bytes.
Geometric structure edits (rotate, crop) also update the header's width/height so the frame follows.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import cv2
import numpy as np

from layercast.common.errors import EditError
from layercast.common.registry import get_codec
from layercast.common.types import Colormap, EdgeMap, EncodedImage, EncodedLayer, LayerKind, PoseLayer, Prompt

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
        raise EditError(f"the stream has no {family} layer to edit (layers: {[x.kind.family for x in img.layers]})")
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
        return codec.compress(value, stripe_rows=d.edges.stripe_rows, source=d.edges.source)
    return codec.compress(value)


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


def transform_structure(img: EncodedImage, op: str, arg: object = None) -> EncodedImage:
    """Geometric edit of the structure layer.

    ops: flip-h, flip-v, rotate90 (clockwise), rotate180, rotate270, crop (arg = (x0, y0, x1, y1) as
    fractions 0..1 of the frame), scale (arg = factor > 0: content zoomed about the centre, frame kept).
    """
    if op not in TRANSFORMS:
        raise EditError(f"unknown structure transform {op!r}; choose one of {', '.join(TRANSFORMS)}")
    layer = _require(img, "structure")
    value = _decode(layer)
    out_header_wh = (img.header.width, img.header.height)
    if op in ("rotate90", "rotate270"):
        out_header_wh = (img.header.height, img.header.width)
    box = None
    if op == "crop":
        box = _check_box(arg)
        x0, y0, x1, y1 = box
        out_header_wh = (
            max(1, round(img.header.width * (x1 - x0))),
            max(1, round(img.header.height * (y1 - y0))),
        )
    factor = 1.0
    if op == "scale":
        if not isinstance(arg, (int, float)) or not 0.05 <= float(arg) <= 20:
            raise EditError(f"scale factor must be a number in 0.05..20, got {arg!r}")
        factor = float(arg)
    if isinstance(value, EdgeMap):
        new_value: object = EdgeMap(edges=_transform_bits(value.edges, op, box, factor), source=value.source)
    elif isinstance(value, PoseLayer):
        new_value = _transform_pose(value, op, box, factor)
    else:
        raise EditError(f"cannot transform a structure value of type {type(value).__name__}")
    out = _replace(img, "structure", _reencode(layer, new_value))
    out.header.width, out.header.height = out_header_wh
    return out


def _check_box(arg: object) -> tuple[float, float, float, float]:
    try:
        x0, y0, x1, y1 = (float(v) for v in arg)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        raise EditError(f"crop box must be four numbers x0,y0,x1,y1 (fractions 0..1), got {arg!r}") from None
    if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
        raise EditError(f"crop box {x0},{y0},{x1},{y1} must satisfy 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1")
    return x0, y0, x1, y1


def _transform_bits(
    bits: np.ndarray, op: str, box: tuple[float, float, float, float] | None, factor: float
) -> np.ndarray:
    if op == "flip-h":
        return bits[:, ::-1].copy()
    if op == "flip-v":
        return bits[::-1, :].copy()
    if op == "rotate90":
        return np.rot90(bits, k=-1).copy()
    if op == "rotate180":
        return np.rot90(bits, k=2).copy()
    if op == "rotate270":
        return np.rot90(bits, k=1).copy()
    h, w = bits.shape
    if op == "crop":
        assert box is not None
        x0, y0, x1, y1 = box
        c0, c1 = int(np.floor(x0 * w)), max(int(np.floor(x0 * w)) + 1, int(np.ceil(x1 * w)))
        r0, r1 = int(np.floor(y0 * h)), max(int(np.floor(y0 * h)) + 1, int(np.ceil(y1 * h)))
        return bits[r0:r1, c0:c1].copy()
    # scale about the centre, frame kept
    m = np.array([[factor, 0, (1 - factor) * (w - 1) / 2], [0, factor, (1 - factor) * (h - 1) / 2]], dtype=np.float64)
    warped = cv2.warpAffine(
        bits.astype(np.uint8) * 255, m, (w, h), flags=cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
    )
    return warped > 64


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
