"""The Stable Diffusion decoder (`--decoder sd`): prompt + structure + colormap -> image, through diffusers.

One set of base components (text encoder, UNet, VAE, scheduler) is loaded once; the txt2img, img2img,
ControlNet, ControlNet-img2img and T2I-Adapter pipelines are built from it with `from_pipe` (nothing is loaded
twice). The layers present pick the mode (:func:`plan_decode`):

=========================  =========================================================================
layers                     pipeline
=========================  =========================================================================
prompt (or none)           txt2img ("" prompt when the semantic layer is missing)
+ edges / pose             ControlNet canny / softedge / openpose (by structure kind and EdgeSource),
                           else T2I-Adapter sketch / openpose
+ colormap                 T2I-Adapter color (MultiAdapter with a structure adapter), else img2img from
                           the smooth colormap (`strength`), with ControlNet: ControlNet-img2img
=========================  =========================================================================

Decoding is deterministic from the header seed (a seeded CPU `torch.Generator`). Progressive: `on_step` gets
(step, total, preview) after every step; `should_stop()` returning True interrupts the run (diffusers'
`_interrupt` flag), and the partly denoised latents are decoded and returned. Unknown edge stripes are
masked out of the ControlNet/adapter residuals.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from layercast.common.errors import ModelError
from layercast.common.types import EdgeMap, LayerSet, PoseLayer
from layercast.receiver import conditioning as cond
from layercast.receiver.decoder import Decoder, StepCallback
from layercast.receiver.models import (
    SDConfig,
    load_adapter,
    load_base_pipeline,
    load_controlnet,
    resolve_model_dir,
    scheduler_class,
    torch_device_dtype,
)

LATENT_RGB = np.array(
    [[0.3512, 0.2297, 0.3227], [0.3250, 0.4974, 0.2350], [-0.2829, 0.1762, 0.2721], [-0.2120, -0.2616, -0.7177]],
    dtype=np.float32,
)
"""Linear SD 1.x latent -> RGB approximation (4x3) used for cheap per-step previews."""

EDGE_ADAPTERS = ("sketch", "canny")
"""T2I-Adapter kinds that take an edge image."""


@dataclass(frozen=True)
class Plan:
    """What a LayerSet decodes with. `notes` say what was dropped because no model was configured."""

    structure: str | None = None
    """Stream's structure kind: "canny", "softedge", "openpose" or None."""
    backend: str | None = None
    """"controlnet" or "adapter" for the structure, None when unused."""
    control: str | None = None
    """Key of the ControlNet/adapter used for the structure."""
    colour: str | None = None
    """"adapter" or "img2img" for the colormap, None when unused."""
    notes: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """Short mode name, e.g. "txt2img", "controlnet:canny+img2img", "adapter:sketch+color"."""
        parts = []
        if self.backend:
            parts.append(f"{self.backend}:{self.control}")
        if self.colour == "adapter":
            parts.append("color" if self.backend == "adapter" else "adapter:color")
        elif self.colour == "img2img":
            parts.append("img2img")
        return "+".join(parts) or "txt2img"


def plan_decode(
    layers: LayerSet, *, controlnets: Collection[str], adapters: Collection[str], colour_mode: str = "auto"
) -> Plan:
    """Choose the conditioning for the layers present given the models available (pure)."""
    notes: list[str] = []
    structure = backend = control = colour = None
    s = layers.structure
    if isinstance(s, EdgeMap):
        structure = cond.edge_kind(s)
        other = "softedge" if structure == "canny" else "canny"
        for key in (structure, other):
            if key in controlnets:
                backend, control = "controlnet", key
                break
        else:
            for key in EDGE_ADAPTERS:
                if key in adapters:
                    backend, control = "adapter", key
                    break
    elif isinstance(s, PoseLayer):
        structure = "openpose"
        if "openpose" in controlnets:
            backend, control = "controlnet", "openpose"
        elif "openpose" in adapters:
            backend, control = "adapter", "openpose"
    if structure and backend is None:
        notes.append(f"no ControlNet/T2I-Adapter for {structure!r} configured: structure layer ignored")
    if layers.texture is not None and colour_mode != "off":
        adapter_ok = "color" in adapters and backend != "controlnet"
        if colour_mode in ("auto", "adapter") and adapter_ok:
            colour = "adapter"
        elif backend == "adapter":
            notes.append("img2img cannot combine with a T2I-Adapter and no color adapter: colormap ignored")
        else:
            if colour_mode == "adapter":
                notes.append("color adapter unavailable with this structure model: using img2img")
            colour = "img2img"
    return Plan(structure, backend, control, colour, tuple(notes))


class _Stopped(Exception):
    """Raised inside an old-style diffusers callback to stop a pipeline without `_interrupt`."""

    def __init__(self, latents: Any) -> None:
        super().__init__("stopped")
        self.latents = latents


def _to_uint8(images: np.ndarray) -> np.ndarray:
    return np.clip(np.round(images * 255.0), 0, 255).astype(np.uint8)


def _resize_rgb(img: np.ndarray, width: int, height: int) -> np.ndarray:
    import cv2

    if img.shape[:2] == (height, width):
        return np.ascontiguousarray(img)
    interp = cv2.INTER_AREA if width * height < img.shape[0] * img.shape[1] else cv2.INTER_CUBIC
    return cv2.resize(img, (width, height), interpolation=interp)


class _MaskHook:
    """Forward hook multiplying a ControlNet/adapter's residuals by the known-region mask (per batch item)."""

    def __init__(self, masks: Any) -> None:
        self.masks = masks  # (n, 1, H, W) float tensor

    def _apply(self, t: Any) -> Any:
        import torch
        import torch.nn.functional as F

        if not isinstance(t, torch.Tensor) or t.ndim != 4:
            return t
        m = F.interpolate(self.masks, size=tuple(t.shape[-2:]), mode="area").to(t.device, t.dtype)
        if t.shape[0] != m.shape[0]:
            m = m.repeat(t.shape[0] // m.shape[0], 1, 1, 1)
        return t * m

    def __call__(self, module: Any, args: Any, output: Any) -> Any:
        if isinstance(output, tuple) and len(output) == 2 and isinstance(output[0], (tuple, list)):
            down, mid = output  # ControlNetModel(return_dict=False)
            return (tuple(self._apply(d) for d in down), self._apply(mid))
        if isinstance(output, list):  # T2IAdapter
            return [self._apply(o) for o in output]
        if hasattr(output, "down_block_res_samples"):
            output.down_block_res_samples = tuple(self._apply(d) for d in output.down_block_res_samples)
            output.mid_block_res_sample = self._apply(output.mid_block_res_sample)
        return output


class SDDecoder:
    """Stable Diffusion decoder (implements receiver.decoder.Decoder). Build it with :func:`load_decoder`."""

    name = "sd"

    def __init__(
        self,
        config: SDConfig,
        pipe: Any,
        controlnets: dict[str, Any],
        adapters: dict[str, Any],
        device: str,
        dtype: Any,
    ) -> None:
        self.config = config
        self.base = pipe
        self.controlnets = controlnets
        self.adapters = adapters
        self.device = device
        self.dtype = dtype
        self._pipes: dict[str, Any] = {}
        self.last_plan: Plan | None = None
        self.last_steps = 0
        """Denoising steps actually run by the last decode (fewer than planned when interrupted)."""

    # -- planning -------------------------------------------------------------------------------------
    def plan(self, layers: LayerSet) -> Plan:
        """The conditioning mode these layers decode with."""
        return plan_decode(layers, controlnets=self.controlnets, adapters=self.adapters, colour_mode=self.config.colour)

    def generation_size(self, layers: LayerSet) -> tuple[int, int]:
        """(w, h) the pipeline runs at: near the requested size, a multiple the UNet/VAE accept."""
        vae_f = 2 ** (len(self.base.vae.config.block_out_channels) - 1)
        unet_f = 2 ** (len(self.base.unet.config.block_out_channels) - 1)
        multiple = max(8, vae_f * unet_f)
        return cond.generation_size(layers.width, layers.height, max_side=self.config.max_side, multiple=multiple)

    def _guidance(self, layers: LayerSet) -> float:
        if self.config.guidance is not None:
            return self.config.guidance
        if self.config.few_step:
            return 1.0
        hinted = float(layers.header.hints.cfg_scale) if layers.header.HasField("hints") else 0.0
        return hinted if hinted > 0 else 7.5

    def _pipeline(self, plan: Plan) -> Any:
        """The pipeline for a plan, built once from the shared base components."""
        key = plan.label
        if key in self._pipes:
            return self._pipes[key]
        import diffusers

        base = self.base
        if plan.backend == "controlnet":
            net = self.controlnets[plan.control or ""]
            cls = (
                diffusers.StableDiffusionControlNetImg2ImgPipeline
                if plan.colour == "img2img"
                else diffusers.StableDiffusionControlNetPipeline
            )
            pipe = cls.from_pipe(base, controlnet=net)
        elif plan.backend == "adapter" or plan.colour == "adapter":
            nets = []
            if plan.backend == "adapter":
                nets.append(self.adapters[plan.control or ""])
            if plan.colour == "adapter":
                nets.append(self.adapters["color"])
            adapter = nets[0] if len(nets) == 1 else diffusers.MultiAdapter(nets)
            pipe = diffusers.StableDiffusionAdapterPipeline.from_pipe(base, adapter=adapter)
        elif plan.colour == "img2img":
            pipe = diffusers.StableDiffusionImg2ImgPipeline.from_pipe(base)
        else:
            pipe = base
        pipe.set_progress_bar_config(disable=True)
        self._pipes[key] = pipe
        return pipe

    # -- conditioning ---------------------------------------------------------------------------------
    def _structure_image(self, layers: LayerSet, plan: Plan, w: int, h: int) -> tuple[Any, np.ndarray | None]:
        from PIL import Image

        s = layers.structure
        known = None
        if isinstance(s, PoseLayer):
            img = cond.pose_control_image(s, w, h)
        else:
            assert isinstance(s, EdgeMap)
            soft = plan.control == "softedge" or (plan.backend == "adapter" and plan.structure == "softedge")
            img, known = cond.edge_control_image(s, w, h, soft=soft)
        pil = Image.fromarray(img)
        if plan.backend == "adapter" and self.adapters[plan.control or ""].config.in_channels == 1:
            pil = pil.convert("L")
        return pil, known

    def _inputs(self, batch: Sequence[LayerSet], plan: Plan, w: int, h: int) -> tuple[dict[str, Any], Any]:
        """Pipeline kwargs for a batch sharing one plan and size, plus the known-mask tensor (or None)."""
        import torch
        from PIL import Image

        first = batch[0]
        steps = self.config.effective_steps
        kw: dict[str, Any] = {
            "prompt": [(ls.prompt.text if ls.prompt else "") for ls in batch],
            "guidance_scale": self._guidance(first),
            "generator": [torch.Generator("cpu").manual_seed(ls.seed) for ls in batch],
            "output_type": "np",
        }
        negatives = [(ls.prompt.negative if ls.prompt else "") for ls in batch]
        if any(negatives):
            kw["negative_prompt"] = negatives
        if plan.colour != "img2img":
            kw["height"], kw["width"] = h, w
        struct: list[Any] = []
        masks: list[np.ndarray | None] = []
        if plan.backend:
            for ls in batch:
                img, known = self._structure_image(ls, plan, w, h)
                struct.append(img)
                masks.append(known)
        if plan.colour == "img2img":
            steps = max(steps, math.ceil(1.0 / self.config.strength))
            kw["strength"] = self.config.strength
            init = [Image.fromarray(cond.colour_init_image(ls.texture, w, h)) for ls in batch if ls.texture]
            if plan.backend == "controlnet":
                kw["image"], kw["control_image"] = init, struct
            else:
                kw["image"] = init
        elif plan.backend == "controlnet":
            kw["image"] = struct
        if plan.backend == "controlnet":
            kw["controlnet_conditioning_scale"] = self.config.controlnet_scale
        if plan.backend == "adapter" or plan.colour == "adapter":
            images: list[list[Any]] = []
            if plan.backend == "adapter":
                images.append(struct)
            if plan.colour == "adapter":
                images.append(
                    [Image.fromarray(cond.colour_adapter_image(ls.texture, w, h)) for ls in batch if ls.texture]
                )
            scale = self.config.adapter_scale
            kw["image"] = images[0] if len(images) == 1 else images
            kw["adapter_conditioning_scale"] = scale if len(images) == 1 else [scale] * len(images)
        kw["num_inference_steps"] = steps
        mask_t = None
        if any(m is not None for m in masks):
            arr = np.stack([np.ones((h, w), bool) if m is None else m for m in masks])[:, None]
            mask_t = torch.from_numpy(arr.astype(np.float32))
        return kw, mask_t

    # -- previews -------------------------------------------------------------------------------------
    def _preview(self, pipe: Any, latents: Any, width: int, height: int) -> np.ndarray | None:
        import torch

        mode = self.config.preview
        if mode == "none":
            return None
        with torch.no_grad():
            if mode == "vae":
                img = self._vae_decode(pipe, latents[:1])[0]
            else:
                lat = latents[0].float().cpu().numpy()
                if lat.shape[0] != LATENT_RGB.shape[0]:
                    return None
                rgb = np.einsum("chw,cr->hwr", lat, LATENT_RGB)
                img = _to_uint8((rgb + 1.0) / 2.0)
        return _resize_rgb(img, width, height)

    def _vae_decode(self, pipe: Any, latents: Any) -> np.ndarray:
        import torch

        with torch.no_grad():
            vae = pipe.vae
            out = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
        images = (out / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy()
        return _to_uint8(images)

    # -- running --------------------------------------------------------------------------------------
    def _run(
        self,
        batch: Sequence[LayerSet],
        plan: Plan,
        on_step: StepCallback | None,
        should_stop: Callable[[], bool] | None,
    ) -> list[np.ndarray]:
        import torch

        w, h = self.generation_size(batch[0])
        pipe = self._pipeline(plan)
        kw, mask_t = self._inputs(batch, plan, w, h)
        out_w, out_h = batch[0].width, batch[0].height
        steps_run = [0]
        planned = kw["num_inference_steps"]

        def step(i: int, latents: Any, total: int) -> bool:
            steps_run[0] = i + 1
            if on_step is not None:
                on_step(i + 1, total, self._preview(pipe, latents, out_w, out_h))
            return should_stop is not None and bool(should_stop())

        old_style = not hasattr(type(pipe), "interrupt")
        if old_style:  # StableDiffusionAdapterPipeline: callback(step, t, latents), no interrupt flag

            def old_cb(i: int, t: Any, latents: Any) -> None:
                if step(i, latents, planned):
                    raise _Stopped(latents)

            kw["callback"], kw["callback_steps"] = old_cb, 1
        else:

            def new_cb(p: Any, i: int, t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
                if step(i, tensors["latents"], int(getattr(p, "num_timesteps", planned) or planned)):
                    p._interrupt = True
                return tensors

            kw["callback_on_step_end"] = new_cb
            kw["callback_on_step_end_tensor_inputs"] = ["latents"]

        model = None
        if mask_t is not None:
            model = (
                self.controlnets[plan.control or ""]
                if plan.backend == "controlnet"
                else self.adapters[plan.control or ""]
            )
        handle = model.register_forward_hook(_MaskHook(mask_t)) if model is not None else None
        try:
            with torch.inference_mode():
                images = _to_uint8(pipe(**kw).images)
        except _Stopped as stop:
            images = self._vae_decode(pipe, stop.latents)
        except (RuntimeError, ValueError) as e:
            raise ModelError(f"Stable Diffusion run failed in mode {plan.label}: {e}") from e
        finally:
            if handle is not None:
                handle.remove()
        self.last_plan = plan
        self.last_steps = steps_run[0]
        return [_resize_rgb(img, ls.width, ls.height) for img, ls in zip(images, batch, strict=True)]

    def decode(
        self,
        layers: LayerSet,
        *,
        on_step: StepCallback | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> np.ndarray:
        """Decode to uint8 RGB (layers.height, layers.width, 3); deterministic from layers.seed."""
        return self._run([layers], self.plan(layers), on_step, should_stop)[0]

    def decode_batch(self, batch: Sequence[LayerSet]) -> list[np.ndarray]:
        """Decode several LayerSets (e.g. one per stream), batching those that share a mode and size."""
        groups: dict[tuple[str, tuple[int, int], float], list[int]] = {}
        plans = [self.plan(ls) for ls in batch]
        for i, ls in enumerate(batch):
            groups.setdefault((plans[i].label, self.generation_size(ls), self._guidance(ls)), []).append(i)
        out: list[np.ndarray | None] = [None] * len(batch)
        for idx in groups.values():
            images = self._run([batch[i] for i in idx], plans[idx[0]], None, None)
            for i, img in zip(idx, images, strict=True):
                out[i] = img
        return [img for img in out if img is not None]


def _apply_speedups(pipe: Any, config: SDConfig, device: str) -> None:
    import torch

    if config.attention_slicing:
        pipe.enable_attention_slicing()
    if device.startswith("cuda"):
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if config.compile:
        pipe.unet.compile(mode="max-autotune-no-cudagraphs", fullgraph=False)


def _load_lcm_lora(pipe: Any, ref: str) -> None:
    try:
        import peft  # noqa: F401
    except ImportError as e:
        raise ModelError("the LCM-LoRA path needs the peft package: pip install peft") from e
    path = resolve_model_dir(
        ref,
        "LCM-LoRA",
        expect=("pytorch_lora_weights.safetensors",),
        hint="pytorch_lora_weights.safetensors of latent-consistency/lcm-lora-sdv1-5",
    )
    try:
        pipe.load_lora_weights(str(path), local_files_only=True)
        pipe.fuse_lora()
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ModelError(f"LCM-LoRA at {path} could not be loaded: {e}") from e


def load_decoder(config: SDConfig) -> SDDecoder:
    """Load every configured model offline and return the decoder; ModelError names anything missing."""
    config.validate()
    device, dtype = torch_device_dtype(config.device, config.dtype)
    pipe = load_base_pipeline(config.model, dtype)
    controlnets = {k: load_controlnet(k, v, dtype).to(device) for k, v in config.controlnets.items()}
    adapters = {k: load_adapter(k, v, dtype).to(device) for k, v in config.adapters.items()}
    if config.lcm_lora:
        _load_lcm_lora(pipe, config.lcm_lora)
    if config.scheduler or config.lcm_lora:
        pipe.scheduler = scheduler_class(config.scheduler or "lcm").from_config(pipe.scheduler.config)
    pipe.to(device)
    if device.startswith("cuda"):
        import torch

        for net in controlnets.values():
            net.to(memory_format=torch.channels_last)
    _apply_speedups(pipe, config, device)
    return SDDecoder(config, pipe, controlnets, adapters, device, dtype)


def decoder_or_fallback(config: SDConfig) -> tuple[Decoder, str | None]:
    """The SD decoder, or the CPU preview decoder plus the warning to show when a model is missing."""
    try:
        return load_decoder(config), None
    except ModelError as e:
        from layercast.receiver.preview import PreviewDecoder

        return PreviewDecoder(), f"{e}. Falling back to the preview decoder."


def decoder_from_cli(
    *, model: str | None = None, config_file: str | None = None, steps: int | None = None
) -> tuple[Decoder, str | None]:
    """`--decoder sd` for a CLI: the `--sd-config` file (if any), then `--model`/`--steps` over it; falls back."""
    from dataclasses import replace

    cfg = SDConfig.from_file(config_file) if config_file else SDConfig()
    cfg = replace(cfg, model=model or cfg.model, steps=steps if steps is not None else cfg.steps)
    cfg.validate()
    return decoder_or_fallback(cfg)
