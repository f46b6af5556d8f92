"""Prompt model 2 ("mix", PromptParams.model_version 0): a static context-mixing model of prompt text over
bits, and its binary arithmetic coder.

Credits: the architecture follows Matt Mahoney's PAQ8 / lpaq1: binary context models whose bit counts go
through adaptive state-to-probability maps, gated logistic mixing of their stretched probabilities (a
two-layer mixer network, as in PAQ8), adaptive probability maps (SSE/APM) after it, the integer
stretch/squash tables and lpaq1's carry-less 32-bit binary arithmetic coder. What differs: the context
statistics are STATIC (counted once over the public prompt corpora, shipped, never changed by coding, so
each prompt decodes on its own), they are byte-level counts (a context keeps the bytes that followed it;
the counts of a bit are the sums over the bytes under it), and the text's end is not a coded symbol but
the unit's length (below).

Text: the prompt's UTF-8 bytes, each coded as 8 binary decisions, most significant bit first; c0 is the
partial byte with a leading 1 (1 before the first bit).

Static components (tables built by `Trainer`, see the model file in `serialize`):
  orders 0..6   the bytes that followed each context of the last k bytes (before the text: a marker) in
                the corpora, the contexts nested in one trie (walked byte by byte when coding);
  word          the current word so far (case-folded letters, digits and non-ASCII bytes form words),
                with the separator byte before it at a word start, by 28-bit hash key;
  word pair     the same with the previous word.
For a bit, a component's n0 / n1 are the counts of the bytes under c0 with that bit 0 / 1 (a count below
the component's threshold reads as 0), turned into a state: exact (n0, n1) while n0 + n1 < 8, else six
confidence bands x 36 stretched-ratio bands.
Adaptive components, learnt within the prompt (encoder and decoder alike): bit counts at orders 1..3
(same states), and a match model (the byte after the last earlier occurrence of the last 4 bytes in the
prompt, its next bit weighted by the match length).
Each state has a trained probability (state map); the stretched probabilities and a bias feed 4 mixers
(weight sets chosen by c0; seen components and match length; the last byte; the longest seen order and
word length), a final mixer combines their outputs, and two APMs (contexts: c0 with the seen components;
a hash of c0 and the last two bytes) refine the result: P = (2 mix + apm1 + apm2) / 4, in 1/4096, 1..4095.
The builder trains state maps, mixers and APMs over the corpora leave-one-out (while a prompt is trained
on, its own counts are taken out), then freezes them; counts ship quantised (TABLES["dq"] levels).

Unit bytes: E + F + check. E: the bytes the coder shifted out; F: the termination, the shortest byte
string (by length, then value) that puts the coder's value (read with zeros after it) in the final
interval, does not end in a zero byte, and is not the termination of any shorter prefix of the text. The
decoder stops at the first byte boundary whose termination is exactly the unit, so the unit's length
tells where the text ends, for free. check: the low 8 bits of CRC-32(text) (`MixSpec.check_bytes`).
Almost any bytes are the canonical coding of some text, so the check is what catches a corrupted unit
that got past the packet's CRC-32C: about 255 in 256. The decoder also refuses a unit that is not what
the encoder writes for the decoded text, and caps the decoded length.

The coding loop (prompt_kernel.kernel) is plain integer code: compiled with numba when installed (the
`fast` extra), plain Python otherwise, with the same bytes (about 1 ms per 200 characters compiled,
about 250 ms plain). Building a model needs numba.
"""

from __future__ import annotations

import functools
import json
import math
import struct
import threading
import zlib
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from layercast.common import limits
from layercast.common.codecs.prompt_kernel import (
    KIND_WORD1,
    KIND_WORD2,
    MODE_DECODE,
    MODE_ENCODE,
    MODE_EVAL,
    NFINAL,
    NSEL,
    SEL_END,
    jitted,
    kernel,
)
from layercast.common.errors import CodecError, ModelError

# --- integer tables (Mahoney's lpaq1 squash / stretch) ------------------------------------------------------

_SQUASH_POINTS = (
    1,
    2,
    3,
    6,
    10,
    16,
    27,
    45,
    73,
    120,
    194,
    310,
    488,
    747,
    1101,
    1546,
    2047,
    2549,
    2994,
    3348,
    3607,
    3785,
    3901,
    3975,
    4024,
    4050,
    4068,
    4079,
    4085,
    4089,
    4092,
    4093,
    4094,
)


def _squash(d: int) -> int:
    """4096 / (1 + e^(-d / 256)), interpolated between 33 points (lpaq1)."""
    if d > 2047:
        return 4095
    if d < -2047:
        return 0
    w = d & 127
    i = (d >> 7) + 16
    return (_SQUASH_POINTS[i] * (128 - w) + _SQUASH_POINTS[i + 1] * w + 64) >> 7


def _tables() -> dict[str, np.ndarray]:
    sq = np.array([_squash(d - 2048) for d in range(4096)], np.int64)
    st = np.zeros(4096, np.int64)
    pi = 0
    for d in range(-2047, 2048):  # stretch: the inverse of squash
        v = _squash(d)
        st[pi : v + 1] = d
        pi = v + 1
    st[pi:] = 2047
    dq = [*range(33)]  # count levels: exact to 32, then about 2**(1/16) apart (integer recurrence)
    while len(dq) < 256:
        dq.append(dq[-1] + max(1, (dq[-1] * 1451) >> 15))
    dqa = np.array(dq, np.int64)
    cq = dqa[np.searchsorted(dqa, np.arange(dq[-1] + 1), side="right") - 1]
    lg = np.zeros(4097, np.int64)
    lg[1:4096] = [round(-math.log2(p / 4096) * 65536) for p in range(1, 4096)]
    recip = np.array([(2 * 65536) // (2 * n + 3) for n in range(1024)], np.int64)
    return {"cq": cq, "dq": dqa, "st": st, "sq": sq, "lg": lg, "recip": recip}


TABLES = _tables()
_TABLE_NAMES = ("cq", "st", "sq", "lg", "recip")

PRM_FIELDS = ("na", "abits", "mbits", "lr", "ap_rate", "ap2bits", "sm_limit", "minlen", "keybits", "lr2")


@dataclass(frozen=True)
class MixSpec:
    """The structure of a mix model: its static components (kind, count threshold) and integer parameters.

    The components must start with the byte orders 0, 1, ..., K (contexts nested in one trie), with
    non-decreasing thresholds; word components follow."""

    kinds: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, KIND_WORD1, KIND_WORD2)
    thr: tuple[int, ...] = (1, 1, 1, 1, 2, 2, 2, 2, 2)
    na: int = 3  # within-prompt orders 1..na
    abits: int = 10
    mbits: int = 10
    lr: int = 4
    ap_rate: int = 7
    ap2bits: int = 12
    sm_limit: int = 1023
    minlen: int = 4
    keybits: int = 28
    lr2: int = 2
    check_bytes: int = 1

    def __post_init__(self) -> None:
        nord = self.nord
        if len(self.thr) != len(self.kinds) or nord < 1 or any(k < 16 for k in self.kinds[nord:]):
            raise ModelError(f"invalid prompt model components {self.kinds} / thresholds {self.thr}")
        if any(self.thr[i] > self.thr[i + 1] for i in range(nord - 1)) or min(self.thr) < 1:
            raise ModelError(f"prompt model thresholds {self.thr} must be >= 1 and non-decreasing over the orders")

    @property
    def nord(self) -> int:
        n = 0
        while n < len(self.kinds) and self.kinds[n] == n:
            n += 1
        return n

    @property
    def nin(self) -> int:
        return len(self.kinds) + self.na + 2

    @property
    def sm_size(self) -> int:
        return (len(self.kinds) + self.na) * 256 + 64

    @property
    def mw_size(self) -> int:
        return SEL_END * self.nin + NFINAL * (NSEL + 1)

    def prm(self) -> np.ndarray:
        return np.array([getattr(self, f) for f in PRM_FIELDS], np.int64)


@dataclass
class MixTables:
    """A model's statistics and trained numbers (numpy int64 arrays unless noted).

    Contexts are numbered: the byte-order contexts first, breadth first (order 0 is context 0; the children
    of a context are consecutive and sorted by their byte), then each word component's contexts sorted by
    key. Component i owns contexts kseg[i]:kseg[i + 1]."""

    kseg: np.ndarray
    keys: np.ndarray  # word contexts: key (order contexts: 0)
    trie: np.ndarray  # order contexts: (first child, child count) pairs
    ksym: np.ndarray  # order contexts: the byte (0..255, 256 = before the text) added to the parent's context
    cstart: np.ndarray  # context j's symbols: cstart[j]:cstart[j + 1]
    syms: np.ndarray  # uint8 symbols, ascending within a context
    cnts: np.ndarray  # int32 counts
    sm: np.ndarray
    mw: np.ndarray
    ap1: np.ndarray
    ap2: np.ndarray

    def model_arrays(self) -> tuple[np.ndarray, ...]:
        return (self.kseg, self.keys, self.trie, self.ksym, self.cstart, self.syms, self.cnts)


def _initial(spec: MixSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Untrained sm, mw, ap1, ap2: p = 1/2, first-layer weights 1/4, second layer the mean, APMs the identity."""
    ap_init = np.array([TABLES["sq"][min(4095, (j - 16) * 128 + 2048)] * 16 for j in range(33)], np.int64)
    final = np.tile(np.array([65536 // NSEL] * NSEL + [0], np.int64), NFINAL)
    return (
        np.full(spec.sm_size, 32768, np.int64),
        np.concatenate([np.full(SEL_END * spec.nin, 1 << 14, np.int64), final]),
        np.tile(ap_init, 4096),
        np.tile(ap_init, 1 << spec.ap2bits),
    )


class _Scratch:
    """Work arrays of the kernel (the within-prompt tables are reset by tag)."""

    def __init__(self, spec: MixSpec, maxlen: int, compiled: bool, nkeys: int = 1) -> None:
        nc, na = len(spec.kinds), spec.na

        def z(n: int, dtype: Any = np.int64) -> Any:
            if compiled:
                return np.zeros(n, dtype)
            return bytearray(n) if dtype is np.uint8 else [0] * n

        self.acnt = z(2 * na << spec.abits)
        self.atag = z(na << spec.abits)
        self.mtab = z(1 << spec.mbits)
        self.mtag = z(1 << spec.mbits)
        self.hist = z(maxlen + 8, np.uint8)
        self.hh = z(nc + na)
        self.xs = z(nc + na + 3 + NSEL)
        self.sidx = z(nc + na + 1 + NSEL)
        self.lo = z(nc)
        self.hi = z(nc)
        self.split = z(nc)
        self.sets = z(NSEL)
        self.terms = z(3 * maxlen + 6)
        self.keyout = z(nkeys)
        self.tag = 0
        self.maxlen = maxlen

    def tables(self) -> tuple[Any, ...]:
        return (self.acnt, self.atag, self.mtab, self.mtag)

    def arrays(self) -> tuple[Any, ...]:
        return (
            self.hist,
            self.hh,
            self.xs,
            self.sidx,
            self.lo,
            self.hi,
            self.split,
            self.sets,
            self.terms,
            self.keyout,
        )


class MixModel:
    """A mix model: `encode` a text's bytes into a unit, `decode` a unit back (canonical units only)."""

    def __init__(self, version: int, spec: MixSpec, tables: MixTables) -> None:
        self.version = version
        self.spec = spec
        self.tables = tables
        self._local = threading.local()
        self._args: dict[bool, tuple[Any, ...]] = {}
        self._lock = threading.Lock()

    def _check(self, text: bytes) -> bytes:
        n = self.spec.check_bytes
        return (zlib.crc32(text) & ((1 << (8 * n)) - 1)).to_bytes(n, "little")

    def _const_args(self, compiled: bool) -> tuple[Any, ...]:
        """(kinds, thr, model arrays..., sm, smn, mw, ap1, ap2) and (tables..., prm) as the kernel takes them."""
        got = self._args.get(compiled)
        if got is None:
            t, s = self.tables, self.spec
            if compiled:
                got = (
                    (
                        np.array(s.kinds, np.int64),
                        np.array(s.thr, np.int64),
                        *t.model_arrays(),
                        t.sm,
                        np.zeros(1, np.int64),
                        t.mw,
                        t.ap1,
                        t.ap2,
                    ),
                    (*(TABLES[k] for k in _TABLE_NAMES), s.prm()),
                )
            else:

                def q(a: np.ndarray) -> array[int]:
                    return array("q", a.astype(np.int64).tobytes())

                got = (
                    (
                        list(s.kinds),
                        list(s.thr),
                        q(t.kseg),
                        q(t.keys),
                        q(t.trie),
                        q(t.ksym),
                        q(t.cstart),
                        bytes(t.syms.astype(np.uint8)),
                        q(t.cnts),
                        q(t.sm),
                        [0],
                        q(t.mw),
                        q(t.ap1),
                        q(t.ap2),
                    ),
                    (*(TABLES[k].tolist() for k in _TABLE_NAMES), s.prm().tolist()),
                )
            with self._lock:
                self._args[compiled] = got
        return got

    def _scratch(self, compiled: bool, maxlen: int) -> _Scratch:
        key = "c" if compiled else "p"
        sc: _Scratch | None = getattr(self._local, key, None)
        if sc is None or sc.maxlen < maxlen:
            sc = _Scratch(self.spec, max(maxlen, 1024), compiled)
            setattr(self._local, key, sc)
        return sc

    def _run(self, mode: int, data: bytes, maxlen: int, compiled: bool) -> tuple[int, bytes]:
        jit = jitted() if compiled else None
        fn: Any = jit[0] if jit is not None else kernel
        compiled = jit is not None
        sc = self._scratch(compiled, max(maxlen, len(data)))
        size = 2 * len(data) + 16 if mode == MODE_ENCODE else maxlen + 1
        buf: Any = np.zeros(size, np.uint8) if compiled else bytearray(size)
        src: Any = np.frombuffer(data, np.uint8) if compiled else data
        sc.tag += 1
        model, consts = self._const_args(compiled)
        n = int(fn(mode, src, len(data), buf, maxlen, *model, *sc.tables(), sc.tag, *sc.arrays(), *consts))
        return n, bytes(buf[: max(n, 0)])

    def costs(self, text: bytes) -> list[int]:
        """The cumulative cost (1/65536 bits) after each byte of `text` (for analysis; numba only)."""
        jit = jitted()
        if jit is None:
            raise ModelError("cost analysis needs numba")
        sc = _Scratch(self.spec, len(text), True, len(text) + 1)
        model, consts = self._const_args(True)
        jit[0](
            MODE_EVAL,
            np.frombuffer(text, np.uint8),
            len(text),
            np.zeros(1, np.uint8),
            0,
            *model,
            *sc.tables(),
            1,
            *sc.arrays(),
            *consts,
        )
        return [int(v) for v in sc.keyout[: len(text)]]

    def code(self, text: bytes, compiled: bool = True) -> bytes:
        """The coder bytes of `text` (without the check bytes)."""
        return self._run(MODE_ENCODE, text, len(text), compiled)[1]

    def encode(self, text: bytes, compiled: bool = True) -> bytes:
        """The unit for `text`: the coder bytes, then the check bytes."""
        return self.code(text, compiled) + self._check(text)

    def decode(self, unit: bytes, max_bytes: int = limits.MAX_PROMPT_BYTES, compiled: bool = True) -> bytes:
        """Invert `encode`; CodecError if `unit` is not the canonical coding of some text."""
        nc = self.spec.check_bytes
        if len(unit) < nc:
            raise CodecError(f"prompt unit of {len(unit)} bytes is shorter than its {nc}-byte check")
        data, check = unit[: len(unit) - nc], unit[len(unit) - nc :]
        n, text = self._run(MODE_DECODE, data, max_bytes, compiled)
        if n == -1:
            raise CodecError(f"prompt unit decodes to more than {max_bytes} bytes; the unit is corrupt")
        if n < 0:
            raise CodecError("prompt unit is corrupt (no text ends where it ends)")
        if self._check(text) != check:
            raise CodecError("prompt unit is corrupt (check value mismatch)")
        if self.code(text, compiled) != data:
            raise CodecError("prompt unit is corrupt (it is not the canonical coding of its text)")
        return text


# --- model file ---------------------------------------------------------------------------------------------

MAGIC = b"LCPX"
FORMAT = 1
_HEAD = struct.Struct("<4sHH")


def _sections(spec: MixSpec, t: MixTables) -> list[tuple[str, np.ndarray]]:
    """The body of a model file: (name, array) in file order; see `serialize`."""
    nord = spec.nord
    kseg = t.kseg
    dq = TABLES["dq"]
    out: list[tuple[str, np.ndarray]] = []
    for d in range(1, nord):
        parents = np.arange(kseg[d - 1], kseg[d])
        out.append((f"nchild{d}", t.trie[2 * parents + 1].astype("<u2")))
        out.append((f"byte{d}", t.ksym[kseg[d] : kseg[d + 1]].astype("<u2")))
    for i in range(nord, len(spec.kinds)):
        k = t.keys[kseg[i] : kseg[i + 1]]
        out.append((f"keys{i}", np.diff(k, prepend=0).astype("<u4")))
    levels = np.searchsorted(dq, t.cnts, side="right") - 1
    out += [
        ("nsym", np.diff(t.cstart).astype("<u2")),
        ("syms", t.syms.astype(np.uint8)),
        ("levels", levels.astype(np.uint8)),
        ("sm", t.sm.astype("<u2")),
        ("mw", t.mw.astype("<i4")),
        ("ap1", t.ap1.astype("<u2")),
        ("ap2", t.ap2.astype("<u2")),
    ]
    return out


def serialize(version: int, spec: MixSpec, t: MixTables) -> bytes:
    """The model file: b"LCPX" | u16 version | u16 header length | header (JSON: format, spec, the
    section sizes) | u32 body length | body (one zstd frame: the sections, little-endian, in order) |
    u32 CRC-32 of everything before it. Sections: for each byte order d >= 1, the child count of every
    order d-1 context (u16) and the byte of every order d context (u16); for each word component, its
    sorted keys delta-coded (u32); the symbol count of every context (u16), the symbols (u8), the count
    levels (u8, see TABLES["dq"]); state maps (u16), mixer weights (i32), APMs (u16). Deterministic."""
    import zstandard

    secs = _sections(spec, t)
    head = {
        "format": FORMAT,
        "spec": {f: getattr(spec, f) for f in spec.__dataclass_fields__},
        "sections": [[name, a.dtype.str, len(a)] for name, a in secs],
    }
    hj = json.dumps(head, sort_keys=True, separators=(",", ":")).encode()
    body = zstandard.ZstdCompressor(level=19).compress(b"".join(a.tobytes() for _, a in secs))
    out = _HEAD.pack(MAGIC, version, len(hj)) + hj + struct.pack("<I", len(body)) + body
    return out + struct.pack("<I", zlib.crc32(out))


def parse(data: bytes) -> MixModel:
    """The model a model file holds; ModelError when the bytes are not a valid model file."""
    import zstandard

    if len(data) < _HEAD.size + 8 or data[:4] != MAGIC:
        raise ModelError("prompt model file is not an LCPX model; reinstall layercast")
    body, (crc,) = data[:-4], struct.unpack("<I", data[-4:])
    if zlib.crc32(body) != crc:
        raise ModelError("prompt model file is corrupt (CRC mismatch); reinstall layercast")
    try:
        _, version, hlen = _HEAD.unpack_from(body)
        head = json.loads(body[_HEAD.size : _HEAD.size + hlen])
        if head["format"] != FORMAT:
            raise ModelError(f"prompt model file format {head['format']} is not readable (want {FORMAT})")
        fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in head["spec"].items()}
        spec = MixSpec(**fields)
        (blen,) = struct.unpack_from("<I", body, _HEAD.size + hlen)
        raw = zstandard.ZstdDecompressor().decompress(body[_HEAD.size + hlen + 4 :][:blen])
        secs: dict[str, np.ndarray] = {}
        pos = 0
        for name, dtype, n in head["sections"]:
            dt = np.dtype(dtype)
            secs[name] = np.frombuffer(raw, dt, n, pos).astype(np.int64)
            pos += dt.itemsize * n
        if pos != len(raw):
            raise ModelError("prompt model file body has the wrong size; reinstall layercast")
        return MixModel(version, spec, _tables_from(spec, secs))
    except (KeyError, ValueError, TypeError, struct.error, zstandard.ZstdError) as exc:
        raise ModelError(f"prompt model file is malformed ({exc}); reinstall layercast") from exc


def _tables_from(spec: MixSpec, secs: dict[str, np.ndarray]) -> MixTables:
    nord, nc = spec.nord, len(spec.kinds)
    sizes = [1] + [len(secs[f"byte{d}"]) for d in range(1, nord)] + [len(secs[f"keys{i}"]) for i in range(nord, nc)]
    kseg = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    ntot = int(kseg[-1])
    trie = np.zeros(2 * ntot, np.int64)
    ksym = np.full(ntot, -1, np.int64)
    keys = np.zeros(ntot, np.int64)
    for d in range(1, nord):
        nch = secs[f"nchild{d}"]
        if len(nch) != sizes[d - 1] or int(nch.sum()) != sizes[d]:
            raise ValueError(f"order {d} child counts do not add up")
        first = kseg[d] + np.concatenate([[0], np.cumsum(nch)[:-1]])
        trie[2 * kseg[d - 1] : 2 * kseg[d] : 2] = np.where(nch > 0, first, 0)
        trie[2 * kseg[d - 1] + 1 : 2 * kseg[d] : 2] = nch
        ksym[kseg[d] : kseg[d + 1]] = secs[f"byte{d}"]
    for i in range(nord, nc):
        keys[kseg[i] : kseg[i + 1]] = np.cumsum(secs[f"keys{i}"])
    nsym = secs["nsym"]
    if len(nsym) != ntot:
        raise ValueError("symbol counts do not match the contexts")
    cstart = np.concatenate([[0], np.cumsum(nsym)]).astype(np.int64)
    dq = TABLES["dq"]
    return MixTables(
        kseg,
        keys,
        trie,
        ksym,
        cstart,
        secs["syms"].astype(np.uint8),
        dq[secs["levels"]].astype(np.int32),
        secs["sm"],
        secs["mw"],
        secs["ap1"],
        secs["ap2"],
    )


# --- building (numba required) --------------------------------------------------------------------------


def _pack(texts: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
    starts = np.zeros(len(texts) + 1, np.int64)
    starts[1:] = np.cumsum([len(t) for t in texts])
    return np.frombuffer(b"".join(texts), np.uint8).copy() if texts else np.zeros(0, np.uint8), starts


def _train_order(texts: Sequence[bytes]) -> np.ndarray:
    """A fixed interleaving of the build texts (by CRC-32), so the trained numbers do not follow file order."""
    return np.array(sorted(range(len(texts)), key=lambda i: (zlib.crc32(texts[i]), texts[i])), np.int64)


class Trainer:
    """Builds a mix model from texts (numba required): count, then train leave-one-out, then freeze."""

    def __init__(self, spec: MixSpec, texts: Sequence[bytes]) -> None:
        jit = jitted()
        if jit is None or jit[1] is None:
            raise ModelError("building a prompt model needs numba: pip install 'layercast[fast]'")
        self.batch = jit[1]
        self.spec = spec
        self.texts = list(texts)
        self.smn = np.zeros(spec.sm_size, np.int64)
        self.order = _train_order(self.texts)
        self.data, self.starts = _pack(self.texts)
        sm, mw, ap1, ap2 = _initial(spec)
        z = np.zeros
        self.tables = MixTables(
            z(len(spec.kinds) + 1, np.int64),
            z(1, np.int64),
            z(2, np.int64),
            z(1, np.int64),
            z(2, np.int64),
            z(1, np.uint8),
            z(1, np.int32),
            sm,
            mw,
            ap1,
            ap2,
        )
        nw = len(spec.kinds) - spec.nord
        keyout = self._run(0, self.data, self.starts, np.arange(len(self.texts), dtype=np.int64), len(self.data) * nw)
        self._count(keyout.reshape(len(self.data), nw))

    def _run(self, stage: int, data: np.ndarray, starts: np.ndarray, order: np.ndarray, nkeys: int = 1) -> Any:
        spec, t = self.spec, self.tables
        maxlen = int(np.max(np.diff(starts))) if len(starts) > 1 else 0
        sc = _Scratch(spec, maxlen, True, max(nkeys, 1))
        total = int(
            self.batch(
                stage,
                data,
                starts,
                order,
                np.array(spec.kinds, np.int64),
                np.array(spec.thr, np.int64),
                *t.model_arrays(),
                t.sm,
                self.smn,
                t.mw,
                t.ap1,
                t.ap2,
                *sc.tables(),
                *sc.arrays(),
                *(TABLES[k] for k in _TABLE_NAMES),
                spec.prm(),
            )
        )
        return sc.keyout if stage == 0 else total

    def _count(self, wkeys: np.ndarray) -> None:
        """The exact statistics: the byte-order context trie (numpy, from the text), word contexts by key."""
        data, starts = self.data.astype(np.int64), self.starts
        n = len(data)
        tstart = np.repeat(starts[:-1], np.diff(starts))
        pos = np.arange(n)
        ids = np.zeros(n, np.int64)
        nctx = 1
        kseg = [0, 1]
        ksyms: list[np.ndarray] = [np.array([-1], np.int64)]
        nchild: list[np.ndarray] = []
        ctx_of_pos = [ids]
        for d in range(1, self.spec.nord):
            b = np.where(pos - d >= tstart, data[np.maximum(pos - d, 0)], 256)
            u, inv = np.unique(ids * 257 + b, return_inverse=True)
            nchild.append(np.bincount(u // 257 - kseg[-2], minlength=kseg[-1] - kseg[-2]))
            ksyms.append(u % 257)
            ids = inv.reshape(-1) + nctx
            ctx_of_pos.append(ids)
            nctx += len(u)
            kseg.append(nctx)
        nchild.append(np.zeros(kseg[-1] - kseg[-2], np.int64))
        ctxs, syms, cnts = [], [], []
        for ids in ctx_of_pos:
            u, c = np.unique(ids * 256 + data, return_counts=True)
            ctxs.append(u >> 8)
            syms.append(u & 255)
            cnts.append(c)
        keys = [np.zeros(nctx, np.int64)]
        for w in range(wkeys.shape[1]):
            u, c = np.unique(wkeys[:, w], return_counts=True)
            k = u >> 8
            first = np.ones(len(u), bool)
            first[1:] = k[1:] != k[:-1]
            ctxs.append(np.cumsum(first) - 1 + nctx)
            syms.append(u & 255)
            cnts.append(c)
            keys.append(k[first])
            nctx += int(first.sum())
            kseg.append(nctx)
        ctx = np.concatenate(ctxs)
        t = self.tables
        t.kseg = np.array(kseg, np.int64)
        t.keys = np.concatenate(keys)
        t.ksym = np.concatenate([*ksyms, np.full(nctx - kseg[self.spec.nord], -1, np.int64)])
        nch = np.concatenate(nchild)
        first = np.concatenate([[1], 1 + np.cumsum(nch)[:-1]]) if len(nch) else np.zeros(0, np.int64)
        trie = np.zeros(2 * nctx, np.int64)
        trie[0 : 2 * len(nch) : 2] = np.where(nch > 0, first, 0)
        trie[1 : 2 * len(nch) : 2] = nch
        t.trie = trie
        t.cstart = np.concatenate([[0], np.cumsum(np.bincount(ctx, minlength=nctx))]).astype(np.int64)
        t.syms = np.concatenate(syms).astype(np.uint8)
        t.cnts = np.concatenate(cnts).astype(np.int32)

    def train(self, every: int = 1) -> int:
        """One leave-one-out training pass over every `every`-th text; returns its cost (1/65536 bits)."""
        return int(self._run(1, self.data, self.starts, self.order[::every]))

    def eval_bits(self, texts: Sequence[bytes]) -> int:
        """The cost (1/65536 bits) of texts that are not in the counts; changes nothing."""
        data, starts = _pack(texts)
        return int(self._run(2, data, starts, np.arange(len(texts), dtype=np.int64)))

    def freeze(self) -> MixTables:
        """The tables as shipped: counts quantised to their levels, every count below its component's
        threshold removed, and every context left without symbols."""
        t, spec = self.tables, self.spec
        nc, nord = len(spec.kinds), spec.nord
        thr = np.array(spec.thr, np.int64)
        nctx = len(t.keys)
        comp = np.repeat(np.arange(nc), np.diff(t.kseg))
        ctx_of_sym = np.repeat(np.arange(nctx), np.diff(t.cstart))
        keep = t.cnts >= thr[comp[ctx_of_sym]]
        per_ctx = np.bincount(ctx_of_sym[keep], minlength=nctx)
        kctx = per_ctx > 0
        kctx[0] = True  # the order-0 context stays, even empty
        # parents of order contexts (a kept context's parent is kept: thresholds do not decrease)
        nord_end = int(t.kseg[nord])
        parent = np.full(nctx, -1, np.int64)
        nch = t.trie[1 : 2 * nord_end : 2]
        parent[1:nord_end] = np.repeat(np.arange(nord_end), nch)[: nord_end - 1]
        assert np.all(kctx[parent[1:nord_end][kctx[1:nord_end]]]), "a kept context lost its parent"
        newid = np.cumsum(kctx) - 1
        nkept = int(kctx.sum())
        kseg = np.concatenate([[0], np.cumsum(np.bincount(comp[kctx], minlength=nc))]).astype(np.int64)
        ksym = t.ksym[kctx]
        kept_order = np.flatnonzero(kctx[:nord_end])
        nch_new = np.bincount(newid[parent[kept_order[1:]]], minlength=nkept)[: int(kseg[nord])]
        trie = np.zeros(2 * nkept, np.int64)
        trie[0 : 2 * len(nch_new) : 2] = np.where(nch_new > 0, np.concatenate([[1], 1 + np.cumsum(nch_new)[:-1]]), 0)
        trie[1 : 2 * len(nch_new) : 2] = nch_new
        cstart = np.concatenate([[0], np.cumsum(per_ctx[kctx])]).astype(np.int64)
        cq = TABLES["cq"]
        cnts = cq[np.minimum(t.cnts[keep], len(cq) - 1)].astype(np.int32)
        return MixTables(
            kseg,
            t.keys[kctx].copy(),
            trie,
            ksym,
            cstart,
            t.syms[keep].copy(),
            cnts,
            t.sm.copy(),
            t.mw.copy(),
            t.ap1.copy(),
            t.ap2.copy(),
        )


def train(spec: MixSpec, texts: Sequence[bytes], epochs: int = 1, every: int = 1) -> MixTables:
    """Count `texts`, train on them leave-one-out, and return the frozen tables. Deterministic; needs numba."""
    tr = Trainer(spec, texts)
    for _ in range(epochs):
        tr.train(every)
    return tr.freeze()


# --- the shipped model ------------------------------------------------------------------------------------

MODEL_VERSION = 0
"""`PromptParams.model_version` of prompt model 2 in a CODEC_ID_PROMPT_CTX layer. It is 0, the value proto3
does not write, so a layer coded with the current model costs 2 bytes less (model 1 layers carry 1)."""

SHIPPED_SPEC = MixSpec()
"""The structure of the shipped model; the LOCO bench builds its per-corpus models with it too."""
BUILD_EPOCHS = 1
BUILD_EVERY = 2
MODEL_FILE = "models/prompt_mix.bin"


def build(prompts: Sequence[str], spec: MixSpec = SHIPPED_SPEC) -> bytes:
    """The model file built from `prompts` (deterministic: same prompts, same bytes). Needs numba."""
    texts = [p.encode("utf-8", "surrogatepass") for p in prompts]
    return serialize(MODEL_VERSION, spec, train(spec, texts, BUILD_EPOCHS, BUILD_EVERY))


@functools.lru_cache(maxsize=1)
def shipped_mix_model() -> MixModel:
    """Prompt model 2 as shipped in layercast.common/models/prompt_mix.bin (loaded once)."""
    from importlib import resources

    try:
        data = resources.files("layercast.common").joinpath(MODEL_FILE).read_bytes()
    except OSError as exc:
        raise ModelError(
            f"prompt model missing ({exc}); run `python tools/build_prompt_model.py` or reinstall layercast"
        ) from exc
    model = parse(data)
    if model.version != MODEL_VERSION:
        raise ModelError(f"{MODEL_FILE} holds prompt model version {model.version}, not {MODEL_VERSION}")
    return model
