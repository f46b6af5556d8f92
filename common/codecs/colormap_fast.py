"""The colormap decoder and encoder compiled with numba (the `fast` extra): the same walk, model and range
coding as `colormap._decode_grid` / `_encode_grid`, in fixed-width integers, about 20x faster. Without
numba `compiled` returns None and the plain-Python coder runs; tests hold the two to the same values, the
same bytes and the same errors.

The kernel mirrors, step for step: `colormap._walk` (MED prediction, running |residual| scale in
float64, the same operations in the same order), `colormap._model` (integer geometric tables), and
`rangecoder.RangeDecoder` / `RangeEncoder` with the 64-bit range in uint64 (the encoder's carry, bit 64
of `low`, kept in its own variable). Decoding, the encoder re-codes every decoded symbol; its terminated
output must equal the unit, which `rangecoder.RangeEncoder.resume(...).finish()` checks in Python.
Encoding runs the same loop on the known values, without the decoder; Python terminates the stream.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from layercast.common.codecs.jit import njit_or_none

OK, CORRUPT, GAMUT, OVERRUN = 0, 1, 2, 3
"""Kernel results: decoded; a value outside the coding interval; a colour outside the gamut box; the
re-coded stream outgrew the unit (so it cannot equal it)."""

_BOT = np.uint64(1 << 56)
_TOP_BYTE = np.uint64(0xFF << 56)
_U8 = np.uint64(8)
_U56 = np.uint64(56)
_FF = np.uint64(0xFF)


def _kernel(
    decode: int,
    unit: Any,
    n_unit: int,
    gh: int,
    gw: int,
    radius: Any,
    first: Any,
    prior: Any,
    qlo: Any,
    qhi: Any,
    prior_weight: float,
    min_scale: float,
    peak: int,
    flat: Any,
    cum: Any,
    tail: Any,
    out: Any,
    state: Any,
) -> int:
    """`decode` 1: decode gh * gw * 3 symbols of `unit` into `flat` and re-code them into `out`; 0: code the
    values already in `flat` into `out` (`unit` unused; GAMUT if one is outside its channel's box). See
    the module doc. `state` receives the encoder's (low, carry, range, cache, cache_size, bytes written)
    as uint64.
    """
    # decoder
    rng = np.uint64(0xFFFFFFFFFFFFFFFF)
    code = np.uint64(0)
    pos = 0
    for _ in range(8 if decode else 0):
        b = np.uint64(unit[pos]) if pos < n_unit else np.uint64(0)
        pos += 1
        code = (code << _U8) | b
    # encoder
    low = np.uint64(0)
    carry = 0
    erng = np.uint64(0xFFFFFFFFFFFFFFFF)
    cache = np.int64(0)
    cache_size = 1
    n_out = 0
    abs_sum = np.empty(3, np.float64)
    count = np.empty(3, np.float64)
    for ch in range(3):
        abs_sum[ch] = prior[ch] * prior_weight
        count[ch] = prior_weight
    row = gw * 3
    i = 0
    for r in range(gh):
        for c in range(gw):
            for ch in range(3):
                grad = 0.0
                if r == 0 and c == 0:
                    pred = first[ch]
                    grad = prior[ch] * 3.0
                elif r == 0:
                    pred = flat[i - 3]
                    grad = float(abs(pred - flat[i - 6])) if c >= 2 else prior[ch]
                elif c == 0:
                    pred = flat[i - row]
                    grad = float(abs(pred - flat[i - 2 * row])) if r >= 2 else prior[ch]
                else:
                    left = flat[i - 3]
                    up = flat[i - row]
                    ul = flat[i - row - 3]
                    if ul >= max(left, up):
                        pred = min(left, up)
                    elif ul <= min(left, up):
                        pred = max(left, up)
                    else:
                        pred = left + up - ul
                    grad = (abs(left - ul) + abs(up - ul)) / 2.0
                scale = max(min_scale, 0.5 * abs_sum[ch] / count[ch] + 0.5 * grad)
                scale_key = min(int(scale * 64.0 + 0.5), 1 << 20)
                # the model (`colormap._model`): cum over reversed(tail), peak, tail
                rad = radius[ch]
                den = scale_key + 64
                weight = peak
                k = 0
                while k < rad:
                    weight = weight * scale_key // den
                    if weight == 0:
                        break
                    tail[k] = weight
                    k += 1
                while k < rad:  # the rest of the tail is the floor frequency
                    tail[k] = 1
                    k += 1
                acc = 0
                cum[0] = 0
                for k in range(rad):
                    acc += tail[rad - 1 - k]
                    cum[k + 1] = acc
                acc += peak
                cum[rad + 1] = acc
                for k in range(rad):
                    acc += tail[k]
                    cum[rad + 2 + k] = acc
                total = acc
                ut = np.uint64(total)
                rr = np.uint64(0)
                if decode:  # decode one symbol
                    rr = rng // ut
                    v = code // rr
                    if v >= ut:
                        return CORRUPT
                    t = np.int64(v)
                    lo_i = 0
                    hi_i = 2 * rad + 2
                    while lo_i < hi_i:
                        mid = (lo_i + hi_i) // 2
                        if t < cum[mid]:
                            hi_i = mid
                        else:
                            lo_i = mid + 1
                    sym = lo_i - 1
                else:  # the symbol of the given value
                    sym = flat[i] - pred + rad
                    if flat[i] < qlo[ch] or flat[i] > qhi[ch] or sym < 0 or sym > 2 * rad:
                        return GAMUT
                lo = cum[sym]
                freq = cum[sym + 1] - lo
                if decode:
                    code -= rr * np.uint64(lo)
                    rng = rr * np.uint64(freq)
                    while rng < _BOT:
                        b = np.uint64(unit[pos]) if pos < n_unit else np.uint64(0)
                        pos += 1
                        code = (code << _U8) | b
                        rng = rng << _U8
                # (re-)code it
                er = erng // ut
                add = er * np.uint64(lo)
                new_low = low + add
                if new_low < low:
                    carry = 1
                low = new_low
                erng = er * np.uint64(freq)
                while erng < _BOT:
                    erng = erng << _U8
                    if carry == 1 or low < _TOP_BYTE:
                        temp = cache
                        while True:
                            if n_out >= out.shape[0]:
                                return OVERRUN
                            out[n_out] = (temp + carry) & 0xFF
                            n_out += 1
                            temp = np.int64(0xFF)
                            cache_size -= 1
                            if cache_size == 0:
                                break
                        cache = np.int64((low >> _U56) & _FF)
                    cache_size += 1
                    low = low << _U8
                    carry = 0
                value = pred - rad + sym
                if value < qlo[ch] or value > qhi[ch]:
                    return GAMUT
                flat[i] = value
                abs_sum[ch] += abs(value - pred)
                count[ch] += 1.0
                i += 1
    state[0] = low
    state[1] = np.uint64(carry)
    state[2] = erng
    state[3] = np.uint64(cache)
    state[4] = np.uint64(cache_size)
    state[5] = np.uint64(n_out)
    return OK


@functools.cache
def compiled() -> Callable[..., int] | None:
    """The numba build of the kernel, or None without numba."""
    return njit_or_none(_kernel)
