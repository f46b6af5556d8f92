"""An in-process transport pair over bounded asyncio queues: the network for tests and the demo.

    a, b = memory_pair(maxsize=64)
    async with a, b:
        await a.send(wire, family="semantic")
        assert await b.recv(timeout=1) == wire

`send` waits while the peer's inbox is full (backpressure). Closing one side lets the peer read what
is already queued, then its `recv` raises TransportClosed; sending to a closed peer raises it at once.
"""

from __future__ import annotations

import asyncio
from collections import deque

from layercast.common.errors import InputError, TransportClosed
from layercast.common.transport.base import Transport


class _Inbox:
    """A bounded FIFO of packets that can be closed (items already queued stay readable)."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.items: deque[bytes] = deque()
        self.closed = False
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()

    async def put(self, data: bytes) -> None:
        while self.maxsize and len(self.items) >= self.maxsize and not self.closed:
            self._writable.clear()
            await self._writable.wait()
        if self.closed:
            raise TransportClosed("the peer memory transport is closed")
        self.items.append(data)
        self._readable.set()

    async def get(self) -> bytes:
        while not self.items:
            if self.closed:
                raise TransportClosed("the peer memory transport closed and every packet was read")
            self._readable.clear()
            await self._readable.wait()
        data = self.items.popleft()
        self._writable.set()
        return data

    def close(self, *, discard: bool = False) -> None:
        self.closed = True
        if discard:
            self.items.clear()
        self._readable.set()
        self._writable.set()


class MemoryTransport(Transport):
    """One end of an in-memory link; build two connected ends with :func:`memory_pair`.

    The `family` of each packet is recorded in `sent_families` (counts), which tests use to check
    that senders route layers to the right reliability class.
    """

    def __init__(self, maxsize: int = 0) -> None:
        super().__init__()
        if maxsize < 0:
            raise InputError(f"memory transport queue size must be >= 0 (0 = unbounded), got {maxsize}")
        self._inbox = _Inbox(maxsize)
        self._peer: MemoryTransport | None = None
        self.sent_families: dict[str, int] = {}

    @classmethod
    def pair(cls, maxsize: int = 0) -> tuple[MemoryTransport, MemoryTransport]:
        """Two connected ends (same as :func:`memory_pair`)."""
        return memory_pair(maxsize=maxsize)

    @property
    def pending(self) -> int:
        """Packets queued for this end that `recv` has not returned yet."""
        return len(self._inbox.items)

    async def _open(self) -> None:
        if self._peer is None:
            raise TransportClosed("memory transport has no peer: create ends with memory_pair()")

    async def _close(self) -> None:
        self._inbox.close(discard=True)
        if self._peer is not None:
            self._peer._inbox.close()

    async def _send(self, data: bytes, family: str) -> None:
        if self._peer is None:
            raise TransportClosed("memory transport has no peer: create ends with memory_pair()")
        await self._peer._inbox.put(bytes(data))
        self.sent_families[family] = self.sent_families.get(family, 0) + 1

    async def _recv(self) -> bytes:
        return await self._inbox.get()


def memory_pair(maxsize: int = 0) -> tuple[MemoryTransport, MemoryTransport]:
    """Two connected in-memory transports; `maxsize` bounds each inbox (0 = unbounded)."""
    a, b = MemoryTransport(maxsize), MemoryTransport(maxsize)
    a._peer, b._peer = b, a
    return a, b
