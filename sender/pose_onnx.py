"""Pose keypoints from a DWPose / RTMPose-style ONNX model through onnxruntime -> COCO-18 PoseLayer.

Top-down estimation: each person box (the whole image when no boxes are given) is cropped with the model's
aspect ratio and 25% padding, resized to the model input (N, 3, H, W), normalised with the ImageNet mean/std
(RGB, 0..255 scale, as RTMPose/DWPose are trained). Outputs are decoded by their shape:

- SimCC (two outputs (N, K, W*s) and (N, K, H*s), DWPose/RTMPose): per keypoint argmax of each 1-D
  distribution, divided by the split ratio s = bins / input side; score = min of the two maxima;
- heatmaps (one output (N, K, h, w), OpenPose/SimpleBaseline-style): argmax per keypoint, with the
  quarter-pixel shift towards the larger neighbour; score = the peak value.

Keypoints come back to image coordinates. The first 17 are COCO body keypoints (DWPose's 133 whole-body set
starts with them); they are reordered to OpenPose COCO-18 with the neck as the shoulders' midpoint. A keypoint
with score < `min_score` is absent.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from layercast.common.errors import InputError, ModelError
from layercast.common.types import PoseLayer

MEAN_RGB = np.array([123.675, 116.28, 103.53], dtype=np.float32)
STD_RGB = np.array([58.395, 57.12, 57.375], dtype=np.float32)
BOX_PADDING = 1.25
"""Crop = person box scaled by this, then widened/heightened to the model's aspect ratio."""

COCO17_TO_OPENPOSE18: tuple[int | None, ...] = (0, None, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3)
"""OpenPose COCO-18 index -> COCO-17 index (None = neck, the midpoint of the shoulders 5 and 6)."""

_HINT = (
    "a DWPose/RTMPose ONNX file (e.g. dw-ll_ucoco_384.onnx from yzd-v/DWPose) or another top-down pose ONNX "
    "with SimCC or heatmap outputs"
)


def coco17_to_openpose18(kp: np.ndarray) -> np.ndarray:
    """(>=17, 3) COCO keypoints (x, y, present) -> (18, 3) OpenPose COCO-18 order with a computed neck."""
    out = np.zeros((18, 3), dtype=np.float32)
    for i, j in enumerate(COCO17_TO_OPENPOSE18):
        if j is not None:
            out[i] = kp[j]
    ls, rs = kp[5], kp[6]
    if ls[2] > 0 and rs[2] > 0:
        out[1] = ((ls[0] + rs[0]) / 2, (ls[1] + rs[1]) / 2, 1.0)
    return out


def crop_box(box: Sequence[float], in_w: int, in_h: int) -> tuple[float, float, float, float]:
    """(cx, cy, w, h) of the padded crop for box (x0, y0, x1, y1) at the model's aspect in_w / in_h."""
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (x1 > x0 and y1 > y0):
        raise InputError(f"person box {tuple(box)} is empty")
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    w, h = (x1 - x0) * BOX_PADDING, (y1 - y0) * BOX_PADDING
    aspect = in_w / in_h
    if w / h > aspect:
        h = w / aspect
    else:
        w = h * aspect
    return cx, cy, w, h


def preprocess(rgb: np.ndarray, crop: tuple[float, float, float, float], in_w: int, in_h: int) -> np.ndarray:
    """The normalised (3, in_h, in_w) float32 model input for one crop (affine warp, black outside)."""
    import cv2

    cx, cy, w, h = crop
    sx, sy = in_w / w, in_h / h
    m = np.array([[sx, 0.0, in_w / 2 - cx * sx], [0.0, sy, in_h / 2 - cy * sy]], dtype=np.float64)
    patch = cv2.warpAffine(
        np.ascontiguousarray(rgb[:, :, :3]),
        m,
        (in_w, in_h),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )
    x = (patch.astype(np.float32) - MEAN_RGB) / STD_RGB
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def decode_simcc(simcc_x: np.ndarray, simcc_y: np.ndarray, in_w: int, in_h: int) -> tuple[np.ndarray, np.ndarray]:
    """SimCC (N, K, Wx), (N, K, Wy) -> (N, K, 2) input-pixel coordinates and (N, K) scores."""
    ratio_x = simcc_x.shape[-1] / in_w
    ratio_y = simcc_y.shape[-1] / in_h
    x = simcc_x.argmax(-1).astype(np.float32) / ratio_x
    y = simcc_y.argmax(-1).astype(np.float32) / ratio_y
    score = np.minimum(simcc_x.max(-1), simcc_y.max(-1)).astype(np.float32)
    return np.stack([x, y], axis=-1), score


def decode_heatmaps(hm: np.ndarray, in_w: int, in_h: int) -> tuple[np.ndarray, np.ndarray]:
    """Heatmaps (N, K, h, w) -> (N, K, 2) input-pixel coordinates and (N, K) peak scores."""
    n, k, h, w = hm.shape
    flat = hm.reshape(n, k, -1)
    idx = flat.argmax(-1)
    score = flat.max(-1).astype(np.float32)
    ys, xs = (idx // w).astype(np.float32), (idx % w).astype(np.float32)
    # Quarter-pixel refinement towards the higher neighbour (SimpleBaseline / OpenPose practice).
    yi, xi = ys.astype(np.int64), xs.astype(np.int64)
    ni, ki = np.indices((n, k))
    left = hm[ni, ki, yi, np.clip(xi - 1, 0, w - 1)]
    right = hm[ni, ki, yi, np.clip(xi + 1, 0, w - 1)]
    up = hm[ni, ki, np.clip(yi - 1, 0, h - 1), xi]
    down = hm[ni, ki, np.clip(yi + 1, 0, h - 1), xi]
    xs += 0.25 * np.sign(right - left) * ((xi > 0) & (xi < w - 1))
    ys += 0.25 * np.sign(down - up) * ((yi > 0) & (yi < h - 1))
    # Pixel centres: heatmap cell c covers input [c, c+1) * stride.
    coords = np.stack([(xs + 0.5) * in_w / w - 0.5, (ys + 0.5) * in_h / h - 0.5], axis=-1)
    return coords, score


class OnnxPoseEstimator:
    """A top-down pose ONNX model in onnxruntime. Build with :func:`load_pose_onnx`."""

    def __init__(self, session: Any, min_score: float = 0.3) -> None:
        self.session = session
        self.min_score = min_score
        inp = session.get_inputs()[0]
        shape = inp.shape
        if len(shape) != 4 or not all(isinstance(d, int) for d in shape[2:]):
            raise ModelError(f"pose ONNX input must be (N, 3, H, W) with fixed H, W; got {shape}: use {_HINT}")
        self.input_name = inp.name
        self.in_h, self.in_w = int(shape[2]), int(shape[3])

    def _decode(self, outputs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        if len(outputs) >= 2 and outputs[0].ndim == 3 and outputs[1].ndim == 3:
            return decode_simcc(outputs[0], outputs[1], self.in_w, self.in_h)
        if outputs and outputs[0].ndim == 4:
            return decode_heatmaps(outputs[0], self.in_w, self.in_h)
        raise ModelError(f"pose ONNX outputs {[o.shape for o in outputs]} are neither SimCC nor heatmaps: use {_HINT}")

    def __call__(self, rgb: np.ndarray, boxes: Sequence[Sequence[float]] | None = None) -> PoseLayer:
        """COCO-18 PoseLayer in the image's pixel frame; `boxes` (x0, y0, x1, y1) per person, default whole image."""
        a = np.asarray(rgb)
        if a.ndim != 3 or a.shape[2] < 3 or a.dtype != np.uint8:
            raise InputError(f"pose estimation expects uint8 RGB HxWx3, got {a.dtype} {a.shape}")
        h, w = a.shape[:2]
        boxes = [(0, 0, w, h)] if boxes is None else list(boxes)
        if not boxes:
            return PoseLayer(people=[], width=w, height=h)
        crops = [crop_box(b, self.in_w, self.in_h) for b in boxes]
        batch = np.stack([preprocess(a, c, self.in_w, self.in_h) for c in crops])
        try:
            outputs = self.session.run(None, {self.input_name: batch})
        except Exception as e:  # onnxruntime raises its own untyped errors; mapped here, the one choke point
            raise ModelError(f"pose ONNX inference failed: {e}") from e
        coords, scores = self._decode([np.asarray(o) for o in outputs])
        if coords.shape[1] < 17:
            raise ModelError(f"pose ONNX gives {coords.shape[1]} keypoints, need >= 17 COCO body points: use {_HINT}")
        people = []
        for (cx, cy, cw, ch), xy, sc in zip(crops, coords, scores, strict=True):
            img_x = cx + (xy[:, 0] - self.in_w / 2) * cw / self.in_w
            img_y = cy + (xy[:, 1] - self.in_h / 2) * ch / self.in_h
            present = (sc >= self.min_score) & (img_x >= 0) & (img_x < w) & (img_y >= 0) & (img_y < h)
            kp = np.stack([img_x, img_y, present.astype(np.float32)], axis=-1).astype(np.float32)
            kp[~present, :2] = 0.0
            person = coco17_to_openpose18(kp[:17])
            if person[:, 2].any():
                people.append(person)
        return PoseLayer(people=people, width=w, height=h)


def load_pose_onnx(
    path: str | Path, *, providers: Sequence[str] | None = None, min_score: float = 0.3
) -> OnnxPoseEstimator:
    """Open a pose ONNX file in onnxruntime (CUDA provider first when available); ModelError if missing."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ModelError(f"pose model {p} not found: put {_HINT} there, or use --structure canny")
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ModelError("pose estimation needs onnxruntime: pip install 'layercast[onnx]'") from e
    avail = ort.get_available_providers()
    chosen = (
        list(providers)
        if providers
        else [pr for pr in ("CUDAExecutionProvider", "CPUExecutionProvider") if pr in avail]
    )
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(p), sess_options=opts, providers=chosen)
    except Exception as e:  # onnxruntime's load errors are untyped; mapped at this choke point
        raise ModelError(f"pose model {p} could not be opened by onnxruntime ({e}): use {_HINT}") from e
    return OnnxPoseEstimator(session, min_score=min_score)
