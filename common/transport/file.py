"""A transport over a `.lcs` container file or a pipe: ``layercast send img.png --to file:out.lcs``.

Writing emits the magic at open and one ``varint(len) + packet`` record per `send`, flushed at once so
a reader on the other end of a pipe sees each packet as it is sent. Reading yields the records one by
one; `recv` raises TransportClosed at a clean end of file and TruncatedError when the file ends inside a
record. The path ``"-"`` is stdout (writing) or stdin (reading), in binary.
"""

from __future__ import annotations

import asyncio
import os
import stat
import sys
from collections.abc import Callable
from typing import Any, BinaryIO, Literal, TypeVar

from layercast.common import limits
from layercast.common.errors import (
    BitstreamError,
    InputError,
    LimitError,
    TransportClosed,
    TransportError,
    TruncatedError,
    VersionError,
)
from layercast.common.transport.base import Transport
from layercast.proto.framing import MAGIC, encode_varint

_T = TypeVar("_T")


class FileTransport(Transport):
    """Packets to (`mode="w"`) or from (`mode="r"`) a `.lcs` container; `path="-"` means stdio."""

    def __init__(self, path: str | os.PathLike[str], mode: Literal["r", "w"] = "w") -> None:
        super().__init__()
        if mode not in ("r", "w"):
            raise InputError(f"file transport mode must be 'r' or 'w', not {mode!r}")
        self.path = os.fspath(path)
        self.mode = mode
        self.packets = 0
        """Records written or read so far."""
        self._f: BinaryIO | None = None
        self._threaded = False
        self._pending: asyncio.Future[bytes | None] | None = None

    @property
    def is_stdio(self) -> bool:
        return self.path == "-"

    async def _open(self) -> None:
        if self._f is not None:
            return
        if self.is_stdio:
            self._f = sys.stdin.buffer if self.mode == "r" else sys.stdout.buffer
        else:
            try:
                self._f = open(self.path, "rb" if self.mode == "r" else "wb")  # noqa: SIM115 (closed in _close)
            except OSError as exc:
                raise InputError(
                    f"cannot open {self.path!r} for {'reading' if self.mode == 'r' else 'writing'}: "
                    f"{exc.strerror or exc}"
                ) from exc
        self._threaded = not stat.S_ISREG(os.fstat(self._f.fileno()).st_mode)
        if self.mode == "w":
            self._write(MAGIC)
        else:
            head = await self._run(self._read_exact_or_eof, len(MAGIC), "the container magic")
            head = head or b""
            if head != MAGIC:
                if head[:3] == MAGIC[:3]:
                    raise VersionError(
                        f"{self._name}: container version {head[3:4].hex() or '?'} is not readable (want 01)"
                    )
                raise BitstreamError(f"{self._name} is not a Layercast stream: it does not start with the LCS magic")

    async def _close(self) -> None:
        f, self._f = self._f, None
        if f is None:
            return
        try:
            if self.mode == "w":
                f.flush()
        except OSError as exc:
            raise TransportError(f"cannot flush {self._name}: {exc}") from exc
        finally:
            if not self.is_stdio:
                f.close()

    async def _send(self, data: bytes, family: str) -> None:
        if self.mode != "w":
            raise TransportError(f"{self._name} was opened for reading; open it with mode='w' to send")
        if len(data) > limits.MAX_PACKET_BYTES:
            raise LimitError(f"packet of {len(data)} bytes exceeds the {limits.MAX_PACKET_BYTES}-byte limit")
        self._write(encode_varint(len(data)) + data)
        self.packets += 1

    async def _recv(self) -> bytes:
        if self.mode != "r":
            raise TransportError(f"{self._name} was opened for writing; open it with mode='r' to receive")
        if self._f is None:
            raise TransportClosed(f"{self._name} is closed")
        if self._pending is None:
            self._pending = asyncio.ensure_future(self._run(self._read_record))
        try:
            record = await asyncio.shield(self._pending)
        finally:
            if self._pending.done():
                self._pending = None
        if record is None:
            raise TransportClosed(f"end of {self._name} after {self.packets} packets")
        self.packets += 1
        return record

    # --- blocking helpers (run in a thread for pipes, inline for regular files) -------------------------

    @property
    def _name(self) -> str:
        return ("stdin" if self.mode == "r" else "stdout") if self.is_stdio else repr(self.path)

    async def _run(self, fn: Callable[..., _T], *args: Any) -> _T:
        if self._threaded:
            return await asyncio.to_thread(fn, *args)
        return fn(*args)

    def _write(self, data: bytes) -> None:
        assert self._f is not None
        try:
            self._f.write(data)
            self._f.flush()
        except OSError as exc:
            raise TransportError(f"cannot write to {self._name}: {exc}") from exc

    def _read_exact_or_eof(self, n: int, what: str) -> bytes | None:
        """`n` bytes, None at a clean EOF (nothing read), TruncatedError at EOF after a partial read."""
        assert self._f is not None
        buf = bytearray()
        while len(buf) < n:
            try:
                chunk = self._f.read(n - len(buf))
            except OSError as exc:
                raise TransportError(f"cannot read {self._name}: {exc}") from exc
            if not chunk:
                if not buf:
                    return None
                raise TruncatedError(f"{self._name} ends inside {what} ({len(buf)} of {n} bytes)")
            buf += chunk
        return bytes(buf)

    def _read_record(self) -> bytes | None:
        if self.packets >= limits.MAX_FILE_PACKETS:
            raise LimitError(f"container holds more than {limits.MAX_FILE_PACKETS} packets")
        length = 0
        for shift in range(0, 70, 7):
            b = self._read_exact_or_eof(1, "a packet length")
            if b is None:
                if shift == 0:
                    return None
                raise TruncatedError(f"{self._name} ends inside a packet length")
            length |= (b[0] & 0x7F) << shift
            if not b[0] & 0x80:
                break
        else:
            raise BitstreamError(f"{self._name}: packet length varint is longer than 10 bytes")
        if length > limits.MAX_PACKET_BYTES:
            raise LimitError(f"{self._name}: packet length {length} exceeds the {limits.MAX_PACKET_BYTES}-byte limit")
        data = self._read_exact_or_eof(length, f"a {length}-byte packet")
        if data is None:
            if length == 0:
                return b""
            raise TruncatedError(f"{self._name} ends inside a {length}-byte packet (0 bytes present)")
        return data
