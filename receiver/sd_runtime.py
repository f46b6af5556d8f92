"""Per-run state of the Stable Diffusion decoder, so that decodes can run at once (threads) on one decoder.

The weights (text encoder, UNet, VAE, ControlNets, adapters) are shared by every run and only read. What a
run mutates is never shared: a run holds a :class:`Slot` from the :class:`SlotPool` for its whole duration
(its own pipelines, hence its own scheduler, step counters and interrupt flag), and the hooks installed once
on the shared modules read the calling thread's :class:`RunContext`, so one run's known-region mask or
adapter residuals never reach another run. diffusers runs a pipeline entirely in the calling thread.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RunState:
    """What the hooks add to one run."""

    mask: Any = None
    """(n, 1, H, W) float known-region mask, multiplied into `mask_target`'s residuals; None = no mask."""
    mask_target: Any = None
    """The ControlNet or T2I-Adapter module whose residuals `mask` applies to."""
    intrablock: list[Any] | None = None
    """Colour T2I-Adapter features (one per UNet level, batch n, already scaled) fed to the UNet alongside a
    ControlNet, as `down_intrablock_additional_residuals`; None = none."""


class RunContext(threading.local):
    """The calling thread's :class:`RunState` (None outside a run)."""

    state: RunState | None = None

    @contextmanager
    def active(self, state: RunState) -> Iterator[RunState]:
        """Make `state` the current thread's run state for the block."""
        self.state = state
        try:
            yield state
        finally:
            self.state = None


def _repeat_to(t: Any, batch: int) -> Any:
    """`t` (batch n) repeated to `batch` rows, as the pipelines stack [uncond; cond] for classifier-free guidance."""
    return t if t.shape[0] == batch else t.repeat(batch // t.shape[0], *([1] * (t.ndim - 1)))


class MaskHook:
    """Forward hook on a ControlNet/adapter: multiplies its residuals by the current run's known mask."""

    def __init__(self, ctx: RunContext, module: Any) -> None:
        self.ctx = ctx
        self.module = module

    def _apply(self, t: Any, mask: Any) -> Any:
        import torch
        import torch.nn.functional as F

        if not isinstance(t, torch.Tensor) or t.ndim != 4:
            return t
        m = F.interpolate(mask, size=tuple(t.shape[-2:]), mode="area").to(t.device, t.dtype)
        return t * _repeat_to(m, t.shape[0])

    def __call__(self, module: Any, args: Any, output: Any) -> Any:
        st = self.ctx.state
        if st is None or st.mask is None or st.mask_target is not self.module:
            return None  # not this run's structure model: output unchanged
        m = st.mask
        if isinstance(output, tuple) and len(output) == 2 and isinstance(output[0], (tuple, list)):
            down, mid = output  # ControlNetModel(return_dict=False)
            return (tuple(self._apply(d, m) for d in down), self._apply(mid, m))
        if isinstance(output, list):  # T2IAdapter
            return [self._apply(o, m) for o in output]
        if hasattr(output, "down_block_res_samples"):
            output.down_block_res_samples = tuple(self._apply(d, m) for d in output.down_block_res_samples)
            output.mid_block_res_sample = self._apply(output.mid_block_res_sample, m)
        return output


class IntrablockHook:
    """Forward pre-hook (with kwargs) on the UNet: adds the current run's colour-adapter features.

    Does what StableDiffusionAdapterPipeline does inside its loop (features repeated to the UNet batch,
    a fresh list per call since the UNet pops from it), so a ControlNet pipeline can take them too.
    """

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx

    def __call__(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        st = self.ctx.state
        if st is None or st.intrablock is None:
            return None
        sample = args[0] if args else kwargs["sample"]
        kwargs["down_intrablock_additional_residuals"] = [_repeat_to(s, sample.shape[0]) for s in st.intrablock]
        return args, kwargs


@dataclass
class Slot:
    """One run's worth of mutable pipeline state: a scheduler, a tokenizer and the pipelines built on them."""

    scheduler: Any
    tokenizer: Any
    pipes: dict[tuple[str, ...], Any] = field(default_factory=dict)


class SlotPool:
    """Hands each run a free :class:`Slot`; a run finding none waits until one is given back."""

    def __init__(self, slots: list[Slot]) -> None:
        self.size = len(slots)
        self._free: queue.SimpleQueue[Slot] = queue.SimpleQueue()
        for s in slots:
            self._free.put(s)

    @contextmanager
    def take(self) -> Iterator[Slot]:
        """The slot for one run, held for the block."""
        slot = self._free.get()
        try:
            yield slot
        finally:
            self._free.put(slot)
