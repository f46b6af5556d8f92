"""Colormap codec (CODEC_ID_COLORMAP_PRED): Oklab quantisation + MED prediction + adaptive range coding.

Unit layout (one unit per layer): the stream bytes of `rangecoder.RangeEncoder` (exact integer range
coder, minimal termination, no trailing zero bytes) holding gh * gw * 3 symbols, one per cell and
channel in raster order, L then a then b. No header: grid size and quality are in the descriptor.

Coding, per cell in raster order and per channel L, a, b:
1. The cell's sRGB colour goes to Oklab and is quantised with a step set by `quality` (chroma coarser).
2. The quantised value is predicted from its quantised left, up and up-left neighbours (LOCO-I's MED
   predictor; the first row/column use the one neighbour there, the first cell a fixed guess).
3. The residual is coded with a two-sided geometric model whose scale mixes the channel's running mean
   |residual| (starting from a per-channel prior) with the local gradient, rounded to 1/64. The model's
   integer frequency table is built in exact integer arithmetic from that rounded scale, so the bytes
   are identical on every machine.

The decoder re-codes each symbol it reads and requires the unit to be exactly that coding, and every
decoded value to lie in its channel's range, so a corrupted unit raises CodecError rather than
silently decoding to wrong colours (bytes that pass are the canonical coding of some grid). With numba
installed (the `fast` extra) decoding runs the compiled kernel of `colormap_fast`: same values, same errors.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import accumulate
from typing import Any

import numpy as np

from layercast.common import limits
from layercast.common.codecs import colormap_fast
from layercast.common.codecs.rangecoder import RangeDecoder, RangeEncoder
from layercast.common.color import oklab_to_srgb8, srgb8_to_oklab
from layercast.common.errors import CodecError, InputError
from layercast.common.registry import COLORMAP_PRED, LayerCodec, register
from layercast.common.types import Colormap, EncodedLayer, LayerKind
from layercast.proto import pb

DEFAULT_QUALITY = 50

_LAB_LO = np.array([0.0, -0.25, -0.32])
"""Lower bounds of Oklab L, a, b over the sRGB gamut (rounded outwards)."""
_LAB_HI = np.array([1.0, 0.28, 0.2])
"""Upper bounds of Oklab L, a, b over the sRGB gamut (rounded outwards)."""
_FIRST_GUESS = np.array([0.6, 0.0, 0.0])
"""Prediction of the first cell (no neighbours)."""
_PRIOR_ABS = np.array([0.07, 0.012, 0.015])
"""Typical |MED residual| of each channel in Oklab units (measured on 8x8 AIGI colormaps)."""
_PRIOR_WEIGHT = 2.0
"""Pseudo-count of the prior in the running mean |residual|."""
_CHROMA_STEP_FACTOR = 1.5
"""Chroma (a, b) quantiser steps are this much coarser than L's."""
_MIN_SCALE = 0.08
"""Smallest model scale (quantiser steps), keeps the zero-residual probability below about 0.93."""
_PEAK_FREQ = 1 << 24
"""Integer frequency of the zero residual; the others fall geometrically from it, never below 1."""
_MAX_SYMBOL_BITS = 33
"""Most bits one symbol can cost: its total is at most 501 * _PEAK_FREQ < 2**33 (radius <= 250)."""


@dataclass(frozen=True)
class _Quantiser:
    step: np.ndarray  # (3,) step per channel, Oklab units
    qlo: np.ndarray  # (3,) smallest quantised value per channel (int64)
    qhi: np.ndarray  # (3,) largest quantised value per channel (int64)


def steps_for(quality: int) -> np.ndarray:
    """Oklab quantiser steps (L, a, b) for quality 1..100: 0.004 at 100, doubling every 16 points."""
    step_l = 0.004 * 2.0 ** ((100 - quality) / 16.0)
    return np.array([step_l, step_l * _CHROMA_STEP_FACTOR, step_l * _CHROMA_STEP_FACTOR])


@lru_cache(maxsize=128)
def _quantiser(quality: int) -> _Quantiser:
    step = steps_for(quality)
    return _Quantiser(
        step=step,
        qlo=np.floor(_LAB_LO / step).astype(np.int64),
        qhi=np.ceil(_LAB_HI / step).astype(np.int64),
    )


def _check_quality(quality: Any) -> int:
    if isinstance(quality, bool) or not isinstance(quality, int | np.integer) or not 1 <= quality <= 100:
        raise InputError(f"colormap quality must be an integer in 1..100, got {quality!r}")
    return int(quality)


def quantise(cells: np.ndarray, quality: int) -> np.ndarray:
    """uint8 RGB cells (gh, gw, 3) -> quantised Oklab integers (gh, gw, 3)."""
    qz = _quantiser(quality)
    lab = srgb8_to_oklab(cells).astype(np.float64)
    return np.clip(np.rint(lab / qz.step), qz.qlo, qz.qhi).astype(np.int64)


def dequantise(q: np.ndarray, quality: int) -> np.ndarray:
    """Quantised Oklab integers -> uint8 RGB cells."""
    return oklab_to_srgb8(q.astype(np.float64) * _quantiser(quality).step)


def _med(left: int, up: int, upleft: int) -> int:
    if upleft >= max(left, up):
        return min(left, up)
    if upleft <= min(left, up):
        return max(left, up)
    return left + up - upleft


@lru_cache(maxsize=4096)
def _model(scale_key: int, radius: int) -> array[int]:
    """Cumulative frequencies of the two-sided geometric model over residuals -radius..radius.

    Symbol s = residual + radius has frequency cum[s + 1] - cum[s] (at least 1); the total is cum[-1].
    The ratio between neighbouring frequencies is theta = scale / (scale + 1) with scale = scale_key / 64
    (about exp(-1 / scale)), applied in exact integer arithmetic. An int64 array: a full table
    (radius 250) takes 4 KB of the cache.
    """
    num, den = scale_key, scale_key + 64
    weight = _PEAK_FREQ
    tail: list[int] = []
    for k in range(radius):
        weight = weight * num // den
        if not weight:  # the rest of the tail is the floor frequency
            tail.extend([1] * (radius - k))
            break
        tail.append(weight)
    return array("q", accumulate([*reversed(tail), _PEAK_FREQ, *tail], initial=0))


def _walk(gh: int, gw: int, quality: int, grid: list[int]) -> Iterator[tuple[int, int, array[int]]]:
    """Yield (index, base, cumulative table) in coding order; the symbol is grid[index] - base.

    `grid` is the flat (row, col, channel) list of quantised values; the caller fills grid[index]
    after each yield, so encoder and decoder share this one walk. base = prediction - radius.
    """
    qz = _quantiser(quality)
    radius = (qz.qhi - qz.qlo).tolist()
    first = np.rint(_FIRST_GUESS / qz.step).astype(int).tolist()
    prior = (_PRIOR_ABS / qz.step).tolist()
    abs_sum = [p * _PRIOR_WEIGHT for p in prior]
    count = [_PRIOR_WEIGHT] * 3
    row = gw * 3
    i = 0
    for r in range(gh):
        for c in range(gw):
            for ch in range(3):
                grad: float
                if r == 0 and c == 0:
                    pred, grad = first[ch], prior[ch] * 3.0
                elif r == 0:
                    pred = grid[i - 3]
                    grad = abs(pred - grid[i - 6]) if c >= 2 else prior[ch]
                elif c == 0:
                    pred = grid[i - row]
                    grad = abs(pred - grid[i - 2 * row]) if r >= 2 else prior[ch]
                else:
                    left, up, ul = grid[i - 3], grid[i - row], grid[i - row - 3]
                    pred = _med(left, up, ul)
                    grad = (abs(left - ul) + abs(up - ul)) / 2.0
                scale = max(_MIN_SCALE, 0.5 * abs_sum[ch] / count[ch] + 0.5 * grad)
                scale_key = min(int(scale * 64.0 + 0.5), 1 << 20)
                yield i, pred - radius[ch], _model(scale_key, radius[ch])
                abs_sum[ch] += abs(grid[i] - pred)
                count[ch] += 1.0
                i += 1


def _encode_grid(grid: np.ndarray, quality: int, *, compiled: bool = True) -> bytes:
    """Range-code a quantised (gh, gw, 3) grid (the numba kernel of `colormap_fast` when installed: the
    same bytes)."""
    kernel = colormap_fast.compiled() if compiled else None
    if kernel is not None:
        return _encode_grid_compiled(kernel, grid, quality)
    gh, gw = grid.shape[:2]
    flat = grid.reshape(-1).tolist()
    enc = RangeEncoder()
    for i, base, cum in _walk(gh, gw, quality, flat):
        sym = flat[i] - base
        enc.encode(cum[sym], cum[sym + 1] - cum[sym], cum[-1])
    return enc.finish()


_CORRUPT = "range-coded data is corrupt (value outside the coding interval)"  # as RangeDecoder says it
_GAMUT = "colormap unit is corrupted (a decoded colour leaves the Oklab gamut box)"
_NOT_CANONICAL = "colormap unit is corrupted (it is not the exact coding of the grid it decodes to)"


def _decode_grid(unit: bytes, gh: int, gw: int, quality: int, *, compiled: bool = True) -> np.ndarray:
    """Decode the quantised grid; CodecError unless `unit` is exactly the encoding of a valid grid.

    Every decoded symbol is also fed to an encoder (cheap next to the walk), and the unit must equal
    its output: bytes past the end of the stream, a non-minimal termination or wrong symbols all fail.
    Runs the numba kernel of `colormap_fast` when installed (same values, same errors).
    """
    kernel = colormap_fast.compiled() if compiled else None
    if kernel is not None:
        return _decode_grid_compiled(kernel, unit, gh, gw, quality)
    return _decode_grid_python(unit, gh, gw, quality)


def _run_kernel(
    kernel: Any, decode: int, unit: bytes, flat: np.ndarray, gh: int, gw: int, quality: int
) -> tuple[int, RangeEncoder]:
    """One `colormap_fast` kernel call: (result code, the encoder in the state it left)."""
    qz = _quantiser(quality)
    radius = (qz.qhi - qz.qlo).astype(np.int64)
    rmax = int(radius.max())
    out = np.zeros(len(unit) + 16 + 5 * gh * gw * 3, np.uint8)  # a symbol costs at most 33 bits
    state = np.zeros(6, np.uint64)
    rc = kernel(
        decode, np.frombuffer(unit, np.uint8), len(unit), gh, gw, radius,
        np.rint(_FIRST_GUESS / qz.step).astype(np.int64), (_PRIOR_ABS / qz.step).astype(np.float64),
        qz.qlo.astype(np.int64), qz.qhi.astype(np.int64), _PRIOR_WEIGHT, _MIN_SCALE, _PEAK_FREQ,
        flat, np.zeros(2 * rmax + 2, np.int64), np.zeros(max(rmax, 1), np.int64), out, state,
    )  # fmt: skip
    low, carry, rng, cache, cache_size, n_out = (int(x) for x in state)
    return rc, RangeEncoder.resume(low + (carry << 64), rng, cache, cache_size, out[:n_out].tobytes())


def _encode_grid_compiled(kernel: Any, grid: np.ndarray, quality: int) -> bytes:
    gh, gw = grid.shape[:2]
    flat = np.ascontiguousarray(grid, dtype=np.int64).reshape(-1)
    rc, enc = _run_kernel(kernel, 0, b"", flat, gh, gw, quality)
    if rc != colormap_fast.OK:  # quantise() keeps every value in its box
        raise CodecError(f"colormap grid value outside its channel's range (kernel result {rc})")
    return enc.finish()


def _decode_grid_compiled(kernel: Any, unit: bytes, gh: int, gw: int, quality: int) -> np.ndarray:
    flat = np.zeros(gh * gw * 3, np.int64)
    rc, enc = _run_kernel(kernel, 1, unit, flat, gh, gw, quality)
    if rc == colormap_fast.CORRUPT:
        raise CodecError(_CORRUPT)
    if rc == colormap_fast.GAMUT:
        raise CodecError(_GAMUT)
    if rc == colormap_fast.OVERRUN or enc.finish() != unit:
        raise CodecError(_NOT_CANONICAL)
    return flat.reshape(gh, gw, 3)


def _decode_grid_python(unit: bytes, gh: int, gw: int, quality: int) -> np.ndarray:
    qz = _quantiser(quality)
    qlo, qhi = qz.qlo.tolist(), qz.qhi.tolist()
    flat = [0] * (gh * gw * 3)
    dec = RangeDecoder(unit)
    enc = RangeEncoder()
    for i, base, cum in _walk(gh, gw, quality, flat):
        total = cum[-1]
        sym = bisect_right(cum, dec.target(total)) - 1
        lo, freq = cum[sym], cum[sym + 1] - cum[sym]
        dec.consume(lo, freq)
        enc.encode(lo, freq, total)
        value = base + sym
        ch = i % 3
        if not qlo[ch] <= value <= qhi[ch]:
            raise CodecError(_GAMUT)
        flat[i] = value
    if enc.finish() != unit:
        raise CodecError(_NOT_CANONICAL)
    return np.array(flat, dtype=np.int64).reshape(gh, gw, 3)


@register
class ColormapCodec(LayerCodec):
    """Texture layer codec: one unit holding the whole colormap. Option `quality` 1..100 (default 50)."""

    codec_id = COLORMAP_PRED
    name = "colormap-pred"
    kind = LayerKind.TEXTURE

    def compress(self, value: Colormap, **options: Any) -> EncodedLayer:
        quality = _check_quality(options.pop("quality", DEFAULT_QUALITY))
        if options:
            raise InputError(f"unknown colormap codec option(s): {', '.join(sorted(options))}")
        cells = value.cells
        if cells.ndim != 3 or cells.shape[2] != 3 or cells.dtype != np.uint8:
            raise InputError(f"colormap cells must be uint8 (rows, cols, 3), got {cells.dtype} {cells.shape}")
        gh, gw = value.grid
        if not (1 <= gh <= limits.MAX_GRID_SIDE and 1 <= gw <= limits.MAX_GRID_SIDE):
            raise InputError(f"colormap grid {gw}x{gh} is outside 1..{limits.MAX_GRID_SIDE} per side")
        unit = _encode_grid(quantise(cells, quality), quality)
        desc = pb.LayerDescriptor(
            codec=self.codec_id,
            unit_count=1,
            colormap=pb.ColormapParams(grid_width=gw, grid_height=gh, quality=quality),
        )
        return EncodedLayer(LayerKind.TEXTURE, desc, [unit])

    def decompress(self, descriptor: pb.LayerDescriptor, units: Sequence[bytes | None]) -> Colormap:
        params = descriptor.colormap
        gw, gh, quality = int(params.grid_width), int(params.grid_height), int(params.quality)
        if not (1 <= gh <= limits.MAX_GRID_SIDE and 1 <= gw <= limits.MAX_GRID_SIDE):
            raise CodecError(f"colormap grid {gw}x{gh} is outside 1..{limits.MAX_GRID_SIDE} per side")
        if not 1 <= quality <= 100:
            raise CodecError(f"colormap quality {quality} is outside 1..100")
        if len(units) != 1:
            raise CodecError(f"colormap layer has {len(units)} units; expected 1")
        unit = units[0]
        if unit is None:
            raise CodecError("texture unit missing")
        if len(unit) > 16 + (gh * gw * 3 * _MAX_SYMBOL_BITS + 7) // 8:
            raise CodecError(f"colormap unit of {len(unit)} bytes is impossible for a {gw}x{gh} grid")
        return Colormap(cells=dequantise(_decode_grid(bytes(unit), gh, gw, quality), quality))


def warm_up() -> None:
    """Compile (or load from numba's disk cache) the colormap decoder now, so the first real image does
    not stall an event loop; a no-op without numba and after the first call."""
    if colormap_fast.compiled() is not None:
        _decode_grid(_encode_grid(np.zeros((1, 1, 3), np.int64), DEFAULT_QUALITY), 1, 1, DEFAULT_QUALITY)
