"""CPU preview decoder and the per-layer renderers."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
from PIL import Image

from layercast.common.codecs.colormap import ColormapCodec
from layercast.common.types import Colormap, EdgeMap, LayerSet, PoseLayer, Prompt
from layercast.proto import pb
from layercast.receiver.preview import GREY, PreviewDecoder, render_colormap, render_structure
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


@pytest.mark.parametrize(
    "prompt,structure,texture",
    list(itertools.product([None, Prompt("a cat")], [None, "edges", "pose"], [None, "colormap"])),
)
def test_every_subset_decodes(prompt: Prompt | None, structure: str | None, texture: str | None) -> None:
    struct = {"edges": edges(), "pose": pose(), None: None}[structure]
    layers = LayerSet(header(), prompt=prompt, structure=struct, texture=cmap() if texture else None)
    steps: list[tuple[int, int]] = []
    out = PreviewDecoder().decode(layers, on_step=lambda i, n, img: steps.append((i, n)))
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    assert steps == [(1, 1)]
    if structure is None and texture is None:
        assert np.all(out == GREY)
    if structure is None and texture:
        assert np.array_equal(out, render_colormap(cmap(), W, H, smooth=True))
    if structure == "edges":
        base = PreviewDecoder().decode(LayerSet(header(), texture=layers.texture))
        assert (out.astype(int).sum(axis=2) < base.astype(int).sum(axis=2)).any()  # lines darken
        away = np.r_[0:16, 28:H]  # rows far from the horizontal line, column far from the vertical one
        assert np.array_equal(out[away, 5], base[away, 5])  # untouched there
    if structure == "pose":
        assert out[20, 48].tolist() == [255, 85, 0]  # neck joint colour over the colours


def test_unknown_regions_are_masked_not_blank() -> None:
    full = edges()
    known = np.ones_like(full.edges)
    known[24:, :] = False  # bottom half of the stripes never arrived
    masked = EdgeMap(edges=full.edges, known=known)
    tex = cmap()
    out_full = PreviewDecoder().decode(LayerSet(header(), structure=full, texture=tex))
    out_masked = PreviewDecoder().decode(LayerSet(header(), structure=masked, texture=tex))
    blank = EdgeMap(edges=np.zeros_like(full.edges))
    no_edges = PreviewDecoder().decode(LayerSet(header(), structure=blank, texture=tex))
    blank_masked = EdgeMap(edges=blank.edges, known=known)
    no_edges_masked = PreviewDecoder().decode(LayerSet(header(), structure=blank_masked, texture=tex))
    top, bottom = slice(0, 28), slice(36, H)
    assert np.array_equal(out_masked[top], out_full[top])
    assert not np.array_equal(out_masked[bottom], out_full[bottom])
    assert not np.array_equal(out_masked[bottom], no_edges[bottom])  # unknown != "no edges"
    # No edge lines in the unknown part: with or without edges there, it renders the same.
    assert np.array_equal(out_masked[bottom], no_edges_masked[bottom])


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


def test_preview_beats_flat_grey_and_is_fast_on_real_images() -> None:
    data = shared_data()
    rows = aigi_manifest()[::15]
    codec = ColormapCodec()
    gains, times = [], []
    for row in rows:
        rgb = np.asarray(Image.open(data / "aigi" / row["file"]).convert("RGB").resize((512, 512)))
        enc = codec.compress(colormap(rgb))
        cm = codec.decompress(enc.descriptor, enc.units)
        e = np.zeros((192, 192), bool)  # a sparse synthetic edge map keeps this test independent of Canny
        e[::24, :] = True
        layers = LayerSet(header(512, 512), structure=EdgeMap(e), texture=cm)
        t0 = time.perf_counter()
        out = PreviewDecoder().decode(layers)
        times.append(time.perf_counter() - t0)
        grey = PreviewDecoder().decode(LayerSet(header(512, 512)))
        gains.append(psnr(out, rgb) - psnr(grey, rgb))
    assert min(gains) > 0.5
    assert float(np.median(times)) < 0.1  # 50 ms target, doubled for a loaded shared CI machine
