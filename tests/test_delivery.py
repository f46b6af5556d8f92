"""What makes delivery lossless and duplicate-free on real parts: manual MQTT acknowledgements on a
persistent session (an unacknowledged message comes back, an acknowledged one does not), the durable
duplicate drop of a restarted receiver, and the stream check of a topic's camera."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from layercast.common.identity import camera_id
from layercast.common.transport.memory import memory_pair
from layercast.common.transport.mqtt import MqttConfig, MqttTransport
from layercast.proto.framing import encode_packet, packetize
from layercast.receiver.session import ReceiveSession
from layercast.sender.session import SendSession
from tests.mqtt_broker import start_broker
from tests.session_helpers import encoded_samples, read_events


@pytest.mark.mqtt
@pytest.mark.timeout(60)
async def test_unacknowledged_message_is_delivered_again_acknowledged_one_is_not(tmp_path: Path) -> None:
    broker = start_broker(tmp_path)
    try:
        rx_cfg = MqttConfig(
            host="127.0.0.1", port=broker.port, stream="cam1", client_id="w1", session_expiry=60, manual_ack=True
        )
        tx_cfg = MqttConfig(host="127.0.0.1", port=broker.port, role="send", stream="cam1")
        async with MqttTransport(rx_cfg) as rx, MqttTransport(tx_cfg) as tx:
            await tx.send(b"first", family="semantic")
            await tx.send(b"second", family="semantic")
            first = await rx.recv_message(timeout=5)
            second = await rx.recv_message(timeout=5)
            assert (first.payload, second.payload, first.qos) == (b"first", b"second", 1)
            rx.ack(first)  # `second` is never acknowledged: the worker "dies" with it in hand
        async with MqttTransport(rx_cfg) as rx:  # the same client id resumes the session
            again = await rx.recv_message(timeout=5)
            assert again.payload == b"second"
            rx.ack(again)
            assert rx.stats.acked == 1
        async with MqttTransport(rx_cfg) as rx:
            with pytest.raises(Exception, match="timed out"):
                await rx.recv_message(timeout=1.5)
    finally:
        broker.stop()


@pytest.mark.mqtt
@pytest.mark.timeout(60)
async def test_packet_of_another_camera_on_a_topic_is_a_counted_reject(tmp_path: Path) -> None:
    """cam4's topic carrying cam5's packets (a misconfigured or forging sender): rejected, nothing written."""
    broker = start_broker(tmp_path)
    out = tmp_path / "out"
    try:
        rx_t = MqttTransport(MqttConfig(host="127.0.0.1", port=broker.port, stream="+"))
        tx_t = MqttTransport(MqttConfig(host="127.0.0.1", port=broker.port, role="send", stream="cam4"))
        async with rx_t, ReceiveSession(out_dir=out, image_timeout=1.0) as rx:
            rx.add_transport(rx_t, "mqtt")
            async with SendSession(tx_t, profile="mqtt", camera="cam5") as tx:
                for r in encoded_samples()[:2]:
                    await tx.send_image(r.image)
            await rx.run(idle_timeout=1.5, until_closed=False)
    finally:
        broker.stop()
    assert rx.summary.images == 0 and rx.summary.reject_reasons == {"StreamMismatchError": 2}
    rejects = [e for e in read_events(out) if e["event"] == "PacketRejected"]
    assert [e["camera"] for e in rejects] == ["cam4", "cam4"]
    assert all(e["stream_id"] == camera_id("cam5") for e in rejects)
    assert not any(out.glob("*/*/final.png"))


async def test_restarted_receiver_drops_images_it_already_wrote(tmp_path: Path) -> None:
    """A broker resends what a killed worker had not acknowledged; images already written are not redone."""
    images = [r.image for r in encoded_samples()[:3]]
    acked: list[int] = []

    async def run(send: list[int]) -> ReceiveSession:
        a, b = memory_pair()
        async with (
            ReceiveSession(out_dir=tmp_path, image_timeout=1.0) as rx,
            SendSession(a, profile="mqtt", camera="cam1") as tx,
        ):
            rx.add_transport(b, "memory", camera="cam1")
            for i in send:
                await tx.send_image(images[i], image_id=i)
            await tx.transport.drain()
            await rx.run(idle_timeout=0.5, until_closed=False)
        return rx

    first = await run([0, 1])
    assert first.summary.images == 2 and first.summary.duplicates == 0
    stamp = {i: (tmp_path / "cam1" / str(i) / "final.png").stat().st_mtime_ns for i in (0, 1)}
    second = await run([0, 1, 2])  # 0 and 1 again (redelivered), 2 new
    assert second.summary.images == 1 and second.summary.duplicates == 2 and second.summary.packets == 3
    assert {i: (tmp_path / "cam1" / str(i) / "final.png").stat().st_mtime_ns for i in (0, 1)} == stamp
    assert (tmp_path / "cam1" / "2" / "final.png").is_file()
    # feed(on_done=...) answers a duplicate at once (an MQTT reader acknowledges it right away)
    async with ReceiveSession(out_dir=tmp_path) as rx:
        one = dataclasses.replace(images[0], layers=images[0].layers[:1], stream_id=camera_id("cam1"), image_id=0)
        (pkt,) = packetize(one)
        rx.feed(encode_packet(pkt), camera="cam1", on_done=lambda: acked.append(0))
        assert acked == [0] and rx.summary.duplicates == 1


@pytest.mark.mqtt
@pytest.mark.timeout(60)
async def test_stopped_group_member_takes_its_share_until_it_ends_its_session(tmp_path: Path) -> None:
    """Mosquitto keeps a persistent member of a shared-subscription group in the rotation while it is
    offline (its share waits in its session); `end_session_on_close` takes a retiring worker out."""
    broker = start_broker(tmp_path)

    def member(cid: str) -> MqttTransport:
        cfg = MqttConfig(host="127.0.0.1", port=broker.port, group="g", client_id=cid, session_expiry=60)
        return MqttTransport(cfg)

    async def share_of_w2(n: int) -> int:
        got = 0
        async with (
            member("w2") as w2,
            MqttTransport(MqttConfig(host="127.0.0.1", port=broker.port, role="send", stream="cam1")) as tx,
        ):
            for i in range(n):
                await tx.send(bytes([i]), family="semantic")
            while True:
                try:
                    await w2.recv_message(timeout=1.0)
                except Exception:
                    return got
                got += 1

    try:
        async with member("w1"), member("w2"):
            pass  # both sessions exist, both members of group g
        assert await share_of_w2(6) < 6, "the stopped w1 keeps taking its share"
        w1 = member("w1")
        async with w1:
            w1.end_session_on_close = True  # retire w1 (after it drained: here it has nothing left to do)
        assert await share_of_w2(6) == 6
    finally:
        broker.stop()
