"""The public Python API (`import layercast`): encode, open, decode, edits, and a consumer's type check."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import layercast
from layercast.receiver.layers import layerset_from_image
from layercast.receiver.preview import PreviewDecoder
from layercast.sender.extract_prompt import prompt_for
from layercast.sender.image_io import load_image
from tests.session_helpers import sample_paths

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sample() -> Path:
    return sample_paths()[0]


@pytest.fixture(scope="module")
def data(sample: Path) -> bytes:
    return layercast.encode(sample, resize=512)


def test_encode_open_decode(sample: Path, data: bytes, tmp_path: Path) -> None:
    meta, _ = prompt_for(load_image(sample).info)
    assert meta.text  # the sample carries A1111 parameters
    img = layercast.open(data)
    assert isinstance(data, bytes) and len(data) <= 337 * 512 * 0.02 / 8  # 512 on the long side, 0.02 bpp
    assert (img.width, img.height) == (337, 512)
    assert img.prompt == meta.text and img.negative_prompt == meta.negative
    assert list(img.layer_bytes) == ["semantic", "structure", "texture"]
    assert img.edges is not None and img.edges.dtype == bool and img.edges.ndim == 2 and img.edges.any()
    assert img.colormap is not None and img.colormap.dtype == np.uint8 and img.colormap.shape[2] == 3
    assert img.pose is None
    assert img.tobytes() == data
    assert sum(len(u) for u in img.layer_data("structure")) == img.layer_bytes["structure"]

    pil = layercast.decode(data)
    assert pil.mode == "RGB" and pil.size == (337, 512)
    expected = PreviewDecoder().decode(layerset_from_image(img.encoded))
    assert np.array_equal(np.asarray(pil), expected)  # what `layercast decode` writes
    edges = layercast.decode(data, layer="structure")
    assert edges.size == (337, 512) and np.asarray(edges).std() > 10

    path = tmp_path / "a.lcs"
    img.save(path)
    assert layercast.open(path).tobytes() == data and layercast.open(str(path)).prompt == img.prompt
    assert layercast.decode(path).size == (337, 512)


def test_encode_takes_pil_arrays_and_bytes(sample: Path, data: bytes) -> None:
    with Image.open(sample) as im:
        assert layercast.encode(im, resize=512) == data  # metadata read from the PIL image as from the file
    assert layercast.encode(sample.read_bytes(), resize=512) == data
    rgb = np.asarray(load_image(sample).rgb)
    from_array = layercast.open(layercast.encode(rgb, resize=512, prompt="a small bird"))
    assert from_array.prompt == "a small bird" and from_array.width == 337
    grey = layercast.open(layercast.encode(rgb[:, :, 0], max_bytes=300, prompt="grey"))
    assert grey.width == rgb.shape[1] and len(grey.tobytes()) <= 300
    with pytest.raises(layercast.InputError, match="cannot encode a int"):
        layercast.encode(42)  # type: ignore[arg-type]
    with pytest.raises(layercast.InputError, match="uint8"):
        layercast.encode(rgb.astype(np.float32))


def test_edits_touch_only_their_layers(data: bytes) -> None:
    img = layercast.open(data)
    blue = img.with_prompt("a blue bird", negative="")
    assert blue.prompt == "a blue bird" and blue.negative_prompt == ""
    assert blue.layer_data("structure") == img.layer_data("structure")
    assert blue.layer_data("texture") == img.layer_data("texture")
    assert img.with_prompt(append="at night").prompt == f"{img.prompt}, at night"  # appended as a prompt clause

    shifted = img.hue_shift(180)
    assert shifted.layer_data("semantic") == img.layer_data("semantic")
    assert shifted.layer_data("texture") != img.layer_data("texture")
    assert img.colormap is not None and shifted.colormap is not None
    assert not np.array_equal(shifted.colormap, img.colormap)

    flipped = img.flip("h")
    assert img.edges is not None and flipped.edges is not None
    assert np.array_equal(flipped.edges, img.edges[:, ::-1])
    turned = img.rotate(90)
    assert (turned.width, turned.height) == (img.height, img.width)
    assert img.drop("texture").colormap is None and list(img.drop("texture").layer_bytes) == ["semantic", "structure"]
    with pytest.raises(layercast.InputError):
        img.rotate(45)


def test_stream_errors_are_typed(data: bytes, tmp_path: Path) -> None:
    with pytest.raises(layercast.LayercastError):
        layercast.open(b"\x00not a stream")
    with pytest.raises(layercast.InputError, match="no such stream file"):
        layercast.open(tmp_path / "missing.lcs")
    two = layercast.open(data).encoded, layercast.open(layercast.encode(np.zeros((64, 64, 3), np.uint8))).encoded
    from layercast.proto import framing

    both = framing.images_to_container([two[0], type(two[1])(two[1].header, two[1].layers, 0, 1)])
    with pytest.raises(layercast.InputError, match="open_all"):
        layercast.open(both)
    assert len(layercast.open_all(both)) == 2
    with pytest.raises(layercast.InputError, match="semantic layer is text"):
        layercast.decode(data, layer="semantic")
    with pytest.raises(layercast.InputError, match="unknown decoder"):
        layercast.decode(data, decoder="vae")


def test_encoder_reports_prompt_source_and_warns_on_empty_prompt(sample: Path) -> None:
    enc = layercast.Encoder(layercast.EncodeOptions(bpp=0.02), resize=256)
    res = enc.encode(sample)
    assert res.prompt_source == "metadata" and res.warnings == [] and res.total_bytes <= res.budget
    bare = enc.encode(np.full((64, 64, 3), 128, np.uint8))
    assert bare.prompt_source == "none" and "semantic layer is empty" in bare.warnings[0]
    assert enc.encode(sample, prompt="given").prompt_source == "argument"


def test_sessions_and_configs_are_exported() -> None:
    for name in ("SendSession", "ReceiveSession", "SDConfig", "LinkProfile", "FecPolicy", "KeyRing", "Stage"):
        assert getattr(layercast, name).__module__.startswith("layercast."), name
    assert layercast.__version__ and layercast.__version__ != "0+unknown"


CONSUMER = """\
import numpy as np
from PIL import Image

import layercast

data: bytes = layercast.encode("bird.png", bpp=0.02, prompt="a small bird")
img: layercast.LayeredImage = layercast.open(data)
prompt: str | None = img.prompt
edges: np.ndarray | None = img.edges
night = img.with_prompt(append="at night").hue_shift(200).flip("h")
out: Image.Image = layercast.decode(night.tobytes())
enc = layercast.Encoder(layercast.EncodeOptions(max_bytes=500))
res: layercast.EncodeResult = enc.encode(np.zeros((8, 8, 3), np.uint8))
n: int = res.total_bytes
cfg = layercast.SDConfig(model="sd15")
"""


@pytest.mark.slow
def test_a_consumers_mypy_run_is_clean(tmp_path: Path) -> None:
    """Built as a wheel and installed as a user would install it, the package type-checks for its users:
    py.typed ships in every subpackage, and the snippet above passes mypy --strict."""
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(ROOT)],
        check=True,
        cwd=tmp_path,
        timeout=300,
        env={**os.environ, "PIP_NO_INDEX": "1"},
    )
    (wheel,) = wheels.glob("layercast-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        z.extractall(site)
    for pkg in ("layercast", "proto", "common", "sender", "receiver", "bench"):
        where = "layercast/py.typed" if pkg == "layercast" else f"layercast/{pkg}/py.typed"
        assert where in names, f"{where} missing from the wheel"
    (tmp_path / "consumer.py").write_text(CONSUMER)
    env = {**os.environ, "PYTHONPATH": str(site), "MYPY_CACHE_DIR": str(tmp_path / "cache")}
    run = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "consumer.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "import-untyped" not in run.stdout
