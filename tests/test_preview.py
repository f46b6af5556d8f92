"""CPU preview decoder and the per-layer renderers."""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest
from PIL import Image

from layercast.common.codecs.colormap import ColormapCodec
from layercast.common.errors import InputError
from layercast.common.types import Colormap, EdgeMap, LayerSet, PoseLayer, Prompt
from layercast.proto import pb
from layercast.receiver.preview import GREY, STYLES, PreviewDecoder, preview, render_colormap, render_structure
from layercast.sender.extract_texture import colormap
from tests.conftest import aigi_manifest, shared_data

W, H = 96, 64


def header(w: int = W, h: int = H) -> pb.ImageHeader:
    return pb.ImageHeader(width=w, height=h)


def edges(h: int = 48, w: int = 72) -> EdgeMap:
    e = np.zeros((h, w), bool)
    e[:, w // 2] = True
    e[h // 3, :] = True
    return EdgeMap(edges=e)


def cmap() -> Colormap:
    cells = np.zeros((4, 6, 3), np.uint8)
    cells[..., 0] = np.linspace(0, 255, 6).astype(np.uint8)[None, :]
    cells[..., 2] = 200
    return Colormap(cells)


def pose() -> PoseLayer:
    kp = np.zeros((18, 3), np.float32)
    kp[1], kp[2] = (48, 20, 1), (30, 20, 1)
    return PoseLayer([kp], W, H)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255.0**2 / max(mse, 1e-12))


def luma(img: np.ndarray) -> np.ndarray:
    return np.asarray(img.astype(np.float64) @ np.array([0.299, 0.587, 0.114]))


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize(
    "prompt,structure,texture",
    list(itertools.product([None, Prompt("a cat")], [None, "edges", "pose"], [None, "colormap"])),
)
def test_every_subset_decodes(style: str, prompt: Prompt | None, structure: str | None, texture: str | None) -> None:
    struct = {"edges": edges(), "pose": pose(), None: None}[structure]
    layers = LayerSet(header(), prompt=prompt, structure=struct, texture=cmap() if texture else None)
    steps: list[tuple[int, int]] = []
    out = PreviewDecoder(style).decode(layers, on_step=lambda i, n, img: steps.append((i, n)))
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    assert steps == [(1, 1)]
    if structure is None and texture is None:
        assert np.all(out == GREY)
    if structure is None and texture:
        assert np.array_equal(out, render_colormap(cmap(), W, H, smooth=True))
    if structure == "edges" and texture is None:  # a stage with only edges shows them, in every style
        y = luma(out)
        assert y[21, 5] < GREY - 20 and y[5, 48] < GREY - 20  # on the lines (48x72 map shown at 64x96)
        assert np.all(out[:16, :40] == GREY)  # grey away from them
    if structure == "pose":
        assert out[20, 48].tolist() == [255, 85, 0]  # neck joint colour over the colours


@pytest.mark.parametrize("w,h", [(1, 1), (1, 37), (300, 2), (5, 7), (640, 360)])
@pytest.mark.parametrize("style", STYLES)
def test_output_contract_for_any_size_and_missing_layers(w: int, h: int, style: str) -> None:
    hdr = header(w, h)
    cases = [
        LayerSet(hdr),  # nothing
        LayerSet(hdr, structure=edges()),  # only edges
        LayerSet(hdr, texture=cmap()),  # only the colormap
        LayerSet(hdr, structure=edges(), texture=cmap()),
        LayerSet(hdr, structure=EdgeMap(np.zeros((3, 2), bool)), texture=Colormap(np.zeros((1, 1, 3), np.uint8))),
        LayerSet(hdr, structure=EdgeMap(np.ones((40, 40), bool)), texture=Colormap(np.full((64, 1, 3), 9, np.uint8))),
        LayerSet(hdr, structure=EdgeMap(np.eye(5, dtype=bool)), texture=Colormap(np.full((1, 64, 3), 9, np.uint8))),
    ]
    for layers in cases:
        out = preview(layers, style=style)
        assert out.shape == (h, w, 3) and out.dtype == np.uint8, layers.present()


def test_unknown_styles_are_refused() -> None:
    with pytest.raises(InputError, match="preview style"):
        PreviewDecoder("pencil")
    with pytest.raises(InputError, match="preview colour"):
        preview(LayerSet(header()), colour="nearest")


def test_sketch_draws_lines_and_clean_does_not() -> None:
    flat = Colormap(np.full((4, 6, 3), (60, 160, 200), np.uint8))  # one colour: any line would show
    layers = LayerSet(header(), structure=edges(), texture=flat)
    clean = PreviewDecoder().decode(layers)
    sketch = PreviewDecoder("sketch").decode(layers)
    base = render_colormap(flat, W, H, smooth=True)
    # no lines: the clean lightness never steps by more than a few levels between neighbouring pixels
    # (the sketch's lines step by 30+), and stays within a few levels of the flat colour's: the correction
    # darkens softly where edges are dense (a band ~12 px wide, deepest at the crossing: busy areas are
    # darker in sRGB than their linear-light cell means say); it also desaturates a little near edges and
    # shrinks colours a little towards the AIGI mean. The sketch's lines are 20+ levels darker.
    lum = luma(clean).astype(float)
    assert np.abs(np.diff(lum, axis=0)).max() < 3 and np.abs(np.diff(lum, axis=1)).max() < 3
    assert (luma(base) - luma(clean)).max() < 15 and (luma(clean) - luma(base)).max() < 3
    assert np.abs(clean[:12, :36].astype(int) - base[:12, :36].astype(int)).max() <= 12
    on_lines = (luma(base) - luma(sketch)) > 20
    assert on_lines[:, 46:50].any(axis=1).all() and on_lines[20:23, :].any(axis=0).all()  # both lines, whole
    assert not on_lines[:16, :40].any()  # and nothing away from them


def regions(size: int = 256) -> np.ndarray:
    """Sharp colour regions whose boundaries cut through the colormap cells: a disc, a slanted band and a
    background split off the cell grid."""
    img = np.zeros((size, size, 3), np.uint8)
    img[:] = (40, 90, 170)
    img[:, int(size * 0.55) :] = (220, 200, 60)
    band = np.array([[0, size * 0.7], [size, size * 0.45], [size, size * 0.6], [0, size * 0.85]], np.int32)
    cv2.fillPoly(img, [band], (30, 140, 40))
    cv2.circle(img, (int(size * 0.3), int(size * 0.3)), int(size * 0.17), (230, 60, 50), -1)
    return img


def test_edge_aware_colour_beats_bicubic_on_sharp_regions() -> None:
    rgb = regions(256)
    codec = ColormapCodec()
    enc = codec.compress(colormap(rgb, 8))
    cm = codec.decompress(enc.descriptor, enc.units)
    small = cv2.resize(rgb, (128, 128), interpolation=cv2.INTER_AREA)
    e = cv2.Canny(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY), 30, 60) > 0  # the region boundaries, at 128 px
    layers = LayerSet(header(256, 256), structure=EdgeMap(e), texture=cm)
    bicubic = preview(layers, colour="bicubic")
    aware = preview(layers)
    assert psnr(aware, rgb) > psnr(bicubic, rgb) + 2.0, (psnr(aware, rgb), psnr(bicubic, rgb))
    no_edges = preview(LayerSet(header(256, 256), texture=cm))  # without the structure: the bicubic field
    assert np.array_equal(no_edges, bicubic)


@pytest.mark.parametrize("style", STYLES)
def test_unknown_regions_are_masked_not_blank(style: str) -> None:
    full = edges()
    known = np.ones_like(full.edges)
    known[24:, :] = False  # bottom half of the stripes never arrived
    masked = EdgeMap(edges=full.edges, known=known)
    blank = EdgeMap(edges=np.zeros_like(full.edges))
    blank_masked = EdgeMap(edges=blank.edges, known=known)

    def dec(structure: EdgeMap, colour: str = "bicubic") -> np.ndarray:
        return preview(LayerSet(header(), structure=structure, texture=cmap()), style=style, colour=colour)

    top, bottom = slice(0, 28), slice(36, H)
    for colour in ("bicubic", "edge-aware"):
        out_full, out_masked = dec(full, colour), dec(masked, colour)
        no_edges, no_edges_masked = dec(blank, colour), dec(blank_masked, colour)
        assert not np.array_equal(out_masked[bottom], no_edges[bottom])  # unknown != "no edges"
        # No edge lines or boundaries in the unknown part: with or without edges there, it renders alike
        # (exactly, with bicubic colour; edge-aware colour is still pulled by the known part's boundaries,
        # and corrected, which the no-edges field, plain bicubic, is not).
        tolerance = 0 if colour == "bicubic" else 20
        assert np.abs(out_masked[bottom].astype(int) - no_edges_masked[bottom].astype(int)).max() <= tolerance
        if colour == "bicubic":
            assert np.array_equal(out_masked[top], out_full[top])
            assert not np.array_equal(out_masked[bottom], out_full[bottom])


def test_render_structure() -> None:
    e = edges()
    img = render_structure(e, W, H)
    assert img.shape == (H, W, 3) and set(np.unique(img)) == {0, 255}
    known = np.ones_like(e.edges)
    known[:, :10] = False
    img = render_structure(EdgeMap(e.edges, known), 72, 48)
    assert np.all(img[:, :10] == GREY) and np.array_equal(img[:, 10:, 0] > 0, e.edges[:, 10:])
    small = render_structure(EdgeMap(np.eye(200, dtype=bool)), 20, 20)
    assert np.array_equal(small[..., 0] > 0, np.eye(20, dtype=bool))  # thin lines survive shrinking
    assert render_structure(pose(), W, H)[20, 48].tolist() == [255, 85, 0]


def test_render_colormap_nearest() -> None:
    img = render_colormap(cmap(), 60, 40)
    assert img.shape == (40, 60, 3)
    assert np.array_equal(img[::10, ::10], cmap().cells)


def test_preview_beats_flat_grey_on_real_images() -> None:
    """(Decode time is a bench figure, `layercast bench`'s images part, not a unit-test bound.)"""
    data = shared_data()
    rows = aigi_manifest()[::15]
    codec = ColormapCodec()
    gains = []
    for row in rows:
        rgb = np.asarray(Image.open(data / "aigi" / row["file"]).convert("RGB").resize((512, 512)))
        enc = codec.compress(colormap(rgb))
        cm = codec.decompress(enc.descriptor, enc.units)
        e = np.zeros((192, 192), bool)  # a sparse synthetic edge map keeps this test independent of Canny
        e[::24, :] = True
        out = PreviewDecoder().decode(LayerSet(header(512, 512), structure=EdgeMap(e), texture=cm))
        grey = PreviewDecoder().decode(LayerSet(header(512, 512)))
        gains.append(psnr(out, rgb) - psnr(grey, rgb))
    assert min(gains) > 0.5


def _default_split(rows: list[dict[str, str]]) -> list[tuple[np.ndarray, LayerSet]]:
    """(512 x 512 image, its decoded layers) for shared AIGIs encoded with the default (generative) split."""
    from layercast.receiver.layers import layerset_from_image
    from layercast.sender.encode import encode_image

    data = shared_data()
    out = []
    for row in rows:
        rgb = np.asarray(
            Image.open(data / "aigi" / row["file"]).convert("RGB").resize((512, 512), Image.Resampling.BICUBIC)
        )
        res = encode_image(rgb, Prompt(row["prompt"]))
        out.append((rgb, layerset_from_image(res.image)))
    return out


def test_clean_preview_of_the_default_split_beats_bicubic_without_lines_or_bias() -> None:
    """On shared AIGIs at the generative split (8 x 8 colours + edges): the clean preview is well above the
    plain bicubic colour (+1.6 dB over the 89 images), removes the bicubic field's brightness bias (cells
    are linear-light means: their sRGB is brighter than the pixels' sRGB mean), and draws no dark lines."""
    gains: list[float] = []
    biases: list[float] = []
    bicubic_biases: list[float] = []
    line_drops: list[float] = []
    sketch_drops: list[float] = []
    for rgb, layers in _default_split(aigi_manifest()[::15]):
        clean = preview(layers)
        bicubic = preview(layers, colour="bicubic")
        gains.append(psnr(clean, rgb) - psnr(bicubic, rgb))
        biases.append(float(np.mean(clean.astype(np.float64) - rgb)))
        bicubic_biases.append(float(np.mean(bicubic.astype(np.float64) - rgb)))
        assert isinstance(layers.structure, EdgeMap)
        on = cv2.resize(layers.structure.edges.astype(np.uint8), (512, 512), interpolation=cv2.INTER_NEAREST) > 0
        near = (cv2.dilate(on.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0) & ~on
        for img, drops in ((clean, line_drops), (preview(layers, style="sketch"), sketch_drops)):
            y = luma(img)
            drops.append(float(y[near].mean() - y[on].mean()))  # how much darker the edge pixels are
    assert float(np.mean(gains)) > 1.0 and min(gains) > -0.5, gains
    assert abs(float(np.mean(biases))) < 4 < float(np.mean(bicubic_biases)), (biases, bicubic_biases)
    assert max(line_drops) < 4 and min(sketch_drops) > 15, (line_drops, sketch_drops)


def test_preview_is_deterministic_whatever_the_thread_count() -> None:
    _, layers = _default_split(aigi_manifest()[7:8])[0]
    threads = cv2.getNumThreads()
    try:
        cv2.setNumThreads(1)
        one = PreviewDecoder().decode(layers)
        cv2.setNumThreads(4)
        four = PreviewDecoder().decode(layers)
    finally:
        cv2.setNumThreads(threads)
    assert np.array_equal(one, four) and np.array_equal(one, PreviewDecoder().decode(layers))


def test_tunings_and_correction_shape() -> None:
    from layercast.receiver import colorize

    assert colorize.tuning_for((8, 8)) is colorize.COARSE and colorize.tuning_for((21, 28)) is colorize.FINE
    field = np.full((16, 16, 3), 0.5, np.float32)
    edge = np.zeros((16, 16), bool)
    n = len(colorize.correction_features(field, field, edge))
    for tuning in (colorize.COARSE, colorize.FINE):
        assert np.asarray(tuning.correction).shape == (3, n)
    with pytest.raises(ValueError, match="correction coefficients"):
        colorize.corrected(field, field, edge, ((1.0,),) * 3)
    identity = tuple(tuple(1.0 if i == 0 else 0.0 for i in range(n)) for _ in range(3))  # f alone
    assert np.allclose(colorize.corrected(field, field, edge, identity), field)


def test_factored_correction_is_the_weighted_sum_of_its_features() -> None:
    """`corrected` computes the correction without materialising `correction_features`: every term must
    land on its own coefficient (a term dropped or swapped in the factored form shows here)."""
    from layercast.receiver import colorize

    rng = np.random.default_rng(5)
    field = rng.random((24, 32, 3), dtype=np.float32)
    smooth = rng.random((24, 32, 3), dtype=np.float32)
    edge = rng.random((24, 32)) < 0.2
    feats = colorize.correction_features(field, smooth, edge)
    assert len(feats) == colorize.CORRECTION_TERMS
    for term in range(colorize.CORRECTION_TERMS):  # each coefficient alone, different per channel
        w = np.zeros((3, colorize.CORRECTION_TERMS))
        w[:, term] = (0.5, -1.0, 2.0)
        expected = feats[term] * np.array([0.5, -1.0, 2.0], np.float32)
        got = colorize.corrected(field, smooth, edge, tuple(map(tuple, w)))
        assert np.allclose(got, expected, atol=1e-5), f"term {term}"
