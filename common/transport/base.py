"""The one transport interface: datagrams of wire bytes, tagged with the layer family they carry.

Lifecycle is ``async with``; inbound data is ``async for``; every call takes a timeout (seconds,
None = the transport's default). Backend errors are mapped to TransportError / TransportTimeout /
TransportClosed at this boundary, never leaked.

    async with MemoryTransport.pair()[0] as t:
        await t.send(wire_bytes, family="semantic")
        async for data in t:
            ...
"""

from __future__ import annotations

import asyncio
import sys
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Any, TypeVar

from layercast.common.errors import TransportClosed, TransportTimeout

DEFAULT_TIMEOUT = 30.0
_T = TypeVar("_T", bound="Transport")
FAMILIES = ("semantic", "structure", "texture")
"""Reliability classes: a transport may treat each family differently (channel, QoS, retransmits)."""


class Transport(ABC):
    """Send and receive packets (bytes). Subclasses implement `_open`, `_close`, `_send`, `_recv`."""

    default_timeout: float = DEFAULT_TIMEOUT
    camera: str | None = None
    """The camera every packet of this transport comes from, where the transport knows it (a WebRTC
    peer's offer names it); None = unnamed. An MQTT transport names each message's camera instead."""

    def __init__(self) -> None:
        self._closed = False

    async def __aenter__(self: _T) -> _T:
        await self.open()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def open(self, *, timeout: float | None = None) -> None:
        """Connect / start; idempotent."""
        await self._with_timeout(self._open(), timeout, "open")

    async def close(self, *, timeout: float | None = None) -> None:
        """Flush and close; idempotent. Pending `recv` calls end with TransportClosed."""
        if self._closed:
            return
        self._closed = True
        await self._with_timeout(self._close(), timeout, "close")

    async def send(self, data: bytes, *, family: str = "semantic", timeout: float | None = None) -> None:
        """Send one packet on the reliability class of `family` (waits on backpressure)."""
        if self._closed:
            raise TransportClosed(f"{type(self).__name__} is closed")
        await self._with_timeout(self._send(data, family), timeout, "send")

    async def send_many(self, packets: Sequence[tuple[bytes, str]], *, timeout: float | None = None) -> None:
        """Send (data, family) packets in order, as `send` would each; `timeout` covers them all. A
        transport that can carry several in one datagram does (WebRTC: SCTP bundling, see `.sctp_bundle`)."""
        if self._closed:
            raise TransportClosed(f"{type(self).__name__} is closed")
        await self._with_timeout(self._send_many(packets), timeout, "send")

    async def _send_many(self, packets: Sequence[tuple[bytes, str]]) -> None:
        for data, family in packets:
            await self._send(data, family)

    async def recv(self, *, timeout: float | None = None) -> bytes:
        """The next packet; TransportClosed when the peer or this side closed, TransportTimeout after `timeout`."""
        return await self._with_timeout(self._recv(), timeout, "recv")

    async def drain(self, *, timeout: float | None = None) -> None:
        """Wait until everything sent has left this side (default: nothing buffered)."""
        await self._with_timeout(self._drain(), timeout, "drain")

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        while True:
            try:
                yield await self.recv(timeout=None)
            except TransportTimeout:
                continue  # idle is not an error for a listener: iteration ends only on close
            except TransportClosed:
                return

    async def _with_timeout(self, coro: Any, timeout: float | None, what: str) -> Any:
        limit = self.default_timeout if timeout is None else timeout
        try:
            if sys.version_info >= (3, 11):  # runs `coro` in this task: no task and waiter per packet
                async with asyncio.timeout(limit):
                    return await coro
            return await asyncio.wait_for(coro, limit)
        except asyncio.TimeoutError:
            raise TransportTimeout(f"{type(self).__name__}.{what} timed out after {limit:g} s") from None

    @abstractmethod
    async def _open(self) -> None: ...

    @abstractmethod
    async def _close(self) -> None: ...

    @abstractmethod
    async def _send(self, data: bytes, family: str) -> None: ...

    @abstractmethod
    async def _recv(self) -> bytes: ...

    async def _drain(self) -> None:
        return None
