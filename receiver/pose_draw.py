"""Draw pose keypoints as the image the OpenPose ControlNet was trained on (controlnet_aux `draw_bodypose`).

Black background; the 17 COCO-18 limbs as filled ellipses (half-width 4 px) in the 18 standard colours,
then the whole canvas scaled by 0.6; then each joint as a filled circle of radius 4 in its colour.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from layercast.common.errors import InputError
from layercast.common.types import PoseLayer

STICK_WIDTH = 4
JOINT_RADIUS = 4
LIMB_DIM = 0.6

LIMBS: tuple[tuple[int, int], ...] = (
    (1, 2),
    (1, 5),
    (2, 3),
    (3, 4),
    (5, 6),
    (6, 7),
    (1, 8),
    (8, 9),
    (9, 10),
    (1, 11),
    (11, 12),
    (12, 13),
    (1, 0),
    (0, 14),
    (14, 16),
    (0, 15),
    (15, 17),
)
"""COCO-18 limbs (0-based keypoint indices), in drawing order; limb i takes COLORS[i]."""

COLORS: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0),
    (255, 85, 0),
    (255, 170, 0),
    (255, 255, 0),
    (170, 255, 0),
    (85, 255, 0),
    (0, 255, 0),
    (0, 255, 85),
    (0, 255, 170),
    (0, 255, 255),
    (0, 170, 255),
    (0, 85, 255),
    (0, 0, 255),
    (85, 0, 255),
    (170, 0, 255),
    (255, 0, 255),
    (255, 0, 170),
    (255, 0, 85),
)
"""RGB colour of each COCO-18 keypoint (and of limb i)."""


def draw_openpose(pose: PoseLayer, width: int, height: int) -> np.ndarray:
    """Render `pose` (coordinates in its own frame) to a uint8 RGB (height, width, 3) OpenPose image."""
    import cv2

    if width < 1 or height < 1:
        raise InputError(f"pose image size {width}x{height} must be at least 1x1")
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    sx, sy = width / max(pose.width, 1), height / max(pose.height, 1)
    people = [np.asarray(p, dtype=np.float64) for p in pose.people]
    for limb, (i, j) in enumerate(LIMBS):
        for p in people:
            if len(p) <= max(i, j) or p[i, 2] <= 0 or p[j, 2] <= 0:
                continue
            xs, ys = (p[i, 0] * sx, p[j, 0] * sx), (p[i, 1] * sy, p[j, 1] * sy)
            length = math.hypot(xs[0] - xs[1], ys[0] - ys[1])
            angle = math.degrees(math.atan2(ys[0] - ys[1], xs[0] - xs[1]))
            centre = (int(sum(xs) / 2), int(sum(ys) / 2))
            poly = cv2.ellipse2Poly(centre, (int(length / 2), STICK_WIDTH), int(angle), 0, 360, 1)
            cv2.fillConvexPoly(canvas, np.asarray(poly, dtype=np.int32), COLORS[limb])
    canvas = (canvas * LIMB_DIM).astype(np.uint8)
    for k in range(len(COLORS)):
        for p in people:
            if len(p) <= k or p[k, 2] <= 0:
                continue
            cv2.circle(canvas, (int(p[k, 0] * sx), int(p[k, 1] * sy)), JOINT_RADIUS, COLORS[k], thickness=-1)
    return canvas


def pose_from_openpose_keypoints(
    people: Sequence[Sequence[float]], width: int, height: int, *, normalized: bool = False
) -> PoseLayer:
    """PoseLayer from OpenPose JSON-style flat lists [x0, y0, c0, x1, y1, c1, ...] (COCO-18).

    A keypoint is present when its confidence is > 0. `normalized` coordinates (0..1, as controlnet_aux
    writes them) are scaled to the `width` x `height` frame.
    """
    out = []
    for flat in people:
        arr = np.asarray(flat, dtype=np.float32)
        if arr.ndim != 1 or arr.size % 3:
            raise InputError(f"OpenPose keypoints must be a flat list of x, y, confidence triples, got {arr.shape}")
        kp = arr.reshape(-1, 3).copy()
        if normalized:
            kp[:, 0] *= width
            kp[:, 1] *= height
        kp[:, 2] = (kp[:, 2] > 0).astype(np.float32)
        out.append(kp)
    return PoseLayer(people=out, width=width, height=height)
