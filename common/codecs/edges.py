"""Edge-map codec EDGES_CTX (id 3): lossless context-modelled binary arithmetic coding in stripes.

Unit i codes rows [i*S, (i+1)*S) of the map (S = `EdgeParams.stripe_rows`) and decodes without any
other unit: the context template reads rows above the stripe as 0.

Symbols of a unit, each a binary decision of the range coder below:
  1. a "stripe has edges" flag, P(no edges) = P_EMPTY / 2**16 = 1/64; an empty stripe stops here and
     costs 0 bytes;
  2. every pixel of the stripe in raster order.

Pixel model: an 18-pixel causal template (row y: x-1..x-4; row y-1: x-3..x+4; row y-2: x-2..x+2;
row y-3: x) plus the row's class in the stripe (min(row, 3): the first rows see fewer rows above)
selects a context c. Where the template is all zero (most pixels: a new edge may start there) or has
a single edge pixel, c is instead one of the "far" contexts: row class, that pixel, six far-field bits
from the rows above (any edge in row y-1 at x+5..x+8, x+9..x+12, x-7..x-4; row y-2 at x+3..x+6,
x-6..x-3; row y-3 at x-3..x+3 but x) and the distance class of the nearest edge at x-5 or further left
in row y (5-6, 7-8, 9-12, 13-16, farther/none). P(edge) = (A1[c] + INC * n1) / (A[c] + INC * n), where
A1 <= A are integer prior pseudo-counts from the shipped prior (`common/models/edge_prior.bin`,
version = EdgeParams.model_version; version 0 = no prior, A1/A = 1/2) and n1 of n earlier pixels of
the stripe with context c were edges. The coder uses P(no edge) as the integer
p0 = clamp(((den - num) << 16) // den, 1, 2**16 - 1) of that fraction num/den.

Range coder (all integers): a 32-bit interval (low, range), range starting at 2**32; a decision with
P(0) = p0 / 2**16 splits it at bound = (range * p0) >> 16, 0 taking [low, low + bound) and 1 the rest;
while range < 2**24 the top byte of low is written (a carry into written bytes propagates back) and
low, range shift left by 8. The decoder mirrors this on code - low, reading bytes past the end as 0.
Unit bytes: the written bytes, then 4 bytes of the value in the final interval with the most trailing
zero bits, with trailing zero bytes dropped. The per-stripe loop (`_code_stripe`) is plain integer
code: compiled with numba when installed (the `fast` extra), plain Python otherwise, same bytes.

Prior file (little-endian): b"LCEP", u16 version, u16 template id (TEMPLATE_ID), u32 NIDX, then one
zstd frame holding uint32 N0[NIDX] and uint32 N1[NIDX]: training counts of non-edges and edges per
context (template contexts count every pixel, far contexts only all-zero-template pixels).
`tables_from_counts` turns them into A, A1 (hierarchical back-off over nested sub-templates, see
LEVEL_MASKS); changing any constant below changes the model and needs a new prior version.
"""

from __future__ import annotations

import functools
import importlib.resources
import struct
import threading
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from layercast.common import limits
from layercast.common.codecs.jit import njit_or_none
from layercast.common.errors import CodecError, InputError, ModelError
from layercast.common.registry import EDGES_CTX, LayerCodec, register
from layercast.common.types import EdgeMap, EncodedLayer, LayerKind
from layercast.proto import pb

DEFAULT_STRIPE_ROWS = 16
"""Rows per stripe (unit) unless the caller (rate control) picks another height."""

PROB_BITS = 16
"""Precision of the coder's probabilities: P(0) = p0 / 2**PROB_BITS."""

PROB_ONE = 1 << PROB_BITS

P_EMPTY = PROB_ONE // 64
"""p0 of the per-stripe "has edges" flag (0 = empty, the low end of the interval: it codes to b"")."""

RANGE_MIN = 1 << 24
"""The coder renormalises (one byte out / in) while its range is below this."""

PAD_LEFT = 8
"""Zero columns left of a stripe in the kernel's image buffer (the windows read x-7)."""

PAD = 24
"""Zero columns per buffer row in all (the windows read up to x+13 on the right)."""

INC = 1024
"""Pseudo-count weight of one coded pixel (the prior's A, A1 are in the same unit)."""

CLASS_BITS = (4, 12, 17, 18)
"""Context bits that can be non-zero in row classes 0, 1, 2 and 3+ of a stripe."""

OFFSETS = (0, 16, 16 + 4096, 16 + 4096 + 131072)
"""Start of each row class's contexts in the flat context index."""

FAR_OFFSET = OFFSETS[3] + (1 << 18)
"""Start of the far contexts (all-zero template): index FAR_OFFSET + (class * 64 + far bits) * 5 + distance class."""

FAR1_OFFSET = FAR_OFFSET + 4 * 64 * 5
"""Start of the one-pixel-template far contexts: + ((class * 18 + bit) * 64 + far bits) * 5 + distance class."""

NIDX = FAR1_OFFSET + 4 * 18 * 64 * 5
"""Number of contexts (flat index size)."""

TEMPLATE_ID = 3
"""Identifies the template/bit layout above inside the prior file."""

PRIOR_RESOURCE = "models/edge_prior.bin"
"""The shipped prior, inside package `layercast.common`."""

# Context bit layout: bit j (0..3) = row y, x-1-j; bit 4+j (0..7) = row y-1, x-3+j;
# bit 12+j (0..4) = row y-2, x-2+j; bit 17 = row y-3, x.
_B = {
    "r0": {(-1 - j): j for j in range(4)},
    "r1": {(-3 + j): 4 + j for j in range(8)},
    "r2": {(-2 + j): 12 + j for j in range(5)},
}


def _bits_of(row: str, *dxs: int) -> int:
    return sum(1 << _B[row][dx] for dx in dxs)


LEVEL_MASKS = (
    _bits_of("r0", -1, -2) | _bits_of("r1", -1, 0, 1),
    _bits_of("r0", -1, -2, -3) | _bits_of("r1", -2, -1, 0, 1, 2) | _bits_of("r2", 0),
    _bits_of("r0", -1, -2, -3, -4) | _bits_of("r1", -2, -1, 0, 1, 2, 3) | _bits_of("r2", -1, 0, 1),
    (1 << 17) - 1 - _bits_of("r1", 4),
    (1 << 18) - 1,
)
"""Nested sub-templates, coarse to fine, of the prior's hierarchical back-off."""

BACKOFF_K = 64.0
"""Weight of the parent level's estimate when smoothing a context's training frequency."""

BASE_ALPHA = 0.4
"""Additive smoothing of the coarsest level."""

STRENGTH_MAX = 16
"""Prior strength (in pixels) of a context = min(training count, STRENGTH_MAX) + STRENGTH_EXTRA."""

STRENGTH_EXTRA = 4

FAR_STRENGTH_MAX = 512
"""Strength cap of the far contexts: frequent and stable, so the prior should outweigh a stripe's counts."""

FAR1_STRENGTH_MAX = 64
"""Strength cap of the one-pixel-template far contexts."""


@dataclass(frozen=True)
class PriorTables:
    """Integer prior pseudo-counts per context: P(edge) before any pixel is A1[c] / A[c]."""

    version: int
    a1: np.ndarray
    a: np.ndarray

    @functools.cached_property
    def lists(self) -> tuple[array[int], array[int]]:
        """(A1, A) as arrays of Python-int items, for the sequential decoder."""
        return array("q", self.a1.astype(np.int64).tobytes()), array("q", self.a.astype(np.int64).tobytes())


def tables_from_counts(version: int, n0: np.ndarray, n1: np.ndarray) -> PriorTables:
    """Prior tables from training counts (uint per context): back-off smoothing, then strength cap."""
    if n0.shape != (NIDX,) or n1.shape != (NIDX,):
        raise ModelError(f"edge prior counts must have {NIDX} entries, got {n0.shape}, {n1.shape}")
    a1 = np.empty(NIDX, np.int64)
    a = np.empty(NIDX, np.int64)
    for r, nbits in enumerate(CLASS_BITS):
        size = 1 << nbits
        sl = slice(OFFSETS[r], OFFSETS[r] + size)
        c1 = n1[sl].astype(np.float64)
        cn = c1 + n0[sl].astype(np.float64)
        idx = np.arange(size)
        q: np.ndarray | None = None
        prev = 0
        for mask in LEVEL_MASKS:
            m = mask & (size - 1)
            if q is not None and m == prev:
                continue
            key = idx & m
            s1 = np.bincount(key, weights=c1, minlength=size)
            sn = np.bincount(key, weights=cn, minlength=size)
            if q is None:
                q = (s1 + BASE_ALPHA) / (sn + 2 * BASE_ALPHA)
            else:
                q = (s1 + BACKOFF_K * q[idx & prev]) / (sn + BACKOFF_K)
            prev = m
        assert q is not None
        strength = np.minimum(cn, STRENGTH_MAX) + STRENGTH_EXTRA
        aa = np.rint(strength * INC).astype(np.int64)
        a[sl] = aa
        a1[sl] = np.clip(np.rint(q * aa).astype(np.int64), 1, aa - 1)
        # Far contexts of this class back off to the class's all-zero template context.
        fsl = slice(FAR_OFFSET + r * 320, FAR_OFFSET + (r + 1) * 320)
        f1 = n1[fsl].astype(np.float64)
        fn = f1 + n0[fsl].astype(np.float64)
        fq = (f1 + BACKOFF_K * q[0]) / (fn + BACKOFF_K)
        fa = np.rint((np.minimum(fn, FAR_STRENGTH_MAX) + STRENGTH_EXTRA) * INC).astype(np.int64)
        a[fsl] = fa
        a1[fsl] = np.clip(np.rint(fq * fa).astype(np.int64), 1, fa - 1)
        # One-pixel templates: back off to that template context.
        gsl = slice(FAR1_OFFSET + r * 18 * 320, FAR1_OFFSET + (r + 1) * 18 * 320)
        g1 = n1[gsl].astype(np.float64)
        gn = g1 + n0[gsl].astype(np.float64)
        parent = np.repeat(q[np.minimum(1 << np.arange(18), size - 1)], 320)
        gq = (g1 + BACKOFF_K * parent) / (gn + BACKOFF_K)
        ga = np.rint((np.minimum(gn, FAR1_STRENGTH_MAX) + STRENGTH_EXTRA) * INC).astype(np.int64)
        a[gsl] = ga
        a1[gsl] = np.clip(np.rint(gq * ga).astype(np.int64), 1, ga - 1)
    return PriorTables(version, a1, a)


def flat_tables() -> PriorTables:
    """Model version 0: no prior, every context starts at P = 1/2 with the weight of one pixel."""
    return PriorTables(0, np.full(NIDX, INC // 2, np.int64), np.full(NIDX, INC, np.int64))


def write_prior(version: int, n0: np.ndarray, n1: np.ndarray) -> bytes:
    """Serialise training counts as a prior file (see the module docstring)."""
    import zstandard

    if not 1 <= version <= 0xFFFF:
        raise InputError(f"prior version must be 1..65535, got {version}")
    body = np.concatenate([n0, n1]).astype("<u4").tobytes()
    return b"LCEP" + struct.pack("<HHI", version, TEMPLATE_ID, NIDX) + zstandard.ZstdCompressor(19).compress(body)


def read_prior(data: bytes) -> PriorTables:
    """Parse a prior file; ModelError if it is not one this build understands."""
    import zstandard

    if len(data) < 12 or data[:4] != b"LCEP":
        raise ModelError(
            "edge prior file is not an LCEP file; reinstall layercast or rebuild it with tools/build_edge_prior.py"
        )
    version, template, nidx = struct.unpack("<HHI", data[4:12])
    if template != TEMPLATE_ID or nidx != NIDX:
        raise ModelError(
            f"edge prior uses template {template} with {nidx} contexts; this build needs {TEMPLATE_ID}/{NIDX}: "
            "rebuild it with tools/build_edge_prior.py"
        )
    try:
        body = zstandard.ZstdDecompressor().decompress(data[12:], max_output_size=8 * NIDX)
    except zstandard.ZstdError as exc:
        raise ModelError(f"edge prior file is corrupt: {exc}") from exc
    if len(body) != 8 * NIDX:
        raise ModelError(f"edge prior file holds {len(body)} count bytes, expected {8 * NIDX}")
    counts = np.frombuffer(body, "<u4").astype(np.int64)
    return tables_from_counts(version, counts[:NIDX], counts[NIDX:])


@functools.cache
def shipped_prior() -> PriorTables:
    """The prior shipped with the package (loaded once)."""
    try:
        data = importlib.resources.files("layercast.common").joinpath(PRIOR_RESOURCE).read_bytes()
    except (FileNotFoundError, OSError) as exc:
        raise ModelError(
            f"edge prior {PRIOR_RESOURCE} is missing from layercast.common; reinstall layercast or run "
            "tools/build_edge_prior.py"
        ) from exc
    return read_prior(data)


def _tables(model_version: int) -> PriorTables:
    if model_version == 0:
        return _flat()
    shipped = shipped_prior()
    if model_version != shipped.version:
        raise CodecError(
            f"edge layer was coded with edge prior v{model_version}; this build ships v{shipped.version}: "
            "use a matching layercast version"
        )
    return shipped


@functools.cache
def _flat() -> PriorTables:
    return flat_tables()


def _upper_bits(r1: np.ndarray, r2: np.ndarray, r3: np.ndarray) -> np.ndarray:
    """Context bits from the three rows above (arrays (..., W) of 0/1, rows outside the stripe = 0)."""
    w = r1.shape[-1]
    p1 = np.pad(r1.astype(np.int32), [(0, 0)] * (r1.ndim - 1) + [(3, 4)])
    p2 = np.pad(r2.astype(np.int32), [(0, 0)] * (r2.ndim - 1) + [(2, 2)])
    out = r3.astype(np.int32) << 17
    for j in range(8):
        out += p1[..., j : j + w] << (4 + j)
    for j in range(5):
        out += p2[..., j : j + w] << (12 + j)
    return out


def _prefix(r: np.ndarray) -> np.ndarray:
    """Prefix sums of a row array (..., W) padded by 13 zeros each side (for `_window_any`)."""
    pad = [(0, 0)] * (r.ndim - 1)
    return np.pad(np.cumsum(np.pad(r.astype(np.int32), [*pad, (13, 13)]), axis=-1), [*pad, (1, 0)])


def _window_any(c: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """1 where the row with prefix sums c has a 1 at any of x+lo..x+hi (outside the row reads as 0)."""
    w = c.shape[-1] - 27
    return ((c[..., 14 + hi : 14 + hi + w] - c[..., 13 + lo : 13 + lo + w]) > 0).astype(np.int32)


def _far_bits(r1: np.ndarray, r2: np.ndarray, r3: np.ndarray) -> np.ndarray:
    """The six far-field bits (see the module docstring) from the three rows above, arrays (..., W)."""
    c1, c2, c3 = _prefix(r1), _prefix(r2), _prefix(r3)
    return (
        _window_any(c1, 5, 8)
        | _window_any(c1, 9, 12) << 1
        | _window_any(c1, -7, -4) << 2
        | _window_any(c2, 3, 6) << 3
        | _window_any(c2, -6, -3) << 4
        | (_window_any(c3, -3, -1) | _window_any(c3, 1, 3)) << 5
    )


def _dist_class(gap: int) -> int:
    """Distance class of the nearest edge to the left in the row, `gap` = x - its column (>= 5)."""
    return 0 if gap <= 6 else 1 if gap <= 8 else 2 if gap <= 12 else 3 if gap <= 16 else 4


_DIST_OF_WINDOW = [_dist_class(5 + ((v & -v).bit_length() - 1)) if v else 4 for v in range(1 << 12)]
"""Distance class from bits x-5..x-16 of the row (bit j = column x-5-j)."""


_ONE_BIT = np.full(1 << 18, -1, np.int16)
_ONE_BIT[1 << np.arange(18)] = np.arange(18)
"""Template bits -> the index of its only set bit, or -1."""


def context_indices(edges: np.ndarray, stripe_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(coding context, template context) of every pixel as flat int64 arrays (raster order).

    The template context is OFFSETS[class] + template bits; the coding context equals it except where
    the template is all zero, where it is the far context. Rows above a stripe read as 0.
    """
    e = edges.astype(np.int32)
    h, w = e.shape
    yin = np.arange(h) % stripe_rows

    def above(k: int) -> np.ndarray:
        a = np.zeros_like(e)
        if k < h:
            a[k:] = e[:-k]
        a[yin < k] = 0
        return a

    r1, r2, r3 = above(1), above(2), above(3)
    bits = _upper_bits(r1, r2, r3)
    p0 = np.pad(e, ((0, 0), (4, 0)))
    for j in range(4):
        bits += p0[:, 3 - j : 3 - j + w] << j
    cls = np.minimum(yin, 3).astype(np.int64)
    template = bits + np.asarray(OFFSETS, np.int64)[cls][:, None]
    # Nearest edge at column <= x-5 in the same row: gap = x - its column (none -> far).
    cols = np.arange(w)
    last = np.maximum.accumulate(np.where(e == 1, cols, -(1 << 20)), axis=1)
    last = np.pad(last, ((0, 0), (5, 0)), constant_values=-(1 << 20))[:, :w]
    dist = np.digitize(cols - last, [7, 9, 13, 17])
    fb = cls[:, None] * 64 + _far_bits(r1, r2, r3)
    one = _ONE_BIT[bits]
    coding = np.where(bits == 0, FAR_OFFSET + fb * 5 + dist, template)
    coding = np.where(one >= 0, FAR1_OFFSET + ((cls[:, None] * 18 + one) * 64 + fb % 64) * 5 + dist, coding)
    return coding.ravel(), template.ravel()


def _group_counts(keys: np.ndarray, bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each position: how many earlier positions share its key, and how many of those had bit 1."""
    n = keys.shape[0]
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    # Stable LSD radix sort on two 16-bit halves (numpy's stable sort of uint16 is a radix sort).
    o = np.argsort((keys & 0xFFFF).astype(np.uint16), kind="stable")
    o = o[np.argsort((keys >> 16).astype(np.uint16)[o], kind="stable")]
    ks = keys[o]
    bs = bits[o].astype(np.int64)
    start = np.ones(n, bool)
    start[1:] = ks[1:] != ks[:-1]
    pos = np.arange(n)
    first = np.maximum.accumulate(np.where(start, pos, 0))
    c1 = np.cumsum(bs) - bs
    n1 = np.empty(n, np.int64)
    nn = np.empty(n, np.int64)
    n1[o] = c1 - c1[first]
    nn[o] = pos - first
    return n1, nn


def pixel_probabilities(edges: np.ndarray, stripe_rows: int, tables: PriorTables) -> np.ndarray:
    """P(edge) of every pixel as the coder uses it (float64 HxW), stripes treated independently."""
    h, w = edges.shape
    idx, _ = context_indices(edges, stripe_rows)
    sid = np.repeat(np.arange(h, dtype=np.int64) // stripe_rows, w)
    n1, nn = _group_counts(sid * NIDX + idx, edges.ravel())
    p = (tables.a1[idx] + INC * n1) / (tables.a[idx] + INC * nn)
    return p.reshape(h, w)


def _check_map(edges: np.ndarray) -> np.ndarray:
    e = np.asarray(edges)
    if e.ndim != 2 or not (1 <= e.shape[0] <= limits.MAX_EDGE_SIDE and 1 <= e.shape[1] <= limits.MAX_EDGE_SIDE):
        raise InputError(f"edge map must be 2-D with sides 1..{limits.MAX_EDGE_SIDE}, got shape {e.shape}")
    return (e != 0).astype(np.uint8)


# --- the stripe kernel: context model + binary range coder, plain integers (numba-compilable) -------------


def _code_stripe(
    decode: Any,
    img: Any,
    stride: Any,
    rows: Any,
    width: Any,
    data: Any,
    ndata: Any,
    a1: Any,
    a: Any,
    state: Any,
    tag: Any,
    dist_tab: Any,
    ctx_out: Any,
    record: Any,
) -> Any:
    """Encode (decode = 0) or decode (1) one stripe; returns the unit's byte count (encode) or 0.

    img: flat uint8 buffer of rows + 3 rows of `stride` bytes; the first 3 rows (above the stripe) and
    the PAD_LEFT / right padding columns are 0; pixel (y, x) of the stripe is img[(y + 3) * stride +
    PAD_LEFT + x] (read when encoding, written when decoding). data: the unit bytes (decode, the first
    `ndata` are real, the rest read as 0) or an output buffer of >= 2 * rows * width + 16 bytes (encode).
    state: 3 ints per context (stamp, edge count num, total den in pseudo-count units); a context whose
    stamp is not `tag` starts from the prior (a1, a). record: 1 to write every pixel's context to ctx_out.
    Every intermediate fits in int64, so the numba build and plain Python give the same bytes.
    """
    top = 1 << 32
    low = 0
    rng = top
    code = 0
    pos = 0
    if decode:
        for k in range(4):
            code = (code << 8) | (int(data[k]) if k < ndata else 0)
        pos = 4
        bound = (rng * P_EMPTY) >> PROB_BITS
        if code < bound:
            return 0
        code -= bound
        rng -= bound
    else:
        has = 0
        for i in range(3 * stride, (rows + 3) * stride):
            if img[i]:
                has = 1
                break
        if has == 0:
            return 0  # the "empty" interval [0, 2**26) ends in zeros only: no bytes
        bound = (rng * P_EMPTY) >> PROB_BITS
        low += bound
        rng -= bound
    for y in range(rows):
        cls = min(y, 3)
        zero = OFFSETS[cls]
        row = (y + 3) * stride + PAD_LEFT
        r1 = row - stride
        r2 = r1 - stride
        r3 = r2 - stride
        # Sliding windows: w1 bit k = row y-1 at x-7+k (20 bits), w2 = row y-2 at x-6+k (13), w3 = y-3 at x-3+k (7).
        w1 = 0
        for k in range(20):
            w1 |= int(img[r1 - 7 + k]) << k
        w2 = 0
        for k in range(13):
            w2 |= int(img[r2 - 6 + k]) << k
        w3 = 0
        for k in range(7):
            w3 |= int(img[r3 - 3 + k]) << k
        cur = 0  # bit j = column x-1-j of this row
        for x in range(width):
            t = (cur & 15) | (((w1 >> 4) & 0xFF) << 4) | (((w2 >> 4) & 0x1F) << 12) | (((w3 >> 3) & 1) << 17)
            if t & (t - 1) == 0:  # zero or one template pixel: a far context
                fb = 0
                if (w1 >> 12) & 15:
                    fb |= 1
                if (w1 >> 16) & 15:
                    fb |= 2
                if w1 & 15:
                    fb |= 4
                if (w2 >> 9) & 15:
                    fb |= 8
                if w2 & 15:
                    fb |= 16
                if w3 & 0x77:
                    fb |= 32
                d = dist_tab[(cur >> 4) & 0xFFF]
                if t == 0:
                    c = FAR_OFFSET + (cls * 64 + fb) * 5 + d
                else:
                    b = 0
                    while t >> (b + 1):
                        b += 1
                    c = FAR1_OFFSET + ((cls * 18 + b) * 64 + fb) * 5 + d
            else:
                c = zero + t
            if record:
                ctx_out[y * width + x] = c
            s = 3 * c
            if state[s] != tag:
                state[s] = tag
                state[s + 1] = a1[c]
                state[s + 2] = a[c]
            num = state[s + 1]
            den = state[s + 2]
            p0 = ((den - num) << PROB_BITS) // den
            if p0 < 1:
                p0 = 1
            elif p0 > PROB_ONE - 1:
                p0 = PROB_ONE - 1
            bound = (rng * p0) >> PROB_BITS
            bit = 0
            if decode:
                if code < bound:
                    rng = bound
                else:
                    bit = 1
                    code -= bound
                    rng -= bound
                    img[row + x] = 1
                while rng < RANGE_MIN:
                    code = (code << 8) | (int(data[pos]) if pos < ndata else 0)
                    pos += 1
                    rng <<= 8
            else:
                if img[row + x]:
                    bit = 1
                    low += bound
                    rng -= bound
                    if low >= top:  # carry into the bytes already written
                        low -= top
                        i = pos - 1
                        while data[i] == 255:
                            data[i] = 0
                            i -= 1
                        data[i] += 1
                else:
                    rng = bound
                while rng < RANGE_MIN:
                    data[pos] = low >> 24
                    pos += 1
                    low = (low << 8) & 0xFFFFFFFF
                    rng <<= 8
            if bit:
                state[s + 1] = num + INC
                cur = ((cur << 1) | 1) & 0xFFFF
            else:
                cur = (cur << 1) & 0xFFFF
            state[s + 2] = den + INC
            w1 = (w1 >> 1) | (int(img[r1 + x + 13]) << 19)
            w2 = (w2 >> 1) | (int(img[r2 + x + 7]) << 12)
            w3 = (w3 >> 1) | (int(img[r3 + x + 4]) << 6)
    if decode:
        return 0
    # Flush: the value in [low, low + rng) with the most trailing zero bits, as 4 bytes; zeros at the end dropped.
    v = low
    for sh in range(32, 0, -1):
        cand = ((low + (1 << sh) - 1) >> sh) << sh
        if cand < low + rng:
            v = cand
            break
    if v >= top:
        v -= top
        i = pos - 1
        while data[i] == 255:
            data[i] = 0
            i -= 1
        data[i] += 1
    for k in range(4):
        data[pos] = (v >> (24 - 8 * k)) & 0xFF
        pos += 1
    while pos > 0 and data[pos - 1] == 0:
        pos -= 1
    return pos


_STATE = threading.local()


@functools.cache
def _jitted() -> Callable[..., int] | None:
    """The numba build of `_code_stripe` (cached on disk next to this module), or None without numba."""
    return njit_or_none(_code_stripe)


class _Kernel:
    """`_code_stripe` with its per-thread context state, compiled (numba) or plain Python."""

    def __init__(self, compiled: bool) -> None:
        fn = _jitted() if compiled else None
        self.compiled = fn is not None
        self.fn: Callable[..., int] = fn if fn is not None else _code_stripe
        self.state: Any = np.zeros(3 * NIDX, np.int64) if self.compiled else array("q", bytes(24 * NIDX))
        self.tag = 0
        self.dist: Any = np.asarray(_DIST_OF_WINDOW, np.int64) if self.compiled else _DIST_OF_WINDOW
        self.none: Any = np.zeros(1, np.int64) if self.compiled else [0]

    def _tabs(self, tables: PriorTables) -> tuple[Any, Any]:
        return (tables.a1, tables.a) if self.compiled else tables.lists

    def _img(self, rows: int, width: int) -> Any:
        size = (rows + 3) * (width + PAD)
        return np.zeros(size, np.uint8) if self.compiled else bytearray(size)

    def run(
        self, decode: int, img: Any, rows: int, width: int, data: Any, tables: PriorTables, ctx_out: Any = None
    ) -> int:
        """One `_code_stripe` call with a fresh context tag."""
        self.tag += 1
        a1, a = self._tabs(tables)
        return int(
            self.fn(
                decode, img, width + PAD, rows, width, data, len(data) if decode else 0, a1, a, self.state,
                self.tag, self.dist, self.none if ctx_out is None else ctx_out, int(ctx_out is not None),
            )
        )  # fmt: skip

    def encode(self, stripe: np.ndarray, tables: PriorTables, ctx_out: Any = None) -> bytes:
        """Unit bytes of one stripe (uint8 rows x width)."""
        rows, width = stripe.shape
        buf = np.zeros((rows + 3, width + PAD), np.uint8)
        buf[3:, PAD_LEFT : PAD_LEFT + width] = stripe
        size = 2 * rows * width + 16
        img: Any = buf.ravel() if self.compiled else bytearray(buf.tobytes())
        out: Any = np.zeros(size, np.uint8) if self.compiled else bytearray(size)
        n = self.run(0, img, rows, width, out, tables, ctx_out)
        return bytes(out[:n])

    def decode(self, unit: bytes, rows: int, width: int, tables: PriorTables) -> np.ndarray:
        """The stripe (uint8 rows x width) a unit codes; any bytes give some stripe (garbage if corrupt)."""
        data: Any = np.frombuffer(unit, np.uint8).copy() if self.compiled else unit
        img = self._img(rows, width)
        self.run(1, img, rows, width, data, tables)
        full = np.frombuffer(img, np.uint8).reshape(rows + 3, width + PAD)
        return full[3:, PAD_LEFT : PAD_LEFT + width]


def _kernel(compiled: bool = True) -> _Kernel:
    """This thread's kernel (state arrays are reused across calls: contexts restart by tag)."""
    k: _Kernel | None = getattr(_STATE, "compiled" if compiled else "plain", None)
    if k is None:
        k = _Kernel(compiled)
        setattr(_STATE, "compiled" if compiled else "plain", k)
    return k


def stripe_contexts(edges: np.ndarray, stripe_rows: int, compiled: bool = True) -> np.ndarray:
    """The coding context of every pixel as the coder computes it (flat int64, raster order), for checks.

    Must equal `context_indices(edges, stripe_rows)[0]` (the vectorised form the prior builder counts)
    except in stripes without edges, which code no pixel: -1 there.
    """
    e = _check_map(edges)
    h, w = e.shape
    k = _kernel(compiled)
    out = np.full(h * w, -1, np.int64)
    flat = _flat()
    for i in range(0, h, stripe_rows):
        stripe = e[i : i + stripe_rows]
        buf: Any = np.full(stripe.size, -1, np.int64) if k.compiled else array("q", [-1] * stripe.size)
        k.encode(stripe, flat, buf)
        out[i * w : i * w + stripe.size] = np.asarray(buf)
    return out


def encode_units(edges: np.ndarray, stripe_rows: int, tables: PriorTables, compiled: bool = True) -> list[bytes]:
    """Unit bytes of every stripe of a 0/1 map (compiled: numba if installed, else plain Python)."""
    e = _check_map(edges)
    k = _kernel(compiled)
    return [k.encode(e[i : i + stripe_rows], tables) for i in range(0, e.shape[0], stripe_rows)]


def decode_unit(unit: bytes, rows: int, width: int, tables: PriorTables, compiled: bool = True) -> np.ndarray:
    """Decode one stripe's unit to a bool array rows x width; CodecError if it is longer than any stripe codes to."""
    if len(unit) > 3 * rows * width + 16:
        raise CodecError(f"edge stripe of {len(unit)} bytes is longer than any {width}x{rows} stripe can code to")
    return _kernel(compiled).decode(unit, rows, width, tables).astype(bool)


@register
class EdgesCtxCodec(LayerCodec):
    """Binary edge maps: context-modelled arithmetic coding with a shipped prior, one unit per stripe."""

    codec_id = EDGES_CTX
    name = "edges-ctx"
    kind = LayerKind.STRUCTURE_EDGES

    def compress(self, value: EdgeMap, **options: Any) -> EncodedLayer:
        """Options: stripe_rows (default 16), source (pb.EDGE_SOURCE_*; default value.source), prior (bool)."""
        unknown = set(options) - {"stripe_rows", "source", "prior"}
        if unknown:
            raise InputError(f"unknown edge codec option(s) {sorted(unknown)}; known: prior, source, stripe_rows")
        stripe_rows = int(options.get("stripe_rows", DEFAULT_STRIPE_ROWS))
        source = int(options.get("source", value.source))
        if source not in pb.EdgeSource.values():
            raise InputError(f"edge source {source} is not a pb.EDGE_SOURCE_* value")
        e = _check_map(value.edges)
        h, w = e.shape
        if not 1 <= stripe_rows <= limits.MAX_EDGE_SIDE:
            raise InputError(f"stripe_rows must be 1..{limits.MAX_EDGE_SIDE}, got {stripe_rows}")
        count = -(-h // stripe_rows)
        if count > limits.MAX_UNITS:
            raise InputError(f"{count} stripes exceed {limits.MAX_UNITS}; use a larger stripe_rows")
        tables = shipped_prior() if options.get("prior", True) else _flat()
        units = encode_units(e, stripe_rows, tables)
        desc = pb.LayerDescriptor(
            codec=self.codec_id,
            unit_count=count,
            edges=pb.EdgeParams(
                width=w,
                height=h,
                stripe_rows=stripe_rows,
                source=cast(pb.EdgeSource, source),
                model_version=tables.version,
            ),
        )
        return EncodedLayer(LayerKind.STRUCTURE_EDGES, desc, units)

    def decompress(self, descriptor: pb.LayerDescriptor, units: Sequence[bytes | None]) -> EdgeMap:
        """Decode; a lost unit (None) leaves its rows False with `known` False there."""
        if descriptor.codec != self.codec_id or descriptor.WhichOneof("params") != "edges":
            raise CodecError("layer descriptor is not an edges-ctx descriptor (codec 3 with edge params)")
        p = descriptor.edges
        w, h, s = int(p.width), int(p.height), int(p.stripe_rows)
        if not (1 <= w <= limits.MAX_EDGE_SIDE and 1 <= h <= limits.MAX_EDGE_SIDE):
            raise CodecError(f"edge map size {w}x{h} is outside 1..{limits.MAX_EDGE_SIDE}")
        if not 1 <= s <= limits.MAX_EDGE_SIDE:
            raise CodecError(f"edge stripe_rows {s} is outside 1..{limits.MAX_EDGE_SIDE}")
        count = -(-h // s)
        if descriptor.unit_count != count or len(units) != count:
            raise CodecError(
                f"edge layer of {h} rows in stripes of {s} needs {count} units; descriptor says "
                f"{descriptor.unit_count}, got {len(units)}"
            )
        if int(p.source) not in pb.EdgeSource.values():
            raise CodecError(f"edge source {p.source} is not known to this build")
        tables = _tables(int(p.model_version))
        edges = np.zeros((h, w), bool)
        known = np.ones((h, w), bool)
        for i, unit in enumerate(units):
            rows = min(s, h - i * s)
            if unit is None:
                known[i * s : i * s + rows] = False
                continue
            edges[i * s : i * s + rows] = decode_unit(bytes(unit), rows, w, tables)
        return EdgeMap(edges=edges, known=None if known.all() else known, source=int(p.source))


def warm_up() -> None:
    """Load the prior and compile the coder now (about 0.5 s with a numba cache, 2 s without), so the first
    real image does not stall an event loop; a no-op after the first call."""
    codec = EdgesCtxCodec()
    bits = np.zeros((8, 8), bool)
    bits[2, 1:6] = True
    layer = codec.compress(EdgeMap(bits), stripe_rows=8)
    codec.decompress(layer.descriptor, layer.units)
