"""Edge-map codec EDGES_CTX (id 3): lossless context-modelled binary arithmetic coding in stripes.

Unit i codes rows [i*S, (i+1)*S) of the map (S = `EdgeParams.stripe_rows`) and decodes without any
other unit: the context template reads rows above the stripe as 0.

Symbols of a unit, each coded with a Bernoulli model by a constriction range coder:
  1. a "stripe has edges" flag, P(1) = P_HAS_EDGES; an empty stripe stops here (it costs 0 bytes);
  2. every pixel of the stripe in raster order.

Pixel model: an 18-pixel causal template (row y: x-1..x-4; row y-1: x-3..x+4; row y-2: x-2..x+2;
row y-3: x) plus the row's class in the stripe (min(row, 3): the first rows see fewer rows above)
selects a context c. Where the template is all zero (most pixels: a new edge may start there) or has
a single edge pixel, c is instead one of the "far" contexts: row class, that pixel, six far-field bits
from the rows above (any edge in row y-1 at x+5..x+8, x+9..x+12, x-7..x-4; row y-2 at x+3..x+6,
x-6..x-3; row y-3 at x-3..x+3 but x) and the distance class of the nearest edge at x-5 or further left
in row y (5-6, 7-8, 9-12, 13-16, farther/none). P(edge) = (A1[c] + INC * n1) / (A[c] + INC * n), where
A1 <= A are integer prior
pseudo-counts from the shipped prior (`common/models/edge_prior.bin`, version = EdgeParams.model_version;
version 0 = no prior, A1/A = 1/2) and n1 of n earlier pixels of the stripe with context c were edges.
Numerator and denominator are exact integers and the division is one IEEE double operation, so the
vectorised encoder (numpy) and the sequential decoder (Python floats) use bit-identical probabilities.

Unit bytes: the coder's 32-bit words, big-endian, with the final word chosen to end in as many zero bits
as the final interval allows, and trailing zero bytes dropped (the decoder reads zeros past the end).

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
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from layercast.common import limits
from layercast.common.errors import CodecError, InputError, ModelError
from layercast.common.registry import EDGES_CTX, LayerCodec, register
from layercast.common.types import EdgeMap, EncodedLayer, LayerKind
from layercast.proto import pb

DEFAULT_STRIPE_ROWS = 16
"""Rows per stripe (unit) unless the caller (rate control) picks another height."""

P_HAS_EDGES = 63 / 64
"""Probability of the per-stripe "has edges" flag: an empty stripe codes to b""."""

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


def _seal(encoder: Any) -> bytes:
    """Unit bytes of a finished encoder: last word with most trailing zeros, trailing zero bytes dropped."""
    pos, (lower, rng) = encoder.pos()
    words = encoder.get_compressed()
    if len(words) == pos + 1 and lower + rng <= 1 << 64:
        lo = (lower + (1 << 32) - 1) >> 32
        hi = (lower + rng - 1) >> 32
        for shift in range(32, -1, -1):
            v = -(-lo >> shift) << shift
            if v <= hi:
                words = words.copy()
                words[-1] = v & 0xFFFFFFFF
                break
    return words.astype(">u4").tobytes().rstrip(b"\x00")


def _check_map(edges: np.ndarray) -> np.ndarray:
    e = np.asarray(edges)
    if e.ndim != 2 or not (1 <= e.shape[0] <= limits.MAX_EDGE_SIDE and 1 <= e.shape[1] <= limits.MAX_EDGE_SIDE):
        raise InputError(f"edge map must be 2-D with sides 1..{limits.MAX_EDGE_SIDE}, got shape {e.shape}")
    return (e != 0).astype(np.uint8)


def _decode_stripe(unit: bytes, rows: int, width: int, tables: PriorTables) -> np.ndarray:
    import constriction

    if len(unit) > 3 * rows * width + 16:
        raise CodecError(f"edge stripe of {len(unit)} bytes is longer than any {width}x{rows} stripe can code to")
    padded = unit + b"\x00" * (-len(unit) % 4)
    words = np.frombuffer(padded, ">u4").astype(np.uint32)
    bern = constriction.stream.model.Bernoulli
    dec = constriction.stream.queue.RangeDecoder(words)
    decode = dec.decode
    buf = np.zeros((rows + 3, width), np.uint8)
    try:
        if not decode(bern(P_HAS_EDGES, perfect=False)):
            return buf[3:]
        a1s, as_ = tables.lists
        state: dict[int, list[int]] = {}
        get = state.get
        dist = _DIST_OF_WINDOW
        for y in range(rows):
            r1, r2, r3 = buf[y + 2], buf[y + 1], buf[y]
            cls = min(y, 3)
            zero = OFFSETS[cls]
            up = (_upper_bits(r1, r2, r3) + zero).tolist()
            fb = _far_bits(r1, r2, r3)
            far = (FAR_OFFSET + (cls * 64 + fb) * 5).tolist()
            far1 = (FAR1_OFFSET + cls * 18 * 320 + fb * 5).tolist()
            row = bytearray(width)
            cur = 0  # bit j = column x-1-j of this row
            for x in range(width):
                c = up[x] + (cur & 15)
                t = c - zero
                if t == 0:
                    c = far[x] + dist[(cur >> 4) & 0xFFF]
                elif not t & (t - 1):
                    c = far1[x] + (t.bit_length() - 1) * 320 + dist[(cur >> 4) & 0xFFF]
                e = get(c)
                if e is None:
                    e = state[c] = [a1s[c], as_[c]]
                if decode(bern(e[0] / e[1], perfect=False)):
                    e[0] += INC
                    row[x] = 1
                    cur = ((cur << 1) | 1) & 0xFFFF
                else:
                    cur = (cur << 1) & 0xFFFF
                e[1] += INC
            buf[y + 3] = np.frombuffer(bytes(row), np.uint8)
    except (AssertionError, ValueError, RuntimeError) as exc:
        raise CodecError(f"edge stripe is corrupt: {exc}") from exc
    return buf[3:]


def _encode_stripe(bits: np.ndarray, probs: np.ndarray) -> bytes:
    import constriction

    fam = constriction.stream.model.Bernoulli(perfect=False)
    enc = constriction.stream.queue.RangeEncoder()
    has = bool(bits.any())
    enc.encode(np.array([int(has)], np.int32), fam, np.array([P_HAS_EDGES]))
    if has:
        enc.encode(bits.astype(np.int32), fam, probs)
    return _seal(enc)


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
        probs = pixel_probabilities(e, stripe_rows, tables)
        units = [
            _encode_stripe(e[i : i + stripe_rows].ravel(), probs[i : i + stripe_rows].ravel())
            for i in range(0, h, stripe_rows)
        ]
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
            edges[i * s : i * s + rows] = _decode_stripe(bytes(unit), rows, w, tables).astype(bool)
        return EdgeMap(edges=edges, known=None if known.all() else known, source=int(p.source))
