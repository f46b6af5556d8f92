"""`layercast bench --decoder sd`: the decode options, the mode each row really ran, offline metrics, and the
random-weights timing run end to end through the CLI."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("diffusers")
torch = pytest.importorskip("torch")

from layercast.bench import sd as bench_sd  # noqa: E402
from layercast.cli import main  # noqa: E402
from layercast.common import limits  # noqa: E402
from tests import tiny_models  # noqa: E402
from tests.imaging import scene  # noqa: E402

SKIP_OTHERS = ["--skip", "images", "--skip", "prompts", "--skip", "edges", "--skip", "stream"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-bench-sd")
    return {
        "sd": tiny_models.save_tiny_sd(root / "sd"),
        "canny": tiny_models.save_tiny_controlnet(root / "cn-canny", seed=1),
    }


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    d = tmp_path / "imgs"
    d.mkdir()
    Image.fromarray(scene(64, 64, seed=1)).save(d / "a.png")
    Image.fromarray(scene(64, 64, seed=2)).save(d / "b.png")
    return d


@pytest.fixture()
def offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("LAYERCAST_CLIP", raising=False)
    monkeypatch.setattr(limits, "MAX_RENDER_PIXELS", limits.MAX_RENDER_PIXELS)  # main() may set it
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: overhead-bound
    yield monkeypatch
    torch.set_num_threads(threads)


def _bench_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    assert main(argv) == 0, capsys.readouterr().err
    doc: dict[str, Any] = json.loads(capsys.readouterr().out)
    return doc


def test_structure_row_runs_the_configured_controlnet(
    tiny: dict[str, Path], folder: Path, tmp_path: Path, offline: object, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["bench", str(folder), "--out", str(tmp_path / "out"), *SKIP_OTHERS, "--json"]
    argv += ["--decoder", "sd", "--model", str(tiny["sd"]), "--controlnet", f"canny={tiny['canny']}"]
    argv += ["--steps", "2", "--device", "cpu"]
    res = _bench_json(argv, capsys)["sd"]
    assert res["available"] and not res["random_weights"] and res["steps"] == 2
    rows = {r["mode"]: r for r in res["rows"]}
    assert rows["prompt"]["pipeline"] == "txt2img"
    assert rows["+structure"]["pipeline"] == "controlnet:canny" and rows["+structure"]["notes"] == []
    assert rows["+colour"]["pipeline"].startswith("controlnet:canny+")
    for r in rows.values():
        assert r["images"] == 2 and r["seconds_per_image"] > 0 and r["ms_per_step"] > 0
        assert r["fid"] == "not computed: 2 images, FID needs >= 50"
        assert r["clip"].startswith("not available offline: no CLIP folder")
        assert r["lpips"].startswith("not available")
    assert "controlnet:canny" in bench_sd.format_table(res)


def test_structure_row_says_when_no_structure_model_is_configured(
    tiny: dict[str, Path], folder: Path, tmp_path: Path, offline: object, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["bench", str(folder), "--out", str(tmp_path / "out"), *SKIP_OTHERS, "--json", "--limit", "1"]
    argv += ["--decoder", "sd", "--model", str(tiny["sd"]), "--steps", "1", "--device", "cpu"]
    rows = {r["mode"]: r for r in _bench_json(argv, capsys)["sd"]["rows"]}
    assert rows["+structure"]["pipeline"] == "txt2img"
    assert any("structure layer ignored" in n for n in rows["+structure"]["notes"])
    assert rows["+structure"]["images"] == 1


def test_missing_models_make_an_unavailable_sd_part(
    folder: Path, tmp_path: Path, offline: object, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["bench", str(folder), "--out", str(tmp_path / "out"), *SKIP_OTHERS, "--json"]
    res = _bench_json([*argv, "--decoder", "sd", "--model", str(tmp_path / "nowhere")], capsys)["sd"]
    assert res == {"available": False, "reason": res["reason"], "rows": []} and "model_index.json" in res["reason"]


def test_random_weights_needs_the_sd_decoder(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", str(folder), "--out", str(tmp_path / "o"), "--random-weights"]) == 1
    assert "--decoder sd" in capsys.readouterr().err


def test_metrics_never_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TORCH_HOME", raising=False)
    real = socket.getaddrinfo
    with bench_sd.offline_metrics(tmp_path):
        with pytest.raises(socket.gaierror, match="no downloads"):
            socket.getaddrinfo("github.com", 443)
        assert socket.getaddrinfo("localhost", 80)
        assert os.environ["TORCH_HOME"] == str(tmp_path / "torch") and os.environ["HF_HUB_OFFLINE"] == "1"
    assert socket.getaddrinfo is real and "TORCH_HOME" not in os.environ
    metrics = bench_sd.available_metrics(3, weights_dir=tmp_path)
    assert metrics["fid"] == (None, "not computed: 3 images, FID needs >= 50")
    assert all(fn is None and why.startswith("not ") for fn, why in metrics.values())


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_random_weights_bench_cli_on_cpu(
    folder: Path, tmp_path: Path, offline: object, capsys: pytest.CaptureFixture[str]
) -> None:
    """The documented CPU invocation, end to end: SD 1.5 + ControlNet canny + colour adapter at 512x512."""
    torch.set_num_threads(os.cpu_count() or 1)  # full-size models: use every core (restored by `offline`)
    out = tmp_path / "out"
    argv = ["bench", str(folder), "--out", str(out), "--decoder", "sd", "--random-weights"]
    argv += ["--steps", "1", "--limit", "1", "--device", "cpu", "--json"]
    res = _bench_json(argv, capsys)
    assert set(res) >= {"sd", "folder"} and not {"images", "prompts", "edges", "stream"} & set(res)
    sd = res["sd"]
    assert sd["random_weights"] and sd["device"] == "cpu" and sd["dtype"] == "float32" and sd["size"] == [512, 512]
    assert sd["params_m"]["unet"] == pytest.approx(859.52, abs=0.01)
    assert set(sd["build_s"]) == {"unet", "vae", "text_encoder", "controlnet:canny", "adapter:color", "total"}
    rows = {r["mode"]: r for r in sd["rows"]}
    assert set(rows) == set(bench_sd.MODES) and len(sd["rows"]) == 3
    for mode, r in rows.items():
        assert "error" not in r, r
        assert r["seconds_per_image"] > 0 and r["images_per_s"] == pytest.approx(1 / r["seconds_per_image"])
        assert r["steps"] == 1 and r["batch"] == 1 and r["compile"] is False and r["warmup_s"] is None
        assert r["output_shape"] == [512, 512, 3] and r["peak_gpu_mb"] is None and r["peak_rss_mb"] > 1000, mode
    assert rows["prompt"]["pipeline"] == "txt2img" and rows["+structure"]["pipeline"] == "controlnet:canny"
    assert rows["+colour"]["pipeline"].startswith("controlnet:canny+")
    assert json.loads((out / "results.json").read_text())["sd"]["rows"] == sd["rows"]
    print("\n" + bench_sd.format_table(sd))
    assert np.isfinite([r["seconds_per_image"] for r in sd["rows"]]).all()
