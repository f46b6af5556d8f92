"""Geometric edits keep the layers aligned: on a real image, decoding the edited stream matches the same
transform applied to the decoded original, and is far closer than the old behaviour (structure moved,
colormap left in place)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from layercast.common import edit
from layercast.common.types import Colormap, EncodedImage, PoseLayer, Prompt
from layercast.receiver.layers import layerset_from_image
from layercast.receiver.preview import PreviewDecoder, render_colormap
from layercast.sender.encode import EncodeOptions, encode_image
from layercast.sender.image_io import load_image
from tests.test_edit import _PERMUTATIONS

SAMPLE = Path(__file__).resolve().parents[1] / "layercast" / "samples" / "sample1.jpg"  # 235 x 357, portrait


@pytest.fixture(scope="module")
def img() -> EncodedImage:
    rgb = load_image(SAMPLE).rgb
    # quality pinned: the bounds below were set at 50 (rate control would fill the budget's rest with a finer one)
    return encode_image(rgb, Prompt("a bird"), options=EncodeOptions(max_bytes=655, texture_quality=50)).image


def _apply(rgb: np.ndarray, op: str, arg: Any, size: tuple[int, int]) -> np.ndarray:
    """The transform on decoded pixels, resized to `size` (width, height) of the edited stream's frame."""
    if op in _PERMUTATIONS:
        return np.ascontiguousarray(_PERMUTATIONS[op](rgb))
    h, w = rgb.shape[:2]
    if op == "crop":
        x0, y0, x1, y1 = arg
        box = rgb[round(y0 * h) : round(y1 * h), round(x0 * w) : round(x1 * w)]
        return np.asarray(cv2.resize(box, size, interpolation=cv2.INTER_LINEAR))
    f = float(arg)
    m = np.array([[f, 0, (1 - f) * (w - 1) / 2], [0, f, (1 - f) * (h - 1) / 2]])
    return np.asarray(cv2.warpAffine(rgb, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE))


def _decode(img: EncodedImage) -> np.ndarray:
    # the plain bicubic preview: the bounds below measure where the colours land, which the edge-aware
    # default would blur with its own reaction to the (re-rasterised) edges
    return PreviewDecoder(style="fast").decode(layerset_from_image(img))


def _colours(img: EncodedImage) -> Colormap:
    cm = layerset_from_image(img).texture
    assert cm is not None
    return cm


def _mae(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def _old_behaviour(original: EncodedImage, edited: EncodedImage) -> EncodedImage:
    """`edited` with the original, unmoved texture layer: what the structure-only transform used to produce."""
    texture = original.layer("texture")
    assert texture is not None
    return EncodedImage(edited.header, [texture if x.kind.family == "texture" else x for x in edited.layers])


# (op, arg, most aligned preview error, least misaligned/aligned ratio); errors are mean |RGB difference|.
CASES = [
    *((op, None, 0.5, 20.0) for op in _PERMUTATIONS),
    ("crop", (0.1, 0.5, 0.7, 0.95), 5.0, 4.0),
    ("scale", 1.6, 7.0, 2.5),  # zoom in
    ("scale", 0.6, 7.0, 1.6),  # zoom out: 8 cells cannot carry the shrunken field plus its border
]


@pytest.mark.parametrize(("op", "arg", "max_err", "min_ratio"), CASES)
def test_decoded_edit_matches_the_edited_decode(
    img: EncodedImage, op: str, arg: object, max_err: float, min_ratio: float
) -> None:
    new, changed = edit.transform(img, op, arg)
    assert changed == ("structure", "texture")
    got = _decode(new)
    h, w = got.shape[:2]
    want = _apply(_decode(img), op, arg, (w, h))
    aligned, misaligned = _mae(got, want), _mae(_decode(_old_behaviour(img, new)), want)
    assert aligned <= max_err and misaligned >= min_ratio * aligned, (aligned, misaligned)
    assert new.layer("texture").nbytes <= img.layer("texture").nbytes + 2  # type: ignore[union-attr]


@pytest.mark.parametrize("op", list(_PERMUTATIONS))
def test_flipped_and_rotated_colours_are_exact(img: EncodedImage, op: str) -> None:
    old, new = _colours(img), _colours(edit.transform(img, op).image)
    assert np.array_equal(new.cells, _PERMUTATIONS[op](old.cells))
    (gh, gw), (nh, nw) = old.grid, new.grid
    want = _PERMUTATIONS[op](render_colormap(old, gw * 16, gh * 16))
    assert np.array_equal(render_colormap(new, nw * 16, nh * 16), want)


@pytest.mark.parametrize(("op", "arg"), [("crop", (0.1, 0.5, 0.7, 0.95)), ("crop", (0.0, 0.0, 0.5, 0.5))])
def test_cropped_colours_follow_the_crop(img: EncodedImage, op: str, arg: object) -> None:
    new = edit.transform(img, op, arg).image
    w, h = new.header.width, new.header.height
    old, moved = _colours(img), _colours(new)
    want = _apply(render_colormap(old, img.header.width, img.header.height, smooth=True), op, arg, (w, h))
    aligned = _mae(render_colormap(moved, w, h, smooth=True), want)
    misaligned = _mae(render_colormap(old, w, h, smooth=True), want)
    assert aligned <= 5.0 and misaligned >= 4 * aligned, (aligned, misaligned)
    assert max(moved.grid) == max(old.grid)


def test_pose_stream_moves_its_colours_too() -> None:
    rgb = load_image(SAMPLE).rgb
    h, w = rgb.shape[:2]
    kp = np.zeros((18, 3), np.float32)
    kp[:2] = [[50, 60, 1], [100, 200, 1]]
    opts = EncodeOptions(structure="pose", max_bytes=655)
    img = encode_image(rgb, Prompt("a person"), options=opts, pose=PoseLayer([kp], w, h)).image
    new, changed = edit.transform(img, "rotate90")
    assert changed == ("structure", "texture")
    pose = layerset_from_image(new).structure
    assert isinstance(pose, PoseLayer) and (pose.width, pose.height) == (h, w)
    assert np.allclose(pose.people[0][:2, :2], [[h - 1 - 60, 50], [h - 1 - 200, 100]], atol=1)
    assert np.array_equal(_colours(new).cells, np.rot90(_colours(img).cells, -1))
