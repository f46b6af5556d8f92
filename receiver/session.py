"""The receiver's asyncio shell: transports -> sans-I/O Assembler -> progressive decodes -> stages.

    async with ReceiveSession(decoder=PreviewDecoder(), out_dir=Path("out")) as rx:
        rx.add_transport(transport)              # any number, any time (one per WebRTC peer)
        summary = await rx.run(count=4)          # or idle_timeout=..., or until the transports close

Every packet goes to one `receiver.assembler.Assembler` with the event loop's time as `now`; its timer
is served by a background task. A layer whose units are all in is decoded (edge map, colormap, prompt)
off the event loop, by `layer_threads` worker threads per session (the codecs' numba kernels drop the
GIL, so two decode at once on two cores), its value handed back in arrival order: the assembler hands it
out as a `LayerDecodeJob` and takes the value back (`defer_decode`), so the loop goes on reading packets
meanwhile (`layer_worker=False`: decoded on the loop, inside `feed`). Each `LayerSetChanged` schedules a decode of
that image's layer set in a worker thread (at most `max_decodes` at once, one at a time per image; a `light`
decoder's (the preview's) on the layer workers themselves, so the CPU is not split between more threads
than those, other decoders' on threads of their own; held
while more layers of the image are still being decoded, so the stage decoded is the newest); a decode
still running when a different (richer) layer set arrives is told to stop through the decoder's
`should_stop` and its result is dropped, so each stage supersedes the last. `ImageReady` makes the final
stage (reusing the last one when its layers did not change). Images are keyed by (camera, image id) (see
`common.identity`): the camera a transport names (MQTT topic level, WebRTC offer, `camera=` of
`add_transport`) or else the packet's decimal stream id. Outputs, when `out_dir` is set::

    <out>/<camera>/<image>/stage-1.png, stage-2.png, ...   one per decoded stage
    <out>/<camera>/<image>/final.png                       the last stage of a finished image
    <out>/events.jsonl                                     every assembler event and stage, one JSON per line

Nothing is taken twice: a packet of an image whose ``final.png`` already exists (written by this or
an earlier run) is dropped as a duplicate. `feed(..., on_done=...)` calls back once the packet's image
has its final stage on disk (at once for a rejected or duplicate packet): the MQTT reader acknowledges
each message only then, so a receiver killed mid-image gets the message again from the broker.

A decoder that fails on the final stage is replaced by the preview decoder for that image, so every
image that got a packet yields an output. Listeners (`add_listener`, `stages()`) see every `Stage`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import numpy as np

from layercast.common.errors import InputError, LayercastError, TransportClosed, TransportError, TransportTimeout
from layercast.common.replay import KeyRing
from layercast.common.transport.base import Transport
from layercast.common.types import LayerSet
from layercast.receiver.assembler import Assembler, LayerDecodeJob
from layercast.receiver.decoder import Decoder
from layercast.receiver.events import (
    Event,
    ImageReady,
    LayerComplete,
    LayerPartial,
    LayerSetChanged,
    PacketRejected,
    event_record,
)

log = logging.getLogger(__name__)

_T = TypeVar("_T")

EVENTS_FILE = "events.jsonl"
REPLAY_DIR = ".replay"
"""Under the output folder: each keyed stream's newest accepted sequence (`common.replay.ReplayStore`)."""


@dataclass(frozen=True)
class Stage:
    """One decoded stage of an image. `index` counts from 1; `final` marks the image's last stage.

    `time` is event-loop time when the stage was ready; `path` the PNG written (None without out_dir).
    `complete` / `partial` are known on the final stage (all expected layers arrived whole / the
    families that arrived only in part).
    """

    stream_id: int
    image_id: int
    index: int
    final: bool
    layers: tuple[str, ...]
    reason: str
    rgb: np.ndarray = field(repr=False)
    decode_ms: float
    time: float
    decoder: str
    path: Path | None = None
    complete: bool | None = None
    partial: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    camera: str = ""
    notes: tuple[str, ...] = ()
    """What the decoder left unused and why (e.g. "no ControlNet for 'canny' configured: structure layer
    ignored", a LoRA tag stripped); empty when every layer was used."""

    def record(self) -> dict[str, Any]:
        """JSON-ready summary (no pixels)."""
        return {
            "event": "Stage",
            "camera": self.camera,
            "stream_id": self.stream_id,
            "image_id": self.image_id,
            "stage": self.index,
            "final": self.final,
            "layers": list(self.layers),
            "reason": self.reason,
            "decoder": self.decoder,
            "decode_ms": round(self.decode_ms, 2),
            "path": str(self.path) if self.path else None,
            "complete": self.complete,
            "partial": list(self.partial),
            "missing": list(self.missing),
            "notes": list(self.notes),
        }


@dataclass
class LayerArrival:
    """When and how completely a layer family of one image arrived (event-loop time)."""

    time: float
    complete: bool
    missing_units: int = 0
    unit_count: int = 0
    wire_bytes: int = 0
    recovered: int = 0


@dataclass
class ImageRecord:
    """What the session knows about one image (kept for the last `max_records` images)."""

    stream_id: int
    image_id: int
    first_event: float
    layers: dict[str, LayerArrival] = field(default_factory=dict)
    camera: str = ""
    stages: int = 0
    first_stage: float | None = None
    final: Stage | None = None
    complete: bool | None = None
    partial: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()


@dataclass
class ReceiveSummary:
    """Totals of a session run."""

    images: int = 0
    complete: int = 0
    partial: int = 0
    stages: int = 0
    rejected: int = 0
    cancelled: int = 0
    decode_failures: int = 0
    packets: int = 0
    duplicates: int = 0
    """Data packets of images finished before (in this run, or in an earlier one by their final.png):
    repeats a broker or sender delivered again (or fragments that came after their image's timeout)."""
    decoder: str = ""
    """The decoder actually running (e.g. "preview" when the SD decoder fell back)."""
    out_dir: str | None = None
    events_log: str | None = None
    reject_reasons: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class _Job:
    layers: LayerSet
    sig: tuple[Any, ...]
    reason: str
    final: bool
    ready: ImageReady | None = None


class _ImageState:
    def __init__(self, sid: int) -> None:
        self.sid = sid
        self.pending: _Job | None = None
        self.running: _Job | None = None
        self.stop: threading.Event | None = None
        self.task: asyncio.Task[None] | None = None
        self.last_sig: tuple[Any, ...] | None = None
        self.last_stage: Stage | None = None


def layer_signature(layers: LayerSet) -> tuple[Any, ...]:
    """Identity of a layer set's content (the assembler hands out a new value object for every change)."""
    return (
        id(layers.prompt),
        id(layers.structure),
        id(layers.texture),
        layers.header.SerializeToString(deterministic=True),
    )


class EventLog:
    """JSON lines appended to a file (or nowhere): each record gets `t` (s since the session start)
    and `wall` (Unix time). Lines are written at most `flush_s` after they were logged, whole lines per
    write call on an O_APPEND file, so workers sharing one output folder never interleave a line."""

    def __init__(self, path: Path | None, t0: float, flush_s: float = 0.2) -> None:
        self.path = path
        self.t0 = t0
        self.flush_s = flush_s
        self._fd: int | None = None
        self._pending: list[str] = []
        self._flushed = time.monotonic()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, record: dict[str, Any], now: float) -> None:
        if self._fd is None:
            return
        record["t"] = round(now - self.t0, 4)
        record["wall"] = round(time.time(), 3)
        self._pending.append(json.dumps(record, default=str) + "\n")
        if time.monotonic() - self._flushed >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        """Write the pending lines now."""
        self._flushed = time.monotonic()
        if self._fd is None or not self._pending:
            return
        data = "".join(self._pending).encode()
        self._pending.clear()
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    def close(self) -> None:
        if self._fd is not None:
            self.flush()
            os.close(self._fd)
            self._fd = None


def save_png_fast(path: Path, rgb: np.ndarray) -> None:
    """Write RGB uint8 as PNG, atomically (a temporary file renamed), with `receiver.png.encode_png`: light
    compression, half the time of libpng's (stages are written often), the GIL released while it runs."""
    from layercast.receiver.png import encode_png

    data = encode_png(rgb)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


class ReceiveSession:
    """Receive packets from transports, assemble and decode progressively; see the module docstring.

    `key`: None, one sender key, a {stream_id: key} mapping or a KeyRing (then every packet must
    authenticate). `image_timeout`: seconds after an image's last packet before it is finished
    incomplete. `assembler_options`: more keyword arguments for `Assembler`. `max_decodes`: decodes
    running at once (threads). `coalesce_s`: refinements of one image arriving within this window are
    decoded once (the first preview is never delayed). `max_records`: images remembered for `records` /
    the live view. `layer_worker`: decode complete layers in a worker thread (default) rather than on
    the event loop; then a layer's events (LayerComplete, LayerSetChanged, ImageReady) come once it is
    decoded, after `feed` returned (`wait_decodes` waits for them too). `layer_threads`: how many layers
    decode at once (default: 2, or 1 on a one-core machine).
    """

    def __init__(
        self,
        transports: Transport | Sequence[Transport] = (),
        *,
        decoder: Decoder | None = None,
        out_dir: Path | str | None = None,
        key: bytes | Mapping[int, bytes] | KeyRing | None = None,
        image_timeout: float = 10.0,
        assembler_options: Mapping[str, Any] | None = None,
        max_decodes: int = 2,
        coalesce_s: float = 0.02,
        max_records: int = 1024,
        write_stages: bool = True,
        layer_worker: bool = True,
        layer_threads: int | None = None,
    ) -> None:
        if decoder is None:
            from layercast.receiver.preview import PreviewDecoder

            decoder = PreviewDecoder()
        if max_decodes < 1:
            raise InputError(f"max_decodes must be >= 1, got {max_decodes}")
        if layer_threads is None:
            layer_threads = min(2, os.cpu_count() or 1)
        if layer_threads < 1:
            raise InputError(f"layer_threads must be >= 1, got {layer_threads}")
        self.layer_threads = layer_threads
        self.decoder = decoder
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.write_stages = write_stages
        options = dict(assembler_options or {})
        if self.out_dir is not None and write_stages:
            options.setdefault("already_done", self._final_exists)
        if self.out_dir is not None and key is not None:
            from layercast.common.replay import ReplayStore

            # OUT/.replay: never a camera's folder (camera names cannot start with a dot)
            options.setdefault("replay_store", ReplayStore(self.out_dir / REPLAY_DIR))
        options.setdefault("defer_decode", layer_worker)
        self.assembler = Assembler(key=key, image_timeout=image_timeout, **options)
        self.max_records = max_records
        self.records: OrderedDict[tuple[str, int], ImageRecord] = OrderedDict()
        self.summary = ReceiveSummary(
            out_dir=str(self.out_dir) if self.out_dir else None, decoder=getattr(decoder, "name", "?")
        )
        self._initial = [transports] if isinstance(transports, Transport) else list(transports)
        self._max_decodes = max_decodes
        self.coalesce_s = coalesce_s
        self._listeners: list[Callable[[Stage], None]] = []
        self._event_listeners: list[Callable[[Event], None]] = []
        self._states: dict[tuple[str, int], _ImageState] = {}
        self._on_done: dict[tuple[str, int], list[Callable[[], None]]] = {}
        self._readers: set[asyncio.Task[None]] = set()
        self._readers_started = 0
        self._readers_done = 0
        self._timer_task: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        """The error that ended a decode or timer task (an output it could not write, a bug); `run` raises it."""
        self._timer_at: float | None = None
        self._changed: asyncio.Event | None = None
        self._timer_wake: asyncio.Event | None = None
        self._sem: asyncio.Semaphore | None = None
        self._log: EventLog | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._layer_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._layer_queue: list[LayerDecodeJob] = []
        self._layer_batch: asyncio.Future[list[list[tuple[Any, BaseException | None]] | BaseException]] | None = None
        self._layers_idle: asyncio.Event | None = None
        self._layers_out: dict[tuple[str, int], int] = {}  # per image: layers handed out, not yet back
        self._layers_out_limit = max(1, self.assembler.max_images // 2)  # readers wait above it
        self._t0 = 0.0
        self.last_activity = 0.0
        self._closed = False

    # --- lifecycle ----------------------------------------------------------------------------------

    async def __aenter__(self) -> ReceiveSession:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Start the timer task and the readers of the transports given at construction."""
        if self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        from layercast.common import color
        from layercast.common.codecs import colormap, edges, prompt

        def warm_up() -> None:  # load and compile the layer decoders and the preview's colour pass before packets
            edges.warm_up(encoder=False)
            colormap.warm_up()
            prompt.warm_up()
            color.oklab_image_to_srgb8(np.zeros((1, 1, 3), np.float32))

        await asyncio.to_thread(warm_up)  # off the event loop
        self._t0 = self.last_activity = self._loop.time()
        self._changed = asyncio.Event()
        self._timer_wake = asyncio.Event()
        self._sem = asyncio.Semaphore(self._max_decodes)
        self._layers_idle = asyncio.Event()
        self._layers_idle.set()
        if self.assembler.defer_decode:
            self._layer_pool = concurrent.futures.ThreadPoolExecutor(
                self.layer_threads, thread_name_prefix="layercast-layers"
            )
        log_path = self.out_dir / EVENTS_FILE if self.out_dir is not None else None
        self.summary.events_log = str(log_path) if log_path else None
        self._log = EventLog(log_path, self._t0)
        self._log.write({"event": "SessionStart", "decoder": getattr(self.decoder, "name", "?")}, self._t0)
        self._timer_task = self._watched(asyncio.create_task(self._timer_loop(), name="receive-timers"))
        for t in self._initial:
            self.add_transport(t)

    async def close(self) -> None:
        """Stop readers, timers and decodes (running threads are told to stop); close the event log."""
        if self._closed or self._loop is None:
            return
        self._closed = True
        tasks = [*self._readers, *(s.task for s in self._states.values() if s.task is not None)]
        if self._timer_task is not None:
            tasks.append(self._timer_task)
        for s in self._states.values():
            if s.stop is not None:
                s.stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._layer_pool is not None:
            self._layer_pool.shutdown(wait=False, cancel_futures=True)
        if self._log is not None:
            self._log.write({"event": "SessionEnd", **self._totals()}, self._loop.time())
            self._log.close()

    @property
    def t0(self) -> float:
        """Event-loop time at which the session started."""
        return self._t0

    # --- transports ---------------------------------------------------------------------------------

    def add_transport(self, transport: Transport, name: str = "", *, camera: str | None = None) -> asyncio.Task[None]:
        """Read packets from an open (or openable) transport in the background until it closes.

        `camera` names the camera every packet of this transport comes from (default: the transport's
        own `camera` attribute; an MQTT transport names each message's camera by its topic)."""
        self._readers_started += 1
        task = asyncio.create_task(self._serve(transport, name, camera))
        self._readers.add(task)
        task.add_done_callback(self._readers.discard)
        return task

    async def serve_transport(self, transport: Transport, name: str = "", *, camera: str | None = None) -> None:
        """Read packets from `transport` (as `camera`, default the transport's own) until it closes
        (usable as WebRTCServer's `on_transport`)."""
        self._require_started()
        self._readers_started += 1
        await self._serve(transport, name, camera)

    async def _serve(self, transport: Transport, name: str, camera: str | None = None) -> None:
        loop = self._require_started()
        label = name or type(transport).__name__
        camera = camera if camera is not None else getattr(transport, "camera", None)
        self._write({"event": "TransportOpen", "transport": label, "camera": camera}, loop.time())
        reason = "closed"
        recv_message = getattr(transport, "recv_message", None)
        ack = getattr(transport, "ack", None)
        try:
            await transport.open()
            while True:
                if len(self._layers_out) >= self._layers_out_limit:
                    await self._layer_backpressure()
                try:
                    if recv_message is not None:  # MQTT: the topic names each message's camera; ack once done
                        msg = await recv_message(timeout=3600.0)
                        data, cam = msg.payload, msg.stream
                        done = functools.partial(ack, msg) if ack else None
                    else:
                        data, cam, done = await transport.recv(timeout=3600.0), camera, None
                except TransportTimeout:
                    continue  # an idle hour is not the end of a link
                except TransportClosed:
                    break
                try:
                    self.feed(data, camera=cam, on_done=done)
                except Exception as exc:  # no packet may stop a reader: counted, logged, and on to the next
                    self.summary.rejected += 1
                    self._count_reject("InternalError")
                    log.exception("packet from %s raised %s; rejected", label, type(exc).__name__)
        except TransportError as exc:
            reason = f"{type(exc).__name__}: {exc}"
            log.warning("transport %s ended: %s", label, reason)
        except LayercastError as exc:  # e.g. a truncated or oversized record in a file
            reason = f"{type(exc).__name__}: {exc}"
            self.summary.rejected += 1
            self._count_reject(type(exc).__name__)
            log.warning("transport %s stopped on bad input: %s", label, reason)
        finally:
            self._readers_done += 1
            self._write({"event": "TransportClosed", "transport": label, "reason": reason}, loop.time())
            self._poke()

    def feed(
        self,
        data: bytes,
        now: float | None = None,
        *,
        camera: str | None = None,
        on_done: Callable[[], None] | None = None,
    ) -> None:
        """Hand one packet from `camera` (None: filed under its stream id) to the assembler (event-loop
        time by default) and act on its events. `on_done` is called once the packet's image has its final
        stage (written, when there is an out_dir), or at once when the packet was rejected or duplicate."""
        loop = self._require_started()
        now = loop.time() if now is None else now
        self.summary.packets += 1
        self.last_activity = now
        asm = self.assembler
        before = asm.stats["done_before"] + asm.stats["late_data"]
        events = asm.receive(data, now, camera=camera)
        self.summary.duplicates += asm.stats["done_before"] + asm.stats["late_data"] - before
        key = asm.last_key
        if on_done is not None:
            if key is None:
                on_done()
            else:
                self._on_done.setdefault(key, []).append(on_done)
        self._handle(events, now)
        self._pump_layers()
        self._arm_timer()

    def _final_exists(self, camera: str, image_id: int) -> bool:
        return self.out_dir is not None and (self.out_dir / camera / str(image_id) / "final.png").exists()

    def _done(self, key: tuple[str, int]) -> None:
        for callback in self._on_done.pop(key, ()):
            try:
                callback()
            except Exception:  # an acknowledgement that cannot go out is the broker's to redeliver
                log.exception("acknowledging a packet of %s/%s failed", *key)

    async def finish(self) -> None:
        """End of input: finish every open image now and wait until each has its final stage."""
        loop = self._require_started()
        now = loop.time()
        self._handle(self.assembler.finish_all(now), now)  # layers still out are decoded in place
        self._pump_layers()
        await self.wait_decodes()

    async def wait_transports_closed(self, timeout: float) -> bool:
        """Wait up to `timeout` s until every transport added so far has closed (e.g. each WebRTC
        sender hung up after draining); True when they all did."""
        loop = self._require_started()
        assert self._changed is not None
        deadline = loop.time() + timeout
        while self._readers_done < self._readers_started:
            left = deadline - loop.time()
            if left <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 0.5))
        return True

    async def wait_decodes(self) -> None:
        """Wait until no decode (of a layer, or of a stage) is pending or running."""
        while True:
            if self._layers_idle is not None and not self._layers_idle.is_set():
                await self._layers_idle.wait()
                continue
            tasks = [s.task for s in self._states.values() if s.task is not None and not s.task.done()]
            if not tasks:
                return
            await asyncio.gather(*tasks, return_exceptions=True)

    async def run(
        self,
        *,
        count: int | None = None,
        idle_timeout: float | None = None,
        until_closed: bool = True,
        stop: asyncio.Event | None = None,
    ) -> ReceiveSummary:
        """Receive until `count` images are final, or nothing arrived for `idle_timeout` seconds, or
        (with `until_closed`) every transport added so far has closed, or `stop` is set. Open images are
        then finished, except after `stop`: a service stopping leaves them unacknowledged for the broker
        to deliver again, rather than writing them incomplete.

        Crash-only: when a decode task fails (an output it cannot write: a full disk, a broken folder)
        `run` raises that error at once, and its image stays unacknowledged for a restarted worker."""
        loop = self._require_started()
        assert self._changed is not None
        stopped = False
        if stop is not None:
            stop_task = asyncio.ensure_future(stop.wait())
            stop_task.add_done_callback(lambda _: self._poke())
        while True:
            if self._failure is not None:
                break
            if stop is not None and stop.is_set():
                stopped = True
                break
            if count is not None and self.summary.images >= count:
                break
            if until_closed and self._readers_started and self._readers_done >= self._readers_started:
                break
            wait = 1.0
            if idle_timeout is not None:
                idle = loop.time() - self.last_activity
                if idle >= idle_timeout and not self._busy():
                    break
                wait = min(wait, max(0.01, idle_timeout - idle))
            if self._log is not None:
                self._log.flush()  # a quiet moment: the event log is never more than a second behind
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), wait)
        if stop is not None:
            stop_task.cancel()
        if self._failure is not None:  # open images stay unacknowledged: the broker delivers them again
            raise self._failure
        if stopped:
            await self.wait_decodes()
        elif count is None or self.summary.images < count:
            await self.finish()
        else:
            await self.wait_decodes()
        if self._log is not None:
            self._log.flush()
        return self.summary

    # --- listeners ----------------------------------------------------------------------------------

    def add_listener(self, callback: Callable[[Stage], None]) -> Callable[[], None]:
        """Call `callback(stage)` (on the event loop) for every stage; returns a function that removes it."""
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback) if callback in self._listeners else None

    def add_event_listener(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        """Call `callback(event)` (on the event loop) for every assembler event (a layer arrived, a packet
        was rejected, ...), after the session has handled it; returns a function that removes it."""
        self._event_listeners.append(callback)
        return lambda: self._event_listeners.remove(callback) if callback in self._event_listeners else None

    async def stages(self, *, maxsize: int = 256) -> AsyncIterator[Stage]:
        """Every stage from now on, as an async iterator (oldest dropped if the consumer falls behind)."""
        queue: asyncio.Queue[Stage] = asyncio.Queue(maxsize)

        def put(stage: Stage) -> None:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(stage)

        remove = self.add_listener(put)
        try:
            while True:
                yield await queue.get()
        finally:
            remove()

    # --- internals ----------------------------------------------------------------------------------

    def _require_started(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise InputError("ReceiveSession is not started: use `async with ReceiveSession(...)`")
        return self._loop

    def _busy(self) -> bool:
        if self._layers_idle is not None and not self._layers_idle.is_set():
            return True
        return any(s.task is not None and not s.task.done() for s in self._states.values())

    def _watched(self, task: asyncio.Task[None]) -> asyncio.Task[None]:
        """`task`, whose failure ends `run` (crash-only: never a worker living on with a dead task)."""
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        error = None if task.cancelled() else task.exception()
        if error is not None and self._failure is None:
            log.error("receive session: %s failed: %s: %s", task.get_name(), type(error).__name__, error)
            self._failure = error
            self._poke()

    def _poke(self) -> None:
        if self._changed is not None:
            self._changed.set()

    def _write(self, record: dict[str, Any], now: float) -> None:
        if self._log is not None:
            self._log.write(record, now)

    def _totals(self) -> dict[str, Any]:
        s = self.summary
        return {
            "images": s.images,
            "complete": s.complete,
            "partial": s.partial,
            "stages": s.stages,
            "rejected": s.rejected,
            "duplicates": s.duplicates,
            "decoder": s.decoder,
            "packets": s.packets,
            "assembler": dict(self.assembler.stats),
        }

    def _count_reject(self, error: str) -> None:
        self.summary.reject_reasons[error] = self.summary.reject_reasons.get(error, 0) + 1

    def _record(self, cam: str, sid: int, iid: int, now: float) -> ImageRecord:
        rec = self.records.get((cam, iid))
        if rec is None:
            rec = self.records[(cam, iid)] = ImageRecord(sid, iid, now, camera=cam)
            while len(self.records) > self.max_records:
                self.records.popitem(last=False)
        return rec

    def _arm_timer(self) -> None:
        """Wake the timer loop when a timer set since the last call is earlier than the one it sleeps to."""
        t = self.assembler.take_new_timer()
        if t is not None and (self._timer_at is None or t < self._timer_at) and self._timer_wake is not None:
            self._timer_wake.set()

    async def _timer_loop(self) -> None:
        loop = self._require_started()
        assert self._timer_wake is not None
        while True:
            t = self.assembler.next_timer()
            self._timer_at = t
            self._timer_wake.clear()
            if t is None:
                await self._timer_wake.wait()
                continue
            delay = t - loop.time()
            if delay > 0:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._timer_wake.wait(), delay)
                continue
            now = loop.time()
            self._handle(self.assembler.handle_timer(now), now)
            self._pump_layers()

    async def _layer_backpressure(self) -> None:
        """Hold a reader while half the assembler's open-image slots wait on the layer worker: the link's own
        flow control then paces the sender, where reading on would push out (finish) the oldest open images,
        whose layers would then be decoded on the event loop."""
        while len(self._layers_out) >= self._layers_out_limit and not self._closed:
            batch = self._layer_batch
            if batch is None:
                return
            await asyncio.wait([batch])  # its done callback (_layers_decoded) has run by then: re-check

    def _pump_layers(self) -> None:
        """Send the layers the assembler left to decode to the worker threads: one batch in flight at a
        time, the layers that complete meanwhile make the next one (fewer thread hand-offs under load),
        split between the threads by estimated cost (`split_jobs`)."""
        if self._layer_pool is None:
            return
        for job in self.assembler.take_decode_jobs():
            key = (job.camera, job.image_id)
            self._layers_out[key] = self._layers_out.get(key, 0) + 1
            self._layer_queue.append(job)
        if self._layer_batch is not None or not self._layer_queue or self._closed:
            return
        assert self._loop is not None and self._layers_idle is not None
        batch, self._layer_queue = self._layer_queue, []
        self._layers_idle.clear()
        parts = split_jobs(batch, self.layer_threads)
        pool = self._layer_pool
        self._layer_batch = asyncio.gather(
            *(self._loop.run_in_executor(pool, _run_layer_jobs, [batch[i] for i in part]) for part in parts),
            return_exceptions=True,  # every part is done before the batch is: no more decodes than threads
        )
        self._layer_batch.add_done_callback(functools.partial(self._layers_decoded, batch, parts))

    def _layers_decoded(
        self,
        batch: list[LayerDecodeJob],
        parts: list[list[int]],
        fut: asyncio.Future[list[list[tuple[Any, BaseException | None]] | BaseException]],
    ) -> None:
        """On the loop: hand a batch's values back to the assembler, in order, and act on the events."""
        assert self._loop is not None and self._layers_idle is not None
        self._layer_batch = None
        if self._closed:
            self._layers_idle.set()
            return
        results: list[tuple[Any, BaseException | None]] = [(None, None)] * len(batch)
        try:
            outcomes = fut.result()
        except BaseException as exc:  # the batch itself was cancelled
            outcomes = [exc] * len(parts)
        for part, outcome in zip(parts, outcomes, strict=True):
            if isinstance(outcome, BaseException):  # the worker itself failed (jobs catch their own errors)
                failed = outcome if isinstance(outcome, Exception) else RuntimeError(f"layer worker: {outcome!r}")
                outcome = [(None, failed)] * len(part)  # typed rejects
            for i, result in zip(part, outcome, strict=True):
                results[i] = result
        now = self._loop.time()
        for job, (value, error) in zip(batch, results, strict=True):
            key = (job.camera, job.image_id)
            left = self._layers_out.get(key, 1) - 1
            if left > 0:
                self._layers_out[key] = left
            else:
                self._layers_out.pop(key, None)
            try:
                self._handle(self.assembler.deliver(job, value, error, job.time), now)
            except Exception as exc:  # e.g. a listener raised: counted and logged, the batch goes on
                self.summary.rejected += 1
                self._count_reject("InternalError")
                log.exception("handling decoded layer of %s/%s raised %s", job.camera, job.image_id, type(exc).__name__)
            if left <= 0:
                self._start_decodes(key)  # a stage held back for this layer (see _schedule) may go now
        self._arm_timer()
        self._pump_layers()
        if self._layer_batch is None:
            self._layers_idle.set()

    def _handle(self, events: list[Event], now: float) -> None:
        logging = self._log is not None and self._log.path is not None  # no records built for no file
        for ev in events:
            if isinstance(ev, PacketRejected):
                self.summary.rejected += 1
                self._count_reject(ev.error)
                if logging:
                    self._write(event_record(ev), now)
                if ev.error == "InternalError":  # a bug a packet found: worth a log line, not a dead reader
                    log.error("packet rejected on an internal error (please report): %s", ev.reason)
                continue
            cam = ev.camera or str(ev.stream_id)
            r = self._record(cam, ev.stream_id, ev.image_id, now)
            if isinstance(ev, LayerComplete):
                r.layers[ev.family] = LayerArrival(ev.time, True, 0, 0, ev.wire_bytes, ev.recovered)
            elif isinstance(ev, LayerPartial):
                r.layers[ev.family] = LayerArrival(ev.time, False, len(ev.missing_units), ev.unit_count)
            elif isinstance(ev, LayerSetChanged):
                self._schedule(
                    cam, ev.stream_id, ev.image_id, _Job(ev.layers, layer_signature(ev.layers), ev.reason, False)
                )
            elif isinstance(ev, ImageReady):
                r.complete, r.partial, r.missing = ev.complete, ev.partial_families, ev.missing_families
                self._schedule(
                    cam,
                    ev.stream_id,
                    ev.image_id,
                    _Job(ev.layers, layer_signature(ev.layers), "image ready", True, ev),
                )
            if logging:
                self._write(event_record(ev), now)
        for ev in events:
            for listener in list(self._event_listeners):
                listener(ev)

    def _schedule(self, cam: str, sid: int, iid: int, job: _Job) -> None:
        st = self._states.get((cam, iid))
        if st is None:
            st = self._states[(cam, iid)] = _ImageState(sid)
        if st.pending is not None and st.pending.final:
            return  # nothing follows the final job
        st.pending = job
        if st.running is not None and st.stop is not None and st.running.sig != job.sig:
            st.stop.set()  # a richer layer set arrived: the running decode is stale
        self._start_decodes((cam, iid))

    def _held(self, key: tuple[str, int], job: _Job) -> bool:
        """A refinement is held back while more layers of its image are being decoded (latest wins: the
        stage decoded is the one with them); a final stage never is."""
        return not job.final and key in self._layers_out

    def _start_decodes(self, key: tuple[str, int]) -> None:
        """Start the image's decode task for its pending job, unless it runs already or is held."""
        st = self._states.get(key)
        if st is None or st.pending is None or self._held(key, st.pending):
            return
        if st.task is None or st.task.done():
            decode = self._decode_loop(key[0], st.sid, key[1], st)
            st.task = self._watched(asyncio.create_task(decode, name=f"decode of {key[0]}/{key[1]}"))

    async def _decode_loop(self, cam: str, sid: int, iid: int, st: _ImageState) -> None:
        assert self._sem is not None and self._loop is not None
        loop = self._loop
        while st.pending is not None:
            if self._held((cam, iid), st.pending):
                break  # more layers are coming back from the layer worker: it restarts this (_start_decodes)
            job, st.pending = st.pending, None
            if not job.final and st.last_stage is not None and self.coalesce_s > 0:
                # refinements that land within `coalesce_s` of each other make one decode, not several
                await asyncio.sleep(self.coalesce_s)
                if st.pending is not None:
                    self._cancelled(cam, sid, iid, job, 0.0, coalesced=True)
                    continue
            if job.sig == st.last_sig and st.last_stage is not None:
                if job.final:
                    last = st.last_stage
                    await self._emit(cam, sid, iid, st, job, last.rgb, last.decode_ms, reuse=True, notes=last.notes)
                continue
            stop = threading.Event()
            st.running, st.stop = job, stop
            notes: tuple[str, ...] = ()
            try:
                async with self._sem:
                    if stop.is_set() and not job.final:
                        rgb, ms, error = None, 0.0, None
                    else:
                        rgb, ms, error, notes = await self._in_decode_thread(self._decode, job.layers, stop)
            finally:
                st.running, st.stop = None, None
            if stop.is_set() and not job.final:
                self._cancelled(cam, sid, iid, job, ms)
                continue
            if rgb is None:
                self.summary.decode_failures += 1
                self._write(
                    {
                        "event": "DecodeFailed",
                        "camera": cam,
                        "stream_id": sid,
                        "image_id": iid,
                        "error": error,
                        "final": job.final,
                    },
                    loop.time(),
                )
                if not job.final:
                    continue
                rgb, ms, error = await asyncio.to_thread(self._fallback_decode, job.layers)
                used = "preview (fallback)"
                if rgb is None:  # even the preview decoder failed: a grey frame keeps the promise
                    rgb = np.full((job.layers.height, job.layers.width, 3), 128, np.uint8)
                    used = "none (grey frame)"
                await self._emit(cam, sid, iid, st, job, rgb, ms, reuse=False, decoder=used)
                continue
            await self._emit(cam, sid, iid, st, job, rgb, ms, reuse=False, notes=notes)
        if st.pending is None and st.last_stage is not None and st.last_stage.final:
            self._states.pop((cam, iid), None)

    def _cancelled(self, cam: str, sid: int, iid: int, job: _Job, ms: float, *, coalesced: bool = False) -> None:
        """Count and log a decode that was dropped: stale, or `coalesced` with a fresher one before it ran."""
        assert self._loop is not None
        self.summary.cancelled += 1
        record = {
            "event": "DecodeCancelled",
            "camera": cam,
            "stream_id": sid,
            "image_id": iid,
            "reason": job.reason,
            "layers": job.layers.present(),
            "decode_ms": round(ms, 2),
        }
        if coalesced:
            record["coalesced"] = True
        self._write(record, self._loop.time())

    async def _in_decode_thread(self, fn: Callable[..., _T], *args: Any) -> _T:
        """fn(*args) in a worker thread: a layer worker for a `light` decoder (one pool for all the session's
        CPU work: on two cores, two preview decodes beside two layer decodes and the loop made the stream
        bench ~15% slower), else a thread of the loop's default executor."""
        assert self._loop is not None
        if getattr(self.decoder, "light", False) and self._layer_pool is not None:
            return await self._loop.run_in_executor(self._layer_pool, functools.partial(fn, *args))
        return await asyncio.to_thread(fn, *args)

    def _decode(
        self, layers: LayerSet, stop: threading.Event
    ) -> tuple[np.ndarray | None, float, str | None, tuple[str, ...]]:
        """(pixels or None, ms, error or None, the decoder's notes on layers it left unused)."""
        t = time.perf_counter()
        notes: tuple[str, ...] = ()
        try:
            with_info = getattr(self.decoder, "decode_with_info", None)
            if with_info is not None:
                out, info = with_info(layers, should_stop=stop.is_set)
                notes = tuple(info.notes)
            else:
                out = self.decoder.decode(layers, should_stop=stop.is_set)
            rgb = _as_rgb(out, layers)
        except LayercastError as exc:
            return None, (time.perf_counter() - t) * 1e3, f"{type(exc).__name__}: {exc}", ()
        except Exception as exc:
            log.exception("decoder %s crashed", getattr(self.decoder, "name", "?"))
            return None, (time.perf_counter() - t) * 1e3, f"{type(exc).__name__}: {exc}", ()
        return rgb, (time.perf_counter() - t) * 1e3, None, notes

    @staticmethod
    def _fallback_decode(layers: LayerSet) -> tuple[np.ndarray | None, float, str | None]:
        from layercast.receiver.preview import PreviewDecoder

        t = time.perf_counter()
        try:
            rgb = PreviewDecoder().decode(layers)
        except LayercastError as exc:
            return None, 0.0, str(exc)
        return rgb, (time.perf_counter() - t) * 1e3, None

    async def _emit(
        self,
        cam: str,
        sid: int,
        iid: int,
        st: _ImageState,
        job: _Job,
        rgb: np.ndarray,
        ms: float,
        *,
        reuse: bool,
        decoder: str | None = None,
        notes: tuple[str, ...] = (),
    ) -> None:
        """Write and announce a stage; `decoder` names the one that made it when not the session's."""
        assert self._loop is not None
        rec = self._record(cam, sid, iid, self._loop.time())
        index = rec.stages if reuse else rec.stages + 1
        path = None
        folder = self.out_dir / cam / str(iid) if self.out_dir is not None and self.write_stages else None
        if folder is not None:
            path = folder / f"stage-{index}.png"
            if not reuse:
                await asyncio.to_thread(save_png_fast, path, rgb)
            if job.final:
                await asyncio.to_thread(_copy, path, folder / "final.png")
                path = folder / "final.png"
        now = self._loop.time()
        ready = job.ready
        stage = Stage(
            stream_id=sid,
            image_id=iid,
            index=index,
            final=job.final,
            layers=tuple(job.layers.present()),
            reason=job.reason,
            rgb=rgb,
            decode_ms=ms,
            time=now,
            decoder=decoder or str(getattr(self.decoder, "name", "?")),
            path=path,
            complete=ready.complete if ready is not None else None,
            partial=ready.partial_families if ready is not None else (),
            missing=ready.missing_families if ready is not None else (),
            camera=cam,
            notes=notes,
        )
        if not reuse:
            rec.stages = index
            self.summary.stages += 1
            if rec.first_stage is None:
                rec.first_stage = now
        st.last_sig, st.last_stage = job.sig, stage
        if job.final:
            rec.final = stage
            self.summary.images += 1
            if ready is not None and ready.complete:
                self.summary.complete += 1
            else:
                self.summary.partial += 1
        record = stage.record()
        record["reused"] = reuse
        self._write(record, now)
        if job.final:
            self._done((cam, iid))
        for listener in list(self._listeners):
            listener(stage)
        if job.final:
            self._poke()


def _run_layer_jobs(batch: list[LayerDecodeJob]) -> list[tuple[Any, BaseException | None]]:
    """In a layer worker thread: each job's (value, error)."""
    return [job.run() for job in batch]


def split_jobs(batch: Sequence[LayerDecodeJob], parts: int) -> list[list[int]]:
    """Indices of `batch` in at most `parts` non-empty groups of about equal estimated decode cost, each
    in batch order: the costliest job first to the least loaded group (LPT scheduling). A job's cost is
    its coded bytes plus a fixed 64 per job (measured on the shared images: ~1.7 ms per ~430-byte edge
    map, ~0.5 ms per ~40-byte prompt, ~0.15 ms per ~45-byte colormap)."""
    n = max(1, min(parts, len(batch)))
    if n == 1:
        return [list(range(len(batch)))]
    cost = [64 + sum(len(u) for u in job.units if u is not None) for job in batch]
    groups: list[list[int]] = [[] for _ in range(n)]
    load = [0] * n
    for i in sorted(range(len(batch)), key=lambda j: -cost[j]):
        g = load.index(min(load))
        groups[g].append(i)
        load[g] += cost[i]
    return [sorted(g) for g in groups if g]


def _copy(src: Path, dst: Path) -> None:
    """`dst` becomes `src`'s content, durably and whole (a hard link made aside, synced, renamed; a copy
    where links are not possible): its existence is what tells a restarted receiver the image is done."""
    tmp = dst.with_suffix(".part")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        tmp.write_bytes(src.read_bytes())
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    tmp.replace(dst)


def _as_rgb(rgb: Any, layers: LayerSet) -> np.ndarray:
    arr = np.asarray(rgb)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise InputError(f"decoder returned {arr.dtype} {arr.shape}; the Decoder protocol wants uint8 (H, W, 3)")
    if arr.shape[:2] != (layers.height, layers.width):
        raise InputError(f"decoder returned {arr.shape[1]}x{arr.shape[0]}, the image is {layers.width}x{layers.height}")
    return arr
