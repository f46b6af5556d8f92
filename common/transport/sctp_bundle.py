"""SCTP chunk bundling for an aiortc association (RFC 4960 section 6.10).

aiortc (1.9-1.16) puts every SCTP chunk in a packet of its own ("no bundling for now"), so each
data-channel message costs a DTLS record, a UDP datagram and ~70 bytes of UDP, DTLS and SCTP headers
on the wire, and a decryption and a SACK at the receiver. RFC 4960 section 6.10 lets a sender put
several DATA chunks in one packet. `ChunkBundler` does that for the DATA chunks aiortc hands out in
one event-loop turn: they leave together at the end of the turn, in as few packets of at most aiortc's
own packet size as fit.

It never puts two chunks of the same stream in one packet. A layer's FEC repair travels on the same
channel as the fragments it protects, so a repair and its data always leave in different packets, and
one lost packet costs what it costs without bundling. Control chunks (SACK, FORWARD-TSN, ...) leave alone,
after the DATA chunks handed out before them.

aiortc has no public hook for this, so `ChunkBundler.install` wraps the association's ``_send_chunk``
(through which aiortc sends every chunk) and sends a bundle through the original method: aiortc still
writes the packet's header and checksum. If that method is missing (another aiortc) it installs nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)

MAX_PACKET = 1189
"""Largest SCTP packet aiortc sends (its SCTP_MAX_PACKET_LENGTH: a 1200-byte DTLS record with room for
the DTLS header); a bundle stays within it."""
COMMON_HEADER = 12
"""SCTP common header bytes (RFC 4960 section 3.1)."""


class _Bundle:
    """Serialised DATA chunks that aiortc's packet writer takes as one (it calls ``bytes(chunk)``)."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def __bytes__(self) -> bytes:
        return b"".join(self.chunks)

    def __repr__(self) -> str:  # aiortc logs each chunk it sends at debug level
        return f"Bundle({len(self.chunks)} DATA chunks, {sum(map(len, self.chunks))} bytes)"


class ChunkBundler:
    """The chunk-bundling policy of one aiortc `RTCSctpTransport` (see the module docstring).

    `chunks` and `packets` count the DATA chunks sent and the packets that carried them.
    """

    def __init__(
        self, send_chunk: Callable[[Any], Awaitable[None]], data_chunk: type[Any], max_packet: int = MAX_PACKET
    ) -> None:
        self._send = send_chunk
        self._data_chunk = data_chunk
        self.max_packet = max_packet
        self.chunks = 0
        self.packets = 0
        self._pending: list[bytes] = []
        self._size = COMMON_HEADER
        self._streams: set[int] = set()
        self._flush_task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @classmethod
    def install(cls, sctp: Any) -> ChunkBundler | None:
        """Make `sctp` (an aiortc RTCSctpTransport) bundle its DATA chunks; returns the policy, or None
        (nothing changed) when this aiortc has no ``_send_chunk``."""
        try:
            from aiortc.rtcsctptransport import DataChunk
        except ImportError:  # pragma: no cover - aiortc is what made `sctp`
            return None
        if sctp is None or not hasattr(sctp, "_send_chunk"):
            log.debug("this aiortc has no _send_chunk to bundle; one SCTP chunk per packet")
            return None
        existing = getattr(sctp, "_layercast_bundler", None)
        if isinstance(existing, ChunkBundler):
            return existing
        policy = cls(sctp._send_chunk, DataChunk)
        sctp._send_chunk = policy.send_chunk  # an instance attribute: shadows the method for this association
        sctp._layercast_bundler = policy
        return policy

    async def send_chunk(self, chunk: Any) -> None:
        """Called by aiortc for every chunk it sends: DATA waits for the end of this turn, the rest goes now."""
        if not isinstance(chunk, self._data_chunk):
            await self.flush()
            await self._send(chunk)
            return
        data = bytes(chunk)
        if self._pending and (self._size + len(data) > self.max_packet or chunk.stream_id in self._streams):
            await self.flush()
        self._pending.append(data)
        self._size += len(data)
        self._streams.add(chunk.stream_id)
        if self._flush_task is None:
            self._flush_task = asyncio.get_running_loop().create_task(self._flush_soon())

    async def _flush_soon(self) -> None:
        self._flush_task = None
        try:
            await self.flush()
        except Exception:  # the association closed under the pending chunks: SCTP retransmits or abandons
            log.debug("bundled SCTP packet not sent", exc_info=True)

    async def flush(self) -> None:
        """Send the pending DATA chunks now, as one packet."""
        if not self._pending:
            return
        chunks = self._pending
        self._pending, self._size, self._streams = [], COMMON_HEADER, set()
        async with self._lock:  # packets leave in the order their chunks were handed out
            self.chunks += len(chunks)
            self.packets += 1
            await self._send(_Bundle(chunks))
