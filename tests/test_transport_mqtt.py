"""MqttTransport against a real Mosquitto started by each test (tests/mqtt_broker.py), plus the pure
topic / URL / back-off helpers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from layercast.common.errors import InputError, TransportClosed, TransportError, TransportTimeout
from layercast.common.transport.base import FAMILIES
from layercast.common.transport.mqtt import (
    MqttConfig,
    MqttTransport,
    backoff_delay,
    parse_topic,
    topic_for,
)
from layercast.common.types import LayerKind
from layercast.proto import FORMAT_VERSION, pb
from layercast.proto.framing import decode_packet, encode_packet
from tests.mqtt_broker import Broker, require_client, start_broker

KIND_OF = {
    "semantic": LayerKind.SEMANTIC,
    "structure": LayerKind.STRUCTURE_EDGES,
    "texture": LayerKind.TEXTURE,
}
ACL = "user receiver\ntopic read layercast/#\n\npattern write layercast/%u/#\n"
USERS = {"cam1": "pw-cam1", "cam2": "pw-cam2", "receiver": "pw-rx"}


def wire_packets(n: int, stream_id: int = 1) -> list[tuple[str, bytes]]:
    """`n` real wire packets cycling through the families, as (family, bytes)."""
    out = []
    for i in range(n):
        family = FAMILIES[i % len(FAMILIES)]
        p = pb.Packet(
            version=FORMAT_VERSION,
            stream_id=stream_id,
            image_id=i // 3,
            kind=int(KIND_OF[family]),  # type: ignore[arg-type]  # LayerKind values are the wire ints
            fragment_index=0,
            fragment_count=1,
            sequence=i + 1,
            payload=bytes([i % 251]) * (20 + i % 90),
        )
        out.append((family, encode_packet(p)))
    return out


@pytest.fixture
def brokers(tmp_path: Path) -> Iterator[list[Broker]]:
    """Brokers started in a test; all stopped at teardown."""
    started: list[Broker] = []
    yield started
    for b in started:
        b.stop()


def broker_at(brokers: list[Broker], tmp_path: Path, **kw: object) -> Broker:
    b = start_broker(tmp_path / f"b{len(brokers)}", **kw)  # type: ignore[arg-type]
    brokers.append(b)
    return b


def cfg(broker: Broker, **kw: object) -> MqttConfig:
    base: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": broker.port,
        "backoff_initial": 0.05,
        "backoff_max": 0.5,
    }
    base.update(kw)
    return MqttConfig(**base)


async def wait_until(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


# --- pure helpers -------------------------------------------------------------------------------------

level = st.text(st.characters(blacklist_characters="/+#\x00", blacklist_categories=["Cs"]), min_size=1, max_size=12)


@given(
    prefix=st.lists(level, min_size=1, max_size=3).map("/".join),
    stream=level,
    family=st.sampled_from(FAMILIES),
)
def test_topic_round_trip(prefix: str, stream: str, family: str) -> None:
    assert parse_topic(topic_for(prefix, stream, family), prefix) == (stream, family)


def test_parse_topic_rejects_foreign_topics() -> None:
    assert parse_topic("layercast/cam1/colour", "layercast") is None
    assert parse_topic("layercast/cam1/semantic/x", "layercast") is None
    assert parse_topic("other/cam1/semantic", "layercast") is None
    assert parse_topic("layercast//semantic", "layercast") is None


@given(
    attempt=st.integers(0, 10_000),
    initial=st.floats(0.001, 5),
    extra=st.floats(0, 100),
    jitter=st.floats(0, 1),
    seed=st.integers(0, 2**32),
)
def test_backoff_is_bounded_and_jittered(attempt: int, initial: float, extra: float, jitter: float, seed: int) -> None:
    import random

    maximum = initial + extra
    d = backoff_delay(attempt, initial=initial, maximum=maximum, jitter=jitter, rng=random.Random(seed))
    cap = min(maximum, initial * 2.0 ** min(attempt, 60))
    assert cap * (1 - jitter) - 1e-9 <= d <= cap + 1e-9


def test_from_url() -> None:
    c = MqttConfig.from_url("mqtt://us%40r:p%3Ass@broker.lan:1884/site/a/cam1?qos=1&tls=1&group=g&expiry=5,6,7")
    assert (c.host, c.port, c.prefix, c.stream, c.group) == ("broker.lan", 1884, "site/a", "cam1", "g")
    assert (c.username, c.password, c.tls, c.qos, c.expiry) == ("us@r", "p:ss", True, (1, 1, 1), (5, 6, 7))
    assert "p:ss" not in repr(c)
    d = MqttConfig.from_url("mqtts://broker/layercast", role="receive")
    assert (d.prefix, d.stream, d.tls, d.effective_port, d.subscriptions()) == (
        "layercast",
        "+",
        True,
        8883,
        ["layercast/+/+"],
    )
    e = MqttConfig.from_url("mqtt://h/layercast/cam1,cam2?group=g&receive_maximum=7")
    assert e.subscriptions() == ["$share/g/layercast/cam1/+", "$share/g/layercast/cam2/+"]
    assert (e.receive_maximum, d.receive_maximum) == (7, 100)
    s = MqttConfig.from_url("mqtt://h/layercast/cam7", role="send")
    assert (s.topic("semantic"), s.qos_for("semantic"), s.qos_for("texture")) == (
        "layercast/cam7/semantic",
        1,
        0,
    )


@pytest.mark.parametrize(
    ("url", "role", "message"),
    [
        ("http://h/x", "receive", "not an MQTT URL"),
        ("mqtt://h/layercast", "send", "publishes as one stream"),
        ("mqtt://h/layercast/cam1?qos=3", "send", "qos"),
        ("mqtt://h/layercast/cam1?colour=1", "send", "unknown option 'colour'"),
        ("mqtt://h/layercast/cam1?group=g", "send", "only applies to receivers"),
        ("mqtt://h:99999/x", "receive", "port"),
        ("mqtt://h/layercast/cam1?tls=maybe", "receive", "not a boolean"),
        ("mqtt://h/layercast?receive_maximum=0", "receive", "receive_maximum must be 1..65535"),
        ("mqtt://h/$SYS/cam1", "receive", "leading '$'"),
    ],
)
def test_from_url_rejects(url: str, role: str, message: str) -> None:
    with pytest.raises(InputError, match=message.replace("$", r"\$")):
        MqttConfig.from_url(url, role=role)


def test_unreachable_broker_is_a_transport_error() -> None:
    from tests.mqtt_broker import free_port

    async def go() -> None:
        t = MqttTransport(MqttConfig(host="127.0.0.1", port=free_port(), role="send", stream="cam1"))
        with pytest.raises(TransportError, match="is it running"):
            await t.open(timeout=5)

    asyncio.run(go())


# --- against a real broker ----------------------------------------------------------------------------


@pytest.mark.mqtt
async def test_round_trip_300_packets_all_families(brokers: list[Broker], tmp_path: Path) -> None:
    b = broker_at(brokers, tmp_path)
    packets = wire_packets(300)
    async with (
        MqttTransport(cfg(b, role="receive")) as rx,
        MqttTransport(cfg(b, role="send", stream="cam1", expiry=(90, 45, 30))) as tx,
    ):
        assert isinstance(rx, MqttTransport) and isinstance(tx, MqttTransport)
        t0 = time.perf_counter()
        for family, data in packets:
            await tx.send(data, family=family)
        got = [await rx.recv_message(timeout=10) for _ in packets]
        rate = len(packets) / (time.perf_counter() - t0)
        print(f"\nMQTT loopback: {rate:.0f} packets/s (send + receive, 300 packets)")
        assert tx.stats.published == 300 and rx.stats.received == 300
    # per-topic order is kept; across families only the set matters
    for family in FAMILIES:
        assert [m.payload for m in got if m.family == family] == [d for f, d in packets if f == family]
    for m in got:
        assert m.stream == "cam1"
        assert LayerKind(decode_packet(m.payload).kind).family == m.family
        assert m.qos == {"semantic": 1, "structure": 0, "texture": 0}[m.family]
        want = {"semantic": 90, "structure": 45, "texture": 30}[m.family]
        assert m.expiry is not None and want - 2 <= m.expiry <= want
    with pytest.raises(TransportClosed):
        await rx.recv(timeout=1)


@pytest.mark.mqtt
async def test_mosquitto_sub_sees_qos_and_expiry_per_family(brokers: list[Broker], tmp_path: Path) -> None:
    b = broker_at(brokers, tmp_path)
    sub = subprocess.Popen(
        [
            require_client("mosquitto_sub"),
            "-V",
            "mqttv5",
            "-h",
            "127.0.0.1",
            "-p",
            str(b.port),
            "-q",
            "1",
            "-t",
            "layercast/#",
            "-F",
            "%t %q %E %l %x",
            "-C",
            "3",
            "-W",
            "20",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        await wait_until(lambda: "layercast/#" in b.log() and "SUBSCRIBE" in b.log())
        packets = wire_packets(3)
        async with MqttTransport(cfg(b, role="send", stream="cam1")) as tx:
            for family, data in packets:
                await tx.send(data, family=family)
        out, err = await asyncio.to_thread(sub.communicate, timeout=20)
    finally:
        if sub.poll() is None:
            sub.kill()
    lines = sorted(out.decode().split("\n")[:3])
    expect = sorted(
        f"layercast/cam1/{f} {1 if f == 'semantic' else 0} {60 if f == 'semantic' else 30} {len(d)} {d.hex()}"
        for f, d in packets
    )
    assert lines == expect, err.decode()


@pytest.mark.mqtt
async def test_mosquitto_pub_injects_a_packet(brokers: list[Broker], tmp_path: Path) -> None:
    b = broker_at(brokers, tmp_path)
    family, data = wire_packets(1)[0]
    (tmp_path / "packet.bin").write_bytes(data)
    async with MqttTransport(cfg(b, role="receive", stream="cam9")) as rx:
        assert isinstance(rx, MqttTransport)
        subprocess.run(
            [
                require_client("mosquitto_pub"),
                "-V",
                "mqttv5",
                "-h",
                "127.0.0.1",
                "-p",
                str(b.port),
                "-q",
                "1",
                "-t",
                "layercast/cam9/semantic",
                "-f",
                str(tmp_path / "packet.bin"),
            ],
            check=True,
            timeout=10,
            capture_output=True,
        )
        # also a stray topic and another stream: neither reaches this receiver as a packet
        subprocess.run(
            [
                require_client("mosquitto_pub"),
                "-h",
                "127.0.0.1",
                "-p",
                str(b.port),
                "-t",
                "layercast/cam8/semantic",
                "-m",
                "other stream",
            ],
            check=True,
            timeout=10,
        )
        m = await rx.recv_message(timeout=10)
        assert (m.stream, m.family, m.payload, m.qos) == ("cam9", family, data, 1)
        assert decode_packet(m.payload).sequence == 1
        with pytest.raises(TransportTimeout):
            await rx.recv(timeout=0.3)


@pytest.mark.mqtt
async def test_message_expiry_drops_stale_layers(brokers: list[Broker], tmp_path: Path) -> None:
    b = broker_at(brokers, tmp_path)
    rx_cfg = cfg(b, role="receive", client_id=f"rx-expiry-{os.getpid()}", session_expiry=60)
    async with MqttTransport(rx_cfg):
        pass  # the broker now keeps this session (and queues QoS 1 messages) while it is away
    stale = wire_packets(1, stream_id=1)[0][1]
    fresh = wire_packets(1, stream_id=2)[0][1]
    async with MqttTransport(cfg(b, role="send", stream="camA", expiry=(1, 1, 1))) as tx:
        await tx.send(stale, family="semantic")
    async with MqttTransport(cfg(b, role="send", stream="camB", expiry=(60, 60, 60))) as tx:
        await tx.send(fresh, family="semantic")
    await asyncio.sleep(2.2)
    async with MqttTransport(rx_cfg) as rx:
        assert isinstance(rx, MqttTransport)
        m = await rx.recv_message(timeout=5)
        assert (m.stream, m.payload) == ("camB", fresh)
        assert m.expiry is not None and 50 <= m.expiry <= 58
        with pytest.raises(TransportTimeout):
            await rx.recv(timeout=0.5)


@pytest.mark.mqtt
async def test_password_auth(brokers: list[Broker], tmp_path: Path) -> None:
    b = broker_at(brokers, tmp_path, users=USERS, acl=ACL)
    with pytest.raises(TransportError, match=r"refused the connection.*user name and password") as info:
        await MqttTransport(cfg(b, role="send", stream="cam1", username="cam1", password="wrong")).open()
    assert not isinstance(info.value, TransportTimeout)
    with pytest.raises(TransportError, match="refused the connection"):
        await MqttTransport(cfg(b, role="receive")).open()  # anonymous
    async with (
        MqttTransport(cfg(b, role="receive", username="receiver", password="pw-rx")) as rx,
        MqttTransport(cfg(b, role="send", stream="cam1", username="cam1", password="pw-cam1")) as tx,
    ):
        await tx.send(b"\x01\x02", family="semantic")
        assert await rx.recv(timeout=5) == b"\x01\x02"


@pytest.mark.mqtt
async def test_acl_keeps_a_camera_on_its_own_topic(brokers: list[Broker], tmp_path: Path) -> None:
    b = broker_at(brokers, tmp_path, users=USERS, acl=ACL)
    async with (
        MqttTransport(cfg(b, role="receive", username="receiver", password="pw-rx")) as rx,
        MqttTransport(cfg(b, role="send", stream="cam2", username="cam1", password="pw-cam1")) as forger,
        MqttTransport(cfg(b, role="send", stream="cam1", username="cam1", password="pw-cam1")) as cam1,
    ):
        assert isinstance(forger, MqttTransport)
        with pytest.raises(TransportError, match=r"refused the publish to 'layercast/cam2/semantic'.*ACL"):
            await forger.send(b"forged", family="semantic")  # QoS 1: the PUBACK says "Not authorized"
        await forger.send(b"forged", family="texture")  # QoS 0: dropped by the broker without a word
        assert forger.stats.refused == 1
        await cam1.send(b"genuine", family="texture")
        m = await rx.recv_message(timeout=5)  # per-client order: the forged QoS 0 went first and is gone
        assert (m.stream, m.payload) == ("cam1", b"genuine")
        with pytest.raises(TransportTimeout):
            await rx.recv(timeout=0.3)
    assert "Denied PUBLISH" in b.log()
    # a camera may not read other cameras' streams: Mosquitto grants the SUBSCRIBE but delivers nothing
    async with (
        MqttTransport(cfg(b, role="receive", username="cam1", password="pw-cam1")) as snoop,
        MqttTransport(cfg(b, role="receive", username="receiver", password="pw-rx")) as rx,
        MqttTransport(cfg(b, role="send", stream="cam2", username="cam2", password="pw-cam2")) as cam2,
    ):
        await cam2.send(b"private", family="semantic")
        assert await rx.recv(timeout=5) == b"private"
        with pytest.raises(TransportTimeout):
            await snoop.recv(timeout=0.3)


@pytest.mark.mqtt
async def test_tls_with_a_test_ca(brokers: list[Broker], tmp_path: Path) -> None:
    b = broker_at(brokers, tmp_path, tls=True)
    assert b.tls is not None and b.tls_port is not None
    tls = {"port": b.tls_port, "tls": True, "ca_file": str(b.tls.ca)}
    async with (
        MqttTransport(cfg(b, role="receive", **tls)) as rx,
        MqttTransport(cfg(b, role="send", stream="cam1", host="localhost", **tls)) as tx,
    ):
        await tx.send(b"over tls", family="structure")
        assert await rx.recv(timeout=5) == b"over tls"
    url = f"mqtt://127.0.0.1:{b.tls_port}/layercast/cam1?tls=1"  # system CAs do not know the test CA
    with pytest.raises(TransportError, match="TLS handshake"):
        await MqttTransport.from_url(url, role="send").open()


@pytest.mark.mqtt
async def test_reconnect_after_broker_restart(brokers: list[Broker], tmp_path: Path) -> None:
    b = broker_at(brokers, tmp_path)
    async with (
        MqttTransport(cfg(b, role="receive")) as rx,
        MqttTransport(cfg(b, role="send", stream="cam1")) as tx,
    ):
        assert isinstance(rx, MqttTransport) and isinstance(tx, MqttTransport)
        await tx.send(b"before", family="semantic")
        assert await rx.recv(timeout=5) == b"before"
        b.stop()
        await wait_until(lambda: not tx.connected and not rx.connected)
        with pytest.raises(TransportTimeout):
            await tx.send(b"during", family="semantic", timeout=0.3)
        await asyncio.to_thread(b.start)
        await wait_until(lambda: tx.connected and rx.connected)
        await tx.send(b"after", family="semantic", timeout=10)
        assert await rx.recv(timeout=5) == b"after"
        assert tx.stats.reconnects >= 1 and rx.stats.reconnects >= 1


async def drain(rx: MqttTransport) -> list[tuple[str, bytes]]:
    """Everything `rx` has buffered (waits briefly so a late duplicate would show up)."""
    await asyncio.sleep(0.2)
    out: list[tuple[str, bytes]] = []
    while True:
        try:
            m = await rx.recv_message(timeout=0.05)
        except TransportTimeout:
            return out
        out.append((m.stream, m.payload))


@pytest.mark.mqtt
async def test_shared_subscription_splits_without_duplicates(brokers: list[Broker], tmp_path: Path) -> None:
    b = broker_at(brokers, tmp_path)
    cams = {"cam1": wire_packets(60, stream_id=1), "cam2": wire_packets(60, stream_id=2)}
    sent = {(cam, d) for cam, packets in cams.items() for _, d in packets}
    async with (
        MqttTransport(cfg(b, role="receive", group="g")) as r1,
        MqttTransport(cfg(b, role="receive", group="g")) as r2,
        MqttTransport(cfg(b, role="send", stream="cam1", qos=(1, 1, 1))) as t1,
        MqttTransport(cfg(b, role="send", stream="cam2", qos=(1, 1, 1))) as t2,
    ):
        assert isinstance(r1, MqttTransport) and isinstance(r2, MqttTransport)
        for (f1, d1), (f2, d2) in zip(cams["cam1"], cams["cam2"], strict=True):
            await t1.send(d1, family=f1)
            await t2.send(d2, family=f2)
        await wait_until(lambda: r1.stats.received + r2.stats.received >= len(sent))
        got = [await drain(r1), await drain(r2)]
        assert len(got[0]) + len(got[1]) == len(sent)
        assert set(got[0]).isdisjoint(got[1]) and set(got[0]) | set(got[1]) == sent
        assert got[0] and got[1], "both members of the group got work"
        # Mosquitto balances per message: one camera alone is still spread over the group (the
        # worker-affinity trade-off in deploy/README.md)
        for i in range(10):
            await t1.send(bytes([i]), family="semantic")
        await wait_until(lambda: r1.stats.received + r2.stats.received >= len(sent) + 10)
        one = [await drain(r1), await drain(r2)]
        assert len(one[0]) + len(one[1]) == 10 and one[0] and one[1]


@pytest.mark.mqtt
async def test_without_reconnect_a_lost_broker_closes_the_transport(brokers: list[Broker], tmp_path: Path) -> None:
    b = broker_at(brokers, tmp_path)
    async with (
        MqttTransport(cfg(b, role="receive", reconnect=False)) as rx,
        MqttTransport(cfg(b, role="send", stream="cam1", reconnect=False)) as tx,
    ):
        b.stop()
        with pytest.raises(TransportClosed, match="reconnect is off"):
            await rx.recv(timeout=5)
        with pytest.raises(TransportClosed, match="reconnect is off"):
            await tx.send(b"x", family="semantic", timeout=5)


class StallingRelay:
    """A loopback TCP relay in front of a real broker whose first `bad` connections misbehave the way a
    broker starting up or overloaded can: `"silent"` accepts and never answers (no CONNACK), `"reset"`
    accepts and resets the connection (RST). Later connections are relayed to the broker."""

    def __init__(self, target_port: int, bad: list[str]) -> None:
        self.target_port = target_port
        self.bad = list(bad)
        self.accepted = 0
        self.held: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> StallingRelay:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.held:
            w.close()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        import socket
        import struct

        self.accepted += 1
        mode = self.bad.pop(0) if self.bad else "relay"
        if mode == "silent":
            self.held.append(writer)
            return
        if mode == "reset":
            await reader.read(1)  # the CONNECT has started to arrive
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.held += [writer, up_w]

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                w.close()

        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))


@pytest.mark.mqtt
@pytest.mark.parametrize("bad", [["silent"], ["reset", "silent", "reset"]])
async def test_offline_start_survives_a_broker_that_stalls_or_resets_the_first_connects(
    brokers: list[Broker], tmp_path: Path, bad: list[str]
) -> None:
    """A service's transport (`offline_start`) opens, within `open`'s timeout and without an error, even
    when its first connections get no CONNACK or are reset (a broker still starting, or swamped by a
    fleet booting at the same instant): it keeps connecting in the background and delivers once the
    broker answers. Without `offline_start` the same stall fails `open`. Where the broker answers at
    once, an offline-start transport is connected when `open` returns (a worker's "subscribed to" line)."""
    b = broker_at(brokers, tmp_path)
    async with StallingRelay(b.port, bad) as relay, MqttTransport(cfg(b, role="receive")) as rx:
        tx = MqttTransport(
            cfg(b, role="send", stream="cam1", port=relay.port, connect_timeout=2.0),
            default_timeout=0.5,  # shorter than one stalled connect attempt
            offline_start=True,
        )
        t0 = time.monotonic()
        await tx.open()
        assert time.monotonic() - t0 < 1.5 and not tx.connected
        try:
            await tx.send(b"after the stall", family="semantic", timeout=30)
            assert await rx.recv(timeout=5) == b"after the stall"
            assert relay.accepted == len(bad) + 1
        finally:
            await tx.close()
        plain = MqttTransport(cfg(b, role="send", stream="cam1", port=relay.port), default_timeout=0.5)
        relay.bad = ["silent"]
        stalled = rf"no answer \(CONNACK\) from MQTT broker 127.0.0.1:{relay.port} within 0.5 s"
        with pytest.raises(TransportTimeout, match=stalled):
            await plain.open()
        await plain.close()
        async with MqttTransport(cfg(b, role="receive"), offline_start=True, default_timeout=10) as prompt:
            assert prompt.connected


@pytest.mark.mqtt
async def test_a_failing_connection_task_ends_the_transport_instead_of_hanging_it(
    brokers: list[Broker], tmp_path: Path
) -> None:
    """Should the task that pumps a connection fail (a bug: here one injected into message delivery), the
    transport ends with TransportClosed, which `ended` reports and `recv` raises, so a service ends
    (crash-only) instead of waiting forever on a dead connection."""

    class Faulty(MqttTransport):
        def _deliver(self, message: Any) -> None:
            raise RuntimeError("injected delivery bug")

    b = broker_at(brokers, tmp_path)
    async with Faulty(cfg(b, role="receive")) as rx, MqttTransport(cfg(b, role="send", stream="cam1")) as tx:
        assert isinstance(rx, Faulty) and rx.ended is None
        await tx.send(b"x", family="semantic")
        with pytest.raises(TransportClosed, match="injected delivery bug"):
            await rx.recv(timeout=10)
        assert isinstance(rx.ended, TransportClosed)


@contextlib.asynccontextmanager
async def worker_fed(
    brokers: list[Broker], tmp_path: Path, packets: list[tuple[bytes, str]], **options: Any
) -> AsyncIterator[MqttTransport]:
    """A worker's receiver (manual acks, a persistent session, `options`) after a camera sent it `packets`."""
    b = broker_at(brokers, tmp_path)
    rx_cfg = cfg(b, role="receive", manual_ack=True, client_id="w1", session_expiry=60, **options)
    async with MqttTransport(rx_cfg) as rx, MqttTransport(cfg(b, role="send", stream="cam1")) as tx:
        assert isinstance(rx, MqttTransport)
        for data, family in packets:
            await tx.send(data, family=family)
        yield rx


@pytest.mark.mqtt
async def test_a_full_inbox_drops_qos0_floods_but_never_a_qos1_message(brokers: list[Broker], tmp_path: Path) -> None:
    """A receiver whose consumer is stalled (decodes backing up) while a camera floods QoS 0 layers: the
    inbox drops QoS 0 packets past `max_queued` (counted), but keeps every QoS 1 one. A dropped QoS 1
    message would be lost until the next reconnect (a broker resends unacknowledged messages only
    then) and would hold one of the broker's in-flight slots for this client meanwhile; the broker's
    flow control (`receive_maximum`) bounds how many QoS 1 messages can be outstanding instead."""
    flood = [(f"structure {i}".encode(), "structure") for i in range(20)]  # QoS 0
    wanted = [f"semantic {i}".encode() for i in range(3)]  # QoS 1
    async with worker_fed(brokers, tmp_path, [*flood, *((d, "semantic") for d in wanted)], max_queued=5) as rx:
        await wait_until(lambda: rx.stats.received + rx.stats.dropped_full == len(flood) + len(wanted))
        got = []
        while True:
            try:
                got.append(await rx.recv_message(timeout=0.2))
            except TransportTimeout:
                break
        assert [m.payload for m in got if m.family == "semantic"] == wanted
        assert rx.stats.dropped_full == len(flood) - 5 and len(got) == 5 + len(wanted)
        for m in got:
            rx.ack(m)


@pytest.mark.mqtt
async def test_receive_maximum_bounds_the_unacknowledged_qos1_messages(brokers: list[Broker], tmp_path: Path) -> None:
    """The broker sends a receiver at most `receive_maximum` QoS 1 messages it has not acknowledged; the
    rest wait at the broker (not in the receiver's memory) and come as acknowledgements free slots."""
    sent = [f"semantic {i}".encode() for i in range(5)]
    async with worker_fed(brokers, tmp_path, [(d, "semantic") for d in sent], receive_maximum=2) as rx:
        first = [await rx.recv_message(timeout=5) for _ in range(2)]
        with pytest.raises(TransportTimeout):
            await rx.recv_message(timeout=0.5)  # two outstanding: the broker holds the other three
        got = list(first)
        for m in first:
            rx.ack(m)
        while len(got) < len(sent):
            m = await rx.recv_message(timeout=5)
            got.append(m)
            rx.ack(m)
        assert [m.payload for m in got] == sent
