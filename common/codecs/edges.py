"""Edge-map codec EDGES_CTX (id 3): lossless context-modelled binary arithmetic coding in stripes.

Unit i codes rows [i*S, (i+1)*S) of the map (S = `EdgeParams.stripe_rows`). In model versions 0, 2 and 3
it decodes without any other unit: every template reads rows above the stripe as 0, and all adaptive state
restarts per stripe. In version 4 stripes come in context groups of G (`EdgeParams.stripe_group`, 0 = 2):
a stripe i with i % G != 0 carries on from stripe i-1 (its last ABOVE rows are the context above, every
adaptive state (counts, adaptive model, mixer weights) continues), so it decodes only after the earlier
stripes of its group; a lost stripe costs its rows and the rest of its group.

`EdgeParams.model_version` names the pixel model (and the prior file it reads):
  4 (default, GROUP_VERSION): the mixing coder of version 3 in context groups of stripes;
  3 (MIX_VERSION): the mixing coder, `_stripe_mix_kernel` with `models/edge_prior_mix.bin`;
  2 (LEGACY_VERSION): the counts-only coder of earlier builds, `_code_stripe` with `models/edge_prior.bin`
    (still decoded; `compress(..., model_version=2)` still writes it);
  0: the counts-only coder without a prior (A1/A = 1/2 everywhere; `compress(..., prior=False)`).
Any other version is refused with a CodecError (v1 was the constriction coder, gone). Builds before v3
(v4) refuse v3 (v4) layers the same way ("coded with edge prior v4"): a build without groups must not
decode a grouped layer as independent stripes.

Symbols of a unit, each a binary decision of the range coder below:
  1. a "stripe has edges" flag, P(no edges) = P_EMPTY / 2**16 = 1/64; an empty stripe stops here and
     costs 0 bytes;
  2. every pixel of the stripe in raster order.

Counts model (versions 0 and 2, and the first input of version 3): an 18-pixel causal template (row y:
x-1..x-4; row y-1: x-3..x+4; row y-2: x-2..x+2; row y-3: x; a superset of the JBIG (ITU-T T.82)
three-line template) plus the row's class in the stripe (min(row, 3): the first rows see fewer rows
above) selects a context c. Where the template is all zero (most pixels: a new edge may start there) or
has a single edge pixel, c is instead one of the "far" contexts: row class, that pixel, six far-field
bits from the rows above (any edge in row y-1 at x+5..x+8, x+9..x+12, x-7..x-4; row y-2 at x+3..x+6,
x-6..x-3; row y-3 at x-3..x+3 but x) and the distance class of the nearest edge at x-5 or further left
in row y (5-6, 7-8, 9-12, 13-16, farther/none). P(edge) = (A1[c] + INC * n1) / (A[c] + INC * n), where
A1 <= A are integer prior pseudo-counts from the prior file and n1 of n earlier pixels of the stripe
with context c were edges. Version 2 codes with P(no edge) as the integer
p0 = clamp(((den - num) << 16) // den, 1, 2**16 - 1) of that fraction num/den.

Mixing coder (versions 3 and 4): three predictions of P(edge), each as a stretch s = ln(p / (1 - p)) in
1/256 (the STRETCH table), are mixed by a gated linear network, as in Mahoney's PAQ/lpaq context
mixing (logistic mixing):
  s0: the counts model above, p = clamp((num << 16) // den, 1, 65535) / 2**16;
  s1: the deep prior: a static table from training counts over a 20-pixel template reaching 4 rows up
      (row y x-1, x-2; rows y-1..y-3 x-2..x+2; row y-4 x-1..x+1: the course of steep curves), by row
      class min(row, 4) (DEEP_* constants, back-off over DEEP_LEVEL_MASKS);
  s2: an adaptive model learnt from the stripe alone: JBIG's 10-pixel three-line template (row y x-1,
      x-2; row y-1 x-2..x+2; row y-2 x-1..x+1) by row class min(row, 2); its P(edge) starts at 1/2, moves by
      (bit - p) / (n + 1.5) after n pixels of the context (n capped at ADAPT_LIMIT);
and the bias 256. A weight set (MIX_SETS = 16, chosen by row y x-1 and row y-1 x-1..x+1) gives
d = (w0 * s0 + w1 * s1 + w2 * s2 + w3 * 256) >> 16, P(edge) = squash(d) (integer interpolation between
SQUASH_KNOTS, clamped to 1..65535 / 2**16) codes the pixel as P(no edge) = 1 - P(edge); then each
weight moves by (input * ((bit << 16) - P(edge))) >> MIX_SHIFT (clamped to +-WEIGHT_MAX). Weights
start each stripe (v4: each group) from the prior file's initial weights. Row classes count rows from the
top of the stripe (v4: of the group, so a continued stripe's rows are all in the last class). All
integers: numba and plain Python agree.

Range coder (all integers): a 32-bit interval (low, range), range starting at 2**32; a decision with
P(0) = p0 / 2**16 splits it at bound = (range * p0) >> 16, 0 taking [low, low + bound) and 1 the rest;
while range < 2**24 the top byte of low is written (a carry into written bytes propagates back) and
low, range shift left by 8. The decoder mirrors this on code - low, reading bytes past the end as 0.
Unit bytes: the written bytes, then 4 bytes of the value in the final interval with the most trailing
zero bits, with trailing zero bytes dropped. The per-stripe loops (`_code_stripe`, `_stripe_mix_kernel`)
are plain integer code: compiled with numba when installed (the `fast` extra), plain Python otherwise,
same bytes.

Prior files (little-endian): b"LCEP", u16 version, u16 template id, u32 NIDX, then
  template TEMPLATE_ID (3, `edge_prior.bin`): one zstd frame holding uint32 N0[NIDX] and N1[NIDX]:
    training counts of non-edges and edges per counts-model context (template contexts count every
    pixel, far contexts only all-zero-template pixels);
  template MIX_TEMPLATE_ID (4, `edge_prior_mix.bin`): u32 NDEEP, u16 MIX_SETS, u16 MIX_INPUTS, then
    one zstd frame holding uint32 N0[NIDX], N1[NIDX], D0[NDEEP], D1[NDEEP] (deep-template counts) and
    int32 W[MIX_SETS * MIX_INPUTS] (initial weights in 1/65536).
`tables_from_counts` turns counts into A, A1 (hierarchical back-off over nested sub-templates, see
LEVEL_MASKS), `deep_stretch_from_counts` into the deep table; changing any model constant below changes
the coder and needs a new model version (tools/build_edge_prior.py builds both files).
"""

from __future__ import annotations

import functools
import importlib.resources
import operator
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
from layercast.proto.framing import EDGE_STRIPE_ROWS_DEFAULT, edge_geometry

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
"""The counts-only coder's shipped prior (model version 2), inside package `layercast.common`."""

MIX_VERSION = 3
"""Model version of the mixing coder (the `model_version` its layers carry)."""

LEGACY_VERSION = 2
"""Model version of the counts-only coder (`_code_stripe` with `edge_prior.bin`), still decoded."""

GROUP_VERSION = 4
"""Model version of the mixing coder in context groups of stripes (the default): the v3 pixel model and
prior, but stripe i carries on from stripe i-1 (its last rows as context, every adaptive state) unless i is
a multiple of the group size (EdgeParams.stripe_group; 0 = DEFAULT_STRIPE_GROUP)."""

DEFAULT_STRIPE_GROUP = 2
"""Stripes per context group of a v4 layer unless the caller picks another size: a lost stripe costs its
rows and those of the rest of its group (at most one more stripe)."""

MIX_TEMPLATE_ID = 4
"""Identifies the v3 layout (counts contexts + deep contexts + mixer weights) inside a prior file."""

MIX_PRIOR_RESOURCE = "models/edge_prior_mix.bin"
"""The shipped v3 prior, inside package `layercast.common`."""

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


def _backoff(c1: np.ndarray, cn: np.ndarray, masks: Sequence[int], size: int, k: float, alpha: float) -> np.ndarray:
    """P(edge) per context of a template of log2(size) bits: hierarchical back-off over nested sub-templates
    (`masks`, coarse to fine): each level's frequency smoothed by `k` pseudo-counts of its parent's estimate."""
    idx = np.arange(size)
    q: np.ndarray | None = None
    prev = 0
    for mask in masks:
        m = mask & (size - 1)
        if q is not None and m == prev:
            continue
        key = idx & m
        s1 = np.bincount(key, weights=c1, minlength=size)
        sn = np.bincount(key, weights=cn, minlength=size)
        q = (s1 + alpha) / (sn + 2 * alpha) if q is None else (s1 + k * q[idx & prev]) / (sn + k)
        prev = m
    assert q is not None
    return q


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
        q = _backoff(c1, cn, LEVEL_MASKS, size, BACKOFF_K, BASE_ALPHA)
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


def read_prior(data: bytes) -> Tables:
    """Parse a prior file: PriorTables (template TEMPLATE_ID, the counts-only coder) or MixTables
    (MIX_TEMPLATE_ID, the mixing coder); ModelError if it is not one this build understands."""
    import zstandard

    if len(data) < 12 or data[:4] != b"LCEP":
        raise ModelError(
            "edge prior file is not an LCEP file; reinstall layercast or rebuild it with tools/build_edge_prior.py"
        )
    version, template, nidx = struct.unpack("<HHI", data[4:12])
    rest = data[12:]
    ndeep = sets = inputs = 0
    if template == MIX_TEMPLATE_ID and len(data) >= 20:
        ndeep, sets, inputs = struct.unpack("<IHH", data[12:20])
        rest = data[20:]
    known = (template == TEMPLATE_ID and nidx == NIDX) or (
        template == MIX_TEMPLATE_ID and (nidx, ndeep, sets, inputs) == (NIDX, NDEEP, MIX_SETS, MIX_INPUTS)
    )
    if not known:
        raise ModelError(
            f"edge prior uses template {template} with {nidx} contexts; this build reads templates {TEMPLATE_ID} "
            f"and {MIX_TEMPLATE_ID} ({NIDX} contexts): rebuild it with tools/build_edge_prior.py"
        )
    size = 8 * NIDX if template == TEMPLATE_ID else 8 * NIDX + 8 * NDEEP + 4 * MIX_SETS * MIX_INPUTS
    try:
        body = zstandard.ZstdDecompressor().decompress(rest, max_output_size=size)
    except zstandard.ZstdError as exc:
        raise ModelError(f"edge prior file is corrupt: {exc}") from exc
    if len(body) != size:
        raise ModelError(f"edge prior file holds {len(body)} count bytes, expected {size}")
    counts = np.frombuffer(body, "<u4", count=2 * NIDX + (2 * NDEEP if template == MIX_TEMPLATE_ID else 0))
    counts = counts.astype(np.int64)
    if template == TEMPLATE_ID:
        return tables_from_counts(version, counts[:NIDX], counts[NIDX:])
    w0 = np.frombuffer(body, "<i4", offset=8 * NIDX + 8 * NDEEP).astype(np.int64)
    d = counts[2 * NIDX :]
    return mix_tables_from_counts(version, counts[:NIDX], counts[NIDX : 2 * NIDX], d[:NDEEP], d[NDEEP:], w0)


def _load(resource: str) -> Tables:
    try:
        data = importlib.resources.files("layercast.common").joinpath(resource).read_bytes()
    except (FileNotFoundError, OSError) as exc:
        raise ModelError(
            f"edge prior {resource} is missing from layercast.common; reinstall layercast or run "
            "tools/build_edge_prior.py"
        ) from exc
    return read_prior(data)


@functools.cache
def shipped_prior() -> PriorTables:
    """The counts-only coder's prior shipped with the package (model version 2; loaded once)."""
    tables = _load(PRIOR_RESOURCE)
    if not isinstance(tables, PriorTables):
        raise ModelError(f"edge prior {PRIOR_RESOURCE} is not a counts-only (template {TEMPLATE_ID}) prior")
    return tables


@functools.cache
def shipped_mix_prior() -> MixTables:
    """The mixing coder's prior shipped with the package (model version 3; loaded once)."""
    tables = _load(MIX_PRIOR_RESOURCE)
    if not isinstance(tables, MixTables):
        raise ModelError(f"edge prior {MIX_PRIOR_RESOURCE} is not a mixing (template {MIX_TEMPLATE_ID}) prior")
    return tables


MODEL_VERSIONS = (0, LEGACY_VERSION, MIX_VERSION, GROUP_VERSION)
"""Model versions this build codes: 0 (counts-only coder, no prior), 2 (counts-only coder with
`edge_prior.bin`: layers from earlier builds), 3 (the mixing coder with `edge_prior_mix.bin`, independent
stripes) and 4 (that coder in context groups of stripes, default)."""


def tables_for(model_version: int) -> Tables:
    """The tables of a model version; CodecError for one this build cannot decode."""
    if model_version == 0:
        return _flat()
    if model_version == LEGACY_VERSION:
        return shipped_prior()
    if model_version in (MIX_VERSION, GROUP_VERSION):
        return shipped_mix_prior()
    raise CodecError(
        f"edge layer was coded with edge prior v{model_version}; this build reads v0, v{LEGACY_VERSION}, "
        f"v{MIX_VERSION} and v{GROUP_VERSION}: use a matching layercast version"
    )


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


# --- model v3: the counts model above, mixed with a deep-template prior and an adaptive model ---------------
#
# Logistic mixing of predictions follows Mahoney's PAQ/lpaq context mixing (a gated linear network over
# stretched probabilities, trained online by error * input); the integer stretch/squash pair and the
# count-driven adaptation rate are in the same spirit. The templates are causal neighbourhoods as in
# JBIG (ITU-T T.82) and JBIG2 generic regions (ITU-T T.88), extended in depth.

ABOVE = 4
"""Zero rows above a stripe in the v3 kernel's image buffer (the deep template reads row y-4)."""

DEEP_CLASS_BITS = (2, 7, 12, 17, 20)
"""Deep-template bits that can be non-zero in row classes 0..4 of a stripe (class = min(row, 4))."""

DEEP_OFFSETS = (0, 4, 4 + 128, 4 + 128 + 4096, 4 + 128 + 4096 + 131072)
"""Start of each row class's deep contexts."""

NDEEP = DEEP_OFFSETS[4] + (1 << 20)
"""Number of deep contexts."""

# Deep template (20 pixels, reaching 4 rows up: the recent course of a steep curve): bit 0 = row y, x-1;
# bit 1 = row y, x-2; bits 2+j = row y-1, x-2+j; 7+j = row y-2, x-2+j; 12+j = row y-3, x-2+j (j = 0..4);
# bits 17+j = row y-4, x-1+j (j = 0..2).
DEEP_LEVEL_MASKS = (
    0b1 | 0b111 << 3,
    0b11 | 0b11111 << 2 | 0b111 << 8,
    0b11 | 0b11111 << 2 | 0b11111 << 7 | 0b111 << 13,
    (1 << 20) - 1,
)
"""Nested sub-templates, coarse to fine, of the deep prior's back-off."""

DEEP_BACKOFF_K = 16.0
"""Weight of the parent level's estimate when smoothing a deep context's training frequency."""

ADAPT_BITS = 10
"""Adaptive model template: row y x-1, x-2; row y-1 x-2..x+2; row y-2 x-1..x+1 (bits in that order): the
shape of the 10-pixel three-line template of JBIG (ITU-T T.82)."""

NADAPT = 3 << ADAPT_BITS
"""Adaptive contexts: template x row class min(row, 2)."""

ADAPT_LIMIT = 60
"""The adaptive model's rate is 1 / (n + 1.5) after n pixels of its context, n capped here."""

MIX_SETS = 16
"""Mixer weight sets, selected by row y x-1 and row y-1 x-1..x+1."""

MIX_INPUTS = 4
"""Mixer inputs: stretch(counts model), stretch(deep prior), stretch(adaptive model), bias."""

BIAS = 256
"""The bias input (1.0 in the stretch domain's units of 1/256)."""

MIX_SHIFT = 16
"""Learning rate of the mixer: w += (input * error) >> MIX_SHIFT (error in 1/65536, weights in 1/65536)."""

WEIGHT_MAX = 1 << 22
"""Mixer weights are clamped to +-WEIGHT_MAX (64.0)."""

STRETCH_MAX = 3071
"""Stretch values (ln(p / (1 - p)) in units of 1/256) are clamped to +-STRETCH_MAX (about +-12)."""

SQUASH_KNOTS = (
    0, 1, 1, 2, 3, 5, 8, 13, 22, 36, 60, 98, 162, 267, 439, 720, 1179, 1921, 3108, 4971, 7812, 11955, 17625,
    24743, 32768, 40793, 47911, 53581, 57724, 60565, 62428, 63615, 64357, 64816, 65097, 65269, 65374, 65438,
    65476, 65500, 65514, 65523, 65528, 65531, 65533, 65534, 65535, 65535, 65536,
)  # fmt: skip
"""round(65536 / (1 + exp(-k / 2))) for k = -24..24: squash is linear between these knots (every 128
units of the stretch domain), integers only, so every build computes the same probabilities."""


def squash(d: Any) -> Any:
    """P(1) in 1/65536 (1..65535) of a stretch value d in 1/256 (int or int array), by the knot table."""
    dd = np.clip(np.asarray(d, np.int64), -STRETCH_MAX, STRETCH_MAX) + 3072
    k = np.asarray(SQUASH_KNOTS, np.int64)
    lo = dd >> 7
    f = dd & 127
    return np.clip((k[lo] * (128 - f) + k[lo + 1] * f + 64) >> 7, 1, PROB_ONE - 1)


def _stretch_table() -> np.ndarray:
    """STRETCH[p] for p = 0..65535 (P(1) in 1/65536): the middle of the d with squash(d) == p, else the
    first d with squash(d) > p; an inverse of `squash` in integers."""
    ds = np.arange(-STRETCH_MAX, STRETCH_MAX + 1)
    sq = squash(ds)
    p = np.arange(PROB_ONE)
    lo = np.searchsorted(sq, p, side="left")
    hi = np.searchsorted(sq, p, side="right")
    idx = np.where(hi > lo, (lo + hi - 1) // 2, np.minimum(lo, len(ds) - 1))
    return ds[idx].astype(np.int64)


STRETCH = _stretch_table()
"""stretch(P(1) = p / 65536) in 1/256 for p = 0..65535."""

RATE = tuple((2 << PROB_BITS) // (2 * n + 3) for n in range(ADAPT_LIMIT + 1))
"""The adaptive model's update rate 1 / (n + 1.5) in 1/65536 after n pixels of a context."""


@dataclass(frozen=True)
class MixTables:
    """Everything the v3 coder reads: the counts model's tables, the deep prior (stretch per deep context)
    and the mixer's initial weights (MIX_SETS x MIX_INPUTS, in 1/65536)."""

    version: int
    counts: PriorTables
    deep: np.ndarray
    w0: np.ndarray

    @functools.cached_property
    def deep16(self) -> np.ndarray:
        """The deep table as int16 (its values are within +-STRETCH_MAX): a quarter of the cache footprint."""
        return self.deep.astype(np.int16)

    @functools.cached_property
    def lists(self) -> tuple[array[int], array[int]]:
        """(deep, w0) as arrays of Python-int items, for the plain-Python kernel."""
        return array("q", self.deep.astype(np.int64).tobytes()), array("q", self.w0.astype(np.int64).tobytes())


def deep_stretch_from_counts(d0: np.ndarray, d1: np.ndarray) -> np.ndarray:
    """The deep prior (int64 stretch per deep context) from training counts of non-edges and edges."""
    if d0.shape != (NDEEP,) or d1.shape != (NDEEP,):
        raise ModelError(f"deep prior counts must have {NDEEP} entries, got {d0.shape}, {d1.shape}")
    out = np.empty(NDEEP, np.int64)
    for r, nbits in enumerate(DEEP_CLASS_BITS):
        size = 1 << nbits
        sl = slice(DEEP_OFFSETS[r], DEEP_OFFSETS[r] + size)
        c1 = d1[sl].astype(np.float64)
        q = _backoff(c1, c1 + d0[sl].astype(np.float64), DEEP_LEVEL_MASKS, size, DEEP_BACKOFF_K, BASE_ALPHA)
        out[sl] = STRETCH[np.clip(np.rint(q * PROB_ONE).astype(np.int64), 1, PROB_ONE - 1)]
    return out


def default_weights() -> np.ndarray:
    """Mixer weights that pass the counts model through unchanged (before the mixer learns)."""
    w = np.zeros((MIX_SETS, MIX_INPUTS), np.int64)
    w[:, 0] = PROB_ONE
    return w


def mix_tables_from_counts(
    version: int, n0: np.ndarray, n1: np.ndarray, d0: np.ndarray, d1: np.ndarray, w0: np.ndarray
) -> MixTables:
    """v3 tables from training counts (counts model and deep template) and mixer weights."""
    w = np.asarray(w0, np.int64).reshape(MIX_SETS, MIX_INPUTS)
    if np.abs(w).max(initial=0) > WEIGHT_MAX:
        raise ModelError(f"edge mixer weights exceed +-{WEIGHT_MAX}")
    return MixTables(version, tables_from_counts(version, n0, n1), deep_stretch_from_counts(d0, d1), w.ravel())


def write_mix_prior(
    version: int, n0: np.ndarray, n1: np.ndarray, d0: np.ndarray, d1: np.ndarray, w0: np.ndarray
) -> bytes:
    """Serialise a v3 prior (see `read_prior`)."""
    import zstandard

    if not 1 <= version <= 0xFFFF:
        raise InputError(f"prior version must be 1..65535, got {version}")
    body = (
        np.concatenate([n0, n1, d0, d1]).astype("<u4").tobytes()
        + np.asarray(w0, np.int64).reshape(MIX_SETS * MIX_INPUTS).astype("<i4").tobytes()
    )
    head = (
        b"LCEP" + struct.pack("<HHI", version, MIX_TEMPLATE_ID, NIDX) + struct.pack("<IHH", NDEEP, MIX_SETS, MIX_INPUTS)
    )
    return head + zstandard.ZstdCompressor(19).compress(body)


def deep_indices(edges: np.ndarray, stripe_rows: int) -> np.ndarray:
    """Deep context of every pixel (flat int64, raster order), rows above a stripe read as 0."""
    e = edges.astype(np.int64)
    h, w = e.shape
    yin = np.arange(h) % stripe_rows
    pad = np.pad(e, ((0, 0), (2, 2)))

    def row(k: int, dx: int) -> np.ndarray:
        """Pixel (y - k, x + dx) of every (y, x), 0 outside the map or above the stripe."""
        a = np.zeros_like(e)
        if k < h:
            a[k:] = pad[: h - k, 2 + dx : 2 + dx + w]
        a[yin < k] = 0
        return a

    bits = row(0, -1) | row(0, -2) << 1
    for j in range(5):
        bits |= row(1, j - 2) << (2 + j) | row(2, j - 2) << (7 + j) | row(3, j - 2) << (12 + j)
    for j in range(3):
        bits |= row(4, j - 1) << (17 + j)
    cls = np.minimum(yin, 4)
    return (bits + np.asarray(DEEP_OFFSETS, np.int64)[cls][:, None]).ravel()


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


# `_stripe_mix_kernel` repeats `_code_stripe`'s range coder and template windows on purpose: each kernel is
# self-contained in this one file, so numba's disk cache (invalidated only when the kernel's own source file
# changes) can never keep a stale compiled kernel after a helper or constant elsewhere changes, and the
# kernels need no calls that pass arrays (which cost 3-4x under numba's reference counting).
def _stripe_mix_kernel(decode: int, record: int, ix: Callable[[int], Any] = operator.index) -> Callable[..., int]:
    """The v3/v4 coder of one stripe: like `_code_stripe` (same range coder, same flag, same counts model),
    but each pixel's P(edge) is the mix of three predictions (see the module docstring). Returns the kernel
    for one `decode` (1 decodes, 0 encodes) and `record`; it takes the other arguments below, in the order
    img, stride, rows, width, data, ndata, a1, a, state, deep, astate, w0, w, tag, dist_tab, stretch, knots,
    rate, rec, y0, fresh (those not described here as in `_code_stripe`), and returns what `_code_stripe` does.

    img: as in `_code_stripe` but with ABOVE (4) zero rows above the stripe. deep: stretch per deep context.
    astate: 3 ints per adaptive context (stamp, P(edge) in 1/65536, count). w0: the initial mixer weights
    (MIX_SETS * MIX_INPUTS), copied into w at the start. record: 1 to write 7 ints per pixel to rec
    (counts context, deep context, weight set, the three stretched inputs, the mixed P(edge)).
    y0: rows of the stripe's group above it in img (0..ABOVE; 0 = a stripe that starts a group, as every v3
    stripe does): row y of the stripe is in row class min(y + y0, ...). fresh: 1 to restart every adaptive
    state (a new `tag` and w = w0), 0 to carry on from the previous call (the group's previous stripe).

    numba compiles a closure's variables as constants, so each compiled build holds only its own branches.
    `ix` wraps every array index: the compiled builds pass np.uint64, for which numba emits no negative-index
    wraparound (every index here is non-negative); plain Python keeps the cheap `operator.index`. Together
    they make the compiled coder ~15% faster than one build taking decode and record as arguments, with
    signed indices (same results).
    """

    def kernel(
        img: Any,
        stride: Any,
        rows: Any,
        width: Any,
        data: Any,
        ndata: Any,
        a1: Any,
        a: Any,
        state: Any,
        deep: Any,
        astate: Any,
        w0: Any,
        w: Any,
        tag: Any,
        dist_tab: Any,
        stretch: Any,
        knots: Any,
        rate: Any,
        rec: Any,
        y0: Any,
        fresh: Any,
    ) -> Any:
        if fresh:
            for i in range(MIX_SETS * MIX_INPUTS):
                w[ix(i)] = w0[ix(i)]
        top = 1 << 32
        low = 0
        rng = top
        code = 0
        pos = 0
        if decode:
            for k in range(4):
                code = (code << 8) | (int(data[ix(k)]) if k < ndata else 0)
            pos = 4
            bound = (rng * P_EMPTY) >> PROB_BITS
            if code < bound:
                return 0
            code -= bound
            rng -= bound
        else:
            has = 0
            for i in range(ABOVE * stride, (rows + ABOVE) * stride):
                if img[ix(i)]:
                    has = 1
                    break
            if has == 0:
                return 0
            bound = (rng * P_EMPTY) >> PROB_BITS
            low += bound
            rng -= bound
        for y in range(rows):
            cls = min(y + y0, 3)
            zero = OFFSETS[cls]
            dzero = DEEP_OFFSETS[min(y + y0, 4)]
            azero = min(y + y0, 2) << ADAPT_BITS
            row = (y + ABOVE) * stride + PAD_LEFT
            r1 = row - stride
            r2 = r1 - stride
            r3 = r2 - stride
            r4 = r3 - stride
            w1 = 0
            for k in range(20):
                w1 |= int(img[ix(r1 - 7 + k)]) << k
            w2 = 0
            for k in range(13):
                w2 |= int(img[ix(r2 - 6 + k)]) << k
            w3 = 0
            for k in range(7):
                w3 |= int(img[ix(r3 - 3 + k)]) << k
            w4 = int(img[ix(r4 - 1)]) | (int(img[ix(r4)]) << 1) | (int(img[ix(r4 + 1)]) << 2)
            cur = 0
            for x in range(width):
                # 1. the counts model (as `_code_stripe`)
                t = (cur & 15) | (((w1 >> 4) & 0xFF) << 4) | (((w2 >> 4) & 0x1F) << 12) | (((w3 >> 3) & 1) << 17)
                if t & (t - 1) == 0:
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
                    d = dist_tab[ix((cur >> 4) & 0xFFF)]
                    if t == 0:
                        c = FAR_OFFSET + (cls * 64 + fb) * 5 + d
                    else:
                        b = 0
                        while t >> (b + 1):
                            b += 1
                        c = FAR1_OFFSET + ((cls * 18 + b) * 64 + fb) * 5 + d
                else:
                    c = zero + t
                s = 3 * c
                if state[ix(s)] != tag:
                    state[ix(s)] = tag
                    state[ix(s + 1)] = a1[ix(c)]
                    state[ix(s + 2)] = a[ix(c)]
                num = state[ix(s + 1)]
                den = state[ix(s + 2)]
                pe0 = (num << PROB_BITS) // den
                if pe0 < 1:
                    pe0 = 1
                elif pe0 > PROB_ONE - 1:
                    pe0 = PROB_ONE - 1
                s0 = stretch[ix(pe0)]
                # 2. the deep prior
                w5 = (w1 >> 5) & 31
                dc = dzero + ((cur & 3) | (w5 << 2) | (((w2 >> 4) & 31) << 7) | (((w3 >> 1) & 31) << 12) | (w4 << 17))
                s1 = deep[ix(dc)]
                # 3. the adaptive model
                ac = 3 * (azero + ((cur & 3) | (w5 << 2) | (((w2 >> 5) & 7) << 7)))
                if astate[ix(ac)] != tag:
                    astate[ix(ac)] = tag
                    astate[ix(ac + 1)] = PROB_ONE >> 1
                    astate[ix(ac + 2)] = 0
                ap = astate[ix(ac + 1)]
                s2 = stretch[ix(ap)]
                # 4. the mixer
                ws = ((cur & 1) | (((w1 >> 6) & 7) << 1)) * MIX_INPUTS
                dot = (w[ix(ws)] * s0 + w[ix(ws + 1)] * s1 + w[ix(ws + 2)] * s2 + w[ix(ws + 3)] * BIAS) >> PROB_BITS
                if dot < -STRETCH_MAX:
                    dot = -STRETCH_MAX
                elif dot > STRETCH_MAX:
                    dot = STRETCH_MAX
                dd = dot + 3072
                kk = dd >> 7
                ff = dd & 127
                pe = (knots[ix(kk)] * (128 - ff) + knots[ix(kk + 1)] * ff + 64) >> 7
                if pe < 1:
                    pe = 1
                elif pe > PROB_ONE - 1:
                    pe = PROB_ONE - 1
                if record:
                    o = 7 * (y * width + x)
                    rec[ix(o)] = c
                    rec[ix(o + 1)] = dc
                    rec[ix(o + 2)] = ws // MIX_INPUTS
                    rec[ix(o + 3)] = s0
                    rec[ix(o + 4)] = s1
                    rec[ix(o + 5)] = s2
                    rec[ix(o + 6)] = pe
                bound = (rng * (PROB_ONE - pe)) >> PROB_BITS
                bit = 0
                if decode:
                    if code < bound:
                        rng = bound
                    else:
                        bit = 1
                        code -= bound
                        rng -= bound
                        img[ix(row + x)] = 1
                    while rng < RANGE_MIN:
                        code = (code << 8) | (int(data[ix(pos)]) if pos < ndata else 0)
                        pos += 1
                        rng <<= 8
                else:
                    if img[ix(row + x)]:
                        bit = 1
                        low += bound
                        rng -= bound
                        if low >= top:
                            low -= top
                            i = pos - 1
                            while data[ix(i)] == 255:
                                data[ix(i)] = 0
                                i -= 1
                            data[ix(i)] += 1
                    else:
                        rng = bound
                    while rng < RANGE_MIN:
                        data[ix(pos)] = low >> 24
                        pos += 1
                        low = (low << 8) & 0xFFFFFFFF
                        rng <<= 8
                # updates: mixer (error * input), counts, adaptive model (rate 1 / (n + 1.5))
                err = (bit << PROB_BITS) - pe
                w[ix(ws)] = min(max(w[ix(ws)] + ((s0 * err) >> MIX_SHIFT), -WEIGHT_MAX), WEIGHT_MAX)
                w[ix(ws + 1)] = min(max(w[ix(ws + 1)] + ((s1 * err) >> MIX_SHIFT), -WEIGHT_MAX), WEIGHT_MAX)
                w[ix(ws + 2)] = min(max(w[ix(ws + 2)] + ((s2 * err) >> MIX_SHIFT), -WEIGHT_MAX), WEIGHT_MAX)
                w[ix(ws + 3)] = min(max(w[ix(ws + 3)] + ((BIAS * err) >> MIX_SHIFT), -WEIGHT_MAX), WEIGHT_MAX)
                n = astate[ix(ac + 2)]
                if bit:
                    state[ix(s + 1)] = num + INC
                    astate[ix(ac + 1)] = ap + (((PROB_ONE - ap) * rate[ix(n)]) >> PROB_BITS)
                    cur = ((cur << 1) | 1) & 0xFFFF
                else:
                    astate[ix(ac + 1)] = ap - ((ap * rate[ix(n)]) >> PROB_BITS)
                    cur = (cur << 1) & 0xFFFF
                if n < ADAPT_LIMIT:
                    astate[ix(ac + 2)] = n + 1
                state[ix(s + 2)] = den + INC
                w1 = (w1 >> 1) | (int(img[ix(r1 + x + 13)]) << 19)
                w2 = (w2 >> 1) | (int(img[ix(r2 + x + 7)]) << 12)
                w3 = (w3 >> 1) | (int(img[ix(r3 + x + 4)]) << 6)
                w4 = (w4 >> 1) | (int(img[ix(r4 + x + 2)]) << 2)
        if decode:
            return 0
        v = low
        for sh in range(32, 0, -1):
            cand = ((low + (1 << sh) - 1) >> sh) << sh
            if cand < low + rng:
                v = cand
                break
        if v >= top:
            v -= top
            i = pos - 1
            while data[ix(i)] == 255:
                data[ix(i)] = 0
                i -= 1
            data[ix(i)] += 1
        for k in range(4):
            data[ix(pos)] = (v >> (24 - 8 * k)) & 0xFF
            pos += 1
        while pos > 0 and data[ix(pos - 1)] == 0:
            pos -= 1
        return pos

    role = ("decode" if decode else "encode") + ("_record" if record else "")
    kernel.__name__ = kernel.__qualname__ = f"_code_stripe_mix_{role}"  # names its numba cache files
    return kernel


_MIX_KERNELS = {(d, r): _stripe_mix_kernel(d, r) for d, r in ((1, 0), (0, 0), (0, 1))}
"""The mixing coder's plain-Python kernels by (decode, record): decoding, encoding, encoding with a record."""


_STATE = threading.local()

Tables = PriorTables | MixTables
"""The tables of either coder: PriorTables for the counts-only coder (model versions 0 and 2), MixTables
for the mixing coder (model version 3)."""


@functools.cache
def _jitted() -> Callable[..., int] | None:
    """The numba build of `_code_stripe` (cached on disk next to this module), or None without numba."""
    return njit_or_none(_code_stripe)


@functools.cache
def _jitted_mix(decode: int, record: int) -> Callable[..., int] | None:
    """The numba build of the mixing coder's kernel for (decode, record), indexing unsigned, or None without
    numba."""
    return njit_or_none(_stripe_mix_kernel(decode, record, np.uint64))


class _Kernel:
    """`_code_stripe` / the `_stripe_mix_kernel`s with their per-thread state, compiled (numba) or plain Python."""

    def __init__(self, compiled: bool) -> None:
        fn = _jitted() if compiled else None
        mix = {key: _jitted_mix(*key) for key in _MIX_KERNELS} if fn is not None else {}
        self.compiled = fn is not None and all(k is not None for k in mix.values())
        self.fn: Callable[..., int] = fn if self.compiled and fn is not None else _code_stripe
        self.mix: dict[tuple[int, int], Callable[..., int]] = (
            cast(dict[tuple[int, int], Callable[..., int]], mix) if self.compiled else _MIX_KERNELS
        )
        c = self.compiled
        self.state: Any = np.zeros(3 * NIDX, np.int64) if c else array("q", bytes(24 * NIDX))
        self.astate: Any = np.zeros(3 * NADAPT, np.int64) if c else array("q", bytes(24 * NADAPT))
        self.w: Any = np.zeros(MIX_SETS * MIX_INPUTS, np.int64) if c else array("q", bytes(8 * MIX_SETS * MIX_INPUTS))
        self.tag = 0
        self.dist: Any = np.asarray(_DIST_OF_WINDOW, np.int64) if c else _DIST_OF_WINDOW
        self.stretch: Any = STRETCH.astype(np.int16) if c else array("q", STRETCH.tobytes())
        self.knots: Any = np.asarray(SQUASH_KNOTS, np.int64) if c else SQUASH_KNOTS
        self.rate: Any = np.asarray(RATE, np.int64) if c else RATE
        self.none: Any = np.zeros(1, np.int64) if c else [0]

    def run(
        self, decode: int, img: Any, rows: int, width: int, data: Any, tables: Tables, rec: Any = None,
        y0: int = 0, fresh: bool = True,
    ) -> int:  # fmt: skip
        """One stripe-kernel call: `fresh` with a new context tag (every adaptive state restarts), else (the
        mixing coder only) carrying on from the previous call with `y0` rows of context above the stripe."""
        if fresh:
            self.tag += 1
        ndata = len(data) if decode else 0
        out = self.none if rec is None else rec
        if isinstance(tables, MixTables):
            a1, a = (tables.counts.a1, tables.counts.a) if self.compiled else tables.counts.lists
            deep, w0 = (tables.deep16, tables.w0) if self.compiled else tables.lists
            return int(
                self.mix[decode, int(rec is not None)](
                    img, width + PAD, rows, width, data, ndata, a1, a, self.state, deep, self.astate, w0, self.w,
                    self.tag, self.dist, self.stretch, self.knots, self.rate, out, y0, int(fresh),
                )
            )  # fmt: skip
        a1, a = (tables.a1, tables.a) if self.compiled else tables.lists
        return int(
            self.fn(
                decode, img, width + PAD, rows, width, data, ndata, a1, a, self.state, self.tag, self.dist, out,
                int(rec is not None),
            )
        )  # fmt: skip

    def encode(self, stripe: np.ndarray, tables: Tables, rec: Any = None, above: np.ndarray | None = None) -> bytes:
        """Unit bytes of one stripe (uint8 rows x width). `above` (mixing coder only): the rows of the stripe's
        group above it (at most ABOVE are read); the coder then carries on from the previous call's state."""
        rows, width = stripe.shape
        mix = isinstance(tables, MixTables)
        top = ABOVE if mix else 3
        y0 = 0 if above is None else min(above.shape[0], ABOVE)
        buf = np.zeros((rows + top, width + PAD), np.uint8)
        buf[top:, PAD_LEFT : PAD_LEFT + width] = stripe
        if y0:
            buf[top - y0 : top, PAD_LEFT : PAD_LEFT + width] = np.asarray(above)[-y0:]
        size = 2 * rows * width + 16
        img: Any = buf.ravel() if self.compiled else bytearray(buf.tobytes())
        out: Any = np.zeros(size, np.uint8) if self.compiled else bytearray(size)
        n = self.run(0, img, rows, width, out, tables, rec, y0, above is None)
        return bytes(out[:n])

    def decode(self, unit: bytes, rows: int, width: int, tables: Tables, above: np.ndarray | None = None) -> np.ndarray:
        """The stripe (uint8 rows x width) a unit codes; any bytes give some stripe (garbage if corrupt).
        `above`: as in `encode` (the decoded rows of the group above; the previous call decoded its last stripe)."""
        data: Any = np.frombuffer(unit, np.uint8).copy() if self.compiled else unit
        top = ABOVE if isinstance(tables, MixTables) else 3
        y0 = 0 if above is None else min(above.shape[0], ABOVE)
        buf = np.zeros((rows + top, width + PAD), np.uint8)
        if y0:
            buf[top - y0 : top, PAD_LEFT : PAD_LEFT + width] = np.asarray(above)[-y0:]
        img: Any = buf.ravel() if self.compiled else bytearray(buf.tobytes())
        self.run(1, img, rows, width, data, tables, None, y0, above is None)
        full = np.frombuffer(img, np.uint8).reshape(rows + top, width + PAD)
        return full[top:, PAD_LEFT : PAD_LEFT + width]


def _kernel(compiled: bool = True) -> _Kernel:
    """This thread's kernel (state arrays are reused across calls: contexts restart by tag)."""
    k: _Kernel | None = getattr(_STATE, "compiled" if compiled else "plain", None)
    if k is None:
        k = _Kernel(compiled)
        setattr(_STATE, "compiled" if compiled else "plain", k)
    return k


def stripe_contexts(edges: np.ndarray, stripe_rows: int, compiled: bool = True) -> np.ndarray:
    """The coding context of every pixel as the counts-only coder computes it (flat int64, raster order).

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


MIX_RECORD_FIELDS = ("counts_ctx", "deep_ctx", "weight_set", "s_counts", "s_deep", "s_adaptive", "p_edge")
"""What `mix_record` gives per pixel, in this order."""


def mix_record(edges: np.ndarray, stripe_rows: int, tables: MixTables, compiled: bool = True) -> np.ndarray:
    """Per pixel (raster order) the v3 coder's MIX_RECORD_FIELDS as an int64 array (H*W, 7); rows of
    stripes without edges (no pixel coded) are -1. For checks and for fitting the mixer's weights."""
    e = _check_map(edges)
    h, w = e.shape
    k = _kernel(compiled)
    out = np.full((h * w, 7), -1, np.int64)
    for i in range(0, h, stripe_rows):
        stripe = e[i : i + stripe_rows]
        buf: Any = np.full(7 * stripe.size, -1, np.int64) if k.compiled else array("q", [-1] * (7 * stripe.size))
        k.encode(stripe, tables, buf)
        out[i * w : i * w + stripe.size] = np.asarray(buf).reshape(-1, 7)
    return out


def encode_units(
    edges: np.ndarray, stripe_rows: int, tables: Tables, compiled: bool = True, group: int = 1
) -> list[bytes]:
    """Unit bytes of every stripe of a 0/1 map (compiled: numba if installed, else plain Python). `group`
    (mixing coder only): stripes per context group; stripe i carries on from stripe i-1 unless i % group == 0."""
    e = _check_map(edges)
    k = _kernel(compiled)
    units = []
    for n, i in enumerate(range(0, e.shape[0], stripe_rows)):
        above = None if n % group == 0 else e[max(i - ABOVE, (n - n % group) * stripe_rows) : i]
        units.append(k.encode(e[i : i + stripe_rows], tables, None, above))
    return units


def _check_unit(unit: bytes, rows: int, width: int) -> None:
    if len(unit) > 3 * rows * width + 16:
        raise CodecError(f"edge stripe of {len(unit)} bytes is longer than any {width}x{rows} stripe can code to")


def decode_unit(unit: bytes, rows: int, width: int, tables: Tables, compiled: bool = True) -> np.ndarray:
    """Decode one stripe's unit to a bool array rows x width; CodecError if it is longer than any stripe codes to."""
    _check_unit(unit, rows, width)
    return _kernel(compiled).decode(unit, rows, width, tables).astype(bool)


def decode_units(
    units: Sequence[bytes | None], height: int, width: int, stripe_rows: int, tables: Tables, group: int = 1,
    compiled: bool = True,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(edges, known) bool height x width from the units that arrived (None = lost). A stripe of a context
    group (`group` > 1, see `encode_units`) decodes only if every earlier stripe of its group did: after a
    lost stripe the rest of its group is unknown (False, `known` False) too."""
    k = _kernel(compiled)
    edges = np.zeros((height, width), bool)
    known = np.ones((height, width), bool)
    chain_ok = False
    for n, unit in enumerate(units):
        y = n * stripe_rows
        rows = min(stripe_rows, height - y)
        first = n % group == 0
        if unit is None or not (first or chain_ok):
            known[y : y + rows] = False
            chain_ok = False
            continue
        _check_unit(unit, rows, width)
        above = None if first else edges[max(y - ABOVE, (n - n % group) * stripe_rows) : y].astype(np.uint8)
        edges[y : y + rows] = k.decode(bytes(unit), rows, width, tables, above)
        chain_ok = True
    return edges, known


@register
class EdgesCtxCodec(LayerCodec):
    """Binary edge maps: context-modelled arithmetic coding with a shipped prior, one unit per stripe."""

    codec_id = EDGES_CTX
    name = "edges-ctx"
    kind = LayerKind.STRUCTURE_EDGES

    def compress(self, value: EdgeMap, **options: Any) -> EncodedLayer:
        """Options: stripe_rows (default 16), source (pb.EDGE_SOURCE_*; default value.source), prior (bool,
        default True; False = model version 0, no prior), model_version (one of MODEL_VERSIONS; default
        GROUP_VERSION, the mixing coder in context groups; MIX_VERSION with independent stripes;
        LEGACY_VERSION codes as earlier builds did), stripe_group (version 4 only: stripes per context
        group, default DEFAULT_STRIPE_GROUP; 1 = independent stripes). The descriptor uses the short forms of
        `proto.framing.edge_geometry` where they apply: height 0 for a square map, stripe_rows 0 for 32 rows."""
        unknown = set(options) - {"stripe_rows", "source", "prior", "model_version", "stripe_group"}
        if unknown:
            raise InputError(
                f"unknown edge codec option(s) {sorted(unknown)}; known: model_version, prior, source, stripe_group, "
                "stripe_rows"
            )
        version = int(options.get("model_version", GROUP_VERSION if options.get("prior", True) else 0))
        if version not in MODEL_VERSIONS or (version and not options.get("prior", True)):
            raise InputError(f"edge model_version must be one of {MODEL_VERSIONS} (0 without a prior), got {version}")
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
        group = int(options.get("stripe_group", DEFAULT_STRIPE_GROUP if version == GROUP_VERSION else 1))
        if version != GROUP_VERSION and group != 1:
            raise InputError(f"stripe_group needs model_version {GROUP_VERSION}; v{version} stripes are independent")
        if not 1 <= group <= limits.MAX_UNITS:
            raise InputError(f"stripe_group must be 1..{limits.MAX_UNITS}, got {group}")
        tables = tables_for(version)
        units = encode_units(e, stripe_rows, tables, group=group)
        desc = pb.LayerDescriptor(
            codec=self.codec_id,
            unit_count=count,
            edges=pb.EdgeParams(  # short forms (proto.framing.edge_geometry): height 0 = width, stripe_rows 0 = 32
                width=w,
                height=0 if h == w else h,
                stripe_rows=0 if stripe_rows == EDGE_STRIPE_ROWS_DEFAULT else stripe_rows,
                source=cast(pb.EdgeSource, source),
                model_version=version,
                stripe_group=0 if version != GROUP_VERSION or group == DEFAULT_STRIPE_GROUP else group,
            ),
        )
        return EncodedLayer(LayerKind.STRUCTURE_EDGES, desc, units)

    def decompress(self, descriptor: pb.LayerDescriptor, units: Sequence[bytes | None]) -> EdgeMap:
        """Decode; a lost unit (None) leaves its rows False with `known` False there."""
        if descriptor.codec != self.codec_id or descriptor.WhichOneof("params") != "edges":
            raise CodecError("layer descriptor is not an edges-ctx descriptor (codec 3 with edge params)")
        p = descriptor.edges
        w, h, s = edge_geometry(p)
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
        version = int(p.model_version)
        tables = tables_for(version)
        group = int(p.stripe_group)
        if version == GROUP_VERSION:
            group = group or DEFAULT_STRIPE_GROUP
        elif group > 1:
            raise CodecError(f"edge stripe_group {group} needs model_version {GROUP_VERSION}, got v{version}")
        else:
            group = 1
        edges, known = decode_units(units, h, w, s, tables, group)
        return EdgeMap(edges=edges, known=None if known.all() else known, source=int(p.source))


def warm_up(*, encoder: bool = True) -> None:
    """Load the prior and compile the default coder (v4) now, its decoder and, unless `encoder` is False (a
    receiver), its encoder: about 0.8 s with a numba cache, ~3 s per kernel without. The first real image
    then does not stall an event loop. The v2 coder (old layers) loads and compiles on first use."""
    bits = np.zeros((8, 8), np.uint8)
    bits[2, 1:6] = 1
    bits[5, 2:7] = 1
    tables = shipped_mix_prior()
    units = encode_units(bits, 4, tables, compiled=encoder, group=DEFAULT_STRIPE_GROUP)
    edges, _ = decode_units(units, 8, 8, 4, tables, DEFAULT_STRIPE_GROUP)
    if not np.array_equal(edges, bits.astype(bool)):
        raise ModelError("the edge coder does not decode what it encodes (corrupt prior or kernel)")
