"""Synthetic test images (gradients, shapes, text) built in the tests themselves."""

from __future__ import annotations

import cv2
import numpy as np


def scene(width: int = 512, height: int = 512, seed: int = 0) -> np.ndarray:
    """A deterministic AIGI-like scene: sky gradient, ground, a sun, a house, some text."""
    rng = np.random.default_rng(seed)
    img = np.zeros((height, width, 3), np.uint8)
    y = np.linspace(0, 1, height)[:, None]
    img[..., 0] = (90 + 100 * y).astype(np.uint8)
    img[..., 1] = (140 + 60 * y).astype(np.uint8)
    img[..., 2] = (230 - 40 * y).astype(np.uint8)
    horizon = int(height * (0.6 + 0.1 * rng.random()))
    img[horizon:] = (70, 130, 60)
    s = min(width, height)
    cx, cy = int(width * (0.2 + 0.6 * rng.random())), int(height * 0.2)
    cv2.circle(img, (cx, cy), max(2, s // 12), (250, 220, 90), -1)
    x0 = int(width * 0.3)
    cv2.rectangle(img, (x0, horizon - s // 4), (x0 + s // 4, horizon), (180, 60, 50), -1)
    pts = np.array(
        [
            [x0 - s // 30, horizon - s // 4],
            [x0 + s // 8, horizon - s // 2 + s // 8],
            [x0 + s // 4 + s // 30, horizon - s // 4],
        ]
    )
    cv2.fillPoly(img, [pts.astype(np.int32)], (90, 50, 40))
    cv2.putText(
        img,
        "LC",
        (int(width * 0.65), horizon + s // 6),
        cv2.FONT_HERSHEY_SIMPLEX,
        s / 300,
        (240, 240, 240),
        2,
    )
    return img


def busy(width: int = 512, height: int = 512, seed: int = 0, lines: int = 120) -> np.ndarray:
    """`scene` plus many random coloured lines and circles: an edge-rich image that fills any edge budget."""
    rng = np.random.default_rng(seed)
    img = scene(width, height, seed)
    for _ in range(lines):
        p0 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        p1 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            cv2.line(img, p0, p1, colour, int(rng.integers(1, 4)))
        else:
            cv2.circle(img, p0, int(rng.integers(3, max(4, width // 8))), colour, 2)
    return img
