"""Prompt model 1 ("ctx", PromptParams.model_version 1): a static byte-level context model and its
(de)coding loops. Layercast now writes prompt model 2 (prompt_mix); this model stays so layers coded
with it still decode (and can still be written on request), its file and bytes unchanged.

Model: interpolated Kneser-Ney over byte contexts of order 0..K (K = 5), with Witten-Bell style
escape weights beta = a * distinct_symbols, down to a uniform model over 257 symbols (256 bytes and
END), so every byte string is codable. The top order uses raw counts, lower orders continuation counts.
Text starts in a context of K zero bytes and ends with the END symbol. All probabilities are integers
computed with Python ints, so encoder and decoder (and every machine) agree exactly.

Unit bytes: the range-coded text + END (see rangecoder: no trailing zero bytes), then the low 16 bits
of CRC-32(text) little-endian. The decoder also refuses any stream that is not exactly what the encoder
writes for the decoded text (canonical form), and caps the decoded length at limits.MAX_PROMPT_BYTES.

Model file (common/models/prompt_model.bin), little-endian:
  magic b"LCPM" | u16 version | u8 max_order K | u8 beta_num | u8 beta_den | u32 corpus length |
  corpus (the build prompts, UTF-8, separated by NUL bytes) | u32 CRC-32 of everything before it.
The counts are a deterministic function of the corpus and are rebuilt when the model is first loaded.
"""

from __future__ import annotations

import struct
import zlib
from bisect import bisect_right
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from layercast.common import limits
from layercast.common.codecs.rangecoder import RangeDecoder, RangeEncoder
from layercast.common.errors import CodecError, ModelError

MAGIC = b"LCPM"
END = 0
"""The end-of-text symbol; byte b is symbol b + 1 (END first, so a zero-padded tail soon decodes to END)."""
NSYM = 257
_ONE = 1 << 32
_HEADER = struct.Struct("<4sHBBBI")
_CHAIN_CACHE = 1 << 15  # mixing weights of recently seen histories (bounded memory)
CHECK_BYTES = 2
"""Every unit ends with this many bytes of CRC-32 of its text, so corruption is caught, not decoded."""


def _check(text: bytes) -> bytes:
    return (zlib.crc32(text) & 0xFFFF).to_bytes(CHECK_BYTES, "little")


@dataclass(frozen=True)
class _Ctx:
    """One context's statistics: sorted symbols, prefix sums of their counts, total n, escape beta."""

    syms: tuple[int, ...]
    cums: tuple[int, ...]
    n: int
    beta_num: int


class ContextModel:
    """A built static model. `code_text` / `decode_text` turn bytes into a range-coded stream and back."""

    def __init__(self, version: int, max_order: int, beta_num: int, beta_den: int, texts: Iterable[bytes]):
        if not 0 <= max_order <= 16 or beta_num < 1 or beta_den < 1:
            raise ModelError(f"prompt model parameters are invalid (order {max_order}, beta {beta_num}/{beta_den})")
        texts = tuple(texts)
        self.texts = texts
        """The build texts the model's counts come from."""
        self.version = version
        self.max_order = max_order
        self.beta_den = beta_den
        k = max_order
        top: defaultdict[bytes, Counter[int]] = defaultdict(Counter)
        for t in texts:
            seq = bytes(k) + t
            syms = [*(b + 1 for b in t), END]
            for i, s in enumerate(syms):
                top[seq[i : i + k]][s] += 1
        tables: list[dict[bytes, Counter[int]]] = [dict(top)]
        for _ in range(k):  # continuation counts: distinct longer contexts a symbol followed
            lower: defaultdict[bytes, Counter[int]] = defaultdict(Counter)
            for ctx, counts in tables[-1].items():
                shorter = lower[ctx[1:]]
                for s in counts:
                    shorter[s] += 1
            tables.append(dict(lower))
        self._chains: dict[bytes, tuple[list[tuple[_Ctx, int]], int, int]] = {}
        self._ctx: dict[bytes, _Ctx] = {}
        for table in tables:
            for ctx, counts in table.items():
                syms_sorted = tuple(sorted(counts))
                cums = [0]
                for s in syms_sorted:
                    cums.append(cums[-1] + counts[s])
                self._ctx[ctx] = _Ctx(syms_sorted, tuple(cums), cums[-1], beta_num * len(syms_sorted))

    def _chain(self, hist: bytes) -> tuple[list[tuple[_Ctx, int]], int, int]:
        """For a history of max_order bytes: [(context, weight per count)], uniform weight, total."""
        hit = self._chains.get(hist)
        if hit is None:
            if len(self._chains) >= _CHAIN_CACHE:
                self._chains.clear()
            hit = self._chains[hist] = self._make_chain(hist)
        return hit

    def _make_chain(self, hist: bytes) -> tuple[list[tuple[_Ctx, int]], int, int]:
        chain: list[tuple[_Ctx, int]] = []
        k = self.max_order
        found = []
        for order in range(k + 1):
            c = self._ctx.get(hist[k - order :])
            if c is None:
                break
            found.append(c)
        rem = _ONE
        total = 0
        den = self.beta_den
        for c in reversed(found):
            d = c.n * den + c.beta_num
            w = rem * den // d
            chain.append((c, w))
            total += w * c.n
            rem = rem * c.beta_num // d
        w0 = max(1, rem // NSYM)
        return chain, w0, total + w0 * NSYM

    @staticmethod
    def _cum(chain: list[tuple[_Ctx, int]], w0: int, s: int) -> int:
        cum = w0 * s
        for c, w in chain:
            cum += w * c.cums[bisect_right(c.syms, s - 1)]
        return cum

    def _find(self, chain: list[tuple[_Ctx, int]], w0: int, v: int) -> tuple[int, int, int]:
        """The symbol s with cum(s) <= v < cum(s + 1), and those two cums."""
        cum = self._cum
        if chain and len(chain[0][0].syms) <= 8:  # most likely: a symbol of the longest context
            for s in chain[0][0].syms:
                lo = cum(chain, w0, s)
                if lo <= v:
                    hi = cum(chain, w0, s + 1)
                    if v < hi:
                        return s, lo, hi
        lo_s, hi_s = 0, NSYM  # binary search: largest s with cum(s) <= v
        while hi_s - lo_s > 1:
            mid = (lo_s + hi_s) // 2
            if cum(chain, w0, mid) <= v:
                lo_s = mid
            else:
                hi_s = mid
        return lo_s, cum(chain, w0, lo_s), cum(chain, w0, lo_s + 1)

    def encode(self, text: bytes) -> bytes:
        """The unit for `text`: range-coded text + END, then the 2-byte check."""
        return self._code(text) + _check(text)

    def _code(self, text: bytes) -> bytes:
        k = self.max_order
        enc = RangeEncoder()
        hist = bytes(k)
        for s in (*(b + 1 for b in text), END):
            chain, w0, total = self._chain(hist)
            lo = self._cum(chain, w0, s)
            hi = self._cum(chain, w0, s + 1)
            enc.encode(lo, hi - lo, total)
            if s != END:
                hist = (hist + bytes((s - 1,)))[-k:] if k else hist
        return enc.finish()

    def decode(self, data: bytes, max_bytes: int = limits.MAX_PROMPT_BYTES) -> bytes:
        """Invert `encode`; CodecError if the data is not the canonical coding of some text."""
        if len(data) < CHECK_BYTES:
            raise CodecError(f"prompt unit of {len(data)} bytes is shorter than its {CHECK_BYTES}-byte check")
        data, check = data[:-CHECK_BYTES], data[-CHECK_BYTES:]
        k = self.max_order
        dec = RangeDecoder(data)
        hist = bytes(k)
        out = bytearray()
        while True:
            chain, w0, total = self._chain(hist)
            v = dec.target(total)
            s, cum, nxt = self._find(chain, w0, v)
            dec.consume(cum, nxt - cum)
            if s == END:
                break
            if len(out) >= max_bytes:
                raise CodecError(f"prompt unit decodes to more than {max_bytes} bytes; the unit is corrupt")
            out.append(s - 1)
            hist = (hist + bytes((s - 1,)))[-k:] if k else hist
        text = bytes(out)
        if _check(text) != check:
            raise CodecError("prompt unit is corrupt (check value mismatch)")
        if self._code(text) != data:
            raise CodecError("prompt unit is corrupt (it is not the canonical coding of its text)")
        return text


def serialize_model(version: int, max_order: int, beta_num: int, beta_den: int, prompts: Iterable[str]) -> bytes:
    """The model file bytes for these build prompts (deterministic)."""
    encoded = [p.encode("utf-8") for p in prompts]
    if any(b"\x00" in p for p in encoded):
        raise ModelError("build prompts must not contain NUL bytes (NUL separates them in the model file)")
    corpus = b"\x00".join(encoded)
    body = _HEADER.pack(MAGIC, version, max_order, beta_num, beta_den, len(corpus)) + corpus
    return body + struct.pack("<I", zlib.crc32(body))


def parse_model(data: bytes) -> ContextModel:
    """Build a ContextModel from model file bytes; ModelError if they are not a valid model."""
    if len(data) < _HEADER.size + 4 or data[:4] != MAGIC:
        raise ModelError("prompt model file is not an LCPM model; reinstall layercast")
    body, (crc,) = data[:-4], struct.unpack("<I", data[-4:])
    if zlib.crc32(body) != crc:
        raise ModelError("prompt model file is corrupt (CRC mismatch); reinstall layercast")
    _, version, max_order, beta_num, beta_den, n = _HEADER.unpack_from(body)
    corpus = body[_HEADER.size :]
    if len(corpus) != n:
        raise ModelError("prompt model file is truncated; reinstall layercast")
    texts = corpus.split(b"\x00") if corpus else []
    return ContextModel(version, max_order, beta_num, beta_den, texts)


@lru_cache(maxsize=1)
def shipped_model() -> ContextModel:
    """The model shipped in layercast.common/models/prompt_model.bin (loaded once)."""
    try:
        data = resources.files("layercast.common").joinpath("models/prompt_model.bin").read_bytes()
    except OSError as exc:
        raise ModelError(
            f"prompt model missing ({exc}); run `python tools/build_prompt_model.py` or reinstall layercast"
        ) from exc
    return parse_model(data)
