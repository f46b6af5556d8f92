"""Conditioning images for the generative decoder, built from a LayerSet. Pure numpy/OpenCV.

- edges -> ControlNet "canny" (thin white lines on black) or "softedge" (blurred lines) image, plus a
  `known` mask at the output size: stripes that never arrived are filled neutrally (black) and masked out of
  the conditioning by the decoder, never read as "no edges";
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
"""Gaussian sigma (output pixels at 512) that turns thin edges into HED-like soft edges."""


def generation_size(width: int, height: int, *, max_side: int = 768, multiple: int = 8) -> tuple[int, int]:
    """(w, h) to generate at: aspect kept, longer side <= max_side, each side a multiple of `multiple`."""
    if width < 1 or height < 1:
        raise InputError(f"image size {width}x{height} is empty")
    scale = min(1.0, max_side / max(width, height))
    w = max(multiple, round(width * scale / multiple) * multiple)
    h = max(multiple, round(height * scale / multiple) * multiple)
    return w, h


def edge_kind(edge: EdgeMap) -> str:
    """The ControlNet kind that fits an edge map: "canny" for Canny, "softedge" for HED/PiDiNet."""
    return "canny" if edge.source == pb.EDGE_SOURCE_CANNY else "softedge"


def _resize_bool(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    import cv2

    return cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0


def edge_control_image(
    edge: EdgeMap, width: int, height: int, *, soft: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """(uint8 RGB HxWx3 control image, bool HxW known mask or None) for an edge map at width x height.

    Lines are scaled so they stay about 1 px per 512 output pixels wide (at least 1 px); `soft` blurs them
    into the soft-edge look. Unknown regions are black in the image and False in the mask.
    """
    import cv2

    e = np.asarray(edge.edges, dtype=bool)
    if e.ndim != 2:
        raise InputError(f"edge map must be 2-D, got shape {e.shape}")
    eh, ew = e.shape
    # Resample by area so a thin line becomes a proportional grey ramp, then re-binarise.
    f = cv2.resize(
        e.astype(np.float32),
        (width, height),
        interpolation=cv2.INTER_AREA if width * height < ew * eh else cv2.INTER_LINEAR,
    )
    scale = max(width / ew, height / eh)
    line = f > (0.5 * scale if scale < 1.0 else 0.25)
    img: np.ndarray = line.astype(np.float32)
    if soft:
        sigma = SOFTEDGE_SIGMA * max(width, height) / 512
        img = cv2.GaussianBlur(img, (0, 0), max(sigma, 0.5))
        img = np.clip(img / max(float(img.max()), 1e-6), 0.0, 1.0)
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
