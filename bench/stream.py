"""Streaming bench: latency over a thin lossy link, throughput over loopback MQTT and WebRTC, overhead.

    res = run(paths)            # a few seconds per part; images are encoded once, before timing
    print(format_table(res))

(a) link: images sent one after another through `memory_pair` + `LossyTransport` emulating 9.6 kbit/s,
    300 ms one-way delay (600 ms RTT) and 5 % random loss, with the `sbd` profile (340-byte packets,
    FEC) paced at 9.6 kbit/s; medians of the time from an image's first packet to its first decoded
    preview and to its final full-quality stage (complete images). Baseline: the same image as JPEG
    at quality 1, cut to the same MTU and sent through the same link simulator with selective-repeat
    ARQ (lost chunks resent one RTT after each round), in simulated time; it shows nothing until all
    of it arrived.
(b) throughput: N pre-encoded images sent unpaced by a sender in its own process (bench.remote_sender,
    as a camera on another host), timed on the receiver from the first packet until every image has its
    final preview-decoded stage; loopback Mosquitto (started on a free port when the binary exists, else
    skipped; the `mqtt` profile sends one bundled message per image) and loopback WebRTC (aiortc) with
    the `webrtc` profile (a packet per layer on per-family channels) and the `webrtc-bundle` profile
    (one reliable message per image). Each figure is the median of `repeats` runs. The receiver runs the
    preview decoder with `--preview-style fast` (`THROUGHPUT_PREVIEW`: the plain bicubic colour, ~1.5 ms per
    512x512 decode, the style for receivers of many images per second); the `webrtc` profile is also
    timed with the default edge-aware preview ("webrtc, edge-aware"; ~40 ms per decode, so it bounds
    the rate on few cores). Receiver and sender run on the event loop `layercast receive` / `send` would
    pick (`common.eventloop`: uvloop where installed); where that is uvloop, the `webrtc` profile is timed
    on asyncio's own loop as well ("webrtc, asyncio loop"), the same-run baseline. Each run also reports
    CPU per image: the receiver process's (all threads, from its setup to the end of the run) and the
    sender's over its send loop (with its edge coder warm-up).
(c) overhead at 1200-byte MTU of per-layer packets (image header on every layer) and of bundled
    packets (a whole image per packet where it fits), without FEC, with the default FEC policy, keyed,
    and in a .lcs file, for the images coded with 32-row edge stripes (what a lost packet costs) and with
    one stripe (as `layercast send` codes them when each image rides one reliable bundle). Two payloads:
    "framing" = (wire - coded) / coded, where the coded image is what the codecs produce (layer units +
    layer descriptors + image header), so framing is what travel adds (ids, fragment fields, length
    prefixes, CRC, tags, repairs); "side info" = (wire - units) / units, which also counts the codec
    parameters and the image size as overhead.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from layercast.common import eventloop

LINK = {"rate_bps": 9600.0, "delay_s": 0.3, "loss": 0.05}
"""The emulated thin link of part (a)."""
THROUGHPUT_PREVIEW = "fast"
"""`PreviewDecoder` style of the throughput receivers (part b); "clean" is the edge-aware default."""


def _encode_all(
    paths: Sequence[Path], options: Sequence[str] = (), prompts: Mapping[str, str] | None = None
) -> list[Any]:
    """`layercast encode --resize 512 OPTIONS` of each path, with `--prompt` from `prompts` (by file
    name: the images' generation prompts, as the shared manifest lists them) where it has one."""
    from layercast.cli import build_parser
    from layercast.cli_options import encoder_from_args

    args = build_parser().parse_args(["encode", "x", "-o", "x", "--resize", "512", *options])
    encoder = encoder_from_args(args)
    out = []
    for p in paths:
        given = prompts.get(p.name) if prompts and args.prompt is None else None
        out.append(encoder.encode(p, prompt=given or None))
    return out


def _median(values: Sequence[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


# --- (a) thin lossy link -----------------------------------------------------------------------------


async def _link_run(images: Sequence[Any], seed: int) -> dict[str, Any]:
    from layercast.common.transport.lossy import LinkModel
    from layercast.common.transport.memory import memory_pair
    from layercast.receiver.session import ReceiveSession
    from layercast.sender.session import SendSession

    a, b = memory_pair()
    model = LinkModel(loss=LINK["loss"], delay_s=LINK["delay_s"], rate_bps=LINK["rate_bps"], seed=seed)
    rx = ReceiveSession(b, image_timeout=2.0)
    tx = SendSession(a, profile="sbd", rate_bps=LINK["rate_bps"], link_model=model)
    async with rx, tx:
        reports = [await tx.send_image(img) for img in images]
        await tx.transport.drain()
        await asyncio.sleep(0.05)
        await rx.finish()
    first, full = [], []
    for rep in reports:
        rec = rx.records.get((str(rep.stream_id), rep.image_id))
        if rec is None:
            continue
        if rec.first_stage is not None:
            first.append(rec.first_stage - rep.started)
        if rec.complete and rec.final is not None:
            full.append(rec.final.time - rep.started)
    return {
        "images": len(reports),
        "complete": rx.summary.complete,
        "first_preview_s": _median(first),
        "full_quality_s": _median(full),
        "wire_bytes_per_image": round(statistics.mean(r.wire_bytes for r in reports), 1),
        "payload_bytes_per_image": round(statistics.mean(r.payload_bytes for r in reports), 1),
        "send_s_per_image": _median([r.duration_s for r in reports]),
    }


def jpeg_q1(rgb: np.ndarray) -> bytes:
    """The image as a baseline JPEG at the lowest quality."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=1)
    return buf.getvalue()


def arq_transfer_time(nbytes: int, *, mtu: int = 340, header: int = 12, seed: int = 0) -> float:
    """Seconds to deliver `nbytes` in MTU chunks over the part (a) link with selective-repeat ARQ
    (each round sends the missing chunks back to back; the next round starts one RTT after it)."""
    from layercast.common.transport.lossy import LinkModel, LinkSimulator

    sim = LinkSimulator(LinkModel(loss=LINK["loss"], delay_s=LINK["delay_s"], rate_bps=LINK["rate_bps"], seed=seed))
    room = mtu - header
    sizes = [min(room, nbytes - i) + header for i in range(0, nbytes, room)]
    outstanding = list(range(len(sizes)))
    t, done = 0.0, 0.0
    while outstanding:
        lost = []
        for i in outstanding:
            got = sim.submit(b"\0" * sizes[i], t)
            if got:
                done = max(done, min(d for d, _ in got))
            else:
                lost.append(i)
        outstanding = lost
        t = sim.bucket.busy_until + 2 * LINK["delay_s"]
    return done


def _rgb_of(path: Path, size: int = 512) -> np.ndarray:
    from layercast.sender.image_io import load_image, resize_rgb

    return resize_rgb(load_image(path).rgb, size)


# --- (b) throughput ----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def mosquitto(persistent: bool = False) -> Any:
    """A Mosquitto broker on a free loopback port (yields the port), or None without the binary.
    `persistent`: sessions and queued messages kept on disk, autosaved every 10 s (as deploy/)."""
    binary = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
    if binary is None:
        yield None
        return
    with tempfile.TemporaryDirectory() as tmp:
        port = _free_port()
        conf = Path(tmp) / "mosquitto.conf"
        store = f"persistence true\npersistence_location {tmp}/\nautosave_interval 10\n" if persistent else ""
        conf.write_text(
            f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 100000\n{store}"
        )
        proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", port)) == 0:
                        break
                time.sleep(0.05)
            yield port
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def _throughput(
    images: Sequence[Any],
    n: int,
    kind: str,
    port: int | None = None,
    profile: str | None = None,
    preview_style: str = THROUGHPUT_PREVIEW,
) -> dict[str, Any]:
    """Receiver in this process (preview decoder in `preview_style`), sender (bench.remote_sender) in its
    own on an event loop of the kind the receiver runs on, as a camera elsewhere would be.

    images/s = images finished / (last final stage - first packet), both on the receiver's clock.
    """
    import subprocess
    import sys
    import tempfile

    from layercast.proto import framing
    from layercast.receiver.preview import PreviewDecoder
    from layercast.receiver.session import ReceiveSession

    cpu0 = time.process_time()
    with tempfile.TemporaryDirectory() as tmp:
        lcs = Path(tmp) / "images.lcs"
        lcs.write_bytes(
            framing.images_to_container([dataclasses.replace(r.image, image_id=i) for i, r in enumerate(images)])
        )
        rx = ReceiveSession(decoder=PreviewDecoder(preview_style), image_timeout=2.0, max_decodes=2)
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(rx)
            if kind == "mqtt":
                from layercast.common.transport.mqtt import MqttConfig, MqttTransport

                rx_t = MqttTransport(MqttConfig(host="127.0.0.1", port=port, role="receive", stream="bench"))
                await stack.enter_async_context(rx_t)
                rx.add_transport(rx_t, "mqtt")
                url = f"mqtt://127.0.0.1:{port}/layercast/bench"
            else:
                from layercast.common.transport.signalling import WebRTCServer

                server = await stack.enter_async_context(WebRTCServer("127.0.0.1", 0, on_transport=rx.serve_transport))
                url = server.url
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "layercast.bench.remote_sender",
                str(lcs),
                url,
                str(n),
                profile or ("mqtt" if kind == "mqtt" else "webrtc"),
                eventloop.running_loop_name(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(rx.run(count=n, until_closed=False), 120)
            out, err = await proc.communicate()
    cpu = time.process_time() - cpu0
    recs = list(rx.records.values())
    finals = [r.final.time for r in recs if r.final is not None]
    done = len(finals)
    span = (max(finals) - min(r.first_event for r in recs)) if finals else 0.0
    sender: dict[str, Any] = {}
    if out:
        sender = json.loads(out.decode().strip().splitlines()[-1])
    elif proc.returncode:
        sender = {"error": err.decode(errors="replace")[-300:]}
    return {
        "images": n,
        "finished": done,
        "complete": rx.summary.complete,
        "seconds": round(span, 3),
        "images_per_s": round(done / span, 1) if span > 0 else None,
        "packets": rx.summary.packets,
        "stages": rx.summary.stages,
        "preview_style": preview_style,
        "loop": eventloop.running_loop_name(),
        "cpu_ms_per_image": {
            "receiver": round(1e3 * cpu / max(done, 1), 2),
            "sender": round(1e3 * sender["cpu_s"] / n, 2) if "cpu_s" in sender else None,
        },
        "sender": sender,
    }


def _datagrams(r: dict[str, Any]) -> str:
    """' in N SCTP packets' when the sender bundled its WebRTC messages (see `sctp_bundle`), else ''."""
    n = r.get("sender", {}).get("sctp_packets")
    return f" in {n} SCTP packets" if n else ""


def _repeat(repeats: int, run: Callable[[], Coroutine[Any, Any, dict[str, Any]]], loop: str = "auto") -> dict[str, Any]:
    """The run with the median images/s of `repeats` runs (each on a new event loop of kind `loop`), with
    every run's rate in `runs`."""
    return median_run([eventloop.run(run(), loop=loop) for _ in range(max(1, repeats))])


def median_run(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The result with the median `images_per_s`, with every result's rate in `runs`."""
    rates = [r["images_per_s"] or 0.0 for r in results]
    median = sorted(range(len(results)), key=lambda i: rates[i])[len(results) // 2]
    return {**results[median], "runs": rates}


# --- (c) overhead ------------------------------------------------------------------------------------


def overhead(images: Sequence[Any], mtu: int = 1200) -> dict[str, Any]:
    """Framing (+FEC) overhead over all images, as a fresh session of camera "cam1" would send them
    (its 3-byte stream id, image ids 0, 1, ...); see the module docstring for the two payload definitions."""
    from layercast.common.fec import FecPolicy
    from layercast.common.identity import camera_id
    from layercast.proto import framing
    from layercast.sender.session import plan_packets

    imgs = [dataclasses.replace(r.image, stream_id=camera_id("cam1"), image_id=i) for i, r in enumerate(images)]
    units = sum(layer.nbytes for img in imgs for layer in img.layers)
    coded = units + sum(layer.descriptor.ByteSize() for img in imgs for layer in img.layers)
    coded += sum(img.header.ByteSize() for img in imgs)

    def wire(**kw: Any) -> int:
        return sum(len(w.data) for img in imgs for w in plan_packets(img, mtu=mtu, **kw))

    seq = iter(range(1, 10**9))
    sizes = {
        "per_layer_no_fec": wire(fec=FecPolicy.none()),
        "bundled_no_fec": wire(fec=FecPolicy.none(), bundle=True),
        "default_fec": wire(fec=FecPolicy()),
        "keyed_bundled": wire(fec=FecPolicy.none(), bundle=True, key=bytes(32), next_sequence=lambda: next(seq)),
        "file_container": sum(len(framing.images_to_container([img])) - len(framing.MAGIC) for img in imgs),
    }
    return {
        "mtu": mtu,
        "unit_bytes_per_image": round(units / len(imgs), 1),
        "coded_bytes_per_image": round(coded / len(imgs), 1),
        "framing_pct": {k: round(100 * (v - coded) / coded, 2) for k, v in sizes.items()},
        "side_info_pct": {k: round(100 * (v - units) / units, 2) for k, v in sizes.items()},
        "goal_no_fec_pct": 8.0,
    }


# --- entry points ------------------------------------------------------------------------------------


def run(
    paths: list[Path],
    *,
    link_images: int = 6,
    throughput_images: int = 400,
    seed: int = 0,
    encode_options: Sequence[str] = (),
    prompts: Mapping[str, str] | None = None,
    repeats: int = 3,
    fleet_per_camera: int = 50,
) -> dict[str, Any]:
    """Run parts (a), (b), (c) and the fleet (d: `bench.fleet`, 4 cameras x `fleet_per_camera` images;
    0 skips it) on `paths` (encoded once, resized to 512, plus `layercast encode` flags in
    `encode_options`, prompts by file name from `prompts`) and return the results; each throughput run
    is repeated `repeats` times and the run with the median rate reported."""
    t = time.perf_counter()
    encoded = _encode_all(paths, encode_options, prompts)
    encode_s = time.perf_counter() - t
    result: dict[str, Any] = {"images": len(encoded), "encode_s_per_image": round(encode_s / len(encoded), 3)}
    link_set = encoded[:link_images]
    lc = asyncio.run(_link_run([r.image for r in link_set], seed))
    jpeg_sizes = [len(jpeg_q1(_rgb_of(p))) for p in paths[: len(link_set)]]
    jpeg_times = [arq_transfer_time(n, seed=seed + i) for i, n in enumerate(jpeg_sizes)]
    result["link"] = {
        **LINK,
        "profile": "sbd",
        "layercast": lc,
        "jpeg_q1": {
            "bytes_per_image": round(statistics.mean(jpeg_sizes), 1),
            "full_image_s": _median(jpeg_times),
            "lower_bound_s": _median([n * 8 / LINK["rate_bps"] + LINK["delay_s"] for n in jpeg_sizes]),
        },
    }
    tp: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "decoder": "preview",
        "preview_style": THROUGHPUT_PREVIEW,
        "repeats": repeats,
    }
    with mosquitto() as port:
        if port is None:
            tp["mqtt"] = {"skipped": "mosquitto binary not found (Debian package mosquitto)"}
        else:
            tp["mqtt"] = _repeat(repeats, lambda: _throughput(encoded, throughput_images, "mqtt", port))
    tp["webrtc"] = _repeat(repeats, lambda: _throughput(encoded, throughput_images, "webrtc"))
    tp["loop"] = eventloop.resolve("auto")
    if tp["loop"] == "uvloop":  # the same-run baseline: receiver and sender on asyncio's own loop
        tp["webrtc, asyncio loop"] = _repeat(
            repeats, lambda: _throughput(encoded, throughput_images, "webrtc"), "asyncio"
        )
    tp["webrtc-bundle"] = _repeat(
        repeats, lambda: _throughput(encoded, throughput_images, "webrtc", profile="webrtc-bundle")
    )
    tp["webrtc, edge-aware"] = _repeat(
        repeats, lambda: _throughput(encoded, throughput_images, "webrtc", preview_style="clean")
    )
    tp["goal_images_per_s"] = 200
    result["throughput"] = tp
    if fleet_per_camera:
        from layercast.bench import fleet

        result["fleet"] = fleet.run(encoded, per_camera=fleet_per_camera, repeats=repeats)
    result["overhead"] = overhead(encoded)
    # as `layercast send` codes an image that travels as one bundle: one edge stripe
    result["overhead_one_stripe"] = overhead(_encode_all(paths, [*encode_options, "--stripe-rows", "0"], prompts))
    # the same framing around bigger layers (0.15 bpp): the per-layer self-description is a fixed cost
    result["overhead_large"] = overhead(
        _encode_all(paths[:link_images], [*encode_options, "--max-bytes", "5000"], prompts)
    )
    return result


def format_table(result: dict[str, Any]) -> str:
    """A human-readable summary of `run`'s result."""
    lines = []
    link = result["link"]
    lc, jp = link["layercast"], link["jpeg_q1"]
    lines.append(
        f"(a) {link['rate_bps'] / 1000:g} kbit/s, {2e3 * link['delay_s']:.0f} ms RTT, {100 * link['loss']:.0f}% loss,"
        f" {link['profile']} profile, {lc['images']} images ({lc['complete']} complete)"
    )
    lines.append(f"    {'':<28}{'first preview':>14}{'full quality':>14}{'bytes/image':>13}")
    lines.append(
        f"    {'layercast (median s)':<28}{_fmt(lc['first_preview_s']):>14}{_fmt(lc['full_quality_s']):>14}"
        f"{lc['wire_bytes_per_image']:>13}"
    )
    lines.append(
        f"    {'JPEG q=1 + ARQ (median s)':<28}{_fmt(jp['full_image_s']):>14}{_fmt(jp['full_image_s']):>14}"
        f"{jp['bytes_per_image']:>13}"
    )
    lines.append(f"    {'JPEG q=1 lossless bound':<28}{_fmt(jp['lower_bound_s']):>14}{_fmt(jp['lower_bound_s']):>14}")
    if "fleet" in result:
        from layercast.bench import fleet

        lines += fleet.format_lines(result["fleet"])
    tp = result["throughput"]
    lines.append(
        f"(b) throughput, {tp['decoder']} decoder (--preview-style {tp.get('preview_style', '?')} unless named),"
        f" {tp['cpus']} CPUs, sender in its own process, unpaced (goal >= {tp['goal_images_per_s']}/s)"
    )
    lines.append(f"    event loop: {tp.get('loop', 'asyncio')} (receiver and sender, unless named)")
    for name in ("mqtt", "webrtc", "webrtc, asyncio loop", "webrtc-bundle", "webrtc, edge-aware"):
        r = tp.get(name)
        if r is None:
            continue
        if "skipped" in r:
            lines.append(f"    {name:<20} skipped: {r['skipped']}")
        else:
            runs = ", ".join(f"{x:g}" for x in r.get("runs", []))
            lines.append(
                f"    {name:<20} {r['images_per_s']!s:>6} images/s median (runs {runs}; median run: {r['finished']}/"
                f"{r['images']} finished, {r['complete']} complete, {r['packets']} packets{_datagrams(r)},"
                f" {r.get('stages', '?')}"
                f" stages in {r['seconds']} s;"
                f" sender {r['sender'].get('send_s', r['sender'].get('error', '?'))} s)"
            )
            cpu = r.get("cpu_ms_per_image")
            if cpu:
                lines.append(f"    {'':<20} CPU per image: receiver {cpu['receiver']} ms, sender {cpu['sender']} ms")
    ov = result["overhead"]
    lines.append(
        f"(c) overhead at {ov['mtu']} B MTU (goal <= {ov['goal_no_fec_pct']}% without FEC); % of the coded image"
        " (framing) and of the unit bytes (side info)"
    )
    lines.append(f"    {'payload/image':<46}" + "".join(f"{k:>18}" for k in ov["framing_pct"]))
    parts = [
        ("32-row stripes", ov),
        ("one stripe (as send bundles)", result.get("overhead_one_stripe")),
        ("--max-bytes 5000", result.get("overhead_large")),
    ]
    for name, part in parts:
        if not part:
            continue
        label = f"{name}: {part['coded_bytes_per_image']:g} B coded"
        lines.append(f"    {label:<46}" + "".join(f"{v:>17}%" for v in part["framing_pct"].values()))
        side = f"  side info ({part['unit_bytes_per_image']:g} B units)"
        lines.append(f"    {side:<46}" + "".join(f"{v:>17}%" for v in part["side_info_pct"].values()))
    return "\n".join(lines)


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"
