"""The Stable Diffusion decoder (`--decoder sd`): prompt + structure + colormap -> image, through diffusers.

One set of base components (text encoder, UNet, VAE, scheduler) is loaded once; the txt2img, img2img,
ControlNet, ControlNet-img2img and T2I-Adapter pipelines are built on it (nothing is loaded twice). The
layers present pick the mode (:func:`plan_decode`):

=========================  =========================================================================
layers                     pipeline
=========================  =========================================================================
prompt (or none)           txt2img ("" prompt when the semantic layer is missing)
+ edges / pose             ControlNet canny / softedge / openpose (by structure kind and EdgeSource),
                           else T2I-Adapter sketch / openpose
+ colormap                 T2I-Adapter color: with a structure adapter as a MultiAdapter, with a
                           ControlNet as UNet intrablock residuals next to the ControlNet's; without a
                           color adapter img2img from the smooth colormap (`strength`)
=========================  =========================================================================

Conditioning is rendered the way the models were trained: generation at the model's native size (short
side 512 for SD 1.5, see `SDConfig`), edges thinned to 1-px lines (or softened for softedge) at that size,
the OpenPose drawing for pose; the result is resized to the header's size. Layers that no configured model
can use are reported in `Plan.notes` (and `last_notes` / :class:`DecodeInfo` after a decode).

Decoding is deterministic from the header seed (a seeded CPU `torch.Generator`). Progressive: `on_step` gets
(step, total, preview) after every step; `should_stop()` returning True interrupts the run (diffusers'
`_interrupt` flag), and the partly denoised latents are decoded and returned. Unknown edge stripes are
masked out of the ControlNet/adapter residuals. Concurrent decodes (threads) are safe: see
:mod:`receiver.sd_runtime`; `SDConfig.pipelines` of them run at once, more wait.
"""

from __future__ import annotations

import copy
import math
import threading
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from layercast.common.errors import ModelError
from layercast.common.types import EdgeMap, LayerSet, PoseLayer
from layercast.receiver import conditioning as cond
from layercast.receiver.decoder import Decoder, StepCallback
from layercast.receiver.latent_preview import derive_latent_rgb, latent_preview, vae_factor
from layercast.receiver.models import (
    SDConfig,
    load_adapter,
    load_base_pipeline,
    load_controlnet,
    make_scheduler,
    resolve_model_dir,
    torch_device_dtype,
)
from layercast.receiver.sd_runtime import IntrablockHook, MaskHook, RunContext, RunState, Slot, SlotPool

if TYPE_CHECKING:
    from layercast.receiver.prompt_weights import PromptEmbeds

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
        """Short mode name, e.g. "txt2img", "controlnet:canny+adapter:color", "adapter:sketch+color"."""
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
    if layers.texture is not None and colour_mode == "off":
        notes.append("colour mode is off: colormap ignored")
    elif layers.texture is not None:
        if colour_mode in ("auto", "adapter") and "color" in adapters:
            colour = "adapter"
        elif backend == "adapter":
            notes.append("img2img cannot combine with a T2I-Adapter and no color adapter: colormap ignored")
        else:
            if colour_mode == "adapter":
                notes.append("no color T2I-Adapter configured: colormap used through img2img")
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


@dataclass(frozen=True)
class DecodeInfo:
    """How one decode ran (see :meth:`SDDecoder.decode_with_info`)."""

    plan: Plan
    steps: int
    """Denoising steps actually run (fewer than planned when interrupted)."""
    size: tuple[int, int]
    """(w, h) the pipeline generated at, before the resize to the header's size."""
    notes: tuple[str, ...] = ()
    """What of the layers the decode ignored, and why (the plan's notes, then the run's); empty = all used."""


class _LastInfo(threading.local):
    info: DecodeInfo | None = None


class SDDecoder:
    """Stable Diffusion decoder (implements receiver.decoder.Decoder). Build it with :func:`load_decoder`.

    Thread-safe: up to `config.pipelines` decodes run at once, each on its own pipelines and scheduler
    (:mod:`receiver.sd_runtime`); `last_*` describe the calling thread's last decode.
    """

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
        self._ctx = RunContext()
        self._last = _LastInfo()
        self._slots = SlotPool([self._new_slot(i) for i in range(config.pipelines)])
        self._preview_lock = threading.Lock()
        self._latent_rgb: np.ndarray | None = None
        self._hooks = [
            net.register_forward_hook(MaskHook(self._ctx, net)) for net in [*controlnets.values(), *adapters.values()]
        ]
        if controlnets and "color" in adapters:
            self._hooks.append(pipe.unet.register_forward_pre_hook(IntrablockHook(self._ctx), with_kwargs=True))

    def close(self) -> None:
        """Remove this decoder's hooks from the (shared) modules; decode no more with it afterwards."""
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()

    # -- what the last decode did (per calling thread) ------------------------------------------------
    @property
    def last_info(self) -> DecodeInfo | None:
        """The calling thread's last decode: plan, steps run, generation size, notes."""
        return self._last.info

    @property
    def last_plan(self) -> Plan | None:
        return self._last.info.plan if self._last.info else None

    @property
    def last_steps(self) -> int:
        """Denoising steps actually run by the last decode (fewer than planned when interrupted)."""
        return self._last.info.steps if self._last.info else 0

    @property
    def last_notes(self) -> tuple[str, ...]:
        """Layers the last decode ignored, and why (e.g. no ControlNet for the structure kind)."""
        return self._last.info.notes if self._last.info else ()

    # -- planning -------------------------------------------------------------------------------------
    def plan(self, layers: LayerSet) -> Plan:
        """The conditioning mode these layers decode with."""
        return plan_decode(layers, controlnets=self.controlnets, adapters=self.adapters, colour_mode=self.config.colour)

    @property
    def native_side(self) -> int:
        """Short side the model was trained at: `config.native_side`, else UNet sample_size x VAE factor."""
        if self.config.native_side:
            return self.config.native_side
        size = self.base.unet.config.sample_size
        return int(min(size) if isinstance(size, (list, tuple)) else size) * vae_factor(self.base.vae)

    def generation_size(self, layers: LayerSet) -> tuple[int, int]:
        """(w, h) the pipeline runs at: short side native, long side <= max_side, a multiple the UNet/VAE accept."""
        unet_f = 2 ** (len(self.base.unet.config.block_out_channels) - 1)
        multiple = max(8, vae_factor(self.base.vae) * unet_f)
        native = self.native_side
        return cond.generation_size(
            layers.width,
            layers.height,
            native_side=native,
            max_side=self.config.max_side or 2 * native,
            multiple=multiple,
        )

    def _guidance(self, layers: LayerSet) -> float:
        if self.config.guidance is not None:
            return self.config.guidance
        if self.config.few_step:
            return 1.0
        hinted = float(layers.header.hints.cfg_scale) if layers.header.HasField("hints") else 0.0
        return hinted if hinted > 0 else 7.5

    # -- pipelines ------------------------------------------------------------------------------------
    def _new_slot(self, index: int) -> Slot:
        base = self.base
        tokenizer = base.tokenizer
        if index and getattr(tokenizer, "is_fast", False):
            tokenizer = copy.deepcopy(tokenizer)  # a Rust tokenizer must not be used by two threads at once
        return Slot(type(base.scheduler).from_config(base.scheduler.config), tokenizer)

    def _pipeline(self, slot: Slot, plan: Plan) -> Any:
        """The slot's pipeline for a plan, built once on the shared components and the slot's scheduler."""
        import inspect

        import diffusers

        adapter_keys = [plan.control or ""] if plan.backend == "adapter" else []
        if plan.colour == "adapter" and plan.backend != "controlnet":
            adapter_keys.append("color")  # with a ControlNet the colour adapter goes in via IntrablockHook
        cls: Any
        if plan.backend == "controlnet":
            cls = (
                diffusers.StableDiffusionControlNetImg2ImgPipeline
                if plan.colour == "img2img"
                else diffusers.StableDiffusionControlNetPipeline
            )
        elif adapter_keys:
            cls = diffusers.StableDiffusionAdapterPipeline
        elif plan.colour == "img2img":
            cls = diffusers.StableDiffusionImg2ImgPipeline
        else:
            cls = diffusers.StableDiffusionPipeline
        key = (cls.__name__, plan.control or "", *adapter_keys)
        if key in slot.pipes:
            return slot.pipes[key]
        extra: dict[str, Any] = {}
        if plan.backend == "controlnet":
            extra["controlnet"] = self.controlnets[plan.control or ""]
        elif adapter_keys:
            nets = [self.adapters[k] for k in adapter_keys]
            extra["adapter"] = nets[0] if len(nets) == 1 else diffusers.MultiAdapter(nets)
        # Built directly, not with from_pipe: from_pipe casts the shared weights to float32 unless told a dtype.
        params = inspect.signature(cls.__init__).parameters
        components = {**self.base.components, "scheduler": slot.scheduler, "tokenizer": slot.tokenizer, **extra}
        kwargs = {k: v for k, v in components.items() if k in params}
        kwargs["requires_safety_checker"] = False
        pipe = cls(**kwargs)
        pipe.set_progress_bar_config(disable=True)
        slot.pipes[key] = pipe
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

    def _colour_features(self, batch: Sequence[LayerSet], w: int, h: int) -> list[Any]:
        """The colour adapter's features for a batch, scaled (as StableDiffusionAdapterPipeline computes them)."""
        import torch

        net = self.adapters["color"]
        arr = np.stack([cond.colour_adapter_image(ls.texture, w, h) for ls in batch if ls.texture])
        x = torch.from_numpy(arr).permute(0, 3, 1, 2).to(self.device, net.dtype) / 255.0
        with torch.inference_mode():
            return [f * self.config.adapter_scale for f in net(x)]

    def _inputs(self, batch: Sequence[LayerSet], plan: Plan, w: int, h: int) -> tuple[dict[str, Any], RunState]:
        """Pipeline kwargs for a batch sharing one plan and size, plus what the hooks add to the run."""
        import torch
        from PIL import Image

        first = batch[0]
        steps = self.config.effective_steps
        kw: dict[str, Any] = {  # the prompts go in as embeddings (prompt_weights), made in _run on the slot
            "guidance_scale": self._guidance(first),
            "generator": [torch.Generator("cpu").manual_seed(ls.seed) for ls in batch],
            "output_type": "np",
        }
        if plan.colour != "img2img":
            kw["height"], kw["width"] = h, w
        state = RunState()
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
            if plan.colour == "adapter":
                state.intrablock = self._colour_features(batch, w, h)
        elif plan.backend == "adapter" or plan.colour == "adapter":
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
        if any(m is not None for m in masks):
            arr = np.stack([np.ones((h, w), bool) if m is None else m for m in masks])[:, None]
            state.mask = torch.from_numpy(arr.astype(np.float32))
            nets = self.controlnets if plan.backend == "controlnet" else self.adapters
            state.mask_target = nets[plan.control or ""]
        return kw, state

    # -- previews -------------------------------------------------------------------------------------
    def latent_rgb(self) -> np.ndarray:
        """The (C + 1, 3) latent -> RGB map of the approximate previews, fitted to this VAE on first use."""
        with self._preview_lock:
            if self._latent_rgb is None:
                self._latent_rgb = derive_latent_rgb(self.base.vae)
            return self._latent_rgb

    def _preview(self, latents: Any, width: int, height: int) -> np.ndarray | None:
        mode = self.config.preview
        if mode == "none":
            return None
        if mode == "vae":
            img = self._vae_decode(latents[:1])[0]
        else:
            img = latent_preview(latents[0].float().cpu().numpy(), self.latent_rgb())
        return _resize_rgb(img, width, height)

    def _vae_decode(self, latents: Any) -> np.ndarray:
        import torch

        with torch.no_grad():
            vae = self.base.vae
            out = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
        images = (out / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy()
        return _to_uint8(images)

    # -- running --------------------------------------------------------------------------------------
    def _prompt_embeds(self, slot: Slot, batch: Sequence[LayerSet]) -> PromptEmbeds:
        """The batch's prompts as weighted, chunked CLIP embeddings: A1111 emphasis `(x:1.2)` `[x]` and BREAK
        honoured, prompts past 77 tokens encoded in chunks, LoRA tags stripped with a note."""
        import torch

        from layercast.receiver.prompt_weights import encode_prompt

        with torch.inference_mode():
            return encode_prompt(
                slot.tokenizer,
                self.base.text_encoder,
                [(ls.prompt.text if ls.prompt else "") for ls in batch],
                [(ls.prompt.negative if ls.prompt else "") for ls in batch],
                self.device,
            )

    def _run(
        self,
        batch: Sequence[LayerSet],
        plan: Plan,
        on_step: StepCallback | None,
        should_stop: Callable[[], bool] | None,
    ) -> tuple[list[np.ndarray], DecodeInfo]:
        import torch

        w, h = self.generation_size(batch[0])
        kw, state = self._inputs(batch, plan, w, h)  # CPU work, before waiting for a slot
        out_w, out_h = batch[0].width, batch[0].height
        steps_run = [0]
        planned = kw["num_inference_steps"]

        def step(i: int, latents: Any, total: int) -> bool:
            steps_run[0] = i + 1
            if on_step is not None:
                on_step(i + 1, total, self._preview(latents, out_w, out_h))
            return should_stop is not None and bool(should_stop())

        with self._slots.take() as slot:
            pipe = self._pipeline(slot, plan)
            emb = self._prompt_embeds(slot, batch)
            kw.update(emb.pipeline_kwargs())
            if not hasattr(type(pipe), "interrupt"):  # StableDiffusionAdapterPipeline: old callback, no interrupt

                def old_cb(i: int, t: Any, latents: Any) -> None:
                    if step(i, latents, planned):
                        raise _Stopped(latents)

                kw["callback"], kw["callback_steps"] = old_cb, 1
            else:

                def new_cb(p: Any, i: int, t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
                    if step(i, tensors["latents"], int(getattr(p, "num_timesteps", planned) or planned)):
                        p._interrupt = True  # this slot's pipeline: no other run sees it
                    return tensors

                kw["callback_on_step_end"] = new_cb
                kw["callback_on_step_end_tensor_inputs"] = ["latents"]
            try:
                with torch.inference_mode(), self._ctx.active(state):
                    images = _to_uint8(pipe(**kw).images)
            except _Stopped as stop:
                images = self._vae_decode(stop.latents)
            except (RuntimeError, ValueError) as e:
                raise ModelError(f"Stable Diffusion run failed in mode {plan.label}: {e}") from e
        info = DecodeInfo(plan, steps_run[0], (w, h), plan.notes + emb.notes)
        self._last.info = info
        return [_resize_rgb(img, ls.width, ls.height) for img, ls in zip(images, batch, strict=True)], info

    def decode_with_info(
        self,
        layers: LayerSet,
        *,
        on_step: StepCallback | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> tuple[np.ndarray, DecodeInfo]:
        """:meth:`decode`, plus how it ran (plan, steps, generation size, notes on ignored layers)."""
        images, info = self._run([layers], self.plan(layers), on_step, should_stop)
        return images[0], info

    def decode(
        self,
        layers: LayerSet,
        *,
        on_step: StepCallback | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> np.ndarray:
        """Decode to uint8 RGB (layers.height, layers.width, 3); deterministic from layers.seed."""
        return self.decode_with_info(layers, on_step=on_step, should_stop=should_stop)[0]

    def decode_batch(self, batch: Sequence[LayerSet]) -> list[np.ndarray]:
        """Decode several LayerSets (e.g. one per stream), batching those that share a mode and size."""
        groups: dict[tuple[str, tuple[int, int], float], list[int]] = {}
        plans = [self.plan(ls) for ls in batch]
        for i, ls in enumerate(batch):
            groups.setdefault((plans[i].label, self.generation_size(ls), self._guidance(ls)), []).append(i)
        out: list[np.ndarray | None] = [None] * len(batch)
        for idx in groups.values():
            images, _ = self._run([batch[i] for i in idx], plans[idx[0]], None, None)
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
        pipe.scheduler = make_scheduler(config.scheduler or "lcm", pipe.scheduler.config)
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
