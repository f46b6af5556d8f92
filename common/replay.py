"""Replay defence and sender keys for authenticated (keyed) streams.

A keyed stream numbers its packets with `Packet.sequence`, starting at 1 and strictly increasing per
stream. :class:`ReplayWindow` accepts each sequence number once, within a 64-entry sliding window
(as IPsec/DTLS do): a number seen before is a replay, one more than 64 behind the newest is too old.
Senders start their sequence at the wall clock in milliseconds, so a window refuses a number more than
`max_ahead` ms ahead of its own clock: a key holder cannot push a camera's window into the far future
(2**64 - 1) and lock its genuine packets out. :class:`ReplayStore` keeps each window's newest number
on disk, so a restarted receiver still refuses packets captured before the restart.

Keys are per camera: a :class:`KeyRing` holds keys by camera name (`common.identity`), by stream id,
and/or one default key. A packet keyed for camera A never authenticates as camera B.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from layercast.common.errors import AuthError, InputError

MIN_KEY_BYTES = 16
"""Shortest key accepted (128 bits)."""

MAX_KEY_BYTES = 1024


class ReplayWindow:
    """Sliding bitmap over sequence numbers of one stream; check after authenticating, then update."""

    def __init__(self, size: int = 64, *, top: int = 0, max_ahead: int | None = None) -> None:
        """`top`: the newest number seen in an earlier run (everything up to it counts as seen).
        `max_ahead`: refuse numbers more than this many ms ahead of the wall clock (None: no bound)."""
        if not 1 <= size <= 4096:
            raise InputError(f"replay window size must be in 1..4096, got {size}")
        self.size = size
        self.top = top
        """Highest sequence number accepted so far (0 = none)."""
        self._seen = (1 << size) - 1 if top else 0  # bit i set: sequence top - i was accepted
        self.max_ahead = max_ahead

    def check(self, seq: int, now_ms: float | None = None) -> None:
        """Raise AuthError if `seq` is missing (0), already accepted, too old, or (with `max_ahead`) too far
        ahead of `now_ms` (default: the wall clock); no state change."""
        if seq <= 0:
            raise AuthError("packet has no sequence number (keyed streams number packets from 1)")
        if seq > self.top:
            if self.max_ahead is not None:
                clock = time.time() * 1000 if now_ms is None else now_ms
                if seq > clock + self.max_ahead:
                    raise AuthError(
                        f"sequence {seq} is ahead of this receiver's clock by more than {self.max_ahead} ms"
                        " (a forged far-future number, or a sender clock far off)"
                    )
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
    """Sender keys: `cameras` maps a camera name to its key, `streams` a stream id; `default` serves
    every other camera or stream."""

    default: bytes | None = None
    streams: Mapping[int, bytes] = field(default_factory=dict)
    cameras: Mapping[str, bytes] = field(default_factory=dict)

    @property
    def keyed(self) -> bool:
        """True when any key is set (then every packet must authenticate)."""
        return self.default is not None or bool(self.streams) or bool(self.cameras)

    @property
    def per_sender(self) -> bool:
        """True when keys differ by camera or stream (the key is chosen per packet)."""
        return bool(self.streams) or bool(self.cameras)

    def key_for(self, stream_id: int) -> bytes | None:
        """The key of a stream id (a camera's key matches its `camera_id`), or None when none applies."""
        key = self.streams.get(stream_id)
        if key is None and self.cameras:
            from layercast.common.identity import camera_id

            key = next((k for name, k in self.cameras.items() if camera_id(name) == stream_id), None)
        return key if key is not None else self.default

    def key_for_camera(self, camera: str) -> bytes | None:
        """The key of a named camera (its own, else the one of its stream id, else the default)."""
        if camera in self.cameras:
            return self.cameras[camera]
        from layercast.common.identity import camera_id

        return self.streams.get(camera_id(camera), self.default)


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
    ``CAMERA HEXKEY`` (a camera name), ``STREAM_ID HEXKEY`` (a number), or ``* HEXKEY`` (the default);
    ``#`` starts a comment. Keep it mode 0600: it holds secrets."""
    path = Path(os.fspath(spec))
    if path.is_file():
        try:
            lines = [ln.split("#", 1)[0].split() for ln in path.read_text("ascii").splitlines()]
        except UnicodeDecodeError:
            lines = []
        lines = [ln for ln in lines if ln]
        if lines and all(len(ln) == 2 for ln in lines):
            from layercast.common.identity import is_camera_name

            default: bytes | None = None
            streams: dict[int, bytes] = {}
            cameras: dict[str, bytes] = {}
            for sid, hexkey in lines:
                key = _parse_hex(hexkey, f"key-ring {path} entry {sid}")
                if sid == "*":
                    default = key
                elif sid.isdigit():
                    streams[int(sid)] = key
                elif is_camera_name(sid):
                    cameras[sid] = key
                else:
                    raise InputError(f"key-ring {path}: {sid!r} is neither a camera name, a stream id nor '*'")
            return KeyRing(default=default, streams=streams, cameras=cameras)
    return KeyRing(default=load_key(spec))


class ReplayStore:
    """The newest accepted sequence number of each stream, kept in a folder (one small file per stream,
    rewritten in place on every advance: one write, no fsync), so a receiver restarted after a crash
    refuses what it accepted before. A power cut may lose the last writes; a process kill does not."""

    def __init__(self, folder: Path | str) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._fds: dict[str, int] = {}

    def load(self) -> dict[str, int]:
        """{stream label: newest sequence} as saved."""
        tops: dict[str, int] = {}
        for path in self.folder.iterdir():
            if path.name.isdigit():
                try:
                    tops[path.name] = int(path.read_text().split()[0])
                except (OSError, ValueError, IndexError):
                    continue
        return tops

    def save(self, label: str, top: int) -> None:
        """Record `top` as stream `label`'s newest sequence."""
        fd = self._fds.get(label)
        if fd is None:
            if not label.isdigit():
                raise InputError(f"replay store keys are stream ids, got {label!r}")
            fd = self._fds[label] = os.open(self.folder / label, os.O_RDWR | os.O_CREAT, 0o600)
        os.pwrite(fd, f"{top:020d}\n".encode(), 0)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
