"""A byte-oriented multi-symbol range coder with minimal termination, in exact integer arithmetic.

64-bit range, carry propagation as in LZMA's coder. Symbols are coded as (cum, freq, total) with
integer frequencies (every coded symbol needs freq >= 1, total < 2**40). Termination emits the
shortest tail that pins the final interval and drops trailing zero bytes; the decoder reads zeros past
the end, so a stream is exactly as long as its information (plus under one byte). Pure Python ints:
the same bytes on every machine.

Stream bytes: the coder's output after its always-zero first byte, without trailing zero bytes.
"""

from __future__ import annotations

from layercast.common.errors import CodecError

_BITS = 64
_MASK = (1 << _BITS) - 1
_BOT = 1 << (_BITS - 8)
_TOP_BYTE = 0xFF << (_BITS - 8)
MAX_TOTAL = 1 << 40
"""Largest frequency total a coded symbol may use (keeps the coder's precision loss negligible)."""


class RangeEncoder:
    """Encode symbols given as (cum, freq, total); `finish()` returns the stream bytes."""

    def __init__(self) -> None:
        self._low = 0
        self._range = _MASK
        self._cache = 0
        self._cache_size = 1
        self._out = bytearray()

    def _shift_low(self) -> None:
        low = self._low
        if low < _TOP_BYTE or low > _MASK:
            carry = low >> _BITS
            temp = self._cache
            out = self._out
            while True:
                out.append((temp + carry) & 0xFF)
                temp = 0xFF
                self._cache_size -= 1
                if self._cache_size == 0:
                    break
            self._cache = (low >> (_BITS - 8)) & 0xFF
        self._cache_size += 1
        self._low = (low << 8) & _MASK

    @classmethod
    def resume(cls, low: int, range_: int, cache: int, cache_size: int, out: bytes) -> RangeEncoder:
        """An encoder in the state another implementation of this coder left (a compiled kernel)."""
        enc = cls()
        enc._low, enc._range, enc._cache, enc._cache_size = low, range_, cache, cache_size
        enc._out = bytearray(out)
        return enc

    def encode(self, cum: int, freq: int, total: int) -> None:
        """Narrow the interval to [cum, cum + freq) out of total."""
        r = self._range // total
        self._low += r * cum
        self._range = r * freq
        while self._range < _BOT:
            self._range <<= 8
            self._shift_low()

    def finish(self) -> bytes:
        """Terminate with the fewest bytes that still decode, and return the stream."""
        lo, hi = self._low, self._low + self._range - 1
        for k in range(_BITS + 8, -1, -1):
            v = (hi >> k) << k
            if v >= lo:
                self._low = v
                break
        for _ in range(_BITS // 8 + 1):
            self._shift_low()
        return bytes(self._out[1:]).rstrip(b"\x00")


class RangeDecoder:
    """Decode a stream written by RangeEncoder; reads zero bytes past its end."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0
        self._range = _MASK
        code = 0
        for _ in range(_BITS // 8):
            code = (code << 8) | self._next()
        self._code = code

    def _next(self) -> int:
        pos = self._pos
        self._pos = pos + 1
        return self._data[pos] if pos < len(self._data) else 0

    def target(self, total: int) -> int:
        """The value in [0, total) that selects the next symbol; CodecError if the stream is invalid."""
        self._r = self._range // total
        v = self._code // self._r
        if v >= total:
            raise CodecError("range-coded data is corrupt (value outside the coding interval)")
        return v

    def consume(self, cum: int, freq: int) -> None:
        """Remove the decoded symbol [cum, cum + freq) (call after `target`)."""
        r = self._r
        self._code -= r * cum
        self._range = r * freq
        while self._range < _BOT:
            self._code = (self._code << 8) | self._next()
            self._range <<= 8
