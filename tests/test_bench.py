"""`layercast bench` end to end on a small synthetic folder (the full run is for people, not CI)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from layercast.cli import main
from tests.imaging import busy, scene


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    d = tmp_path / "imgs"
    d.mkdir()
    Image.fromarray(scene(384, 384, seed=1)).save(d / "a.png")
    Image.fromarray(busy(320, 400, seed=2)).save(d / "b.png")
    return d


def test_bench_images_part_measures_against_baselines(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench"
    argv = ["bench", str(folder), "--out", str(out), "--skip", "prompts", "--skip", "edges", "--skip", "stream"]
    assert main([*argv, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    rows = doc["images"]["rows"]
    assert [r["file"] for r in rows] == ["a.png", "b.png"]
    for r in rows:
        assert r["fits"] and r["total_bytes"] <= 655 and r["psnr"] > 5
        assert "jpeg-lowest" in r["baselines"] and r["baselines"]["jpeg-lowest"]["bytes"] > r["total_bytes"]
    assert (out / "results.json").is_file() and (out / "rd.png").is_file()
    assert json.loads((out / "results.json").read_text())["images"]["summary"]["images"] == 2


def test_stream_bench_small_run(folder: Path) -> None:
    from layercast.bench import stream

    res = stream.run(sorted(folder.iterdir()), link_images=2, throughput_images=12, repeats=1, fleet_per_camera=3)
    assert res["link"]["layercast"]["complete"] == 2
    assert res["link"]["layercast"]["first_preview_s"] < res["link"]["jpeg_q1"]["full_image_s"]
    assert res["throughput"]["webrtc"]["finished"] == res["throughput"]["webrtc-bundle"]["finished"] == 12
    mqtt = res["throughput"]["mqtt"]
    assert "skipped" in mqtt or mqtt["finished"] == 12
    framing = res["overhead"]["framing_pct"]
    assert 0 < framing["bundled_no_fec"] < framing["per_layer_no_fec"] < framing["default_fec"]
    assert framing["bundled_no_fec"] < res["overhead"]["side_info_pct"]["bundled_no_fec"]
    assert len(res["throughput"]["webrtc"]["runs"]) == 1
    # both ends on uvloop (installed with `fast`), with asyncio's own loop as the same-run baseline
    tp = res["throughput"]
    assert tp["loop"] == tp["webrtc"]["loop"] == "uvloop" and tp["webrtc, asyncio loop"]["loop"] == "asyncio"
    assert tp["webrtc, asyncio loop"]["finished"] == 12
    assert tp["webrtc"]["cpu_ms_per_image"]["receiver"] > 0 and tp["webrtc"]["cpu_ms_per_image"]["sender"] > 0
    fleet = res["fleet"]
    if "skipped" not in fleet:  # 4 camera processes x 3 images through 1, then 2 worker processes
        assert fleet["1_workers"]["finished"] == fleet["2_workers"]["finished"] == 12
        assert fleet["1_workers"]["images_per_s"] > 0 and fleet["2_workers"]["images_per_s"] > 0
    text = stream.format_table(res)
    assert "images/s" in text and "overhead" in text and "fleet" in text
    assert "event loop: uvloop" in text and "webrtc, asyncio loop" in text and "CPU per image: receiver" in text


@pytest.mark.timeout(120)
def test_throughput_run_over_webrtc_from_a_sender_process() -> None:
    """The stream bench's throughput run on a few images: a real sender process over loopback WebRTC,
    every image complete, and the per-layer profile's messages bundled into fewer SCTP packets."""
    import asyncio

    pytest.importorskip("aiortc")
    from layercast.bench import stream
    from tests.session_helpers import encoded_samples

    r = asyncio.run(stream._throughput(encoded_samples(), 12, "webrtc"))
    assert r["finished"] == r["complete"] == 12 and r["images_per_s"] > 0, r
    assert r["loop"] == "asyncio" and r["sender"]["cpu_s"] > 0, r  # both ends on this asyncio.run's kind of loop
    assert r["sender"]["send_s"] > 0 and 0 < r["sender"]["sctp_packets"] < r["packets"], r
    assert " in " in stream._datagrams(r) and stream._datagrams({"sender": {}}) == ""
