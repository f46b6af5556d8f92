"""Concurrent decodes (threads) on one SD decoder give exactly the sequential results, for every scheduler;
an interrupted decode never changes another. Tiny random-weight models, CPU."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pytest

pytest.importorskip("diffusers")
torch = pytest.importorskip("torch")

from layercast.common.types import Colormap, EdgeMap, LayerSet, Prompt  # noqa: E402
from layercast.proto import pb  # noqa: E402
from layercast.receiver.models import SCHEDULERS, SDConfig, make_scheduler  # noqa: E402
from layercast.receiver.sd import SDDecoder, load_decoder  # noqa: E402
from tests import tiny_models  # noqa: E402

STEPS = 2


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SDDecoder]:
    """One load of every tiny model; the decoders under test are built on its modules."""
    root = tmp_path_factory.mktemp("tiny-sd-conc")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bit-exact comparisons; the tiny models are overhead-bound anyway
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        cfg = SDConfig(
            model=str(tiny_models.save_tiny_sd(root / "sd")),
            controlnets={"canny": str(tiny_models.save_tiny_controlnet(root / "cn", seed=1))},
            adapters={
                "sketch": str(tiny_models.save_tiny_adapter(root / "ad-sketch", in_channels=1, seed=2)),
                "color": str(tiny_models.save_tiny_adapter(root / "ad-color", in_channels=3, seed=3)),
            },
            steps=STEPS,
            device="cpu",
        )
        yield load_decoder(cfg)
    torch.set_num_threads(threads)


def decoders(loaded: SDDecoder, scheduler: str, pipelines: int) -> tuple[SDDecoder, SDDecoder]:
    """(ControlNet decoder, adapter-only decoder) with `scheduler`, sharing the loaded weights."""
    pipe = loaded.base
    pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config)  # the slots' template
    cfg = replace(loaded.config, scheduler=scheduler, pipelines=pipelines)
    color = {"color": loaded.adapters["color"]}
    cn = SDDecoder(cfg, pipe, dict(loaded.controlnets), color, "cpu", torch.float32)
    ad = SDDecoder(cfg, pipe, {}, {"sketch": loaded.adapters["sketch"], **color}, "cpu", torch.float32)
    return cn, ad


def header(seed: int) -> pb.ImageHeader:
    return pb.ImageHeader(width=64, height=64, seed=seed)


def edges(kind: int) -> EdgeMap:
    e = np.zeros((32, 32), dtype=bool)
    if kind == 0:
        e[4:28, 8] = True
        e[16, 4:28] = True
    else:
        e[6:26, 6:26] = np.eye(20, dtype=bool)
        e[24, 2:30] = True
    known = np.zeros((32, 32), dtype=bool)
    if kind == 0:
        known[:16] = True  # unknown bottom stripes
    else:
        known[:, :20] = True
    return EdgeMap(e, known)


def colormap(seed: int) -> Colormap:
    return Colormap(np.random.default_rng(seed).integers(0, 256, (4, 4, 3), dtype=np.uint8))


@dataclass
class Job:
    decoder: SDDecoder
    layers: LayerSet
    label: str
    stop_after: int | None = None  # steps after which should_stop turns True


def jobs(cn: SDDecoder, ad: SDDecoder) -> list[Job]:
    return [
        Job(cn, LayerSet(header(1), Prompt("a cat")), "txt2img"),
        Job(cn, LayerSet(header(2), Prompt("a dog"), edges(0)), "controlnet:canny"),
        Job(cn, LayerSet(header(3), Prompt("a red cat"), edges(1)), "controlnet:canny"),
        Job(cn, LayerSet(header(4), Prompt("a cat"), edges(1), colormap(1)), "controlnet:canny+adapter:color"),
        Job(ad, LayerSet(header(6), Prompt("a dog"), edges(1), colormap(2)), "adapter:sketch+color"),
    ]


def run(job: Job) -> tuple[np.ndarray, Any]:
    steps: list[int] = []

    def on_step(step: int, total: int, preview: np.ndarray | None) -> None:
        steps.append(step)
        time.sleep(0.002)  # interleave the threads' steps

    stop: Callable[[], bool] | None = None
    if job.stop_after is not None:
        limit = job.stop_after
        stop = lambda: len(steps) >= limit  # noqa: E731
    return job.decoder.decode_with_info(job.layers, on_step=on_step, should_stop=stop)


def run_concurrently(batch: list[Job]) -> list[tuple[np.ndarray, Any]]:
    barrier = threading.Barrier(len(batch))
    out: list[Any] = [None] * len(batch)

    def work(i: int) -> None:
        barrier.wait()
        try:
            out[i] = run(batch[i])
        except BaseException as e:
            out[i] = e

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(batch))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    errors = [r for r in out if isinstance(r, BaseException)]
    assert not errors, f"concurrent decodes failed: {errors!r}"
    return out


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
def test_concurrent_decodes_equal_sequential(loaded: SDDecoder, scheduler: str) -> None:
    cn, ad = decoders(loaded, scheduler, pipelines=2)
    batch = jobs(cn, ad)
    sequential = [run(j) for j in batch]
    for (img, info), job in zip(sequential, batch, strict=True):
        assert info.plan.label == job.label and img.shape == (64, 64, 3)
    # All at once (two runs per decoder in flight, more queued), plus an interrupted copy of a masked job.
    stopped = Job(cn, LayerSet(header(9), Prompt("a dog"), edges(1)), "controlnet:canny", stop_after=1)
    concurrent = run_concurrently([*batch, stopped])
    for (img, info), (ref, ref_info), job in zip(concurrent[:-1], sequential, batch, strict=True):
        assert info.plan.label == job.label and info.steps == ref_info.steps
        assert np.array_equal(img, ref), f"{scheduler} {job.label} seed {job.layers.seed}: differs when concurrent"
    assert concurrent[-1][1].steps == 1
    cn.close()
    ad.close()


@pytest.mark.parametrize("pipelines", [1, 2])
def test_interrupting_one_decode_never_changes_another(loaded: SDDecoder, pipelines: int) -> None:
    cn, _ = decoders(loaded, "euler", pipelines=pipelines)
    b = Job(cn, LayerSet(header(2), Prompt("a dog"), edges(0)), "controlnet:canny")
    ref, ref_info = run(b)
    assert ref_info.steps == STEPS
    for stop_after in (1, STEPS):  # stop after the first step, and at the last one
        a = Job(cn, LayerSet(header(7), Prompt("a cat"), edges(1)), "controlnet:canny", stop_after=stop_after)
        for order in ([a, b], [b, a]):
            results = dict(zip(map(id, order), run_concurrently(order), strict=True))
            (_, ia), (rb, ib) = results[id(a)], results[id(b)]
            assert ia.steps == stop_after and ib.steps == STEPS
            assert np.array_equal(rb, ref), f"interrupting A (after {stop_after}) changed B"
    # a run after an interrupted one on the same pipeline starts clean
    run(Job(cn, b.layers, b.label, stop_after=1))
    img, info = run(b)
    assert info.steps == STEPS and np.array_equal(img, ref)
    cn.close()


def test_last_info_is_per_thread(loaded: SDDecoder) -> None:
    cn, _ = decoders(loaded, "ddim", pipelines=2)
    seen: dict[str, Any] = {}

    def work(name: str, layers: LayerSet) -> None:
        cn.decode(layers)
        seen[name] = (cn.last_plan.label if cn.last_plan else None, cn.last_notes)

    layers = {
        "edges": LayerSet(header(1), Prompt("a cat"), edges(0)),
        "colour-off": LayerSet(header(2), Prompt("a cat"), None, colormap(0)),
    }
    cn.config.colour = "off"
    try:
        threads = [threading.Thread(target=work, args=item) for item in layers.items()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        cn.config.colour = "auto"
    assert seen["edges"] == ("controlnet:canny", ())
    assert seen["colour-off"][0] == "txt2img" and "colormap ignored" in seen["colour-off"][1][0]
