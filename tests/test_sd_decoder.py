"""The Stable Diffusion decoder end to end on CPU with tiny random-weight models loaded offline from disk."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("diffusers")
torch = pytest.importorskip("torch")

from layercast.common.errors import InputError, ModelError  # noqa: E402
from layercast.common.types import Colormap, EdgeMap, LayerSet, PoseLayer, Prompt  # noqa: E402
from layercast.proto import pb  # noqa: E402
from layercast.receiver import conditioning as cond  # noqa: E402
from layercast.receiver.models import SDConfig, add_sd_arguments, config_from_args  # noqa: E402
from layercast.receiver.sd import SDDecoder, decoder_or_fallback, load_decoder, plan_decode  # noqa: E402
from tests import tiny_models  # noqa: E402

STEPS = 3


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-sd")
    return {
        "sd": tiny_models.save_tiny_sd(root / "sd"),
        "canny": tiny_models.save_tiny_controlnet(root / "cn-canny", seed=1),
        "openpose": tiny_models.save_tiny_controlnet(root / "cn-openpose", seed=4),
        "sketch": tiny_models.save_tiny_adapter(root / "ad-sketch", in_channels=1, seed=2),
        "color": tiny_models.save_tiny_adapter(root / "ad-color", in_channels=3, seed=3),
    }


@pytest.fixture(scope="module")
def offline() -> object:
    """Hub disabled; one torch thread (tiny models are overhead-bound and 2 threads thrash a shared CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        yield mp
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def decoder(model_dirs: dict[str, Path], offline: object) -> SDDecoder:
    cfg = SDConfig(
        model=str(model_dirs["sd"]),
        controlnets={"canny": str(model_dirs["canny"]), "openpose": str(model_dirs["openpose"])},
        adapters={"color": str(model_dirs["color"])},
        steps=STEPS,
        device="cpu",
    )
    return load_decoder(cfg)


@pytest.fixture(scope="module")
def adapter_decoder(model_dirs: dict[str, Path], offline: object) -> SDDecoder:
    cfg = SDConfig(
        model=str(model_dirs["sd"]),
        adapters={"sketch": str(model_dirs["sketch"]), "color": str(model_dirs["color"])},
        steps=STEPS,
        device="cpu",
    )
    return load_decoder(cfg)


def header(w: int = 64, h: int = 64, seed: int = 7) -> pb.ImageHeader:
    return pb.ImageHeader(width=w, height=h, seed=seed)


def edges_a() -> np.ndarray:
    e = np.zeros((32, 32), dtype=bool)
    e[4:28, 8] = True
    e[16, 4:28] = True
    return e


def edges_b() -> np.ndarray:
    e = np.zeros((32, 32), dtype=bool)
    e[6:26, 6:26] = np.eye(20, dtype=bool)
    e[24, 2:30] = True
    return e


def colormap(seed: int = 0) -> Colormap:
    return Colormap(np.random.default_rng(seed).integers(0, 256, (4, 4, 3), dtype=np.uint8))


def pose() -> PoseLayer:
    kp = np.zeros((18, 3), dtype=np.float32)
    pts = {0: (32, 10), 1: (32, 20), 2: (24, 20), 5: (40, 20), 8: (27, 40), 11: (37, 40), 9: (27, 55), 12: (37, 55)}
    for i, (x, y) in pts.items():
        kp[i] = (x, y, 1)
    return PoseLayer(people=[kp], width=64, height=64)


MODES = [
    ("txt2img", lambda: LayerSet(header(), Prompt("a red cat"))),
    ("txt2img", lambda: LayerSet(header())),  # no layers at all: "" prompt
    ("controlnet:canny", lambda: LayerSet(header(), Prompt("a cat"), EdgeMap(edges_a()))),
    ("controlnet:canny", lambda: LayerSet(header(), None, EdgeMap(edges_a(), source=pb.EDGE_SOURCE_HED))),
    ("controlnet:openpose", lambda: LayerSet(header(), Prompt("a dog"), pose())),
    ("adapter:color", lambda: LayerSet(header(), Prompt("a cat"), None, colormap())),
    ("controlnet:canny+adapter:color", lambda: LayerSet(header(), Prompt("a cat"), EdgeMap(edges_a()), colormap())),
]


@pytest.mark.parametrize(("label", "make"), MODES, ids=[f"{m[0]}-{i}" for i, m in enumerate(MODES)])
def test_each_mode_decodes_to_the_requested_size(decoder: SDDecoder, label: str, make: object) -> None:
    layers = make()  # type: ignore[operator]
    img = decoder.decode(layers)
    assert decoder.last_plan is not None and decoder.last_plan.label == label
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    assert decoder.last_steps == STEPS or "img2img" in label


def test_adapter_modes_with_sketch_and_colour(adapter_decoder: SDDecoder) -> None:
    sketch = adapter_decoder.decode(LayerSet(header(), Prompt("a cat"), EdgeMap(edges_a())))
    assert adapter_decoder.last_plan is not None and adapter_decoder.last_plan.label == "adapter:sketch"
    both = adapter_decoder.decode(LayerSet(header(), Prompt("a cat"), EdgeMap(edges_a()), colormap()))
    assert adapter_decoder.last_plan is not None and adapter_decoder.last_plan.label == "adapter:sketch+color"
    other = adapter_decoder.decode(LayerSet(header(), Prompt("a cat"), EdgeMap(edges_b())))
    assert sketch.shape == both.shape == (64, 64, 3)
    assert not np.array_equal(sketch, both) and not np.array_equal(sketch, other)


def test_img2img_when_colour_mode_says_so(decoder: SDDecoder) -> None:
    decoder.config.colour = "img2img"
    try:
        a = decoder.decode(LayerSet(header(), Prompt("a cat"), None, colormap(0)))
        assert decoder.last_plan is not None and decoder.last_plan.label == "img2img"
        b = decoder.decode(LayerSet(header(), Prompt("a cat"), None, colormap(1)))
    finally:
        decoder.config.colour = "auto"
    assert not np.array_equal(a, b), "the colormap must steer img2img"
    assert decoder.last_steps == int(STEPS * decoder.config.strength)
    decoder.config.colour = "img2img"
    try:
        decoder.decode(LayerSet(header(), Prompt("a cat"), EdgeMap(edges_a()), colormap()))
        assert decoder.last_plan is not None and decoder.last_plan.label == "controlnet:canny+img2img"
    finally:
        decoder.config.colour = "auto"


def test_output_size_follows_header_and_generation_size_is_a_multiple(decoder: SDDecoder) -> None:
    layers = LayerSet(header(w=70, h=45), Prompt("a cat"), EdgeMap(edges_a()))
    assert decoder.native_side == 64  # tiny UNet sample_size 32 x tiny VAE factor 2
    assert decoder.generation_size(layers) == (96, 64)  # short side native, long side by aspect
    img, info = decoder.decode_with_info(layers)
    assert img.shape == (45, 70, 3) and info.size == (96, 64)
    assert cond.generation_size(1920, 1080, max_side=768, multiple=64) == (768, 448)


def test_deterministic_from_seed(decoder: SDDecoder) -> None:
    make = lambda s: LayerSet(header(seed=s), Prompt("a cat"), EdgeMap(edges_a()))  # noqa: E731
    a1, a2, b = decoder.decode(make(1)), decoder.decode(make(1)), decoder.decode(make(2))
    assert np.array_equal(a1, a2)
    assert not np.array_equal(a1, b)


def test_conditioning_changes_the_output(decoder: SDDecoder) -> None:
    a = decoder.decode(LayerSet(header(), Prompt("a cat"), EdgeMap(edges_a())))
    b = decoder.decode(LayerSet(header(), Prompt("a cat"), EdgeMap(edges_b())))
    plain = decoder.decode(LayerSet(header(), Prompt("a cat")))
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 0.2  # 1-px lines: a small signal for the tiny net
    assert not np.array_equal(a, plain)
    p1 = decoder.decode(LayerSet(header(), Prompt("a cat")))
    p2 = decoder.decode(LayerSet(header(), Prompt("a red dog")))
    assert not np.array_equal(p1, p2), "the prompt must steer the text encoder"


def test_unknown_stripes_are_masked_not_read_as_empty(decoder: SDDecoder) -> None:
    known = np.zeros((32, 32), dtype=bool)
    known[:16] = True
    a, b = edges_a(), edges_a()
    b[20:30, 20:30] = np.eye(10, dtype=bool)  # differs only in the unknown half
    img_a = decoder.decode(LayerSet(header(), Prompt("a cat"), EdgeMap(a, known)))
    img_b = decoder.decode(LayerSet(header(), Prompt("a cat"), EdgeMap(b, known)))
    assert np.array_equal(img_a, img_b)
    full = decoder.decode(LayerSet(header(), Prompt("a cat"), EdgeMap(a)))
    assert not np.array_equal(img_a, full), "masking the unknown half must change the conditioning"
    ctrl, mask = cond.edge_control_image(EdgeMap(a, known), 64, 64)
    assert mask is not None and mask[:32].all() and not mask[32:].any() and not ctrl[32:].any()


def test_step_callback_and_previews(decoder: SDDecoder) -> None:
    seen: list[tuple[int, int, tuple[int, ...] | None]] = []
    decoder.decode(
        LayerSet(header(w=64, h=48), Prompt("a cat"), EdgeMap(edges_a())),
        on_step=lambda s, n, p: seen.append((s, n, None if p is None else p.shape)),
    )
    assert seen == [(i + 1, STEPS, (48, 64, 3)) for i in range(STEPS)]


@pytest.mark.parametrize("label", ["controlnet:canny", "adapter:color"])
def test_should_stop_interrupts_early(decoder: SDDecoder, label: str) -> None:
    layers = (
        LayerSet(header(), Prompt("a cat"), EdgeMap(edges_a()))
        if label.startswith("controlnet")
        else LayerSet(header(), Prompt("a cat"), None, colormap())
    )
    steps: list[int] = []
    img = decoder.decode(layers, on_step=lambda s, n, p: steps.append(s), should_stop=lambda: len(steps) >= 1)
    assert decoder.last_plan is not None and decoder.last_plan.label == label
    assert steps == [1] and decoder.last_steps == 1
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    full = decoder.decode(layers)
    assert decoder.last_steps == STEPS and not np.array_equal(img, full)


def test_decode_batch_matches_single_decodes(decoder: SDDecoder) -> None:
    batch = [
        LayerSet(header(seed=1), Prompt("a cat"), EdgeMap(edges_a())),
        LayerSet(header(seed=2), Prompt("a dog"), EdgeMap(edges_b())),
        LayerSet(header(seed=3), Prompt("a cat")),
    ]
    out = decoder.decode_batch(batch)
    assert len(out) == 3
    for ls, img in zip(batch, out, strict=True):
        single = decoder.decode(ls)
        assert np.abs(img.astype(int) - single.astype(int)).max() <= 2


def test_plan_drops_what_no_model_covers() -> None:
    layers = LayerSet(header(), Prompt("x"), pose(), colormap())
    plan = plan_decode(layers, controlnets={"canny"}, adapters=set())
    assert plan.label == "img2img" and plan.notes and "openpose" in plan.notes[0]
    plan = plan_decode(
        LayerSet(header(), None, EdgeMap(edges_a(), source=pb.EDGE_SOURCE_PIDINET)),
        controlnets={"softedge", "canny"},
        adapters=set(),
    )
    assert plan.label == "controlnet:softedge"
    off = plan_decode(LayerSet(header(), None, None, colormap()), controlnets=(), adapters=(), colour_mode="off")
    assert off.label == "txt2img"


def test_missing_weights_raise_model_error_and_fall_back(tmp_path: Path, offline: object) -> None:
    with pytest.raises(ModelError, match=r"model_index\.json"):
        load_decoder(SDConfig(model=str(tmp_path / "nowhere"), device="cpu"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match=r"empty has none of model_index\.json"):
        load_decoder(SDConfig(model=str(tmp_path / "empty"), device="cpu"))
    with pytest.raises(ModelError, match=r"nor in the local Hugging Face cache"):
        load_decoder(SDConfig(model="nobody/no-such-model-here", device="cpu"))
    dec, warning = decoder_or_fallback(SDConfig(model=None, device="cpu"))
    assert dec.name == "preview" and warning is not None and "--model" in warning
    img = dec.decode(LayerSet(header(w=40, h=30), Prompt("a cat"), EdgeMap(edges_a()), colormap()))
    assert img.shape == (30, 40, 3)


def test_missing_controlnet_is_a_model_error(model_dirs: dict[str, Path], tmp_path: Path, offline: object) -> None:
    cfg = SDConfig(model=str(model_dirs["sd"]), controlnets={"canny": str(tmp_path / "cn")}, device="cpu")
    with pytest.raises(ModelError, match="ControlNet 'canny'"):
        load_decoder(cfg)


def test_config_file_and_flags(tmp_path: Path) -> None:
    (tmp_path / "sd15").mkdir()
    (tmp_path / "sd.toml").write_text(
        '[sd]\nmodel = "sd15"\nsteps = 12\ncolour = "img2img"\n[sd.controlnets]\ncanny = "/m/cn"\n', encoding="utf-8"
    )
    cfg = SDConfig.from_file(tmp_path / "sd.toml")
    assert cfg.model == str(tmp_path / "sd15") and cfg.steps == 12 and cfg.controlnets == {"canny": "/m/cn"}
    (tmp_path / "sd.json").write_text(json.dumps({"model": "/m/sd", "guidance": 5.0}), encoding="utf-8")
    assert SDConfig.from_file(tmp_path / "sd.json").guidance == 5.0
    parser = argparse.ArgumentParser()
    add_sd_arguments(parser)
    ns = parser.parse_args(
        [
            "--sd-config",
            str(tmp_path / "sd.toml"),
            "--controlnet",
            "openpose=/m/op",
            "--adapter",
            "color=/m/col",
            "--steps",
            "4",
            "--lcm-lora",
            "/m/lcm",
        ]
    )
    cfg = config_from_args(ns)
    assert cfg.controlnets == {"canny": "/m/cn", "openpose": "/m/op"} and cfg.adapters == {"color": "/m/col"}
    assert cfg.steps == 4 and cfg.few_step and cfg.colour == "img2img"
    with pytest.raises(InputError, match="KIND=DIR"):
        config_from_args(parser.parse_args(["--controlnet", "canny"]))
    with pytest.raises(InputError, match="unknown ControlNet kind"):
        SDConfig.from_mapping({"controlnets": {"depth": "/x"}})
    with pytest.raises(InputError, match="unknown SD config key"):
        SDConfig.from_mapping({"modle": "/x"})
    assert SDConfig.from_mapping({"pipelines": 2, "native_side": 640, "max_side": 1280}).pipelines == 2
    with pytest.raises(InputError, match="pipelines"):
        SDConfig.from_mapping({"pipelines": 0})
    with pytest.raises(InputError, match="native_side"):
        SDConfig.from_mapping({"native_side": 32})


def test_colour_adapter_image_is_64x_palette() -> None:
    cm = Colormap(np.arange(16 * 16 * 3, dtype=np.uint8).reshape(16, 16, 3))
    img = cond.colour_adapter_image(cm, 512, 512)
    assert img.shape == (512, 512, 3)
    cells = img.reshape(8, 64, 8, 64, 3)
    assert (cells == cells[:, :1, :, :1]).all(), "each 64x64 cell is one flat colour"


@pytest.mark.gpu
def test_gpu_fp16_decode(model_dirs: dict[str, Path], offline: object) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    cfg = SDConfig(
        model=str(model_dirs["sd"]), controlnets={"canny": str(model_dirs["canny"])}, steps=4, native_side=512
    )
    dec = load_decoder(cfg)
    assert dec.device == "cuda" and dec.dtype == torch.float16
    assert next(dec.base.unet.parameters()).dtype == torch.float16
    layers = LayerSet(header(w=512, h=512), Prompt("a cat"), EdgeMap(np.pad(edges_a(), 112)))
    dec.decode(layers)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    img = dec.decode(layers)
    torch.cuda.synchronize()
    print(f"gpu tiny fp16 controlnet 512x512 4 steps: {(time.perf_counter() - t0) * 1000:.1f} ms")
    assert img.shape == (512, 512, 3) and np.array_equal(img, dec.decode(layers))
    assert next(dec.base.unet.parameters()).dtype == torch.float16, "building a pipeline must not cast the weights"
    assert dec.last_info is not None and dec.last_info.size == (512, 512)


def test_weighted_and_long_prompts_reach_the_text_encoder(decoder: SDDecoder) -> None:
    """A1111 emphasis changes the image, a LoRA tag is stripped with a note (same image as without it), and
    the words of a prompt past 77 CLIP tokens still reach the text encoder (chunked, not cut)."""
    plain = decoder.decode(LayerSet(header(), Prompt("a red cat")))
    tagged, info = decoder.decode_with_info(LayerSet(header(), Prompt("a red cat <lora:add_detail:0.5>")))
    assert np.array_equal(tagged, plain) and any("LoRA 'add_detail'" in n for n in info.notes)
    assert not np.array_equal(decoder.decode(LayerSet(header(), Prompt("a (red:1.6) cat"))), plain)
    filler = " ".join(["cat"] * 90)  # 90 tokens with the tiny vocabulary: the last word is token ~92
    a = decoder.decode(LayerSet(header(), Prompt(f"{filler} red")))
    b = decoder.decode(LayerSet(header(), Prompt(f"{filler} dog")))
    assert not np.array_equal(a, b)
