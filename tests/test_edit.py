"""Editing without decoding: each edit re-encodes only its layer; the others keep their exact bytes."""

from __future__ import annotations

import copy

import numpy as np
import pytest

import layercast
from layercast.common import colormap_edit, edit
from layercast.common.errors import EditError
from layercast.common.registry import EDGES_CTX, get_codec
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


def _same_except(a: EncodedImage, b: EncodedImage, *families: str) -> None:
    for fam in ("semantic", "structure", "texture"):
        if fam not in families and a.layer(fam) is not None:
            assert _units(a, fam) == _units(b, fam), f"{fam} changed by an edit of {families}"
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


_PERMUTATIONS = {
    "flip-h": lambda a: a[:, ::-1],
    "flip-v": lambda a: a[::-1],
    "rotate90": lambda a: np.rot90(a, -1),
    "rotate180": lambda a: np.rot90(a, 2),
    "rotate270": lambda a: np.rot90(a, 1),
}


@pytest.mark.parametrize("op", list(_PERMUTATIONS))
def test_flips_and_rotations_permute_structure_and_texture(img: EncodedImage, op: str) -> None:
    new, changed = edit.transform(img, op)
    assert changed == ("structure", "texture")
    new = _roundtrip(new)
    _same_except(img, new, "structure", "texture")
    a, b = layerset_from_image(img), layerset_from_image(new)
    assert isinstance(a.structure, EdgeMap) and isinstance(b.structure, EdgeMap)
    assert a.texture is not None and b.texture is not None
    assert np.array_equal(b.structure.edges, _PERMUTATIONS[op](a.structure.edges))
    assert np.array_equal(b.texture.cells, _PERMUTATIONS[op](a.texture.cells))
    assert new.layer("texture").descriptor.colormap.quality == img.layer("texture").descriptor.colormap.quality  # type: ignore[union-attr]
    if op in ("rotate90", "rotate270"):
        assert (new.header.width, new.header.height) == (img.header.height, img.header.width)


def test_crop_and_scale(img: EncodedImage) -> None:
    new, changed = edit.transform(img, "crop", (0.25, 0.0, 0.75, 0.5))
    assert changed == ("structure", "texture")
    new = _roundtrip(new)
    _same_except(img, new, "structure", "texture")
    assert (new.header.width, new.header.height) == (256, 192)
    a = layerset_from_image(img)
    b = layerset_from_image(new)
    assert isinstance(a.structure, EdgeMap) and isinstance(b.structure, EdgeMap)
    assert b.structure.edges.shape[1] == pytest.approx(a.structure.edges.shape[1] / 2, abs=1)
    assert a.texture is not None and b.texture is not None
    assert a.texture.grid == (6, 8) and b.texture.grid == (6, 8)  # as many cells on the long side
    assert _units(new, "texture") != _units(img, "texture")
    assert new.layer("texture").nbytes <= img.layer("texture").nbytes  # type: ignore[union-attr]
    small = layerset_from_image(edit.transform(img, "scale", 0.5).image)
    assert isinstance(small.structure, EdgeMap) and small.structure.edges.shape == a.structure.edges.shape
    assert small.structure.edges.sum() < a.structure.edges.sum()
    h, w = a.structure.edges.shape
    edges = small.structure.edges
    assert not edges[: h // 8].any() and not edges[:, : w // 8].any()  # content shrank to the centre
    assert small.texture is not None and small.texture.grid == a.texture.grid


def test_transform_moves_whatever_spatial_layers_there_are(img: EncodedImage) -> None:
    no_texture = edit.drop_layer(img, "texture")
    new, changed = edit.transform(no_texture, "rotate90")
    assert changed == ("structure",) and new.layer("texture") is None
    _same_except(no_texture, _roundtrip(new), "structure")
    no_structure = edit.drop_layer(img, "structure")
    new, changed = edit.transform(no_structure, "crop", (0.0, 0.0, 0.5, 1.0))
    assert changed == ("texture",) and new.layer("structure") is None
    _same_except(no_structure, _roundtrip(new), "texture")
    assert (new.header.width, new.header.height) == (256, 384)
    assert layerset_from_image(new).texture.grid == (8, 5)  # type: ignore[union-attr]
    with pytest.raises(EditError, match="no structure or texture layer"):
        edit.transform(edit.drop_layer(no_structure, "texture"), "flip-h")


def test_drop_and_errors(img: EncodedImage) -> None:
    new = _roundtrip(edit.drop_layer(img, "texture"))
    assert new.layer("texture") is None
    _same_except(img, new, "texture")
    with pytest.raises(EditError, match="no texture layer"):
        edit.recolor(new, lambda cm: cm)
    with pytest.raises(EditError, match="unknown transform"):
        edit.transform(img, "shear")
    with pytest.raises(EditError, match="crop box"):
        edit.transform(img, "crop", (0.5, 0.5, 0.2, 0.9))
    with pytest.raises(EditError, match="scale factor"):
        edit.transform(img, "scale", 0)


def _with_edges(img: EncodedImage, **options: int) -> EncodedImage:
    """`img` with its structure layer re-coded with the edge codec's `options`."""
    layer = img.layer("structure")
    assert layer is not None
    value = get_codec(layer.descriptor.codec).decompress(layer.descriptor, list(layer.units))
    assert isinstance(value, EdgeMap)
    coded = get_codec(EDGES_CTX).compress(value, **options)
    out = EncodedImage(header=copy.deepcopy(img.header), stream_id=img.stream_id, image_id=img.image_id)
    out.layers.extend(coded if x.kind.family == "structure" else x for x in img.layers)
    return out


@pytest.mark.parametrize(
    "options",
    [
        {"model_version": 2, "stripe_rows": 16},
        {"model_version": 3, "stripe_rows": 24},
        {"model_version": 0, "stripe_rows": 32},
        {"model_version": 4, "stripe_rows": 8, "stripe_group": 3},
        {"model_version": 4, "stripe_rows": 16, "stripe_group": 1},
        {"model_version": 4, "stripe_rows": 32},
    ],
    ids=lambda o: "-".join(f"{k}{v}" for k, v in o.items()),
)
@pytest.mark.parametrize("op", ["flip-h", "rotate90", "crop", "scale"])
def test_transforms_keep_the_edge_layers_coding_parameters(img: EncodedImage, options: dict[str, int], op: str) -> None:
    """A re-encoded edge layer keeps the source's model version, stripe rows and stripe group (so that
    whoever reads the source reads the edit) and is exactly the edited map coded with them."""
    arg = {"crop": (0.25, 0.0, 0.75, 0.5), "scale": 0.5}.get(op)
    source = _with_edges(img, **options)
    new = _roundtrip(edit.transform(source, op, arg).image)
    _same_except(source, new, "structure", "texture")
    src, got = source.layer("structure"), new.layer("structure")
    assert src is not None and got is not None
    moved = layerset_from_image(edit.transform(img, op, arg).image).structure  # the default-coded source's
    assert isinstance(moved, EdgeMap)
    want = get_codec(EDGES_CTX).compress(moved, **options)
    assert got.descriptor == want.descriptor and list(got.units) == list(want.units)
    for name in ("model_version", "stripe_rows", "stripe_group", "source"):
        assert getattr(got.descriptor.edges, name) == getattr(src.descriptor.edges, name), name
    back = layerset_from_image(new).structure
    assert isinstance(back, EdgeMap) and np.array_equal(back.edges, moved.edges)
    if op in _PERMUTATIONS:
        before = layerset_from_image(source).structure
        assert isinstance(before, EdgeMap)
        assert np.array_equal(back.edges, _PERMUTATIONS[op](before.edges))


def test_api_edits_keep_a_v2_edge_layer(img: EncodedImage) -> None:
    """The same through the Python API and a stream's bytes: a v2 layer in 16-row stripes, rotated, is
    still v2 in 16-row stripes and decodes to the rotated map."""
    source = layercast.open(framing.images_to_container([_with_edges(img, model_version=2, stripe_rows=16)]))
    turned = layercast.open(source.rotate(90).flip("h").tobytes())
    layer = turned.encoded.layer("structure")
    assert layer is not None
    assert layer.descriptor.edges.model_version == 2 and framing.edge_geometry(layer.descriptor.edges)[2] == 16
    assert source.edges is not None and turned.edges is not None
    assert np.array_equal(turned.edges, np.rot90(source.edges, -1)[:, ::-1])
