"""Full-size Stable Diffusion 1.5 / ControlNet v1.1 / T2I-Adapter models with random weights, from shipped configs.

The published configurations live in ``configs/`` (JSON, each naming its source repository and file in
``_source``): the SD 1.5 UNet, VAE, CLIP ViT-L/14 text encoder, PNDM scheduler and tokenizer settings; the
ControlNet v1.1 canny / softedge / openpose nets; the T2I-Adapter colour (light) and sketch (full) adapters.
Built from them, every tensor has its real shape, so the decoder's wiring (pipelines, conditioning images,
residual shapes, memory, speed) can be proven and timed where the real weights cannot be downloaded.

Building skips PyTorch's per-layer initialisation and fills each parameter from one seeded random pool instead
(about 3x faster than default initialisation on a CPU; the same bytes on every device for a seed): weights are
uniform in +-1/sqrt(fan_in) (PyTorch's default scale), biases 0, norm scales 1. ControlNet zero-convolutions get
random weights too, so the nets really steer the UNet. The 49408-token CLIP vocabulary is not shipped: a
byte-level CLIP tokenizer (514 tokens, valid ids for the full-size embedding) stands in for it; prompts are
padded to 77 tokens as with the real one, so the text encoder costs the same.

The images are noise: this is for shapes, memory and timing (`layercast bench --decoder sd --random-weights`),
never quality.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from layercast.common.errors import InputError
from layercast.receiver.models import SDConfig, scheduler_class, torch_device_dtype

CONFIG_DIR = Path(__file__).resolve().with_name("configs")
"""The shipped published configurations (package data)."""

BASE_CONFIGS = {
    "unet": "sd15_unet.json",
    "vae": "sd15_vae.json",
    "text_encoder": "sd15_text_encoder.json",
    "scheduler": "sd15_scheduler.json",
    "tokenizer": "sd15_tokenizer.json",
}
CONTROLNET_CONFIGS = {
    "canny": "controlnet_v11p_sd15_canny.json",
    "softedge": "controlnet_v11p_sd15_softedge.json",
    "openpose": "controlnet_v11p_sd15_openpose.json",
}
ADAPTER_CONFIGS = {
    "sketch": "t2iadapter_sketch_sd15v2.json",
    "color": "t2iadapter_color_sd14v1.json",
}

_POOL = 1_048_573
"""Size of the random pool parameters are tiled from (a prime, so tiles do not line up with channel sizes)."""
_STRIDE = 7_919
"""Pool offset step between consecutive tiles."""

_INIT_FUNCTIONS = (
    "uniform_",
    "normal_",
    "trunc_normal_",
    "constant_",
    "ones_",
    "zeros_",
    "eye_",
    "dirac_",
    "xavier_uniform_",
    "xavier_normal_",
    "kaiming_uniform_",
    "kaiming_normal_",
    "orthogonal_",
    "sparse_",
)


def published_config(name: str) -> dict[str, Any]:
    """A shipped configuration file by name, without its comment keys (those starting with "_")."""
    path = CONFIG_DIR / name
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise InputError(f"shipped model config {path} is missing ({e.strerror or e}): reinstall layercast") from e
    return {k: v for k, v in data.items() if not k.startswith("_")}


def config_source(name: str) -> str:
    """The `_source` of a shipped configuration: the repository and file its values come from."""
    return str(json.loads((CONFIG_DIR / name).read_text(encoding="utf-8"))["_source"])


def _bytes_to_unicode() -> list[str]:
    """The 256 printable characters of the GPT-2/CLIP byte-level BPE alphabet, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def clip_tokenizer() -> Any:
    """A byte-level CLIP tokenizer with SD 1.5's settings (77 tokens, <|startoftext|>/<|endoftext|>).

    Its vocabulary is the 256 byte characters, each also as an end-of-word token, and the two specials (514
    ids, <|endoftext|> the highest, as in the real vocabulary): every prompt tokenizes, one token per byte.
    """
    from transformers import CLIPTokenizer

    settings = published_config(BASE_CONFIGS["tokenizer"])
    settings.pop("tokenizer_class", None)
    alphabet = _bytes_to_unicode()
    tokens = [*alphabet, *(a + "</w>" for a in alphabet), settings["bos_token"], settings["eos_token"]]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    with tempfile.TemporaryDirectory(prefix="layercast-tok-") as tmp:
        vocab_file, merges_file = Path(tmp) / "vocab.json", Path(tmp) / "merges.txt"
        vocab_file.write_text(json.dumps(vocab), encoding="utf-8")
        merges_file.write_text("#version: 0.2\n", encoding="utf-8")
        return CLIPTokenizer(str(vocab_file), str(merges_file), **settings)


@contextmanager
def skipped_init() -> Iterator[None]:
    """Build modules without running PyTorch's or transformers' weight initialisation (tensors stay empty)."""
    import torch.nn.init as init

    def skip(tensor: Any, *args: Any, **kwargs: Any) -> Any:
        return tensor

    saved = {name: getattr(init, name) for name in _INIT_FUNCTIONS if hasattr(init, name)}
    for name in saved:
        setattr(init, name, skip)
    try:
        with _transformers_no_init():
            yield
    finally:
        for name, fn in saved.items():
            setattr(init, name, fn)


@contextmanager
def _transformers_no_init() -> Iterator[None]:
    try:  # transformers >= 5
        from transformers.initialization import no_init_weights
    except ImportError:
        try:  # transformers 4.x
            from transformers.modeling_utils import no_init_weights  # type: ignore[attr-defined,no-redef]
        except ImportError:  # no such switch: default initialisation, only slower (then overwritten)
            yield
            return
    with no_init_weights():
        yield


def fill_random_(module: Any, seed: int) -> None:
    """Fill every parameter of `module` deterministically from `seed` (see the module docstring for the scales).

    The pool is drawn on the CPU and copied to the module's device, so a seed gives the same weights on any
    device; filling costs about one memory copy per parameter.
    """
    import torch

    gen = torch.Generator("cpu").manual_seed(seed)
    pool_cpu = torch.empty(_POOL).uniform_(-1.0, 1.0, generator=gen)
    pools: dict[Any, Any] = {}
    tile = 0
    with torch.no_grad():
        for name, param in sorted(module.named_parameters(), key=lambda item: item[0]):
            if param.ndim <= 1:
                param.fill_(1.0 if name.endswith("weight") else 0.0)
                continue
            key = (param.device, param.dtype)
            if key not in pools:
                pools[key] = torch.cat([pool_cpu, pool_cpu]).to(device=param.device, dtype=param.dtype)
            pool = pools[key]
            flat, scale = param.view(-1), param[0].numel() ** -0.5  # +-1/sqrt(fan_in)
            for start in range(0, flat.numel(), _POOL):
                count = min(_POOL, flat.numel() - start)
                offset = (tile * _STRIDE) % _POOL
                torch.mul(pool[offset : offset + count], scale, out=flat[start : start + count])
                tile += 1


def _params_m(module: Any) -> float:
    return round(sum(p.numel() for p in module.parameters()) / 1e6, 3)


@dataclass
class RandomModels:
    """Full-size models with random weights, on one device in one dtype; `decoder()` wraps them in an SDDecoder."""

    pipe: Any
    """The base StableDiffusionPipeline (PNDM scheduler, no safety checker)."""
    controlnets: dict[str, Any]
    adapters: dict[str, Any]
    device: str
    dtype: Any
    build_s: dict[str, float] = field(default_factory=dict)
    """Seconds to build and fill each component."""
    params_m: dict[str, float] = field(default_factory=dict)
    """Parameters of each component, in millions."""
    sources: dict[str, str] = field(default_factory=dict)
    """Each component's `_source`: where its configuration was published."""

    def decoder(
        self,
        config: SDConfig,
        *,
        controlnets: Iterable[str] | None = None,
        adapters: Iterable[str] | None = None,
    ) -> Any:
        """An SDDecoder over these models for `config` (its steps, scheduler, guidance, colour, compile ...).

        `controlnets`/`adapters` choose which built nets the decoder sees (default: all); the config's model
        paths are ignored. Each call gets its own pipeline object and scheduler, sharing the modules, so
        decoders with different schedulers do not disturb each other. `config.compile` compiles the shared
        UNet in place (once; later decoders run it compiled too).
        """
        from diffusers import StableDiffusionPipeline

        from layercast.receiver.sd import SDDecoder

        config.validate()
        base = self.pipe
        scheduler_cls = scheduler_class(config.scheduler) if config.scheduler else type(base.scheduler)
        scheduler = scheduler_cls.from_config(base.scheduler.config)
        pipe: Any = StableDiffusionPipeline(
            vae=base.vae,
            text_encoder=base.text_encoder,
            tokenizer=base.tokenizer,
            unet=base.unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        if config.attention_slicing:
            pipe.enable_attention_slicing()
        if config.compile and getattr(pipe.unet, "_compiled_call_impl", None) is None:
            pipe.unet.compile(mode="max-autotune-no-cudagraphs", fullgraph=False)  # as receiver.sd does
        want_nets = None if controlnets is None else set(controlnets)
        want_ads = None if adapters is None else set(adapters)
        nets = {k: v for k, v in self.controlnets.items() if want_nets is None or k in want_nets}
        ads = {k: v for k, v in self.adapters.items() if want_ads is None or k in want_ads}
        return SDDecoder(config, pipe, nets, ads, self.device, self.dtype)


def _timed(
    report: RandomModels, key: str, file: str, build: Callable[[], Any], seed: int, device: str, dtype: Any
) -> Any:
    """Build one module on `device` without default initialisation, fill it from `seed`, cast; record the cost."""
    import torch

    t0 = time.perf_counter()
    with torch.device(device), skipped_init():
        module = build()
    fill_random_(module, seed)
    if dtype != torch.float32:  # nn.Module's own cast: diffusers' `to` warns about fp32 modules these nets lack
        torch.nn.Module.to(module, dtype=dtype)
    module.eval().requires_grad_(False)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    report.build_s[key] = round(time.perf_counter() - t0, 3)
    report.params_m[key] = _params_m(module)
    report.sources[key] = config_source(file)
    return module


def build_random_models(
    *,
    controlnets: Iterable[str] = ("canny",),
    adapters: Iterable[str] = ("color",),
    device: str = "cpu",
    dtype: str = "auto",
    seed: int = 0,
) -> RandomModels:
    """Build the SD 1.5 base pipeline plus the named ControlNets and T2I-Adapters at full size, random weights.

    `device`/`dtype` follow SDConfig's rules ("auto": CUDA if available, float16 there, float32 on CPU).
    Components are built directly on the device. Each gets its own seed (`seed` + its index), so the UNet and
    a ControlNet never share weights.
    """
    import torch
    from diffusers import (
        AutoencoderKL,
        ControlNetModel,
        PNDMScheduler,
        StableDiffusionPipeline,
        T2IAdapter,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    controlnets, adapters = list(controlnets), list(adapters)
    bad = [k for k in controlnets if k not in CONTROLNET_CONFIGS] + [k for k in adapters if k not in ADAPTER_CONFIGS]
    if bad:
        known = ", ".join(
            [*(f"controlnet {k}" for k in CONTROLNET_CONFIGS), *(f"adapter {k}" for k in ADAPTER_CONFIGS)]
        )
        raise InputError(f"no shipped config for {bad[0]!r}; random weights exist for: {known}")
    dev, torch_dtype = torch_device_dtype(device, dtype)
    out = RandomModels(pipe=None, controlnets={}, adapters={}, device=dev, dtype=torch_dtype)
    t_total = time.perf_counter()

    def build(key: str, file: str, make: Callable[[dict[str, Any]], Any], seed_offset: int) -> Any:
        return _timed(out, key, file, lambda: make(published_config(file)), seed + seed_offset, dev, torch_dtype)

    unet = build("unet", BASE_CONFIGS["unet"], UNet2DConditionModel.from_config, 0)
    vae = build("vae", BASE_CONFIGS["vae"], AutoencoderKL.from_config, 1)
    text_encoder = build(
        "text_encoder", BASE_CONFIGS["text_encoder"], lambda c: CLIPTextModel(CLIPTextConfig.from_dict(c)), 2
    )
    for i, kind in enumerate(controlnets):
        out.controlnets[kind] = build(
            f"controlnet:{kind}", CONTROLNET_CONFIGS[kind], ControlNetModel.from_config, 10 + i
        )
    for i, kind in enumerate(adapters):
        out.adapters[kind] = build(f"adapter:{kind}", ADAPTER_CONFIGS[kind], T2IAdapter.from_config, 20 + i)
    out.pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(),
        unet=unet,
        scheduler=PNDMScheduler.from_config(published_config(BASE_CONFIGS["scheduler"])),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    out.pipe.set_progress_bar_config(disable=True)
    out.sources["scheduler"] = config_source(BASE_CONFIGS["scheduler"])
    out.sources["tokenizer"] = config_source(BASE_CONFIGS["tokenizer"])
    if dev.startswith("cuda"):  # as load_decoder does
        for net in [unet, vae, *out.controlnets.values()]:
            net.to(memory_format=torch.channels_last)
    out.build_s["total"] = round(time.perf_counter() - t_total, 3)
    return out
