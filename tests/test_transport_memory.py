"""The in-memory transport pair: order, backpressure, close semantics, timeouts."""

from __future__ import annotations

import asyncio

import pytest

from layercast.common.errors import InputError, TransportClosed, TransportTimeout
from layercast.common.transport.memory import MemoryTransport, memory_pair


async def test_packets_arrive_in_order_both_ways_and_families_are_counted() -> None:
    a, b = memory_pair()
    async with a, b:
        for i in range(50):
            await a.send(bytes([i]) * (i + 1), family="structure" if i % 2 else "semantic")
        await b.send(b"back", family="texture")
        got = [await b.recv(timeout=1) for _ in range(50)]
        assert got == [bytes([i]) * (i + 1) for i in range(50)]
        assert await a.recv(timeout=1) == b"back"
        assert a.sent_families == {"semantic": 25, "structure": 25}
        assert b.sent_families == {"texture": 1}


async def test_peer_reads_queued_packets_then_sees_closed() -> None:
    a, b = MemoryTransport.pair()
    await a.open()
    await b.open()
    await a.send(b"one")
    await a.send(b"two")
    await a.close()
    assert [d async for d in b] == [b"one", b"two"]
    with pytest.raises(TransportClosed):
        await b.recv(timeout=1)
    with pytest.raises(TransportClosed):
        await b.send(b"to a closed peer")
    with pytest.raises(TransportClosed):
        await a.send(b"after close")


async def test_closing_own_side_ends_a_pending_recv() -> None:
    a, b = memory_pair()
    async with a, b:
        pending = asyncio.create_task(b.recv(timeout=5))
        await asyncio.sleep(0)
        await b.close()
        with pytest.raises(TransportClosed):
            await pending


async def test_bounded_inbox_applies_backpressure() -> None:
    a, b = memory_pair(maxsize=2)
    async with a, b:
        await a.send(b"1")
        await a.send(b"2")
        assert b.pending == 2
        with pytest.raises(TransportTimeout, match="send timed out"):
            await a.send(b"3", timeout=0.05)
        blocked = asyncio.create_task(a.send(b"4", timeout=2))
        await asyncio.sleep(0.01)
        assert not blocked.done()
        assert await b.recv(timeout=1) == b"1"
        await blocked
        assert [await b.recv(timeout=1) for _ in range(2)] == [b"2", b"4"]


async def test_recv_times_out_with_a_typed_error() -> None:
    a, b = memory_pair()
    async with a, b:
        with pytest.raises(TransportTimeout, match=r"recv timed out after 0.02 s"):
            await b.recv(timeout=0.02)


async def test_drain_returns_once_packets_sit_in_the_peer_inbox() -> None:
    a, b = memory_pair()
    async with a, b:
        for i in range(3):
            await a.send(bytes([i]))
        await a.drain(timeout=0.5)  # nothing is buffered on the sending side
        assert b.pending == 3


async def test_bad_construction_is_rejected() -> None:
    with pytest.raises(InputError, match="queue size"):
        MemoryTransport(-1)
    with pytest.raises(TransportClosed, match="memory_pair"):
        await MemoryTransport().open()
