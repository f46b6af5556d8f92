"""Colormap codec, texture extractor, colour conversions and colormap edit helpers."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from layercast.common import registry
from layercast.common.codecs import colormap as cmc
from layercast.common.codecs.colormap import ColormapCodec, dequantise, quantise, steps_for
from layercast.common.color import delta_e, oklab_to_srgb8, srgb8_to_oklab
from layercast.common.colormap_edit import hue_shift, map_color, set_cell
from layercast.common.errors import CodecError, EditError, InputError
from layercast.common.registry import COLORMAP_PRED
from layercast.common.types import Colormap
from layercast.sender.extract_texture import colormap, grid_for
from tests.conftest import aigi_manifest, shared_data

CODEC = ColormapCodec()

cells_st = st.integers(1, 8).flatmap(lambda h: st.integers(1, 8).flatmap(lambda w: arrays(np.uint8, (h, w, 3))))


def roundtrip(cells: np.ndarray, quality: int = 50) -> tuple[bytes, Colormap]:
    enc = CODEC.compress(Colormap(cells), quality=quality)
    assert enc.descriptor.unit_count == 1 and len(enc.units) == 1
    return enc.units[0], CODEC.decompress(enc.descriptor, enc.units)


def test_registered_under_its_wire_id() -> None:
    # The registry's table directly: get_codec() also imports every other builtin codec module.
    assert type(registry._REGISTRY[COLORMAP_PRED]) is ColormapCodec
    assert CODEC.name == "colormap-pred"


def test_oklab_round_trip_is_exact_on_uint8() -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (4096, 3)).astype(np.uint8)
    assert np.array_equal(oklab_to_srgb8(srgb8_to_oklab(rgb)), rgb)
    white = srgb8_to_oklab(np.array([255, 255, 255], np.uint8))
    assert abs(white[0] - 1) < 1e-4 and abs(white[1]) < 1e-4 and abs(white[2]) < 1e-4


def test_oklab_image_conversion_matches_the_exact_one() -> None:
    """The one-pass (compiled where numba is installed) Oklab -> sRGB8 of whole images: within one level of
    the exact conversion (its table's rounding), and the plain-numpy path gives the same bytes."""
    from layercast.common import color

    rng = np.random.default_rng(2)
    lab = np.stack([rng.uniform(0, 1, (96, 80)), *rng.uniform(-0.3, 0.3, (2, 96, 80))], -1).astype(np.float32)
    exact = np.floor(np.clip(color.linear_to_srgb(color.oklab_to_linear(lab)), 0, 1) * 255.0 + 0.5)
    fast = color.oklab_image_to_srgb8(lab)
    assert fast.shape == lab.shape and fast.dtype == np.uint8
    diff = np.abs(fast.astype(int) - exact)
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01
    assert (fast == 0).any() and (fast == 255).any()  # out-of-gamut values were clipped
    plain = np.empty((lab.size // 3, 3), np.uint8)
    color._oklab_rows_numpy(lab.reshape(-1, 3), plain, color._srgb8_of_linear16())
    assert np.array_equal(plain.reshape(lab.shape), fast)
    odd = np.array([[[np.nan, 0, 0], [np.inf, 0, 0], [-np.inf, 0, 0], [1e30, 1e30, -1e30]]], np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        assert color.oklab_image_to_srgb8(odd)[0, 0].tolist() == [0, 0, 0]  # NaN is black, never a stray index


@settings(max_examples=30, deadline=None)
@given(cells=cells_st, quality=st.integers(1, 100))
@example(cells=np.array([[[0, 1, 1]]], np.uint8), quality=57)  # near black: uint8 rounding is a big Oklab step
def test_round_trip_error_within_quantiser_step(cells: np.ndarray, quality: int) -> None:
    unit, out = roundtrip(cells, quality)
    assert out.cells.shape == cells.shape and out.cells.dtype == np.uint8
    # Half a quantiser step per channel (the diagonal's 0.6) plus the output's uint8 rounding, which near
    # black is a big step in Oklab (0 -> 1/255 moves L by 0.06): allow one code step at each cell's colour.
    lab = srgb8_to_oklab(cells)
    code_step = np.maximum(
        delta_e(lab, srgb8_to_oklab(np.clip(cells.astype(int) + 1, 0, 255).astype(np.uint8))),
        delta_e(lab, srgb8_to_oklab(np.clip(cells.astype(int) - 1, 0, 255).astype(np.uint8))),
    )
    bound = 100 * float(np.linalg.norm(steps_for(quality))) * 0.6 + 0.5 + code_step
    assert (delta_e(srgb8_to_oklab(out.cells), lab) <= bound).all()
    assert CODEC.compress(Colormap(cells), quality=quality).units[0] == unit  # deterministic
    again = CODEC.decompress(CODEC.compress(Colormap(cells), quality=quality).descriptor, [unit])
    assert np.array_equal(again.cells, out.cells)


@settings(max_examples=25, deadline=None)
@given(cells=arrays(np.uint8, (8, 8, 3)))
def test_error_shrinks_with_quality(cells: np.ndarray) -> None:
    lab = srgb8_to_oklab(cells)
    err = [delta_e(srgb8_to_oklab(roundtrip(cells, q)[1].cells), lab).max() for q in (10, 100)]
    assert err[1] <= 1.0  # near lossless at 100
    assert err[1] <= err[0] + 1e-9


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_corrupted_units_raise_codec_error_or_are_valid_units(data: st.DataObject) -> None:
    cells = data.draw(arrays(np.uint8, (4, 4, 3)))
    enc = CODEC.compress(Colormap(cells), quality=data.draw(st.integers(1, 100)))
    unit = bytearray(enc.units[0])
    kind = data.draw(st.sampled_from(["flip", "truncate", "append", "random"]))
    if kind == "flip":
        i = data.draw(st.integers(0, len(unit) - 1))
        unit[i] ^= 1 << data.draw(st.integers(0, 7))
    elif kind == "truncate":
        unit = unit[: data.draw(st.integers(0, len(unit) - 1))]
    elif kind == "append":
        unit += data.draw(st.binary(min_size=1, max_size=8))
    else:
        unit = bytearray(data.draw(st.binary(min_size=0, max_size=64)))
        if bytes(unit) == enc.units[0]:
            return
    try:
        out = CODEC.decompress(enc.descriptor, [bytes(unit)])
    except CodecError:
        return
    # Not detected: the bytes are then a valid unit (the canonical encoding of some grid); it decodes
    # to a well-formed colormap, the same every time.
    assert out.cells.shape == (4, 4, 3) and out.cells.dtype == np.uint8
    assert np.array_equal(CODEC.decompress(enc.descriptor, [bytes(unit)]).cells, out.cells)


def _decode_or_error(unit: bytes, gh: int, gw: int, quality: int, compiled: bool) -> np.ndarray | str:
    try:
        return cmc._decode_grid(unit, gh, gw, quality, compiled=compiled)
    except CodecError as exc:
        return str(exc)


@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_compiled_decoder_matches_plain_python_on_good_and_damaged_units(data: st.DataObject) -> None:
    """The numba kernel (colormap_fast) and the plain-Python coder give the same bytes (encoding), and the
    same grid or the same error (decoding)."""
    assert cmc.colormap_fast.compiled() is not None, "numba is part of the dev extra"
    cells = data.draw(cells_st)
    quality = data.draw(st.integers(1, 100))
    gh, gw = cells.shape[:2]
    unit = cmc._encode_grid(quantise(cells, quality), quality)
    assert unit == cmc._encode_grid(quantise(cells, quality), quality, compiled=False)
    units = [unit, unit + data.draw(st.binary(min_size=1, max_size=4)), unit[: max(0, len(unit) - 1)]]
    if unit:
        flipped = bytearray(unit)
        flipped[data.draw(st.integers(0, len(unit) - 1))] ^= data.draw(st.integers(1, 255))
        units.append(bytes(flipped))
    units.append(data.draw(st.binary(max_size=40)))
    for u in units:
        fast, slow = (_decode_or_error(u, gh, gw, quality, compiled=c) for c in (True, False))
        if isinstance(slow, str):
            assert fast == slow
        else:
            assert isinstance(fast, np.ndarray) and np.array_equal(fast, slow)
    assert np.array_equal(cmc._decode_grid(unit, gh, gw, quality), quantise(cells, quality))


def test_compiled_encoder_refuses_a_value_outside_the_box() -> None:
    grid = quantise(np.zeros((2, 2, 3), np.uint8), 50)
    grid[1, 1, 0] = cmc._quantiser(50).qhi[0] + 1
    with pytest.raises(CodecError, match="outside its channel's range"):
        cmc._encode_grid(grid, 50)


@settings(max_examples=60, deadline=None)
@given(
    cells=st.integers(1, 16).flatmap(lambda h: st.integers(1, 16).flatmap(lambda w: arrays(np.uint8, (h, w, 3)))),
    quality=st.integers(1, 100),
)
def test_format_round_trips_grids_up_to_16x16(cells: np.ndarray, quality: int) -> None:
    gh, gw = cells.shape[:2]
    q = quantise(cells, quality)
    unit, out = roundtrip(cells, quality)
    assert np.array_equal(out.cells, dequantise(q, quality))  # lossless above the quantiser
    assert np.array_equal(cmc._decode_grid(unit, gh, gw, quality), q)
    assert not unit.endswith(b"\x00")  # minimal termination drops trailing zero bytes
    # A shorter stream is never the same grid (termination is minimal), and padding is never accepted.
    if unit:
        with contextlib.suppress(CodecError):
            assert not np.array_equal(cmc._decode_grid(unit[:-1], gh, gw, quality), q)
    desc = CODEC.compress(Colormap(cells), quality=quality).descriptor
    with pytest.raises(CodecError, match="corrupted"):
        CODEC.decompress(desc, [unit + b"\x00"])


def test_format_bytes_are_pinned() -> None:
    # The exact stream for a fixed quantised grid: integer-only coding gives these bytes on every machine.
    grid = np.array([[[17, -1, 2], [18, -1, 2], [16, 0, 0]], [[17, -2, 3], [25, 4, -5], [3, 0, 1]]])
    unit = bytes.fromhex("784b167193e183ce2bed50")
    assert cmc._encode_grid(grid, 50) == unit
    assert np.array_equal(cmc._decode_grid(unit, 2, 3, 50), grid)


def test_model_tables_are_valid_integer_distributions() -> None:
    radii = {int(r) for quality in range(1, 101) for r in cmc._quantiser(quality).qhi - cmc._quantiser(quality).qlo}
    assert max(radii) == 250
    for radius in (0, 1, max(radii)):
        for scale_key in (5, 64, 1000, 1 << 20):
            cum = cmc._model(scale_key, radius)
            freqs = np.diff(cum)
            assert len(freqs) == 2 * radius + 1 and freqs.min() >= 1
            assert np.array_equal(freqs, freqs[::-1])  # symmetric around residual 0
            assert np.all(np.diff(freqs[radius:]) <= 0)  # falls off away from 0
            assert cum[-1] < 1 << cmc._MAX_SYMBOL_BITS
    # A wider model spreads probability: the zero residual gets a smaller share of the total.
    narrow, wide = cmc._model(5, 50), cmc._model(640, 50)
    assert (narrow[51] - narrow[50]) * wide[-1] > (wide[51] - wide[50]) * narrow[-1]


def test_most_corruptions_are_detected() -> None:
    rng = np.random.default_rng(7)
    detected = trials = 0
    for _ in range(20):
        cells = rng.integers(0, 256, (8, 8, 3)).astype(np.uint8)
        enc = CODEC.compress(Colormap(cells))
        for _ in range(5):
            unit = bytearray(enc.units[0])
            unit[int(rng.integers(len(unit)))] ^= 1 << int(rng.integers(8))
            trials += 1
            try:
                CODEC.decompress(enc.descriptor, [bytes(unit)])
            except CodecError:
                detected += 1
    assert detected >= 0.8 * trials


def test_missing_unit_and_bad_descriptor() -> None:
    enc = CODEC.compress(Colormap(np.zeros((8, 8, 3), np.uint8)))
    with pytest.raises(CodecError, match="texture unit missing"):
        CODEC.decompress(enc.descriptor, [None])
    with pytest.raises(CodecError, match="expected 1"):
        CODEC.decompress(enc.descriptor, [])
    enc.descriptor.colormap.grid_width = 65
    with pytest.raises(CodecError, match=r"outside 1\.\.64"):
        CODEC.decompress(enc.descriptor, enc.units)
    enc.descriptor.colormap.grid_width = 8
    enc.descriptor.colormap.quality = 0
    with pytest.raises(CodecError, match="quality 0"):
        CODEC.decompress(enc.descriptor, enc.units)


def test_bad_options() -> None:
    cm = Colormap(np.zeros((2, 2, 3), np.uint8))
    for q in (0, 101, 2.5, True):
        with pytest.raises(InputError, match="quality must be an integer"):
            CODEC.compress(cm, quality=q)
    with pytest.raises(InputError, match="unknown colormap codec option"):
        CODEC.compress(cm, qualty=5)
    with pytest.raises(InputError, match="uint8"):
        CODEC.compress(Colormap(np.zeros((2, 2, 3), np.float32)))


def test_grid_keeps_aspect() -> None:
    assert grid_for(512, 512, 8) == (8, 8)
    assert grid_for(357, 235, 8) == (5, 8)
    assert grid_for(235, 357, 8) == (8, 5)
    assert grid_for(1000, 10, 8) == (1, 8)
    assert grid_for(1, 1, 8) == (8, 8)
    with pytest.raises(InputError):
        grid_for(0, 5)


def test_colormap_is_area_average_in_linear_light() -> None:
    img = np.zeros((16, 16, 3), np.uint8)
    img[:, ::2] = 255  # alternate black/white columns: linear mean 0.5 -> sRGB 188
    cm = colormap(img, cells_long=4)
    assert cm.grid == (4, 4)
    assert np.all(np.abs(cm.cells.astype(int) - 188) <= 1)
    tiny = colormap(np.full((1, 1, 3), 77, np.uint8))
    assert tiny.grid == (8, 8) and np.all(tiny.cells == 77)
    half = np.zeros((10, 20, 3), np.uint8)
    half[:, 10:] = 255
    cells = colormap(half, cells_long=2).cells
    assert cells.shape == (1, 2, 3) and cells[0, 0, 0] == 0 and cells[0, 1, 0] == 255


@pytest.mark.parametrize("shape", [(37, 53), (512, 512), (300, 451), (9, 200)])
def test_colormap_cells_are_exact_area_averages(shape: tuple[int, int]) -> None:
    """Cells straddle pixels (sizes not divisible by the grid): each is the area-weighted mean in linear
    light, checked against a supersampled reference (every pixel repeated grid-size times along each axis,
    so that cell borders fall on whole samples)."""
    h, w = shape
    rgb = np.random.default_rng(h * w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    for cells in (8, 5, 28):
        gh, gw = grid_for(w, h, cells)
        lin = np.where(rgb / 255.0 <= 0.04045, rgb / 3294.6, ((rgb / 255.0 + 0.055) / 1.055) ** 2.4)
        sup = np.repeat(np.repeat(lin, gh, axis=0), gw, axis=1)  # (h * gh, w * gw): cell = h x w samples
        ref = sup.reshape(gh, h, gw, w, 3).mean(axis=(1, 3))
        want = np.clip(np.rint(np.where(ref <= 0.0031308, ref * 12.92, 1.055 * ref ** (1 / 2.4) - 0.055) * 255), 0, 255)
        got = colormap(rgb, cells_long=cells).cells.astype(int)
        assert got.shape == (gh, gw, 3)
        assert np.abs(got - want).max() <= 1 and np.mean(got != want) < 0.01


def test_real_images_fit_100_bytes_at_default_quality() -> None:
    rows = aigi_manifest()
    data = shared_data()
    sizes, errors = [], []
    for row in rows[::6]:
        rgb = np.asarray(Image.open(data / "aigi" / row["file"]).convert("RGB").resize((512, 512)))
        cm = colormap(rgb)
        unit, out = roundtrip(cm.cells)
        sizes.append(len(unit))
        errors.append(delta_e(srgb8_to_oklab(out.cells), srgb8_to_oklab(cm.cells)).mean())
    assert max(sizes) <= 100
    assert float(np.mean(errors)) < 3.0


def test_hue_shift() -> None:
    cm = Colormap(np.array([[[170, 110, 100], [128, 128, 128]]], np.uint8))
    assert np.array_equal(hue_shift(cm, 0).cells, cm.cells)
    assert np.abs(hue_shift(hue_shift(cm, 40), -40).cells.astype(int) - cm.cells).max() <= 2
    shifted = hue_shift(cm, 180).cells
    assert shifted[0, 0, 0] < shifted[0, 0, 1]  # red turned towards cyan/green
    assert np.abs(shifted[0, 1].astype(int) - 128).max() <= 1  # grey stays grey


def test_map_color_and_set_cell() -> None:
    cells = np.array([[[255, 0, 0], [250, 5, 5], [0, 0, 255]]], np.uint8)
    out = map_color(Colormap(cells), (255, 0, 0), (0, 255, 0), tolerance=5).cells
    assert out[0, :2].tolist() == [[0, 255, 0], [0, 255, 0]] and out[0, 2].tolist() == [0, 0, 255]
    exact = map_color(Colormap(cells), (255, 0, 0), (0, 255, 0), tolerance=0).cells
    assert np.array_equal(exact[0, 1], cells[0, 1]) and exact[0, 0].tolist() == [0, 255, 0]
    with pytest.raises(EditError, match="three integers"):
        map_color(Colormap(cells), (256, 0, 0), (0, 0, 0))
    cm = set_cell(Colormap(cells), 0, 2, (1, 2, 3))
    assert cm.cells[0, 2].tolist() == [1, 2, 3] and cells[0, 2].tolist() == [0, 0, 255]
    with pytest.raises(EditError, match=r"cell \(1, 0\) is outside the 1x3 colormap"):
        set_cell(cm, 1, 0, (0, 0, 0))
    with pytest.raises(EditError, match="outside"):
        set_cell(cm, 0, -1, (0, 0, 0))
