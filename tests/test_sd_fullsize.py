"""Real-size wiring without real weights: SD 1.5 + ControlNet v1.1 + T2I-Adapters at full size, random weights.

The models are built from the published configs shipped in receiver/configs (receiver.random_weights) and run
through SDDecoder for one denoising step at 512x512 on the CPU (fp32, guidance 1 = the smallest batch) in every
conditioning mode. Forward hooks record what each module saw, so the test proves the shapes the real weights
will meet: UNet latents 1x4x64x64 with 77x768 text states, 12 + 1 ControlNet residuals, 4 adapter feature
maps, the VAE's 512x512 decode and, for img2img, its encode. A table (build time, seconds per mode, peak RSS)
is printed (pytest -s) and written as JSON (path printed; LAYERCAST_FULLSIZE_JSON overrides it).

Cost: the VAE decoder at 512x512 costs ~3x a UNet step on a CPU and is the same in every mode, so it runs for
real in txt2img (and the img2img modes run the VAE encoder for real); the other modes get a stand-in decode
that checks its 1x4x64x64 input and returns a 512x512 image, which keeps the module at a few minutes.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("diffusers")
torch = pytest.importorskip("torch")

from layercast.common.types import Colormap, EdgeMap, LayerSet, PoseLayer, Prompt  # noqa: E402
from layercast.proto import pb  # noqa: E402
from layercast.receiver import random_weights as rw  # noqa: E402
from layercast.receiver.models import SDConfig  # noqa: E402

SIZE = 512
LATENT = SIZE // 8

PUBLISHED_PARAMS = {
    "unet": 859_520_964,
    "vae": 83_653_863,
    "text_encoder": 123_060_480,
    "controlnet": 361_279_120,
    "adapter:sketch": 77_000_640,
    "adapter:color": 18_689_200,
}
"""Parameter counts of the published checkpoints (SD 1.5 "860M" UNet, CLIP ViT-L/14 text tower, ...)."""


# -- fast checks of the shipped configs ---------------------------------------------------------------------


def _count_on_meta(build: Callable[[], Any]) -> int:
    with torch.device("meta"), rw.skipped_init():
        return sum(p.numel() for p in build().parameters())


def test_shipped_configs_name_their_source_and_match_published_sizes() -> None:
    from diffusers import AutoencoderKL, ControlNetModel, T2IAdapter, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    files = [*rw.BASE_CONFIGS.values(), *rw.CONTROLNET_CONFIGS.values(), *rw.ADAPTER_CONFIGS.values()]
    assert sorted(p.name for p in rw.CONFIG_DIR.glob("*.json")) == sorted(files)
    for name in files:
        assert "/" in rw.config_source(name), name  # "owner/repo file"
    cfg = rw.published_config
    assert _count_on_meta(lambda: UNet2DConditionModel.from_config(cfg("sd15_unet.json"))) == PUBLISHED_PARAMS["unet"]
    assert _count_on_meta(lambda: AutoencoderKL.from_config(cfg("sd15_vae.json"))) == PUBLISHED_PARAMS["vae"]
    text = CLIPTextConfig.from_dict(cfg("sd15_text_encoder.json"))
    assert (text.hidden_size, text.intermediate_size, text.num_hidden_layers, text.num_attention_heads) == (
        768,
        3072,
        12,
        12,
    )
    assert (text.vocab_size, text.max_position_embeddings, text.hidden_act, text.projection_dim) == (
        49408,
        77,
        "quick_gelu",
        768,
    )
    assert _count_on_meta(lambda: CLIPTextModel(text)) == PUBLISHED_PARAMS["text_encoder"]
    for name in rw.CONTROLNET_CONFIGS.values():
        assert cfg(name)["conditioning_embedding_out_channels"] == [16, 32, 96, 256]
        assert _count_on_meta(partial(ControlNetModel.from_config, cfg(name))) == PUBLISHED_PARAMS["controlnet"]
    for kind, name in rw.ADAPTER_CONFIGS.items():
        assert _count_on_meta(partial(T2IAdapter.from_config, cfg(name))) == PUBLISHED_PARAMS[f"adapter:{kind}"]
    assert cfg("sd15_scheduler.json")["skip_prk_steps"] is True


def test_byte_level_tokenizer_fits_the_full_size_embedding() -> None:
    tok = rw.clip_tokenizer()
    ids = tok(["a red cat, 4k", ""], padding="max_length", max_length=tok.model_max_length, truncation=True)
    assert tok.model_max_length == 77 and len(tok) == 514
    assert all(len(row) == 77 and max(row) < 49408 for row in ids["input_ids"])
    assert ids["input_ids"][0][0] == tok.bos_token_id and tok.eos_token_id == len(tok) - 1


def test_fill_is_deterministic_and_scaled() -> None:
    a, b = torch.nn.Conv2d(64, 32, 3), torch.nn.Conv2d(64, 32, 3)
    rw.fill_random_(a, 5)
    rw.fill_random_(b, 5)
    assert torch.equal(a.weight, b.weight) and not a.bias.any()
    bound = (64 * 9) ** -0.5
    w = a.weight.detach()
    assert float(w.abs().max()) <= bound and float(w.std()) > bound / 3
    rw.fill_random_(b, 6)
    assert not torch.equal(a.weight, b.weight)


# -- the full-size run --------------------------------------------------------------------------------------


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.fixture(scope="module")
def models() -> Iterator[rw.RandomModels]:
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    built = rw.build_random_models(
        controlnets=("canny", "softedge", "openpose"), adapters=("sketch", "color"), device="cpu", dtype="float32"
    )
    yield built
    del built
    gc.collect()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def table(models: rw.RandomModels, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[dict[str, Any]]]:
    rows: list[dict[str, Any]] = []
    yield rows
    doc = {
        "size": [SIZE, SIZE],
        "device": "cpu",
        "dtype": "float32",
        "torch_threads": torch.get_num_threads(),
        "build_s": models.build_s,
        "params_m": models.params_m,
        "sources": models.sources,
        "modes": rows,
        "peak_rss_mb": round(_rss_mb(), 1),
    }
    out = Path(os.environ.get("LAYERCAST_FULLSIZE_JSON") or tmp_path_factory.mktemp("fullsize") / "sd_fullsize.json")
    out.write_text(json.dumps(doc, indent=1), encoding="utf-8")
    print(f"\n\nfull-size SD 1.5 random weights, CPU fp32, {SIZE}x{SIZE}, 1 step, {torch.get_num_threads()} threads")
    print("build: " + ", ".join(f"{k} {v:.1f} s" for k, v in models.build_s.items()))
    print(f"{'mode':<26} {'seconds':>8} {'UNet steps':>10} {'VAE':>20} {'peak RSS MB':>12}")
    for r in rows:
        vae = ("encode + " if r["vae_encode"] else "") + f"{r['vae_decode']} decode"
        print(f"{r['mode']:<26} {r['seconds']:>8.1f} {r['unet_steps']:>10} {vae:>20} {r['peak_rss_mb']:>12.0f}")
    print(f"written to {out}")


@dataclass
class Seen:
    """Shapes and dtypes one forward call saw: inputs by name, outputs flattened."""

    inputs: dict[str, tuple[tuple[int, ...], Any]]
    outputs: list[tuple[int, ...]]


def _shapes(value: Any) -> list[tuple[int, ...]]:
    """Shapes of the tensors in a (nested) module output, in order."""
    if isinstance(value, torch.Tensor):
        return [tuple(value.shape)]
    if isinstance(value, (tuple, list)):
        return [s for v in value for s in _shapes(v)]
    if hasattr(value, "to_tuple"):
        return _shapes(value.to_tuple())
    return []


class Probe:
    """Hooks on every full-size module recording what each call got (before it runs: the UNet consumes its
    adapter residual list) and returned."""

    def __init__(self, models: rw.RandomModels) -> None:
        self.calls: dict[str, list[Seen]] = {}
        self.handles: list[Any] = []
        pipe = models.pipe
        named = {
            "unet": pipe.unet,
            "text_encoder": pipe.text_encoder,
            "vae.encoder": pipe.vae.encoder,
            "vae.decoder": pipe.vae.decoder,
            "unet.down_blocks.0": pipe.unet.down_blocks[0],  # adapter features arrive as `additional_residuals`
            **{f"controlnet:{k}": v for k, v in models.controlnets.items()},
            **{f"adapter:{k}": v for k, v in models.adapters.items()},
        }
        for name, module in named.items():
            self.handles.append(module.register_forward_pre_hook(self._before(name), with_kwargs=True))
            self.handles.append(module.register_forward_hook(self._after(name)))

    def _before(self, name: str) -> Callable[..., None]:
        def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            seen: dict[str, tuple[tuple[int, ...], Any]] = {}
            for key, value in ({f"arg{i}": a for i, a in enumerate(args)} | kwargs).items():
                if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
                    value = value[0]  # residual lists: the first one's shape
                if isinstance(value, torch.Tensor):
                    seen[key] = (tuple(value.shape), value.dtype)
            self.calls.setdefault(name, []).append(Seen(seen, []))

        return hook

    def _after(self, name: str) -> Callable[..., None]:
        def hook(module: Any, args: tuple[Any, ...], output: Any) -> None:
            self.calls[name][-1].outputs.extend(_shapes(output))

        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def header(seed: int = 3) -> pb.ImageHeader:
    return pb.ImageHeader(width=SIZE, height=SIZE, seed=seed)


def edges() -> np.ndarray:
    e = np.zeros((192, 192), dtype=bool)
    e[20:170, 40] = True
    e[96, 20:170] = True
    e[30:150, 30:150] |= np.eye(120, dtype=bool)
    return e


def pose() -> PoseLayer:
    kp = np.zeros((18, 3), dtype=np.float32)
    pts = {0: (256, 80), 1: (256, 160), 2: (190, 160), 5: (322, 160), 8: (216, 320), 11: (296, 320)}
    for i, (x, y) in pts.items():
        kp[i] = (x, y, 1)
    return PoseLayer(people=[kp], width=SIZE, height=SIZE)


def colormap() -> Colormap:
    return Colormap(np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8))


PROMPT = Prompt("a red cat on a wooden table", "blurry")
MODES: list[tuple[str, str, Callable[[], LayerSet], str, bool]] = [
    # (label, decoder: "cn" = ControlNets + colour adapter, "ad" = sketch + colour adapters, layers, colour, VAE)
    ("txt2img", "cn", lambda: LayerSet(header(), PROMPT), "auto", True),
    ("controlnet:canny", "cn", lambda: LayerSet(header(), PROMPT, EdgeMap(edges())), "auto", False),
    (
        "controlnet:softedge",
        "cn",
        lambda: LayerSet(header(), PROMPT, EdgeMap(edges(), source=pb.EDGE_SOURCE_HED)),
        "auto",
        False,
    ),
    ("controlnet:openpose", "cn", lambda: LayerSet(header(), PROMPT, pose()), "auto", False),
    ("adapter:color", "cn", lambda: LayerSet(header(), PROMPT, None, colormap()), "auto", False),
    ("img2img", "cn", lambda: LayerSet(header(), PROMPT, None, colormap()), "img2img", False),
    (
        "controlnet:canny+adapter:color",
        "cn",
        lambda: LayerSet(header(), PROMPT, EdgeMap(edges()), colormap()),
        "auto",
        False,
    ),
    (
        "controlnet:canny+img2img",
        "cn",
        lambda: LayerSet(header(), PROMPT, EdgeMap(edges()), colormap()),
        "img2img",
        False,
    ),
    ("adapter:sketch", "ad", lambda: LayerSet(header(), PROMPT, EdgeMap(edges())), "auto", False),
    ("adapter:sketch+color", "ad", lambda: LayerSet(header(), PROMPT, EdgeMap(edges()), colormap()), "auto", False),
]


@pytest.fixture()
def stand_in_vae_decode(models: rw.RandomModels, monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """Replace the VAE decode (the same in every mode) by a cheap one checking its input; returns what it saw."""
    seen: list[tuple[int, ...]] = []

    def decode(z: Any, return_dict: bool = True, generator: Any = None) -> Any:
        seen.append(tuple(z.shape))
        image = torch.nn.functional.interpolate(z[:, :3].tanh(), scale_factor=8, mode="nearest")
        return (image,) if not return_dict else type("Out", (), {"sample": image})()

    monkeypatch.setattr(models.pipe.vae, "decode", decode)
    return seen


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize(("label", "which", "make", "colour", "full_vae"), MODES, ids=[m[0] for m in MODES])
def test_full_size_mode_one_step_512(
    models: rw.RandomModels,
    table: list[dict[str, Any]],
    request: pytest.FixtureRequest,
    label: str,
    which: str,
    make: Callable[[], LayerSet],
    colour: str,
    full_vae: bool,
) -> None:
    # strength 1: img2img runs its one planned step too (0.7 would plan 2, and each costs a UNet pass)
    config = SDConfig(device="cpu", steps=1, guidance=1.0, colour=colour, strength=1.0, preview="none")
    if which == "cn":
        decoder = models.decoder(config, controlnets=("canny", "softedge", "openpose"), adapters=("color",))
    else:
        decoder = models.decoder(config, controlnets=(), adapters=("sketch", "color"))
    stand_in = None if full_vae else request.getfixturevalue("stand_in_vae_decode")
    layers = make()
    probe = Probe(models)
    t0 = time.perf_counter()
    try:
        image = decoder.decode(layers)
    finally:
        probe.close()
        decoder.close()  # its hooks off the shared modules
    seconds = time.perf_counter() - t0

    assert decoder.last_plan is not None and decoder.last_plan.label == label
    assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
    steps = decoder.last_steps
    assert steps == 1
    calls = probe.calls
    assert calls["text_encoder"]  # prompt (and, as the decoder chooses, negative prompt / 77-token chunks)
    assert all(text.outputs[0] == (1, 77, 768) for text in calls["text_encoder"])
    assert len(calls["unet"]) == steps
    for unet in calls["unet"]:
        assert unet.inputs["arg0"] == ((1, 4, LATENT, LATENT), torch.float32)
        assert unet.inputs["encoder_hidden_states"] == ((1, 77, 768), torch.float32)
        assert unet.outputs == [(1, 4, LATENT, LATENT)]
    down = [(320, LATENT)] * 3 + [(320, LATENT // 2), (640, LATENT // 2), (640, LATENT // 2)]
    down += [(640, LATENT // 4), (1280, LATENT // 4), (1280, LATENT // 4)] + [(1280, LATENT // 8)] * 3
    if label.startswith("controlnet:"):
        kind = label.split("+")[0].split(":")[1]
        assert len(calls[f"controlnet:{kind}"]) == steps
        for net in calls[f"controlnet:{kind}"]:
            assert net.inputs["controlnet_cond"] == ((1, 3, SIZE, SIZE), torch.float32)
            assert net.outputs == [(1, c, s, s) for c, s in down] + [(1, 1280, LATENT // 8, LATENT // 8)]
        for unet in calls["unet"]:
            assert unet.inputs["down_block_additional_residuals"][0] == (1, 320, LATENT, LATENT)
            assert unet.inputs["mid_block_additional_residual"][0] == (1, 1280, LATENT // 8, LATENT // 8)
    adapters = [k for k in ("sketch", "color") if k in label]
    for kind in adapters:  # run once per image, their features reused at every step
        (ad,) = calls[f"adapter:{kind}"]
        assert ad.inputs["arg0"] == ((1, 1 if kind == "sketch" else 3, SIZE, SIZE), torch.float32)
        features = [(320, LATENT), (640, LATENT // 2), (1280, LATENT // 4), (1280, LATENT // 8)]
        assert ad.outputs == [(1, c, s, s) for c, s in features]
    for block in calls["unet.down_blocks.0"]:  # the (summed) adapter features reach the first UNet block
        residual = block.inputs.get("additional_residuals")
        assert residual == (((1, 320, LATENT, LATENT), torch.float32) if adapters else None)
    if not adapters:
        assert not any(k.startswith("adapter:") for k in calls)
    if "img2img" in label:
        (enc,) = calls["vae.encoder"]
        assert enc.inputs["arg0"] == ((1, 3, SIZE, SIZE), torch.float32) and enc.outputs == [(1, 8, LATENT, LATENT)]
    else:
        assert "vae.encoder" not in calls
    if full_vae:
        (dec,) = calls["vae.decoder"]
        assert dec.inputs["arg0"][0] == (1, 4, LATENT, LATENT) and dec.outputs == [(1, 3, SIZE, SIZE)]
    else:
        assert stand_in == [(1, 4, LATENT, LATENT)] and "vae.decoder" not in calls
    table.append(
        {
            "mode": label,
            "seconds": round(seconds, 2),
            "unet_steps": steps,
            "vae_decode": "full" if full_vae else "stand-in",
            "vae_encode": "img2img" in label,
            "peak_rss_mb": round(_rss_mb(), 1),
        }
    )
