"""Conditioning images for the generative decoder, built from a LayerSet. Pure numpy/OpenCV.

- edges -> ControlNet "canny" image (1-px white lines on black at the generation size, as Canny draws them
  at the size the models were trained at) or "softedge" (those lines blurred HED-like), plus a `known` mask:
  stripes that never arrived are filled neutrally (black) and masked out of the conditioning by the
  decoder, never read as "no edges";
- pose -> OpenPose stick figure (receiver.pose_draw, the exact format the openpose models expect);
- colormap -> the T2I-Adapter color image (the palette at 1/64 of the output side, nearest-upsampled, as
  the adapter was trained) and the img2img init image (a smooth upsample).
"""

from __future__ import annotations

import numpy as np

from layercast.common.errors import InputError
from layercast.common.types import Colormap, EdgeMap, PoseLayer
from layercast.proto import pb

COLOR_ADAPTER_CELL = 64
"""Side in pixels of one palette cell of the T2I-Adapter color input (the paper's 64x downsampling)."""

SOFTEDGE_SIGMA = 1.2
"""Gaussian sigma (pixels at a 512 short side) that turns 1-px edges into HED-like soft edges."""


def generation_size(
    width: int, height: int, *, native_side: int | None = None, max_side: int | None = 768, multiple: int = 8
) -> tuple[int, int]:
    """(w, h) to generate at for an image of width x height, aspect kept, each side a multiple of `multiple`.

    With `native_side` (the model's training size, 512 for SD 1.5) the short side is scaled, up or down, to
    it. The long side is then capped at `max_side` (the short side shrinks with it): the model repeats
    subjects far beyond its training aspect, and memory grows with the area. Without `native_side` the
    image keeps its size, only shrunk to fit `max_side`.
    """
    if width < 1 or height < 1:
        raise InputError(f"image size {width}x{height} is empty")
    scale = native_side / min(width, height) if native_side else 1.0
    if max_side and max(width, height) * scale > max_side:
        scale = max_side / max(width, height)
    cap = max(multiple, (max_side // multiple) * multiple) if max_side else None

    def side(n: int) -> int:
        v = max(multiple, round(n * scale / multiple) * multiple)
        return min(v, cap) if cap else v

    return side(width), side(height)


def edge_kind(edge: EdgeMap) -> str:
    """The ControlNet kind that fits an edge map: "canny" for Canny, "softedge" for HED/PiDiNet."""
    return "canny" if edge.source == pb.EDGE_SOURCE_CANNY else "softedge"


def _resize_bool(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    import cv2

    return cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0


def _thinning_tables() -> tuple[np.ndarray, np.ndarray]:
    """Zhang-Suen deletion rules of both sub-iterations as lookup tables over the 8-neighbour code."""
    bits = (np.arange(256)[:, None] >> np.arange(8)) & 1  # bit k = neighbour P(k+2), clockwise from north
    p2, _, p4, _, p6, _, p8, _ = bits.T
    count = bits.sum(axis=1)
    transitions = ((bits == 0) & (np.roll(bits, -1, axis=1) == 1)).sum(axis=1)  # 0 -> 1 around the ring
    base = (count >= 2) & (count <= 6) & (transitions == 1)
    first = base & (p2 * p4 * p6 == 0) & (p4 * p6 * p8 == 0)
    second = base & (p2 * p4 * p8 == 0) & (p2 * p6 * p8 == 0)
    return first, second


_THINNING = _thinning_tables()
_NEIGHBOUR_CODE = np.array([[128, 1, 2], [64, 0, 4], [32, 16, 8]], dtype=np.float32)
"""filter2D kernel giving each pixel its 8-neighbour code (P2 = north = bit 0, clockwise)."""


def thin_lines(mask: np.ndarray) -> np.ndarray:
    """Skeleton of a bool mask: 1-px wide, 8-connected lines; connectivity kept, line ends retract a pixel or two.

    The parallel thinning of T. Y. Zhang and C. Y. Suen, "A fast parallel algorithm for thinning digital
    patterns", Communications of the ACM 27(3), 1984: the two sub-iterations alternate until nothing
    changes; each is one neighbourhood-code filter and a table lookup over the whole image.
    """
    import cv2

    img = np.asarray(mask, dtype=bool).astype(np.uint8)
    changed = True
    while changed:
        changed = False
        for table in _THINNING:
            code = cv2.filter2D(img, cv2.CV_32F, _NEIGHBOUR_CODE, borderType=cv2.BORDER_CONSTANT)
            remove = (img == 1) & table[code.astype(np.int32)]
            if remove.any():
                img[remove] = 0
                changed = True
    return img.astype(bool)


def edge_control_image(
    edge: EdgeMap, width: int, height: int, *, soft: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """(uint8 RGB HxWx3 control image, bool HxW known mask or None) for an edge map at width x height.

    Call it at the generation size. The map is resampled (linearly up, by area down), binarised and
    thinned back to 1-px lines, as Canny draws them at the size the models were trained at; `soft` blurs
    those lines into the soft-edge (HED-like) look, by a sigma proportional to the short side. Unknown
    regions are black in the image and False in the mask.
    """
    import cv2

    e = np.asarray(edge.edges, dtype=bool)
    if e.ndim != 2:
        raise InputError(f"edge map must be 2-D, got shape {e.shape}")
    eh, ew = e.shape
    shrink = width * height < ew * eh
    f = cv2.resize(e.astype(np.float32), (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    scale = max(width / ew, height / eh)
    # Low thresholds keep a resampled line continuous (a wide band); thinning then re-centres it at 1 px.
    line = thin_lines(f > (0.5 * scale if scale < 1.0 else 0.25))
    img: np.ndarray = line.astype(np.float32)
    if soft:
        sigma = max(SOFTEDGE_SIGMA * min(width, height) / 512, 0.5)
        img = cv2.GaussianBlur(img, (0, 0), sigma)
        # Normalise so an isolated straight line peaks at 1, like a confident HED stroke.
        probe = np.zeros((129, 1), np.float32)  # a horizontal line, seen in cross-section
        probe[64] = 1.0
        peak = float(cv2.GaussianBlur(probe, (0, 0), sigma)[64, 0])
        img = np.clip(img / max(peak, 1e-6), 0.0, 1.0)
    known = None
    if edge.known is not None:
        known = _resize_bool(np.asarray(edge.known, dtype=bool), width, height)
        img = img * known
    gray = np.round(img * 255.0).astype(np.uint8)
    return np.repeat(gray[:, :, None], 3, axis=2), known


def pose_control_image(pose: PoseLayer, width: int, height: int) -> np.ndarray:
    """OpenPose-format stick figures (uint8 RGB HxWx3) for the pose ControlNet/adapter."""
    from layercast.receiver.pose_draw import draw_openpose

    img = np.asarray(draw_openpose(pose, width, height))
    if img.shape != (height, width, 3):
        raise InputError(f"pose drawing returned {img.shape}, expected {(height, width, 3)}")
    return img.astype(np.uint8, copy=False)


def colour_init_image(colormap: Colormap, width: int, height: int) -> np.ndarray:
    """Smoothly upsampled colormap (uint8 RGB HxWx3): the img2img init image (the preview's Oklab field)."""
    from layercast.receiver.preview import smooth_colormap

    return smooth_colormap(colormap, width, height)


def colour_adapter_image(colormap: Colormap, width: int, height: int) -> np.ndarray:
    """T2I-Adapter color input (uint8 RGB HxWx3): the palette at (w/64, h/64) cells, nearest-upsampled."""
    import cv2

    gw = max(1, round(width / COLOR_ADAPTER_CELL))
    gh = max(1, round(height / COLOR_ADAPTER_CELL))
    smooth = colour_init_image(colormap, width, height)
    small = cv2.resize(smooth, (gw, gh), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_NEAREST)
