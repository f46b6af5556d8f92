"""`layercast send / receive / demo` in-process, and the live view served and fetched over HTTP."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
from broker import mosquitto_broker  # noqa: F401  (pytest fixture)

from layercast.cli import build_parser, main
from layercast.cli_options import encoder_from_args
from layercast.common.identity import camera_id
from layercast.common.transport.memory import memory_pair
from layercast.proto.framing import MAGIC, decode_packet, encode_varint, iter_container
from layercast.receiver.session import ReceiveSession
from layercast.receiver.web import LiveView
from layercast.sender.session import SendSession
from tests.session_helpers import ENCODE_FLAGS, encoded_samples, file_decodes, read_png, sample_paths

pytestmark = pytest.mark.timeout(60)


def test_send_to_file_then_receive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lcs, out = tmp_path / "s.lcs", tmp_path / "out"
    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in sample_paths()[:2]:
        (folder / p.name).write_bytes(p.read_bytes())
    assert main(["send", str(folder), "--to", f"file:{lcs}", "--camera", "cam3", "--json", *ENCODE_FLAGS]) == 0
    sent = json.loads(capsys.readouterr().out)
    assert [i["image_id"] for i in sent["images"]] == [0, 1] and sent["failed"] == []
    assert not sent["bundle"]
    args = build_parser().parse_args(["encode", "x", "-o", "x", *ENCODE_FLAGS])  # 32-row stripes, as encode
    for img, path in zip(sent["images"], sample_paths()[:2], strict=True):
        units = {x["family"]: x["units"] for x in img["layers"]}
        per_layer = encoder_from_args(args).with_options(bundle=False)  # the budget as the file link counts it
        coded = per_layer.encode(path, stream_id=camera_id("cam3"), image_id=img["image_id"])
        assert units["structure"] == len(coded.image.layer("structure").units)  # type: ignore[union-attr]
    assert sent["camera"] == "cam3" and sent["stream_id"] == camera_id("cam3")
    assert main(["receive", "--on", f"file:{lcs}", "--out", str(out), "--camera", "cam3", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["images"] == got["complete"] == 2 and got["rejected"] == 0
    # the budget counts the stream id each packet carries, so the reference is coded as camera cam3
    for iid, ref in enumerate(file_decodes(encoded_samples(stream_id=camera_id("cam3"), bundle=False)[:2])):
        assert np.array_equal(read_png(out / "cam3" / str(iid) / "final.png"), ref)
    assert (out / "events.jsonl").is_file()
    # unnamed, the images are filed under the stream id; named as another camera, every packet is refused
    assert main(["receive", "--on", f"file:{lcs}", "--out", str(tmp_path / "o2"), "--json"]) == 0
    capsys.readouterr()
    assert (tmp_path / "o2" / str(camera_id("cam3")) / "1" / "final.png").is_file()
    assert main(["receive", "--on", f"file:{lcs}", "--out", str(tmp_path / "o3"), "--camera", "cam4", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["images"] == 0 and got["packets"] > 0
    assert got["reject_reasons"] == {"StreamMismatchError": got["packets"]}


async def test_send_over_mqtt_bundles_whole_images_coded_in_one_stripe(
    mosquitto_broker: int,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`layercast send` through a real Mosquitto: one bundled message per image, the edge map in one stripe
    (it can only be lost with the whole image); the receiver rebuilds each image as the file decode does."""
    from layercast.common.transport.mqtt import MqttConfig, MqttTransport

    out = tmp_path / "out"
    paths = [str(p) for p in sample_paths()[:2]]
    config = MqttConfig(host="127.0.0.1", port=mosquitto_broker, role="receive", stream="cam9")
    async with MqttTransport(config) as rx_t, ReceiveSession(out_dir=out, image_timeout=2.0) as rx:
        rx.add_transport(rx_t, "mqtt")
        url = f"mqtt://127.0.0.1:{mosquitto_broker}/layercast/cam9"
        argv = ["send", *paths, "--to", url, "--first-image-id", "0", "--json", *ENCODE_FLAGS]
        assert await asyncio.to_thread(main, argv) == 0
        await rx.run(count=2, idle_timeout=10, until_closed=False)
    sent = json.loads(capsys.readouterr().out)
    assert sent["bundle"]
    assert [i["packets"] for i in sent["images"]] == [1, 1] and rx.summary.packets == 2
    assert [{x["family"]: x["units"] for x in i["layers"]}["structure"] for i in sent["images"]] == [1, 1]
    args = build_parser().parse_args(["encode", "x", "-o", "x", *ENCODE_FLAGS, "--stripe-rows", "0"])
    results = [
        encoder_from_args(args).encode(p, stream_id=camera_id("cam9"), image_id=i)
        for i, p in enumerate(sample_paths()[:2])
    ]
    assert [len(r.image.layer("structure").units) for r in results] == [1, 1]  # type: ignore[union-attr]
    for iid, ref in enumerate(file_decodes(results)):
        assert np.array_equal(read_png(out / "cam9" / str(iid) / "final.png"), ref)


def test_bundled_file_round_trip_and_inspect(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`send --to file: --bundle`: one packet per image; inspect counts each image's own bytes; receive
    rebuilds every image."""
    lcs = tmp_path / "b.lcs"
    argv = ["send", *map(str, sample_paths()), "--to", f"file:{lcs}", "--bundle", "--json", *ENCODE_FLAGS]
    assert main(argv) == 0
    sent = json.loads(capsys.readouterr().out)
    assert sent["bundle"] and all(i["packets"] == 1 for i in sent["images"])
    assert main(["inspect", str(lcs), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["packets"] == len(sent["images"])
    per_image = [i["total_bytes"] for i in info["images"]]
    assert per_image == [i["wire_bytes"] + len(encode_varint(i["wire_bytes"])) for i in sent["images"]]
    assert sum(per_image) + 4 == lcs.stat().st_size  # + the magic
    assert main(["receive", "--on", f"file:{lcs}", "--out", str(tmp_path / "out"), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["complete"] == len(sent["images"]) and got["packets"] == len(sent["images"])


def test_send_rejects_unknown_destination(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["send", str(sample_paths()[0]), "--to", "carrier-pigeon://x"]) == 1
    assert "unknown address" in capsys.readouterr().err


def test_demo_runs_and_writes_stages(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    argv = ["demo", "--limit", "2", "--out", str(out), "--rate", "40k", "--delay", "50ms", "--json", *ENCODE_FLAGS]
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["images"]) == 2 and doc["out"] == str(out)
    for row in doc["images"]:
        assert row["layers"]["semantic"]["ms"] >= 50, "arrival includes the emulated one-way delay"
        assert row["stages"] >= 1 and Path(row["final"]).is_file()
    assert list(out.glob("demo/*/stage-1.png")) and doc["seconds"]["total"] < 60
    assert doc["loop"] == "uvloop", "auto: uvloop, installed with the fast extra"
    assert main([*argv[: -len(ENCODE_FLAGS)], "--loop", "asyncio", *ENCODE_FLAGS]) == 0
    assert json.loads(capsys.readouterr().out)["loop"] == "asyncio"
    assert main(["demo", "--limit", "1", "--out", str(out), "--rate", "40k", *ENCODE_FLAGS]) == 0
    text = capsys.readouterr().out
    assert "semantic" in text and f"output: {out}" in text


def test_demo_serves_the_live_view_until_interrupted(tmp_path: Path) -> None:
    """`demo --web PORT` serves the live page while images arrive and after, until SIGINT (a real process)."""
    import re
    import signal
    import subprocess
    import sys
    import urllib.request

    argv = ["demo", "--limit", "2", "--out", str(tmp_path / "d"), "--rate", "40k", "--web", "0", *ENCODE_FLAGS]
    proc = subprocess.Popen([sys.executable, "-m", "layercast", *argv], stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        url = None
        for line in proc.stderr:
            found = re.search(r"live view on (http://\S+/)", line)
            url = url or (found.group(1) if found else None)
            if "stays up until Ctrl-C" in line:
                break
        assert url, "no live view URL printed"
        with urllib.request.urlopen(url + "events", timeout=10) as resp:
            state = json.loads(resp.read())
        assert (
            "demo" in json.dumps(state["cameras"])
            and "<html" in urllib.request.urlopen(url, timeout=10).read().decode()
        )
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()


async def test_live_view_page_events_and_png(tmp_path: Path) -> None:
    from aiohttp import ClientSession

    from layercast.common.transport.signalling import WebRTCServer

    a, b = memory_pair()
    async with ReceiveSession(b) as rx:
        view = LiveView(rx)
        server = WebRTCServer("127.0.0.1", 0)
        server.add_routes(view.routes())  # mounted beside the signalling endpoint
        async with server, ClientSession() as http:
            base = f"http://127.0.0.1:{server.port}"
            async with SendSession(a, stream_id=6) as tx:
                await tx.send_image(encoded_samples()[0].image)
            await rx.run(count=1, until_closed=False)
            async with http.get(base + "/") as r:
                assert r.status == 200 and "Layercast live view" in await r.text()
            async with http.get(base + "/events") as r:
                doc = await r.json()
            assert [s["stream_id"] for s in doc["streams"]] == [6] and doc["streams"][0]["final"]
            async with http.get(base + "/stage/6/0/latest.png") as r:
                assert r.status == 200 and r.content_type == "image/png"
                png = await r.read()
            assert png[:8] == b"\x89PNG\r\n\x1a\n"
            assert np.array_equal(read_png(png), file_decodes(encoded_samples()[:1])[0])
            async with http.get(base + "/stage/6/99/latest.png") as r:
                assert r.status == 404
            async with http.get(base + "/offer") as r:
                assert r.status == 405, "the signalling endpoint is still there (POST only)"
        view.close()


def test_send_with_clock_sized_image_ids_stays_within_max_bytes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every packet carries the image id; a one-shot sender's ids come from the clock (4-byte varints), and
    the budget must count them: each image's packets stay within --max-bytes with the container's framing."""
    lcs = tmp_path / "s.lcs"
    paths = [str(p) for p in sample_paths()]
    first = 2**27 + 5  # a clock_image_id-sized id
    argv = ["send", *paths, "--to", f"file:{lcs}", "--first-image-id", str(first), "--json", *ENCODE_FLAGS]
    assert main(argv) == 0
    sent = json.loads(capsys.readouterr().out)
    assert [i["image_id"] for i in sent["images"]] == list(range(first, first + len(paths)))
    own: dict[int, int] = {}  # image id -> the bytes of a .lcs file of that image's packets alone
    for wire in iter_container(lcs.read_bytes()):
        iid = decode_packet(wire).image_id
        own[iid] = own.get(iid, len(MAGIC)) + len(encode_varint(len(wire))) + len(wire)
    for img in sent["images"]:
        assert img["packets"] >= 3 and own[img["image_id"]] <= 450, img
