"""Replay defence and sender keys for authenticated (keyed) streams.

A keyed stream numbers its packets with `Packet.sequence`, starting at 1 and strictly increasing per
stream. :class:`ReplayWindow` accepts each sequence number once, within a 64-entry sliding window
(as IPsec/DTLS do): a number seen before is a replay, one more than 64 behind the newest is too old.
Keys are per sender: a :class:`KeyRing` holds one key for every stream and/or a key per stream id.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from layercast.common.errors import AuthError, InputError

MIN_KEY_BYTES = 16
"""Shortest key accepted (128 bits)."""

MAX_KEY_BYTES = 1024


class ReplayWindow:
    """Sliding bitmap over sequence numbers of one stream; check after authenticating, then update."""

    def __init__(self, size: int = 64) -> None:
        if not 1 <= size <= 4096:
            raise InputError(f"replay window size must be in 1..4096, got {size}")
        self.size = size
        self.top = 0
        """Highest sequence number accepted so far (0 = none)."""
        self._seen = 0  # bit i set: sequence top - i was accepted

    def check(self, seq: int) -> None:
        """Raise AuthError if `seq` is missing (0), already accepted, or too old; no state change."""
        if seq <= 0:
            raise AuthError("packet has no sequence number (keyed streams number packets from 1)")
        if seq > self.top:
            return
        behind = self.top - seq
        if behind >= self.size:
            raise AuthError(f"sequence {seq} is too old: more than {self.size} behind the newest ({self.top})")
        if (self._seen >> behind) & 1:
            raise AuthError(f"sequence {seq} was already received (replayed or duplicated packet)")

    def update(self, seq: int) -> None:
        """Mark `seq` accepted (call only after `check` passed and the packet authenticated)."""
        if seq > self.top:
            shift = seq - self.top
            self._seen = ((self._seen << shift) | 1) & ((1 << self.size) - 1) if shift < self.size else 1
            self.top = seq
        else:
            self._seen |= 1 << (self.top - seq)

    def accept(self, seq: int) -> None:
        """`check` then `update`."""
        self.check(seq)
        self.update(seq)


# --- keys ---------------------------------------------------------------------------------------------


def _validate_key(key: bytes, origin: str) -> bytes:
    if not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
        raise InputError(
            f"key from {origin} has {len(key)} bytes; use {MIN_KEY_BYTES}..{MAX_KEY_BYTES} bytes"
            " (e.g. 64 hex digits from `python -c 'import secrets; print(secrets.token_hex(32))'`)"
        )
    return key


def _parse_hex(text: str, origin: str) -> bytes:
    t = text.strip()
    if t.lower().startswith("0x"):
        t = t[2:]
    if not re.fullmatch(r"(?:[0-9a-fA-F]{2})+", t):
        raise InputError(f"{origin} is neither a hex key nor a readable key file")
    return _validate_key(bytes.fromhex(t), origin)


def load_key(hex_or_path: str | os.PathLike[str]) -> bytes:
    """A key from hex digits, or from a file holding hex digits or raw key bytes."""
    spec = os.fspath(hex_or_path)
    path = Path(spec)
    if path.is_file():
        raw = path.read_bytes()
        try:
            return _parse_hex(raw.decode("ascii"), f"key file {spec!r}")
        except (UnicodeDecodeError, InputError):
            return _validate_key(raw, f"key file {spec!r}")
    return _parse_hex(spec, f"key {spec[:8] + '...' if len(spec) > 8 else spec!r}")


def new_key() -> bytes:
    """A fresh random 32-byte key."""
    return os.urandom(32)


@dataclass(frozen=True)
class KeyRing:
    """Sender keys: `streams` maps a stream id to its key; `default` serves every other stream."""

    default: bytes | None = None
    streams: Mapping[int, bytes] = field(default_factory=dict)

    @property
    def keyed(self) -> bool:
        """True when any key is set (then every packet must authenticate)."""
        return self.default is not None or bool(self.streams)

    def key_for(self, stream_id: int) -> bytes | None:
        """The key of a stream, or None when no key applies to it."""
        return self.streams.get(stream_id, self.default)


def as_keyring(key: bytes | Mapping[int, bytes] | KeyRing | None) -> KeyRing:
    """Normalise one key, a {stream_id: key} dict, a KeyRing or None into a KeyRing."""
    if key is None:
        return KeyRing()
    if isinstance(key, KeyRing):
        return key
    if isinstance(key, (bytes, bytearray)):
        return KeyRing(default=_validate_key(bytes(key), "the given key"))
    return KeyRing(streams={int(s): _validate_key(bytes(k), f"stream {s}") for s, k in key.items()})


def load_keyring(spec: str | os.PathLike[str]) -> KeyRing:
    """One key (hex or key file, see :func:`load_key`) for all streams, or a key-ring file of lines
    ``STREAM_ID HEXKEY`` (``*`` as the id sets the default; ``#`` starts a comment)."""
    path = Path(os.fspath(spec))
    if path.is_file():
        try:
            lines = [ln.split("#", 1)[0].split() for ln in path.read_text("ascii").splitlines()]
        except UnicodeDecodeError:
            lines = []
        lines = [ln for ln in lines if ln]
        if lines and all(len(ln) == 2 for ln in lines):
            default: bytes | None = None
            streams: dict[int, bytes] = {}
            for sid, hexkey in lines:
                key = _parse_hex(hexkey, f"key-ring {path} entry {sid}")
                if sid == "*":
                    default = key
                elif sid.isdigit():
                    streams[int(sid)] = key
                else:
                    raise InputError(f"key-ring {path}: stream id {sid!r} must be a number or '*'")
            return KeyRing(default=default, streams=streams)
    return KeyRing(default=load_key(spec))
