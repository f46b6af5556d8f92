"""Editing without decoding: each edit re-encodes only its layer; the others keep their exact bytes."""

from __future__ import annotations

import numpy as np
import pytest

from layercast.common import colormap_edit, edit
from layercast.common.errors import EditError
from layercast.common.types import EdgeMap, EncodedImage, Prompt
from layercast.proto import framing
from layercast.receiver.layers import layerset_from_image
from layercast.receiver.preview import PreviewDecoder
from layercast.sender.encode import EncodeOptions, encode_image
from tests.imaging import scene


@pytest.fixture(scope="module")
def img() -> EncodedImage:
    rgb = scene(512, 384, seed=5)
    return encode_image(rgb, Prompt("a red house", "blurry"), options=EncodeOptions(max_bytes=655)).image


def _units(img: EncodedImage, family: str) -> list[bytes]:
    layer = img.layer(family)
    assert layer is not None
    return list(layer.units)


def _same_except(a: EncodedImage, b: EncodedImage, family: str) -> None:
    for fam in ("semantic", "structure", "texture"):
        if fam != family and a.layer(fam) is not None:
            assert _units(a, fam) == _units(b, fam), f"{fam} changed by an edit of {family}"
            assert a.layer(fam).descriptor == b.layer(fam).descriptor  # type: ignore[union-attr]


def _roundtrip(img: EncodedImage) -> EncodedImage:
    out = framing.container_to_images(framing.images_to_container([img]))[0]
    rgb = PreviewDecoder().decode(layerset_from_image(out))
    assert rgb.shape == (out.header.height, out.header.width, 3)
    return out


def test_prompt_edits(img: EncodedImage) -> None:
    new = _roundtrip(edit.edit_prompt(img, text="a blue boat"))
    _same_except(img, new, "semantic")
    assert layerset_from_image(new).prompt == Prompt("a blue boat", "blurry")
    new = edit.edit_prompt(img, append="at night", negative="")
    assert layerset_from_image(new).prompt == Prompt("a red house, at night", "")


def test_recolour_edits(img: EncodedImage) -> None:
    before = layerset_from_image(img).texture
    new = _roundtrip(edit.recolor(img, lambda cm: colormap_edit.hue_shift(cm, 120)))
    _same_except(img, new, "texture")
    after = layerset_from_image(new).texture
    assert before is not None and after is not None
    assert after.cells.shape == before.cells.shape and not np.array_equal(after.cells, before.cells)
    new = edit.recolor(img, lambda cm: colormap_edit.set_cell(cm, 0, 0, (255, 0, 255)))
    cell = layerset_from_image(new).texture.cells[0, 0].astype(int)  # type: ignore[union-attr]
    assert cell[0] > 200 and cell[1] < 60 and cell[2] > 200
    with pytest.raises(EditError):
        edit.recolor(img, lambda cm: colormap_edit.set_cell(cm, 99, 0, (0, 0, 0)))


@pytest.mark.parametrize("op", ["flip-h", "flip-v", "rotate90", "rotate180", "rotate270"])
def test_structure_transforms(img: EncodedImage, op: str) -> None:
    new = _roundtrip(edit.transform_structure(img, op))
    _same_except(img, new, "structure")
    a = layerset_from_image(img).structure
    b = layerset_from_image(new).structure
    assert isinstance(a, EdgeMap) and isinstance(b, EdgeMap)
    expect = {
        "flip-h": a.edges[:, ::-1],
        "flip-v": a.edges[::-1],
        "rotate90": np.rot90(a.edges, -1),
        "rotate180": np.rot90(a.edges, 2),
        "rotate270": np.rot90(a.edges, 1),
    }[op]
    assert np.array_equal(b.edges, expect)
    if op in ("rotate90", "rotate270"):
        assert (new.header.width, new.header.height) == (img.header.height, img.header.width)


def test_crop_and_scale(img: EncodedImage) -> None:
    new = _roundtrip(edit.transform_structure(img, "crop", (0.25, 0.0, 0.75, 0.5)))
    _same_except(img, new, "structure")
    assert (new.header.width, new.header.height) == (256, 192)
    a = layerset_from_image(img).structure
    b = layerset_from_image(new).structure
    assert isinstance(a, EdgeMap) and isinstance(b, EdgeMap)
    assert b.edges.shape[1] == pytest.approx(a.edges.shape[1] / 2, abs=1)
    small = layerset_from_image(edit.transform_structure(img, "scale", 0.5)).structure
    assert isinstance(small, EdgeMap) and small.edges.shape == a.edges.shape
    assert small.edges.sum() < a.edges.sum()
    h, w = a.edges.shape
    assert not small.edges[: h // 8].any() and not small.edges[:, : w // 8].any()  # content shrank to the centre


def test_drop_and_errors(img: EncodedImage) -> None:
    new = _roundtrip(edit.drop_layer(img, "texture"))
    assert new.layer("texture") is None
    _same_except(img, new, "texture")
    with pytest.raises(EditError, match="no texture layer"):
        edit.recolor(new, lambda cm: cm)
    with pytest.raises(EditError, match="unknown structure transform"):
        edit.transform_structure(img, "shear")
    with pytest.raises(EditError, match="crop box"):
        edit.transform_structure(img, "crop", (0.5, 0.5, 0.2, 0.9))
    with pytest.raises(EditError, match="scale factor"):
        edit.transform_structure(img, "scale", 0)
