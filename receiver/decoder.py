"""The decoder interface: a LayerSet (any subset of layers) in, an RGB image out.

Every decoder must accept any subset of layers (no prompt, no structure, no texture, masked
structure) and return uint8 (height, width, 3) at the header's size. The CPU preview decoder is the
default; the diffusers decoder plugs into the same slot.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from layercast.common.types import LayerSet

StepCallback = Callable[[int, int, np.ndarray | None], None]
"""Called as (step, total_steps, intermediate_rgb_or_None) by decoders that iterate."""


class Decoder(Protocol):
    """Turns available layers into an image.

    A decoder may also set `light = True`: its decodes take milliseconds on the CPU (the preview
    decoder), so `ReceiveSession` runs them on its layer worker threads, and the session's CPU work never
    has more threads than those. Without it (a GPU or multi-second decoder, such as SD) decodes get
    threads of their own, and layer decoding never waits behind them.
    """

    name: str

    def decode(
        self,
        layers: LayerSet,
        *,
        on_step: StepCallback | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> np.ndarray:
        """Decode to uint8 RGB (layers.height, layers.width, 3). `should_stop` lets a caller cancel a stale run."""
        ...
