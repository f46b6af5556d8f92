"""`--target preview`: the split between edges and colour made for the CPU preview decoder."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from layercast.cli import main
from layercast.cli_options import add_decoder_options, add_encode_options, encoder_from_args, make_decoder
from layercast.common.errors import InputError
from layercast.common.types import Prompt
from layercast.receiver.layers import layerset_from_image
from layercast.receiver.preview import preview
from layercast.sender import ratecontrol
from layercast.sender.encode import EncodeOptions, encode_image
from tests.imaging import busy, scene


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255.0**2 / max(mse, 1e-12))


@pytest.mark.parametrize("make", [scene, busy])
def test_preview_target_spends_on_colour_and_fits(make: object) -> None:
    rgb = make(512, 512, seed=3)  # type: ignore[operator]
    sd = encode_image(rgb, Prompt("a house by a lake"))
    pre = encode_image(rgb, Prompt("a house by a lake"), options=EncodeOptions(target="preview"))
    assert pre.fits and len(pre.data) <= pre.budget == sd.budget == 655
    assert sd.texture_grid == (8, 8)
    assert pre.texture_grid is not None and max(pre.texture_grid) >= 24  # 24-36 cells on the long side
    assert pre.layer_bytes()["texture"] > sd.layer_bytes()["texture"]  # (the SD split's is at a fill quality)
    sd50 = encode_image(rgb, Prompt("a house by a lake"), options=EncodeOptions(texture_quality=50))
    assert pre.layer_bytes()["texture"] > 3 * sd50.layer_bytes()["texture"]
    assert pre.layer_bytes().get("structure", 0) <= sd.layer_bytes()["structure"]  # (equal when all edges fit)
    # the preview decoder gets closer to the image from the split made for it
    got_sd, got_pre = (preview(layerset_from_image(r.image)) for r in (sd, pre))
    assert psnr(got_pre, rgb) > psnr(got_sd, rgb)


def test_preview_target_pins_and_limits() -> None:
    rgb = scene(384, 256, seed=5)
    res = encode_image(rgb, Prompt("a"), options=EncodeOptions(target="preview", preview_textures=((12, 45),)))
    assert res.texture_grid == (8, 12) and res.fits  # landscape: 12 x 8 cells
    assert res.texture_quality in ratecontrol.FILL_QUALITIES  # the bytes left went to a finer quality than 45
    res = encode_image(rgb, Prompt("a"), options=EncodeOptions(target="preview", texture_quality=33))
    assert res.texture_quality == 33 and res.fits
    tiny = encode_image(rgb, Prompt("a"), options=EncodeOptions(target="preview", max_bytes=120))
    assert tiny.fits and len(tiny.data) <= 120  # no candidate's texture fits: the generative search decides
    with pytest.raises(InputError, match="unknown target"):
        encode_image(rgb, Prompt("a"), options=EncodeOptions(target="jpeg"))
    with pytest.raises(InputError, match="preview texture"):
        encode_image(rgb, Prompt("a"), options=EncodeOptions(target="preview", preview_textures=((0, 50),)))


def test_choose_preview_keeps_the_best_scoring_fitting_candidate() -> None:
    rgb = np.full((4, 4, 3), 100, np.uint8)
    fits = ratecontrol.Choice(None, 50, 600, True, 1)
    dropped = ratecontrol.Choice(None, None, 40, True, 1)  # rate control had to drop the texture
    searched: list[tuple[int, int]] = []

    def search(cells: int, q: int) -> ratecontrol.Choice:
        searched.append((cells, q))
        return dropped if cells == 40 else fits

    def decode(choice: ratecontrol.Choice, cells: int) -> np.ndarray:
        return np.full((4, 4, 3), 100 + abs(cells - 24), np.uint8)

    assert ratecontrol.choose_preview([(16, 50), (24, 50), (32, 50), (40, 50)], search, decode, rgb) == (fits, 24)
    assert searched == [(16, 50), (24, 50), (32, 50), (40, 50)]
    assert ratecontrol.choose_preview([(40, 50)], search, decode, rgb) is None


def test_cli_target_and_preview_style(tmp_path: Path) -> None:
    p = argparse.ArgumentParser()
    add_encode_options(p)
    add_decoder_options(p)
    args = p.parse_args(["--target", "preview", "--cells", "24"])
    opts = encoder_from_args(args).options
    assert opts.target == "preview" and opts.preview_textures and {c for c, _ in opts.preview_textures} == {24}
    default = encoder_from_args(p.parse_args([])).options
    assert default.target == "sd" and default.cells_long == 8 and default.preview_textures is None
    assert make_decoder(p.parse_args(["--preview-style", "sketch"]))[0].style == "sketch"
    assert make_decoder(p.parse_args([]))[0].style == "clean"

    src = tmp_path / "a.png"
    Image.fromarray(scene(512, 512, seed=2)).save(src)
    lcs = tmp_path / "a.lcs"
    assert main(["encode", str(src), "-o", str(lcs), "--prompt", "a house", "--target", "preview"]) == 0
    assert 0 < lcs.stat().st_size <= 655
    for style in ("clean", "sketch"):
        out = tmp_path / f"{style}.png"
        assert main(["decode", str(lcs), "-o", str(out), "--preview-style", style]) == 0
        assert np.asarray(Image.open(out)).shape == (512, 512, 3)


def test_fast_style_is_the_plain_bicubic_colour_without_lines() -> None:
    from layercast.common.types import Colormap, EdgeMap, LayerSet
    from layercast.proto import pb
    from layercast.receiver.preview import PreviewDecoder, preview

    rng = np.random.default_rng(3)
    edges = np.zeros((48, 64), bool)
    edges[20, :] = True
    layers = LayerSet(
        pb.ImageHeader(width=128, height=96), None, EdgeMap(edges), Colormap(rng.integers(0, 256, (6, 8, 3), np.uint8))
    )
    fast = PreviewDecoder(style="fast").decode(layers)
    assert np.array_equal(fast, preview(layers, style="clean", colour="bicubic"))
    assert not np.array_equal(fast, PreviewDecoder().decode(layers))
