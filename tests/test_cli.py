"""The `layercast` command in-process: encode, inspect, decode, edit, errors and JSON output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from layercast.cli import main
from tests.imaging import scene

A1111 = (
    "a red house on a hill, watercolor\nNegative prompt: blurry, lowres\n"
    "Steps: 25, Sampler: DPM++ 2M Karras, CFG scale: 7.5, Seed: 1234, Size: 512x512, Model hash: abc123, Model: sd15"
)


@pytest.fixture()
def png(tmp_path: Path) -> Path:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", A1111)
    path = tmp_path / "house.png"
    Image.fromarray(scene()).save(path, pnginfo=info)
    return path


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_help_teaches(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for word in ("encode", "decode", "inspect", "edit", "bench", "examples", "exit status"):
        assert word in out
    for command in ("encode", "decode", "inspect", "edit", "bench", "send", "receive", "demo"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        assert "examples:" in text and f"layercast {command} " in text.split("examples:")[1], command
        assert text.split("\n\n")[1].strip(), f"{command} --help has no description"
    for command in ("send", "receive"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "tls=1" in capsys.readouterr().out  # the MQTT URL options


def test_encode_inspect_decode(png: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lcs = tmp_path / "house.lcs"
    doc = run_json(capsys, "encode", str(png), "-o", str(lcs))
    assert doc["total_bytes"] == lcs.stat().st_size <= 655 and doc["fits"]
    info = run_json(capsys, "inspect", str(lcs))
    assert info["width"] == 512 and info["height"] == 512 and info["total_bytes"] == lcs.stat().st_size
    assert info["bpp"] <= 0.02 and info["seed"] == 1234
    assert info["hints"]["steps"] == 25 and info["hints"]["sampler"] == "DPM++ 2M Karras"
    kinds = [layer["kind"] for layer in info["layers"]]
    assert kinds == ["semantic", "structure", "texture"]
    assert all(layer["bytes"] > 0 for layer in info["layers"])
    out = tmp_path / "out.png"
    doc = run_json(capsys, "decode", str(lcs), "-o", str(out))
    assert doc["decoder"] == "preview" and Image.open(out).size == (512, 512)
    for layer in ("structure", "texture"):
        p = tmp_path / f"{layer}.png"
        run_json(capsys, "decode", str(lcs), "--layer", layer, "-o", str(p))
        arr = np.asarray(Image.open(p))
        assert arr.shape == (512, 512, 3) and arr.std() > 0
    assert main(["inspect", str(lcs)]) == 0
    text = capsys.readouterr().out
    assert "semantic" in text and "CODEC_ID_EDGES_CTX" in text


def test_prompt_override_and_budget(png: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lcs = tmp_path / "x.lcs"
    run_json(capsys, "encode", str(png), "-o", str(lcs), "--prompt", "a boat", "--max-bytes", "300")
    assert lcs.stat().st_size <= 300
    edited = tmp_path / "y.lcs"
    doc = run_json(
        capsys,
        "edit",
        str(lcs),
        "-o",
        str(edited),
        "--append-prompt",
        "at night",
        "--hue-shift",
        "90",
        "--flip",
        "h",
    )
    assert doc["edited"] == ["semantic", "structure", "texture"]
    from layercast.proto import framing
    from layercast.receiver.layers import layerset_from_image

    layers = layerset_from_image(framing.container_to_images(edited.read_bytes())[0])
    assert layers.prompt is not None and layers.prompt.text == "a boat, at night"


def test_a_long_prompt_is_cut_to_the_budget_and_the_json_says_so(
    png: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    words = " ".join(f"detail{i} of a very ornate cathedral window" for i in range(60))  # ~420 tokens
    lcs = tmp_path / "long.lcs"
    doc = run_json(capsys, "encode", str(png), "-o", str(lcs), "--prompt", words, "--negative", "blurry, " * 90)
    assert doc["total_bytes"] <= doc["budget_bytes"] == 655 and doc["fits"] and lcs.stat().st_size <= 655
    assert set(doc["layer_bytes"]) == {"semantic", "structure", "texture"}
    steps = [c["step"] for c in doc["prompt_cuts"]]
    assert "truncate" in steps and doc["prompt_chars_sent"] < doc["prompt_chars"]
    assert next(c for c in doc["prompt_cuts"] if c["step"] == "truncate")["tokens_kept"] >= 75
    sent = run_json(capsys, "inspect", str(lcs))["prompt"]
    assert words.startswith(sent) and len(sent.split()) >= 60  # a prefix of whole words, >= 75 CLIP tokens
    assert main(["encode", str(png), "-o", str(lcs), "--prompt", words]) == 0
    assert "prompt cut to fit: " in capsys.readouterr().out


def test_folder_encode_with_progress_and_failures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "imgs"
    src.mkdir()
    for i in range(3):
        Image.fromarray(scene(320, 240, seed=i)).save(src / f"img{i}.png")
    (src / "broken.png").write_bytes(b"not an image at all")
    out = tmp_path / "streams"
    assert main(["encode", str(src), "-o", str(out), "--json", "--resize", "512"]) == 1
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert len(doc["images"]) == 3 and doc["failed"][0]["error"] == "UnsupportedImageError"
    assert sorted(p.name for p in out.iterdir()) == ["img0.lcs", "img1.lcs", "img2.lcs"]
    assert "encode 4/4" in captured.err
    assert all(img["width"] == 512 for img in doc["images"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["encode", "/nonexistent.png", "-o", "x.lcs"], "no such file"),
        (["decode", "/nonexistent.lcs", "-o", "x.png"], "no such stream file"),
        (["inspect", "__FILE__"], "LCS magic"),
        (["edit", "__STREAM__", "-o", "y.lcs"], "no edit given"),
        (["edit", "__STREAM__", "-o", "y.lcs", "--map-color", "red:blue"], "6 hex digits"),
        (["edit", "__STREAM__", "-o", "y.lcs", "--crop", "0.5,0.5,0.1,0.2"], "crop box"),
    ],
)
def test_errors_are_one_clear_line(
    argv: list[str], message: str, tmp_path: Path, png: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stream = tmp_path / "s.lcs"
    assert main(["encode", str(png), "-o", str(stream)]) == 0
    capsys.readouterr()
    argv = [str(png) if a == "__FILE__" else str(stream) if a == "__STREAM__" else a for a in argv]
    argv = [str(tmp_path / a) if a.endswith((".lcs", ".png")) and "/" not in a else a for a in argv]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("layercast: error:") and message in err and "Traceback" not in err


def test_truncated_stream_decode_error(png: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stream = tmp_path / "s.lcs"
    main(["encode", str(png), "-o", str(stream)])
    stream.write_bytes(stream.read_bytes()[:-10])
    capsys.readouterr()
    assert main(["decode", str(stream), "-o", str(tmp_path / "o.png"), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["error"] == "TruncatedError"


def test_version_is_the_package_metadata_and_verbose_logs(tmp_path: Path) -> None:
    """`layercast --version` and `layercast.__version__` come from the installed metadata (one place);
    `-v` turns on informational log lines, formatted, on stderr."""
    import subprocess
    import sys
    from importlib.metadata import version

    import layercast
    from tests.mqtt_broker import free_port

    assert layercast.__version__ == version("layercast")
    run = subprocess.run([sys.executable, "-m", "layercast", "--version"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.strip() == f"layercast {layercast.__version__}"
    port = free_port()
    url = f"mqtt://127.0.0.1:{port}/layercast"  # nobody listens there: the worker waits and says so
    argv = ["-v", "receive", "--on", url, "--out", str(tmp_path / "o"), "--idle-timeout", "1"]
    run = subprocess.run([sys.executable, "-m", "layercast", *argv], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "layercast: WARNING layercast.common.transport.mqtt: MQTT broker" in run.stderr
    assert "not reachable yet" in run.stderr
    assert f"no MQTT broker at 127.0.0.1:{port} yet" in run.stderr  # not "subscribed to"


def test_the_human_readable_layer_can_be_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`inspect` shows the prompt and negative prompt; `decode --layer semantic` writes them as text."""
    from layercast.cli import main
    from tests.session_helpers import sample_paths

    lcs = tmp_path / "s.lcs"
    argv = ["encode", str(sample_paths()[0]), "-o", str(lcs), "--prompt", "a red fox in snow", "--negative", "blurry"]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(["inspect", str(lcs)]) == 0
    text = capsys.readouterr().out
    assert "prompt:   a red fox in snow" in text and "negative: blurry" in text
    assert main(["inspect", str(lcs), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["prompt"], doc["negative_prompt"]) == ("a red fox in snow", "blurry")
    assert main(["decode", str(lcs), "--layer", "semantic", "-o", str(tmp_path / "p.png"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["output"] == str(tmp_path / "p.txt")
    assert (tmp_path / "p.txt").read_text() == "a red fox in snow\nnegative: blurry\n"


def test_decode_without_a_writable_numba_cache(tmp_path: Path) -> None:
    """A read-only install run by a user without a writable home (or a hardened service): numba finds no
    place for its cache, and the codecs compile in memory instead of crashing; the output is the same."""
    import os
    import subprocess
    import sys

    from layercast.cli import main
    from tests.session_helpers import read_png, sample_paths

    lcs = tmp_path / "s.lcs"
    assert main(["encode", str(sample_paths()[0]), "-o", str(lcs)]) == 0
    env = {**os.environ, "NUMBA_CACHE_LOCATOR_CLASSES": "UserProvidedCacheLocator", "NUMBA_CACHE_DIR": "/dev/null/x"}
    argv = [sys.executable, "-m", "layercast", "decode", str(lcs), "-o", str(tmp_path / "a.png")]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 0, run.stderr
    assert main(["decode", str(lcs), "-o", str(tmp_path / "b.png")]) == 0
    assert (read_png(tmp_path / "a.png") == read_png(tmp_path / "b.png")).all()
