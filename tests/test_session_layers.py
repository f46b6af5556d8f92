"""The receive session's concurrency: layers decoded off the event loop, stages coalesced when decoding
falls behind (latest wins, finals never dropped), outputs identical to the sequential path."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from layercast.common.errors import InputError
from layercast.common.transport.memory import memory_pair
from layercast.common.types import LayerKind, LayerSet
from layercast.proto import layercast_pb2 as pb
from layercast.receiver.assembler import LayerDecodeJob
from layercast.receiver.events import Event, ImageReady, LayerComplete
from layercast.receiver.preview import PreviewDecoder
from layercast.receiver.session import ReceiveSession, Stage, split_jobs
from layercast.sender.session import SendSession
from tests.session_helpers import encoded_samples, file_decodes, read_png

pytestmark = pytest.mark.timeout(60)


async def _max_stall(work: Callable[[], Any]) -> tuple[float, Any]:
    """Run the coroutine `work()` while a ticker measures the longest the event loop went without a turn."""
    gaps: list[float] = []
    done = asyncio.Event()

    async def tick() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    try:
        result = await work()
    finally:
        done.set()
        await ticker
    return max(gaps, default=0.0), result


@pytest.mark.parametrize("layer_worker", [True, False])
async def test_a_slow_layer_decode_does_not_stall_the_event_loop(
    monkeypatch: pytest.MonkeyPatch, layer_worker: bool
) -> None:
    slow_s = 0.4
    real_run = LayerDecodeJob.run

    def slow_run(self: LayerDecodeJob) -> Any:
        time.sleep(slow_s)  # a slow codec (the numba kernels release the GIL, as sleep does)
        return real_run(self)

    monkeypatch.setattr(LayerDecodeJob, "run", slow_run)
    if not layer_worker:  # the in-place path decodes through the same job (see Assembler._decode_pending)
        import layercast.receiver.assembler as assembler_module

        real_decode = assembler_module.decode_layer

        def slow_decode(*args: Any) -> Any:
            time.sleep(slow_s)
            return real_decode(*args)

        monkeypatch.setattr(assembler_module, "decode_layer", slow_decode)
    res = encoded_samples()[0]
    a, b = memory_pair()
    rx = ReceiveSession(b, layer_worker=layer_worker, image_timeout=30.0)

    async def stream() -> None:
        async with rx:
            async with SendSession(a, profile="webrtc", stream_id=5) as tx:
                await tx.send_image(res.image)
            await rx.run(count=1, until_closed=False)

    stall, _ = await _max_stall(stream)
    assert rx.summary.images == 1 and rx.summary.complete == 1
    final = rx.records[("5", 0)].final
    assert final is not None and np.array_equal(final.rgb, file_decodes([res])[0])
    if layer_worker:
        assert stall < slow_s / 2, f"the loop stalled {stall:.3f} s while layers decoded"
    else:
        assert stall >= slow_s * 0.9, "the in-place path blocks the loop (the measurement sees a stall)"


class SlowPreview:
    """The preview decoder, slowed down so that decoding falls behind the packets."""

    name = "preview"

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.inner = PreviewDecoder()
        self.calls: list[list[str]] = []

    def decode(
        self,
        layers: LayerSet,
        *,
        on_step: Callable[..., None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> np.ndarray:
        self.calls.append(layers.present())
        time.sleep(self.delay_s)
        return self.inner.decode(layers)


async def _receive_all(
    out: Path | None, *, layer_worker: bool, decoder: Any = None, repeat: int = 1, layer_threads: int = 2
) -> tuple[ReceiveSession, list[Stage], list[Event], list[int]]:
    results = encoded_samples()
    a, b = memory_pair()
    rx = ReceiveSession(
        b, decoder=decoder, out_dir=out, layer_worker=layer_worker, image_timeout=30.0, layer_threads=layer_threads
    )
    stages: list[Stage] = []
    events: list[Event] = []
    rx.add_listener(stages.append)
    rx.add_event_listener(events.append)
    async with rx:
        async with SendSession(a, profile="webrtc", rate_bps=0, stream_id=5) as tx:
            ids = [(await tx.send_image(r.image)).image_id for _ in range(repeat) for r in results]
        await rx.run(count=len(ids), until_closed=False)
    return rx, stages, events, ids


async def test_decoding_behind_coalesces_stages_but_never_drops_a_final(tmp_path: Path) -> None:
    dec = SlowPreview(0.05)
    rx, stages, events, ids = await _receive_all(tmp_path, layer_worker=True, decoder=dec, repeat=3)
    want = file_decodes(encoded_samples())
    finals = [s for s in stages if s.final]
    assert sorted(s.image_id for s in finals) == sorted(ids), "exactly one final stage per image"
    for s in finals:
        ref = want[s.image_id % len(want)]
        assert np.array_equal(s.rgb, ref), f"image {s.image_id}: the final differs from the file decode"
        assert np.array_equal(read_png(tmp_path / "5" / str(s.image_id) / "final.png"), ref)
        assert s.layers == ("semantic", "structure", "texture")
    # per-layer events are all still emitted, in order, for every image
    for iid in ids:
        fams = [e.family for e in events if isinstance(e, LayerComplete) and e.image_id == iid]
        assert sorted(fams) == ["semantic", "structure", "texture"], f"image {iid}: {fams}"
        order = [type(e).__name__ for e in events if getattr(e, "image_id", None) == iid]
        assert order[-1] == "ImageReady" and order.count("ImageReady") == 1
    changed = sum(1 for e in events if type(e).__name__ == "LayerSetChanged")
    assert len(dec.calls) < changed + len(ids), "stages are coalesced: fewer decodes than layer-set changes"
    assert rx.summary.stages <= len(dec.calls)
    assert rx.summary.images == len(ids) and rx.summary.complete == len(ids) and rx.summary.rejected == 0


@pytest.mark.parametrize("layer_threads", [1, 2])
async def test_layer_worker_outputs_equal_the_sequential_path(tmp_path: Path, layer_threads: int) -> None:
    outputs = {}
    for layer_worker in (True, False):
        rx, stages, events, ids = await _receive_all(
            tmp_path / str(layer_worker), layer_worker=layer_worker, layer_threads=layer_threads
        )
        finals = {s.image_id: s for s in stages if s.final}
        assert sorted(finals) == sorted(ids)
        ready = {e.image_id: e for e in events if isinstance(e, ImageReady)}
        outputs[layer_worker] = (
            {iid: s.rgb for iid, s in finals.items()},
            {iid: (e.complete, e.layers.present(), e.time) for iid, e in ready.items()},
            {(iid, f): a.complete for iid in ids for f, a in rx.records[("5", iid)].layers.items()},
        )
    (rgb_a, ready_a, layers_a), (rgb_b, ready_b, layers_b) = outputs[True], outputs[False]
    assert rgb_a.keys() == rgb_b.keys() and all(np.array_equal(rgb_a[k], rgb_b[k]) for k in rgb_a)
    assert {k: v[:2] for k, v in ready_a.items()} == {k: v[:2] for k, v in ready_b.items()}
    assert layers_a == layers_b


class ThreadNoting(PreviewDecoder):
    """The preview decoder, noting the thread each decode ran on; `light` as given."""

    def __init__(self, light: bool) -> None:
        super().__init__("fast")
        self.light = light
        self.threads: list[str] = []

    def decode(self, layers: LayerSet, **kw: Any) -> np.ndarray:
        self.threads.append(threading.current_thread().name)
        return super().decode(layers, **kw)


@pytest.mark.parametrize(("light", "layer_worker"), [(True, True), (False, True), (True, False)])
async def test_light_decoders_run_on_the_layer_workers(light: bool, layer_worker: bool) -> None:
    dec = ThreadNoting(light)
    rx, stages, _events, ids = await _receive_all(None, layer_worker=layer_worker, decoder=dec, layer_threads=2)
    assert sorted(s.image_id for s in stages if s.final) == sorted(ids)
    assert dec.threads and not any(t == "MainThread" for t in dec.threads), "decodes never run on the loop"
    on_workers = [t for t in dec.threads if t.startswith("layercast-layers")]
    if light and layer_worker:  # one pool of layer_threads threads for all the session's CPU work
        assert on_workers == dec.threads and 1 <= len(set(on_workers)) <= 2, dec.threads
    else:  # threads of their own: a slow decoder never holds up layer decoding
        assert not on_workers, dec.threads
    assert rx.summary.complete == len(ids) and rx.summary.rejected == 0


def _job(nbytes: int, i: int) -> LayerDecodeJob:
    return LayerDecodeJob("c", 1, i, LayerKind.TEXTURE, pb.LayerDescriptor(), [b"x" * nbytes], 0.0)


def test_split_jobs_balances_estimated_cost_and_keeps_batch_order() -> None:
    sizes = [40, 430, 45, 40, 380, 45, 40, 0, 45]  # coded bytes: prompts, edge maps, colormaps
    batch = [_job(n, i) for i, n in enumerate(sizes)]
    parts = split_jobs(batch, 2)
    assert sorted(i for p in parts for i in p) == list(range(len(batch))), "every job once"
    assert all(p == sorted(p) for p in parts), "each thread decodes its share in batch order"
    load = [sum(64 + sizes[i] for i in p) for p in parts]
    assert {1, 4} & set(parts[0]) and {1, 4} & set(parts[1]), "the two edge-sized jobs go to different threads"
    assert max(load) - min(load) <= 64 + 430, load
    assert split_jobs(batch, 1) == [list(range(9))]
    assert split_jobs(batch[:1], 4) == [[0]], "never an empty share"
    assert split_jobs([], 2) == [[]]
    with pytest.raises(InputError, match="layer_threads"):
        ReceiveSession(layer_threads=0)


async def test_a_flood_past_the_open_image_limit_waits_for_the_layer_worker(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """More images than the assembler holds open, sent unpaced while layer decodes are slow: readers wait
    for the layer worker instead of pushing out images whose layers are still decoding, so no layer is
    decoded on the event loop's thread, and every image is complete."""
    import threading

    real_run = LayerDecodeJob.run
    threads: list[str] = []

    def slow_run(self: LayerDecodeJob) -> Any:
        threads.append(threading.current_thread().name)
        time.sleep(0.002)
        return real_run(self)

    monkeypatch.setattr(LayerDecodeJob, "run", slow_run)
    samples = [r.image for r in encoded_samples()]
    n = 24
    a, b = memory_pair()
    rx = ReceiveSession(
        b, decoder=PreviewDecoder("fast"), out_dir=tmp_path, assembler_options={"max_images": 4}, layer_threads=2
    )
    async with rx:
        async with SendSession(a, profile="webrtc", stream_id=7) as tx:
            for i in range(n):
                await tx.send_image(samples[i % len(samples)])
        await rx.run(until_closed=True)
    assert rx.summary.images == rx.summary.complete == n and rx.summary.rejected == 0
    # on the loop: at most the layers of the last 2 images, out when the input ended (decoded in place, so the
    # worker's copy is one more); reading on, without waiting, decodes ~half the layers twice (71 of 143)
    on_loop = sum(t == threading.main_thread().name for t in threads)
    assert on_loop <= 6 and len(threads) <= 3 * n + on_loop, (on_loop, len(threads))
    workers = {t for t in threads if t.startswith("layercast-layers")}
    assert len(workers) == 2, f"both layer threads decode: {workers}"
