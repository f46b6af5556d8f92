"""Model configuration and offline loading for the generative decoder and the neural extractors.

Weights come only from a local directory or the local Hugging Face cache (`local_files_only=True`; set
`HF_HUB_OFFLINE=1` to make the hub library itself refuse the network too). A missing or broken model raises
:class:`ModelError` naming what to put where. torch/diffusers/huggingface_hub are imported lazily.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from layercast.common.errors import InputError, ModelError

STRUCTURE_KINDS = ("canny", "softedge", "openpose")
"""ControlNet kinds the decoder knows (chosen by the stream's structure layer and EdgeSource)."""

ADAPTER_KINDS = ("sketch", "canny", "openpose", "color")
"""T2I-Adapter kinds: structure ("sketch"/"canny" for edges, "openpose") and "color" for the colormap."""

COLOUR_MODES = ("auto", "adapter", "img2img", "off")
"""How the colormap conditions: T2I-Adapter color, img2img from the smooth colormap, either, or not at all."""

SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "pndm": "PNDMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "dpm": "DPMSolverMultistepScheduler",
    "unipc": "UniPCMultistepScheduler",
    "lcm": "LCMScheduler",
}
"""Scheduler names accepted by `scheduler` / `--scheduler` -> diffusers class."""

SD_LAYOUT_HINT = (
    "a diffusers-format Stable Diffusion 1.5-family folder (model_index.json, unet/, vae/, text_encoder/, "
    "tokenizer/, scheduler/)"
)


@dataclass
class SDConfig:
    """Settings of the Stable Diffusion decoder. Paths are local folders or Hugging Face repo ids in the cache.

    `steps`/`guidance` None = defaults (20 / 7.5, or 4 / 1.0 with an LCM-LoRA or the "lcm" scheduler; the
    stream's `hints.cfg_scale` is used for guidance when set). `dtype`/`device` "auto" = float16 on CUDA,
    float32 on CPU.

    Generation size: the short side at `native_side` (None = the model's own, UNet sample_size x VAE
    factor: 512 for SD 1.5), the long side capped at `max_side` (None = 2 x native: the model repeats
    subjects beyond about 2:1), then the output is resized to the header's size. `pipelines`: decodes that
    may run at once on this decoder (each holds its own pipelines and scheduler; the weights are shared);
    more wait for a free one.
    """

    model: str | None = None
    controlnets: dict[str, str] = field(default_factory=dict)
    adapters: dict[str, str] = field(default_factory=dict)
    colour: str = "auto"
    steps: int | None = None
    guidance: float | None = None
    strength: float = 0.7
    controlnet_scale: float = 1.0
    adapter_scale: float = 1.0
    scheduler: str | None = None
    lcm_lora: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    compile: bool = False
    attention_slicing: bool = False
    native_side: int | None = None
    max_side: int | None = None
    pipelines: int = 1
    preview: str = "approx"

    def validate(self) -> None:
        """Raise InputError on values a user can get wrong."""
        bad = [k for k in self.controlnets if k not in STRUCTURE_KINDS]
        if bad:
            raise InputError(f"unknown ControlNet kind {bad[0]!r}; use one of {', '.join(STRUCTURE_KINDS)}")
        bad = [k for k in self.adapters if k not in ADAPTER_KINDS]
        if bad:
            raise InputError(f"unknown T2I-Adapter kind {bad[0]!r}; use one of {', '.join(ADAPTER_KINDS)}")
        if self.colour not in COLOUR_MODES:
            raise InputError(f"colour mode must be one of {', '.join(COLOUR_MODES)}, got {self.colour!r}")
        if self.steps is not None and not 1 <= self.steps <= 1000:
            raise InputError(f"steps must be in 1..1000, got {self.steps}")
        if not 0.0 < self.strength <= 1.0:
            raise InputError(f"img2img strength must be in (0, 1], got {self.strength}")
        if self.scheduler is not None and self.scheduler not in SCHEDULERS:
            raise InputError(f"unknown scheduler {self.scheduler!r}; use one of {', '.join(SCHEDULERS)}")
        if self.dtype not in ("auto", "float16", "bfloat16", "float32"):
            raise InputError(f"dtype must be auto, float16, bfloat16 or float32, got {self.dtype!r}")
        if self.preview not in ("approx", "vae", "none"):
            raise InputError(f"preview must be approx, vae or none, got {self.preview!r}")
        if self.max_side is not None and self.max_side < 64:
            raise InputError(f"max_side must be >= 64, got {self.max_side}")
        if self.native_side is not None and self.native_side < 64:
            raise InputError(f"native_side must be >= 64, got {self.native_side}")
        if not 1 <= self.pipelines <= 16:
            raise InputError(f"pipelines must be in 1..16, got {self.pipelines}")

    @property
    def few_step(self) -> bool:
        """True when an LCM-LoRA or the LCM scheduler makes this a few-step (live) configuration."""
        return self.lcm_lora is not None or self.scheduler == "lcm"

    @property
    def effective_steps(self) -> int:
        return self.steps if self.steps is not None else (4 if self.few_step else 20)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> SDConfig:
        """Build from a dict (JSON/TOML table); unknown keys raise InputError."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"unknown SD config key {unknown[0]!r}; known keys: {', '.join(sorted(known))}")
        values: dict[str, Any] = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in data.items()}
        cfg = cls(**values)
        cfg.validate()
        return cfg

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> SDConfig:
        """Load from a .toml or .json file (a top-level `[sd]` table is accepted in TOML)."""
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as e:
            raise InputError(f"cannot read SD config {p}: {e.strerror or e}") from e
        try:
            if p.suffix.lower() == ".toml":
                if sys.version_info >= (3, 11):
                    import tomllib
                else:  # Python 3.10, which requires-python allows: the same parser, as a package
                    import tomli as tomllib

                data: Any = tomllib.loads(text)
                data = data.get("sd", data)
            else:
                data = json.loads(text)
        except ValueError as e:
            raise InputError(f"SD config {p} is not valid {p.suffix.lstrip('.') or 'JSON'}: {e}") from e
        if not isinstance(data, dict):
            raise InputError(f"SD config {p} must hold a table/object of settings")
        base = p.parent
        cfg = cls.from_mapping(data)

        # Relative paths in a config file are relative to the file.
        def rel(v: str) -> str:
            q = Path(v).expanduser()
            return str(base / q) if not q.is_absolute() and (base / q).exists() else v

        return replace(
            cfg,
            model=rel(cfg.model) if cfg.model else None,
            controlnets={k: rel(v) for k, v in cfg.controlnets.items()},
            adapters={k: rel(v) for k, v in cfg.adapters.items()},
            lcm_lora=rel(cfg.lcm_lora) if cfg.lcm_lora else None,
        )


def _kind_dir(value: str, flag: str) -> tuple[str, str]:
    kind, sep, path = value.partition("=")
    if not sep or not kind or not path:
        raise InputError(f"{flag} expects KIND=DIR, got {value!r}")
    return kind.strip(), path


def add_sd_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the decoder's flags (`--model DIR`, `--controlnet canny=DIR`, ...) to a CLI parser."""
    g = parser.add_argument_group("Stable Diffusion decoder (--decoder sd)")
    g.add_argument("--sd-config", metavar="FILE", help="SD decoder settings (.toml or .json)")
    g.add_argument("--model", metavar="DIR", help="base model: " + SD_LAYOUT_HINT + " or a cached repo id")
    g.add_argument(
        "--controlnet",
        metavar="KIND=DIR",
        action="append",
        default=[],
        help=f"ControlNet for a structure kind ({', '.join(STRUCTURE_KINDS)}); repeatable",
    )
    g.add_argument(
        "--adapter",
        metavar="KIND=DIR",
        action="append",
        default=[],
        help=f"T2I-Adapter ({', '.join(ADAPTER_KINDS)}); repeatable",
    )
    g.add_argument("--colour", choices=COLOUR_MODES, help="colormap conditioning (default auto)")
    g.add_argument("--steps", type=int, help="sampling steps (default 20, 4 with --lcm-lora)")
    g.add_argument("--guidance", type=float, help="classifier-free guidance scale")
    g.add_argument("--strength", type=float, help="img2img strength from the colormap, (0, 1]")
    g.add_argument("--scheduler", choices=sorted(SCHEDULERS), help="sampler")
    g.add_argument("--lcm-lora", metavar="DIR", help="LCM-LoRA folder for the few-step live path")
    g.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    g.add_argument("--dtype", choices=("auto", "float16", "bfloat16", "float32"))
    g.add_argument("--compile", action="store_true", default=None, help="torch.compile the UNet")


def config_from_args(ns: argparse.Namespace) -> SDConfig:
    """SDConfig from parsed flags: the `--sd-config` file first, then each flag given overrides it."""
    cfg = SDConfig.from_file(ns.sd_config) if getattr(ns, "sd_config", None) else SDConfig()
    over: dict[str, Any] = {}
    for name in (
        "model",
        "colour",
        "steps",
        "guidance",
        "strength",
        "scheduler",
        "lcm_lora",
        "device",
        "dtype",
        "compile",
    ):
        v = getattr(ns, name, None)
        if v is not None:
            over[name] = v
    if getattr(ns, "controlnet", None):
        over["controlnets"] = {**cfg.controlnets, **dict(_kind_dir(v, "--controlnet") for v in ns.controlnet)}
    if getattr(ns, "adapter", None):
        over["adapters"] = {**cfg.adapters, **dict(_kind_dir(v, "--adapter") for v in ns.adapter)}
    cfg = replace(cfg, **over)
    cfg.validate()
    return cfg


def resolve_model_dir(ref: str | None, what: str, *, expect: Sequence[str], hint: str, flag: str = "") -> Path:
    """A local folder for `ref`: an existing folder, or a repo id already in the local Hugging Face cache.

    `expect` lists files of which at least one must exist in the folder (e.g. "model_index.json"). Never
    downloads. Raises ModelError naming `what`, the place looked at and `hint` (what to put there).
    """
    if not ref:
        how = f"pass {flag}" if flag else "name it in the config"
        raise ModelError(f"no {what} configured: put {hint} in a folder and {how}")
    p = Path(ref).expanduser()
    if p.is_dir():
        if not any((p / e).exists() for e in expect):
            raise ModelError(f"{what} folder {p} has none of {', '.join(expect)}: put {hint} there")
        return p
    if p.exists():
        raise ModelError(f"{what} {p} is a file, expected a folder holding {hint}")
    if "/" in ref and not ref.startswith((".", "/", "~")) and ref.count("/") == 1:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            cached = Path(snapshot_download(ref, local_files_only=True))
        except (LocalEntryNotFoundError, OSError, ValueError) as e:
            raise ModelError(
                f"{what} {ref!r} is neither a local folder nor in the local Hugging Face cache "
                f"({os.environ.get('HF_HUB_CACHE') or os.environ.get('HF_HOME') or '~/.cache/huggingface'}); "
                f"nothing is downloaded. Put {hint} in a folder and pass its path, or run "
                f"`huggingface-cli download {ref}` on a connected machine and copy the cache here"
            ) from e
        return cached
    raise ModelError(f"{what} not found at {p}: put {hint} there")


def torch_device_dtype(device: str = "auto", dtype: str = "auto") -> tuple[str, Any]:
    """("cuda"|"cpu"|..., torch dtype) for the "auto" rules: float16 on CUDA, float32 elsewhere."""
    import torch

    dev = device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device {dev!r} requested but no CUDA GPU is visible; use --device cpu")
    auto = torch.float16 if dev.startswith("cuda") else torch.float32
    return dev, (auto if dtype == "auto" else getattr(torch, dtype))


def _wrap_load(what: str, path: Path, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call a from_pretrained and map backend errors to ModelError."""
    try:
        return fn(*args, **kwargs)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
        raise ModelError(
            f"{what} at {path} could not be loaded ({type(e).__name__}: {e}); "
            "check the folder is a complete diffusers/transformers export"
        ) from e


def load_base_pipeline(ref: str | None, dtype: Any) -> Any:
    """The base StableDiffusionPipeline from a local folder/cache (no safety checker, offline)."""
    from diffusers import StableDiffusionPipeline

    path = resolve_model_dir(
        ref,
        "Stable Diffusion base model",
        expect=("model_index.json",),
        hint=SD_LAYOUT_HINT,
        flag="--model DIR (or `model` in --sd-config)",
    )
    pipe = _wrap_load(
        "Stable Diffusion base model",
        path,
        StableDiffusionPipeline.from_pretrained,
        str(path),
        torch_dtype=dtype,
        local_files_only=True,
        safety_checker=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_controlnet(kind: str, ref: str, dtype: Any) -> Any:
    """A ControlNetModel for a structure kind from a local folder/cache."""
    from diffusers import ControlNetModel

    what = f"ControlNet '{kind}'"
    hint = f"a diffusers ControlNet export (config.json + diffusion_pytorch_model.safetensors) for {kind}"
    path = resolve_model_dir(ref, what, expect=("config.json",), hint=hint)
    return _wrap_load(what, path, ControlNetModel.from_pretrained, str(path), torch_dtype=dtype, local_files_only=True)


def load_adapter(kind: str, ref: str, dtype: Any) -> Any:
    """A T2IAdapter from a local folder/cache."""
    from diffusers import T2IAdapter

    what = f"T2I-Adapter '{kind}'"
    hint = f"a diffusers T2IAdapter export (config.json + diffusion_pytorch_model.safetensors) for {kind}"
    path = resolve_model_dir(ref, what, expect=("config.json",), hint=hint)
    return _wrap_load(what, path, T2IAdapter.from_pretrained, str(path), torch_dtype=dtype, local_files_only=True)


def scheduler_class(name: str) -> Any:
    """The diffusers scheduler class for a `SCHEDULERS` name."""
    import diffusers

    return getattr(diffusers, SCHEDULERS[name])


def make_scheduler(name: str, base_config: Any) -> Any:
    """A `SCHEDULERS` scheduler built from a model's scheduler config.

    PNDM skips its Runge-Kutta warm-up, as SD 1.5's own scheduler config says: the warm-up breaks below
    4 steps (and img2img runs only `strength` of them).
    """
    extra = {"skip_prk_steps": True} if name == "pndm" else {}
    return scheduler_class(name).from_config(base_config, **extra)
