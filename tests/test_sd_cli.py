"""`layercast decode --decoder sd` and the progressive receiver with the diffusers decoder, on tiny models
saved by the test and loaded back offline through the project's own loading code."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
import tiny_models
from PIL import Image

from layercast.cli import main
from layercast.common.transport.memory import memory_pair
from layercast.common.types import Prompt
from layercast.proto import framing
from layercast.receiver.layers import layerset_from_image
from layercast.receiver.models import SDConfig
from layercast.receiver.sd import load_decoder
from layercast.receiver.session import ReceiveSession
from layercast.sender.encode import EncodeOptions, encode_image
from layercast.sender.session import SendSession
from tests.imaging import scene

torch = pytest.importorskip("torch", reason="the gen extra (torch, diffusers) is not installed")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sd-cli")
    sd = tiny_models.save_tiny_sd(root / "sd")
    canny = tiny_models.save_tiny_controlnet(root / "cn-canny", seed=1)
    config = root / "sd.json"
    config.write_text(json.dumps({"model": str(sd), "controlnets": {"canny": str(canny)}, "steps": 2, "device": "cpu"}))
    plain = root / "sd-plain.json"  # no ControlNet: the structure layer cannot be used, and the decoder says so
    plain.write_text(json.dumps({"model": str(sd), "steps": 2, "device": "cpu"}))
    res = encode_image(scene(64, 64, seed=4), Prompt("a red house"), options=EncodeOptions(max_bytes=300))
    lcs = root / "house.lcs"
    lcs.write_bytes(res.data)
    return {"config": config, "plain": plain, "lcs": lcs, "sd": sd}


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)


def test_cli_decode_with_sd_is_deterministic(
    setup: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outs = []
    for name in ("a.png", "b.png"):
        out = tmp_path / name
        argv = ["decode", str(setup["lcs"]), "--decoder", "sd", "--sd-config", str(setup["config"]), "-o", str(out)]
        assert main([*argv, "--json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert doc["decoder"] == "sd" and doc["layers"] == ["semantic", "structure", "texture"]
        assert doc["notes"] == []  # every layer used: canny ControlNet, colormap through img2img
        outs.append(np.asarray(Image.open(out)))
    assert outs[0].shape == (64, 64, 3) and np.array_equal(outs[0], outs[1])
    argv = ["decode", str(setup["lcs"]), "--decoder", "sd", "--sd-config", str(setup["plain"]), "-o", str(out)]
    assert main([*argv, "--json"]) == 0
    captured = capsys.readouterr()
    assert any("structure layer ignored" in n for n in json.loads(captured.out)["notes"])
    assert "layercast: note: image 0: no ControlNet/T2I-Adapter for 'canny' configured" in captured.err
    preview = tmp_path / "p.png"
    assert main(["decode", str(setup["lcs"]), "-o", str(preview)]) == 0
    assert not np.array_equal(outs[0], np.asarray(Image.open(preview))), "the SD output is not the preview"


def test_cli_sd_without_weights_falls_back_with_a_clear_message(
    setup: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "x.png"
    argv = ["decode", str(setup["lcs"]), "--decoder", "sd", "--model", str(tmp_path / "no-such-model"), "-o", str(out)]
    assert main([*argv, "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["decoder"] == "preview"
    assert "warning" in captured.err and "no-such-model" in captured.err
    assert Image.open(out).size == (64, 64)


def test_receiver_decodes_progressively_with_sd(setup: dict[str, Path], tmp_path: Path) -> None:
    decoder = load_decoder(SDConfig.from_file(setup["plain"]))
    (img,) = framing.container_to_images(setup["lcs"].read_bytes())

    async def run() -> ReceiveSession:
        a, b = memory_pair()
        rx = ReceiveSession(b, decoder=decoder, out_dir=tmp_path, coalesce_s=0.0)
        async with rx:
            async with SendSession(a, profile="sbd", rate_bps=20_000, stream_id=9) as tx:
                await tx.send_image(img)
            await rx.run(until_closed=True)
        return rx

    rx = asyncio.run(run())
    assert rx.summary.images == 1 and rx.summary.complete == 1
    folder = tmp_path / "9" / "0"
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    started = [e["layers"] for e in events if e["event"] in ("Stage", "DecodeCancelled")]
    # the prompt alone starts a decode at once (kept, or cancelled when a richer layer set overtook it)
    assert started[0] == ["semantic"] and started[-1] == ["semantic", "structure", "texture"]
    final_stage = next(e for e in events if e["event"] == "Stage" and e["final"])
    assert any("structure layer ignored" in n for n in final_stage["notes"])  # the event log carries the notes
    assert len(sorted(folder.glob("stage-*.png"))) >= 1
    final = np.asarray(Image.open(folder / "final.png"))
    assert np.array_equal(final, decoder.decode(layerset_from_image(img))), "final stage = the SD decode of the file"
