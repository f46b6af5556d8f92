"""Fleet throughput: several camera processes -> one Mosquitto -> 1 or 2 worker processes sharing the work.

Each camera is a `bench.remote_sender` process publishing pre-encoded images unpaced as `camK` (the
`mqtt` profile: one bundled QoS 1 message per image); each worker is a `layercast receive` process in
one MQTT 5 shared-subscription group, with a fixed client id and a persistent session, acknowledging
each message once its image's final.png is written (preview decoder), all writing to one output
folder. The broker persists as deploy/ configures it. images/s = (images - 1) / (last final.png -
first final.png), from the files' modification times, so process start-up is not counted. Every worker
count runs the same images in the same way, in the same bench run, so 1 worker is the baseline.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from layercast.bench.stream import median_run, mosquitto

log = logging.getLogger(__name__)


def _finals(out: Path) -> list[float]:
    times = []
    for cam in out.iterdir() if out.exists() else []:
        if cam.is_dir():
            for img in os.scandir(cam):
                try:
                    times.append(os.stat(os.path.join(img.path, "final.png")).st_mtime)
                except OSError:
                    continue
    return times


def _one(lcs: Path, port: int, cameras: int, per_camera: int, workers: int, tag: str) -> dict[str, Any]:
    total = cameras * per_camera
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        procs = []
        try:
            for n in range(workers):
                # a group of its own per run: the persistent sessions of an earlier run's (stopped) workers
                # would otherwise stay members of the group and be queued their share of the messages
                url = f"mqtt://127.0.0.1:{port}/layercast?group=fleet-{tag}&client_id={tag}-w{n}&session_expiry=60"
                err = open(Path(tmp) / f"w{n}.err", "wb")  # noqa: SIM115 - closed with the process
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "layercast", "receive", "--on", url, "--out", str(out)],
                        stdout=subprocess.DEVNULL,
                        stderr=err,
                    )
                )
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # every worker subscribed
                logs = [(Path(tmp) / f"w{n}.err").read_text(errors="replace") for n in range(workers)]
                if all("subscribed to" in text for text in logs):
                    break
                time.sleep(0.1)
            senders = [
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "layercast.bench.remote_sender",
                        str(lcs),
                        f"mqtt://127.0.0.1:{port}/layercast/cam{k}",
                        str(per_camera),
                        "mqtt",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                for k in range(cameras)
            ]
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and len(_finals(out)) < total:
                time.sleep(0.1)
            if len(_finals(out)) < total:
                log.warning("fleet bench: %d of %d images finished in 120 s", len(_finals(out)), total)
            for s in senders:
                s.wait(timeout=30)
            times = sorted(_finals(out))
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
        span = times[-1] - times[0] if len(times) > 1 else 0.0
        return {
            "workers": workers,
            "cameras": cameras,
            "images": total,
            "finished": len(times),
            "seconds": round(span, 3),
            "images_per_s": round((len(times) - 1) / span, 1) if span > 0 else None,
        }


def run(
    encoded: Sequence[Any], *, cameras: int = 4, per_camera: int = 50, workers: Sequence[int] = (1, 2), repeats: int = 3
) -> dict[str, Any]:
    """Fleet images/s for each worker count (median of `repeats` runs, every run's rate in `runs`)."""
    from layercast.proto import framing

    result: dict[str, Any] = {"cpus": os.cpu_count(), "cameras": cameras, "per_camera": per_camera}
    with tempfile.TemporaryDirectory() as tmp, mosquitto(persistent=True) as port:
        if port is None:
            return {"skipped": "mosquitto binary not found (Debian package mosquitto)"}
        lcs = Path(tmp) / "images.lcs"
        images = [dataclasses.replace(r.image, image_id=i) for i, r in enumerate(encoded)]
        lcs.write_bytes(framing.images_to_container(images))
        for w in workers:
            runs = [_one(lcs, port, cameras, per_camera, w, f"r{w}-{i}") for i in range(max(1, repeats))]
            best = median_run(runs)
            result[f"{w}_workers"] = {**best, "median": statistics.median(best["runs"])}
    return result


def format_lines(result: dict[str, Any]) -> list[str]:
    """Table lines for the stream section."""
    if "skipped" in result:
        return [f"(d) fleet: skipped: {result['skipped']}"]
    lines = [
        f"(d) fleet: {result['cameras']} camera processes x {result['per_camera']} images -> persistent Mosquitto ->"
        f" workers in one shared-subscription group (preview decoder, acks after final.png, {result['cpus']} CPUs)"
    ]
    for key in sorted(k for k in result if k.endswith("_workers")):
        r = result[key]
        runs = ", ".join(f"{x:g}" for x in r["runs"])
        lines.append(
            f"    {r['workers']} worker(s)   {r['images_per_s']!s:>6} images/s median (runs {runs};"
            f" {r['finished']}/{r['images']} finished)"
        )
    return lines
