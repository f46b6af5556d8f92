"""Keys that bind a camera and replay defence that survives restarts: a packet keyed for one camera never
lands in another's folder, a far-future sequence is refused instead of locking a camera out, and packets
captured before a receiver restart are refused after it (sans-I/O, then a live MQTT receiver process)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from layercast.common.fec import FecPolicy
from layercast.common.identity import camera_id
from layercast.common.replay import KeyRing, ReplayStore
from layercast.receiver.assembler import Assembler
from layercast.receiver.events import ImageReady, PacketRejected
from layercast.sender.session import plan_packets
from tests.fleet_helpers import Proc, finals, wait_for
from tests.mqtt_broker import start_broker
from tests.session_helpers import encoded_samples

K1, K2 = bytes(range(32)), bytes(range(1, 33))
RING = KeyRing(cameras={"cam1": K1, "cam2": K2})


def wire(camera: str, key: bytes, image_id: int, start: int) -> list[bytes]:
    """One sample image as `camera` sends it (bundled: one packet), keyed, sequence from `start`."""
    import dataclasses

    img = dataclasses.replace(encoded_samples()[0].image, stream_id=camera_id(camera), image_id=image_id)
    seq = iter(range(start, start + 100))
    return [
        w.data
        for w in plan_packets(
            img, mtu=None, fec=FecPolicy.none(), key=key, next_sequence=lambda: next(seq), bundle=True
        )
    ]


def outcome(events: Sequence[object]) -> list[str]:
    return [e.error if isinstance(e, PacketRejected) else type(e).__name__ for e in events]


def test_a_packet_keyed_for_one_camera_never_lands_as_another() -> None:
    now = int(time.time() * 1000)
    asm = Assembler(key=RING)
    # cam2's packet (its own key and stream id) arriving on cam1's topic: wrong key for cam1
    assert outcome(asm.receive(wire("cam2", K2, 0, now)[0], 0.0, camera="cam1")) == ["AuthError"]
    # cam1's key used for cam2's stream id on cam1's topic: the key fits, the stream does not
    assert outcome(asm.receive(wire("cam2", K1, 0, now)[0], 0.0, camera="cam1")) == ["StreamMismatchError"]
    # from an unnamed transport, each packet is checked with the key of the camera its stream id names
    assert outcome(asm.receive(wire("cam2", K1, 1, now)[0], 0.0)) == ["AuthError"]
    got = asm.receive(wire("cam2", K2, 2, now)[0], 0.0)
    assert any(isinstance(e, ImageReady) and e.camera == str(camera_id("cam2")) for e in got)
    assert "ImageReady" in outcome(asm.receive(wire("cam1", K1, 3, now + 10)[0], 0.0, camera="cam1"))


def test_far_future_sequence_is_refused_and_does_not_lock_the_camera_out() -> None:
    now = int(time.time() * 1000)
    asm = Assembler(key=RING)
    assert "ImageReady" in outcome(asm.receive(wire("cam1", K1, 0, now)[0], 0.0, camera="cam1"))
    for forged in (2**64 - 1, now + 3_600_000):  # a key holder tries to push the window ahead
        assert outcome(asm.receive(wire("cam1", K1, 1, forged)[0], 0.0, camera="cam1")) == ["AuthError"]
    assert "ImageReady" in outcome(asm.receive(wire("cam1", K1, 2, now + 5)[0], 0.0, camera="cam1"))


def test_replay_store_survives_a_restart(tmp_path: Path) -> None:
    now = int(time.time() * 1000)
    captured = wire("cam1", K1, 0, now)[0]
    asm = Assembler(key=RING, replay_store=ReplayStore(tmp_path))
    assert "ImageReady" in outcome(asm.receive(captured, 0.0, camera="cam1"))
    again = Assembler(key=RING, replay_store=ReplayStore(tmp_path))  # a restarted receiver
    assert outcome(again.receive(captured, 0.0, camera="cam1")) == ["AuthError"]
    assert "ImageReady" in outcome(again.receive(wire("cam1", K1, 1, now + 1)[0], 0.0, camera="cam1"))
    assert "ImageReady" in outcome(Assembler(key=RING).receive(captured, 0.0, camera="cam1")), "no store: taken again"


@pytest.mark.mqtt
@pytest.mark.timeout(120)
def test_live_receiver_refuses_replays_after_restart_and_foreign_keys(tmp_path: Path) -> None:
    from layercast.common.transport.mqtt import MqttConfig, MqttTransport

    ring = tmp_path / "keys.txt"
    ring.write_text(f"cam1 {K1.hex()}\ncam2 {K2.hex()}\n")
    os.chmod(ring, 0o600)
    broker = start_broker(tmp_path)
    out = tmp_path / "out"
    url = f"mqtt://127.0.0.1:{broker.port}/layercast?client_id=w1&session_expiry=60"
    rx = Proc(["receive", "--on", url, "--out", str(out), "--key", f"@{ring}", "--json"], tmp_path / "rx")
    now = int(time.time() * 1000)
    captured = wire("cam1", K1, 0, now)

    def publish(camera: str, packets: list[bytes]) -> None:
        async def run() -> None:
            cfg = MqttConfig(host="127.0.0.1", port=broker.port, role="send", stream=camera)
            async with MqttTransport(cfg) as t:
                for data in packets:
                    await t.send(data, family="semantic")

        asyncio.run(run())

    try:
        rx.start()
        wait_for(lambda: "subscribed to" in rx.stderr(), 30, "the receiver", rx.stderr)
        publish("cam1", captured)
        wait_for(lambda: 0 in finals(out).get("cam1", set()), 30, "cam1's image", rx.stderr)
        rx.kill()  # SIGKILL: the window's newest number is already on disk
        (out / "cam1" / "0" / "final.png").unlink()  # so only the replay defence can refuse it
        rx.start()
        wait_for(lambda: "subscribed to" in rx.stderr().split("subscribed to", 1)[1], 30, "the restart", rx.stderr)
        publish("cam1", captured)  # the replay, after the restart
        publish("cam1", wire("cam2", K2, 5, now + 1))  # cam2's packet on cam1's topic
        publish("cam1", wire("cam1", K1, 1, now + 2))  # and a genuine new one
        wait_for(lambda: 1 in finals(out).get("cam1", set()), 30, "cam1's next image", rx.stderr)
        assert rx.terminate() == 0
    finally:
        if rx.proc is not None and rx.proc.poll() is None:
            rx.kill()
        broker.stop()
    assert finals(out) == {"cam1": {1}}, "neither the replay nor cam2's packet was written anywhere"
    summary = next(e for e in rx.events() if "reject_reasons" in e)
    assert summary["reject_reasons"] == {"AuthError": 2}
