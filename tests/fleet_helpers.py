"""Real processes for fleet tests: `layercast send --watch` cameras and `layercast receive` workers,
started as the deploy files start them, killed with SIGKILL by their own pid, restarted; a persistent
Mosquitto; distinct test images."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.mqtt_broker import Broker, start_broker
from tests.session_helpers import sample_paths

PERSISTENT = "persistence true\npersistence_location {dir}/\nautosave_interval 1\n"
"""Extra broker config: a persisted store, saved every second and on shutdown (as deploy/ configures)."""


def persistent_broker(tmp_path: Path, **kwargs: Any) -> Broker:
    """A Mosquitto on a free loopback port whose sessions and queued messages survive its restart."""
    store = tmp_path / "mosquitto-store"
    store.mkdir(exist_ok=True)
    return start_broker(tmp_path, extra_conf=PERSISTENT.format(dir=store), **kwargs)


def make_images(folder: Path, count: int, *, start: int = 0, size: int = 160) -> list[Path]:
    """`count` distinct JPEG images (sample crops, flips and tints) written as temp files and renamed
    into `folder` (as a camera would), named img-<n>.jpg from `start`."""
    from PIL import Image, ImageOps

    folder.mkdir(parents=True, exist_ok=True)
    samples = sample_paths()
    out = []
    for n in range(start, start + count):
        with Image.open(samples[n % len(samples)]) as im:
            rgb = im.convert("RGB")
        w, h = rgb.size
        k = n // len(samples)
        rgb = rgb.crop((k * 7 % (w // 4), k * 5 % (h // 4), w - k * 3 % (w // 4), h)).resize((size, size))
        if k % 2:
            rgb = ImageOps.mirror(rgb)
        tint = Image.new("RGB", rgb.size, ((37 * n) % 256, (91 * n) % 256, (53 * n) % 256))
        rgb = Image.blend(rgb, tint, 0.15)
        tmp = folder / f".img-{n}.jpg.part"
        rgb.save(tmp, format="JPEG", quality=90)
        path = folder / f"img-{n}.jpg"
        os.replace(tmp, path)
        os.utime(path, (time.time() - 10, time.time() - 10))  # settled: no need to wait --settle
        out.append(path)
    return out


@dataclass
class Proc:
    """A `layercast` process with its JSON-lines stdout collected into `events`."""

    argv: list[str]
    log: Path
    env: dict[str, str] | None = None
    proc: subprocess.Popen[bytes] | None = None
    runs: int = 0
    stdout_files: list[Path] = field(default_factory=list)

    def start(self) -> None:
        self.runs += 1
        out = self.log.with_name(f"{self.log.name}.{self.runs}.out")
        err = self.log.with_name(f"{self.log.name}.{self.runs}.err")
        self.stdout_files.append(out)
        with open(out, "wb") as fo, open(err, "wb") as fe:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "layercast", *self.argv],
                stdout=fo,
                stderr=fe,
                env={**os.environ, **(self.env or {})},
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL by its own pid (no chance to clean up)."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=10)

    def events(self) -> list[dict[str, Any]]:
        """JSON lines printed so far, over every run."""
        docs = []
        for path in self.stdout_files:
            if path.exists():
                for line in path.read_text(errors="replace").splitlines():
                    if line.startswith("{"):
                        try:
                            docs.append(json.loads(line))
                        except ValueError:
                            continue
        return docs

    def stderr(self) -> str:
        return "".join(
            p.with_suffix(".err").read_text(errors="replace")
            for p in self.stdout_files
            if p.with_suffix(".err").exists()
        )


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, diag: Callable[[], str] = lambda: "") -> None:
    """Poll `predicate` every 0.1 s until true; AssertionError naming `what` (and `diag()`) after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}\n{diag()}")


def finals(out: Path) -> dict[str, set[int]]:
    """{camera: {image ids with a final.png}} under a receiver's output folder."""
    found: dict[str, set[int]] = {}
    if out.exists():
        for final in out.glob("*/*/final.png"):
            found.setdefault(final.parent.parent.name, set()).add(int(final.parent.name))
    return found


def sender_argv(
    url: str, watch: Path, spool: Path, password_file: Path | None = None, extra: Sequence[str] = ()
) -> list[str]:
    """`layercast send --watch` as deploy/systemd/layercast-sender@.service runs it (small test images)."""
    argv = ["send", "--watch", str(watch), "--spool", str(spool), "--to", url, "--link", "mqtt", "--json"]
    argv += ["--poll", "0.2", "--timeout", "5", "--max-bytes", "400", *extra]
    if password_file is not None:
        argv += ["--password-file", str(password_file)]
    return argv
