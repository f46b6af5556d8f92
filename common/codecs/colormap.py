"""Colormap codec (CODEC_ID_COLORMAP_PRED): Oklab quantisation + MED prediction + adaptive range coding.

Unit layout (one unit per layer): the range coder's 32-bit words, big-endian, with up to three
trailing bytes cut where padding them back with 0xFF decodes the same symbols.

Coding, per cell in raster order and per channel L, a, b:
1. The cell's sRGB colour goes to Oklab and is quantised with a step set by `quality` (chroma coarser).
2. The quantised value is predicted from its quantised left, up and up-left neighbours (LOCO-I's MED
   predictor; the first row/column use the one neighbour there, the first cell a fixed guess).
3. The residual is coded with a two-sided geometric model whose scale mixes the channel's running mean
   |residual| (starting from a per-channel prior) with the local gradient. Model tables are built with
   plain IEEE arithmetic (no transcendental functions), so the bytes are identical on every machine.

A decoded unit is re-encoded and compared byte for byte, so a corrupted unit raises CodecError rather
than silently decoding to wrong colours.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from layercast.common import limits
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
def _model(scale_key: int, radius: int) -> Any:
    """Two-sided geometric model over residuals -radius..radius (symbol = residual + radius)."""
    import constriction

    scale = scale_key / 64.0
    theta = scale / (scale + 1.0)  # ~exp(-1/scale) without a transcendental function
    powers = np.cumprod(np.full(radius, theta)) if radius else np.zeros(0)
    probs = np.concatenate([powers[::-1], [1.0], powers])
    return constriction.stream.model.Categorical(probs, perfect=False)


def _walk(gh: int, gw: int, quality: int, grid: np.ndarray) -> Iterator[tuple[int, int, int, int, Any]]:
    """Yield (row, col, channel, prediction, model) in coding order.

    `grid` holds the quantised values; the caller fills cell (row, col, channel) after each yield, so
    encoder and decoder share this one walk.
    """
    qz = _quantiser(quality)
    radius = (qz.qhi - qz.qlo).astype(int)
    first = np.rint(_FIRST_GUESS / qz.step).astype(int)
    prior = _PRIOR_ABS / qz.step
    abs_sum = prior * _PRIOR_WEIGHT
    count = np.full(3, _PRIOR_WEIGHT)
    for r in range(gh):
        for c in range(gw):
            for ch in range(3):
                if r == 0 and c == 0:
                    pred, grad = int(first[ch]), float(prior[ch]) * 3.0
                elif r == 0:
                    pred = int(grid[r, c - 1, ch])
                    grad = abs(pred - int(grid[r, c - 2, ch])) if c >= 2 else float(prior[ch])
                elif c == 0:
                    pred = int(grid[r - 1, c, ch])
                    grad = abs(pred - int(grid[r - 2, c, ch])) if r >= 2 else float(prior[ch])
                else:
                    left, up = int(grid[r, c - 1, ch]), int(grid[r - 1, c, ch])
                    ul = int(grid[r - 1, c - 1, ch])
                    pred = _med(left, up, ul)
                    grad = (abs(left - ul) + abs(up - ul)) / 2.0
                scale = max(_MIN_SCALE, 0.5 * abs_sum[ch] / count[ch] + 0.5 * grad)
                scale_key = min(int(scale * 64.0 + 0.5), 1 << 20)
                yield r, c, ch, pred, _model(scale_key, int(radius[ch]))
                abs_sum[ch] += abs(int(grid[r, c, ch]) - pred)
                count[ch] += 1.0


def _pack(words: np.ndarray, decodes: Any) -> bytes:
    """Big-endian bytes of the coder's words, trailing bytes cut while 0xFF padding still decodes."""
    data = words.astype(">u4").tobytes()
    best = data
    for cut in range(1, 4):
        if len(data) - cut <= 0:
            break
        if decodes(_unpack(data[:-cut])):
            best = data[:-cut]
        else:
            break
    return best


def _unpack(data: bytes) -> np.ndarray:
    padded = data + b"\xff" * (-len(data) % 4)
    return np.frombuffer(padded, dtype=">u4").astype(np.uint32)


def _coder_words(grid: np.ndarray, quality: int) -> np.ndarray:
    import constriction

    gh, gw = grid.shape[:2]
    radius = _quantiser(quality).qhi - _quantiser(quality).qlo
    enc = constriction.stream.queue.RangeEncoder()
    for r, c, ch, pred, model in _walk(gh, gw, quality, grid):
        sym = int(grid[r, c, ch]) - pred + int(radius[ch])
        enc.encode(np.array([sym], dtype=np.int32), model)
    return np.asarray(enc.get_compressed())


def _encode_grid(grid: np.ndarray, quality: int) -> bytes:
    gh, gw = grid.shape[:2]
    words = _coder_words(grid, quality)

    def decodes(w: np.ndarray) -> bool:
        decoded = _decode_words(w, gh, gw, quality)
        return decoded is not None and np.array_equal(decoded, grid)

    return _pack(words, decodes)


def _decode_words(words: np.ndarray, gh: int, gw: int, quality: int) -> np.ndarray | None:
    """Decode the quantised grid; None when a value leaves its channel's range (corrupted data)."""
    import constriction

    qz = _quantiser(quality)
    dec = constriction.stream.queue.RangeDecoder(words)
    grid = np.zeros((gh, gw, 3), dtype=np.int64)
    for r, c, ch, pred, model in _walk(gh, gw, quality, grid):
        try:
            sym = int(dec.decode(model))
        except (AssertionError, ValueError, RuntimeError):  # constriction's "invalid compressed data"
            return None
        value = pred + sym - int(qz.qhi[ch] - qz.qlo[ch])
        if not qz.qlo[ch] <= value <= qz.qhi[ch]:
            return None
        grid[r, c, ch] = value
    return grid


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
        if not 1 <= len(unit) <= 16 + gh * gw * 12:
            raise CodecError(f"colormap unit of {len(unit)} bytes is impossible for a {gw}x{gh} grid")
        grid = _decode_words(_unpack(bytes(unit)), gh, gw, quality)
        if grid is None or _encode_grid(grid, quality) != bytes(unit):
            raise CodecError("colormap unit is corrupted (it does not decode to a consistent grid)")
        return Colormap(cells=dequantise(grid, quality))
