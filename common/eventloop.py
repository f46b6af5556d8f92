"""Which event loop the entry points run on: uvloop where it is installed (the `fast` extra), else asyncio's.

uvloop (libuv behind asyncio's interface; MagicStack/uvloop) runs the same coroutines with less CPU per
callback, timer and datagram. The receive path is CPU-bound, so that shows as throughput: on the stream
bench (per-layer WebRTC, 400 images, 2 cores, sender and receiver each on the loop named), 12 interleaved
rounds gave a median of 224.6 images/s against 209.1 on asyncio's loop (faster in 10 of 12), with 6.50
against 6.77 ms of receiver CPU and 3.00 against 3.16 ms of sender CPU per image; MQTT was neutral
(`layercast bench` times per-layer WebRTC on both loops in the same run).

The library itself never picks a loop: sessions and transports run on whatever loop is running. Only entry
points (`layercast send`, `receive`, `demo`, the bench) call `run`, with the user's `--loop`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from layercast.common.errors import InputError

T = TypeVar("T")

LOOPS = ("auto", "uvloop", "asyncio")
"""Accepted loop names: auto (uvloop where installed, else asyncio), uvloop (required), asyncio."""


def resolve(loop: str = "auto") -> str:
    """The loop `run(..., loop=loop)` would use: "uvloop" or "asyncio"; InputError for an unknown name or
    for "uvloop" where it is not installed."""
    if loop not in LOOPS:
        raise InputError(f"unknown event loop {loop!r}; use {', '.join(LOOPS)}")
    if loop == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        if loop == "uvloop":
            raise InputError(
                "event loop uvloop is not installed: pip install 'layercast[fast]' (Linux and macOS), "
                "or use --loop asyncio"
            ) from None
        return "asyncio"
    return "uvloop"


def run(main: Coroutine[Any, Any, T], *, loop: str = "auto") -> T:
    """Run the coroutine `main` to completion on a new event loop of kind `loop` (see `resolve`) and close
    it, as `asyncio.run` does."""
    try:
        kind = resolve(loop)
    except BaseException:
        main.close()  # never started: no "coroutine was never awaited" warning
        raise
    if kind == "asyncio":
        return asyncio.run(main)
    import uvloop

    return uvloop.run(main)


def running_loop_name() -> str:
    """The kind of the running event loop, "uvloop" or "asyncio" (for reports)."""
    loop = asyncio.get_running_loop()
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
