"""A fleet on real parts: 4 camera processes (`send --watch`, started in the same instant, no stream ids,
credentials from files) -> a persistent Mosquitto with ACL -> 2 worker processes (`receive`) in one
shared-subscription group with fixed client ids and persistent sessions. Mid-run the broker is stopped
and restarted, and one worker is SIGKILLed and restarted with the same client id. Every image must come
out, once, in its own camera's folder, pixel-equal to its own source's decode (no layers merged)."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from layercast.cli import build_parser
from layercast.cli_options import encoder_from_args
from layercast.common.transport.memory import memory_pair
from layercast.sender.session import SendSession
from tests.fleet_helpers import Proc, finals, make_images, persistent_broker, sender_argv, wait_for
from tests.session_helpers import file_decodes, read_png

pytestmark = [pytest.mark.mqtt, pytest.mark.slow, pytest.mark.timeout(480)]

CAMERAS = ("cam1", "cam2", "cam3", "cam4")
PER_PHASE = 4
"""Images each camera gets before the broker outage, during it, and while a worker is down."""
ACL = "user worker\ntopic read layercast/#\n\npattern write layercast/%u/#\n"


def _reference(camera: str, source: Path, image_id: int) -> np.ndarray:
    """What the receiver must write for `source` sent by `camera` as `image_id`: the sender's own encode
    (its byte budget counts the ids every packet carries), file-decoded."""
    args = build_parser().parse_args(["send", "--to", "mqtt://x/layercast/c", "--link", "mqtt", "--max-bytes", "400"])
    session = SendSession(memory_pair()[0], profile="mqtt", camera=camera)
    (ref,) = file_decodes([session.encode_file(source, encoder_from_args(args), image_id=image_id)])
    return ref


def test_fleet_survives_broker_restart_and_worker_sigkill(tmp_path: Path) -> None:
    users = {"worker": "worker-pw", **{c: f"{c}-pw" for c in CAMERAS}}
    broker = persistent_broker(tmp_path, users=users, acl=ACL)
    secrets = tmp_path / "secrets"
    secrets.mkdir(mode=0o700)
    for user, pw in users.items():
        (secrets / f"{user}.pw").write_text(pw + "\n")
    out = tmp_path / "out"
    base = f"mqtt://{{user}}@127.0.0.1:{broker.port}/layercast"
    workers = [
        Proc(
            [
                "receive",
                "--on",
                base.format(user="worker") + f"?group=workers&client_id=w{n}&session_expiry=600",
                "--out",
                str(out),
                "--password-file",
                str(secrets / "worker.pw"),
                "--json",
            ],
            tmp_path / f"worker{n}",
        )
        for n in (1, 2)
    ]
    watch = {c: tmp_path / "incoming" / c for c in CAMERAS}
    cameras = {
        c: Proc(
            sender_argv(f"{base.format(user=c)}/{c}", watch[c], tmp_path / "spool" / c, secrets / f"{c}.pw"),
            tmp_path / c,
        )
        for c in CAMERAS
    }
    sources: dict[str, list[Path]] = {c: [] for c in CAMERAS}

    def add_images(phase: int) -> None:
        for k, c in enumerate(CAMERAS):  # distinct content per camera and phase
            sources[c] += make_images(watch[c], PER_PHASE, start=100 * k + PER_PHASE * phase)

    def total() -> int:
        return sum(len(v) for v in finals(out).values())

    def diag() -> str:
        parts = [f"finals: { {c: sorted(v) for c, v in finals(out).items()} }"]
        for name, p in cameras.items():
            events = p.events()
            counts = {k: sum(e.get("event") == k for e in events) for k in ("queued", "sent", "link_down", "failed")}
            parts.append(f"{name}: {counts}; last: {events[-3:] if events else None}")
        for name, p in [*cameras.items(), ("worker1", workers[0]), ("worker2", workers[1])]:
            parts.append(f"--- {name} ---\n{p.stderr()[-1500:]}")
        return "\n".join(parts) + f"\n--- broker ---\n{broker.log()[-3000:]}"

    expected = len(CAMERAS) * PER_PHASE * 3
    try:
        for w in workers:
            w.start()
        add_images(0)
        for cam in cameras.values():  # the same instant: clock-based first ids would collide between cameras
            cam.start()
        wait_for(lambda: total() >= PER_PHASE, 60, "the first images", diag)
        broker.stop()  # outage: cameras keep queueing in their spools, workers reconnect
        add_images(1)
        time.sleep(2.0)
        broker.start()
        wait_for(lambda: total() >= 2 * PER_PHASE * len(CAMERAS) - 4, 150, "images after the broker restart", diag)
        workers[0].kill()  # SIGKILL a worker mid-run; its session (and queued messages) stay on the broker
        add_images(2)
        time.sleep(1.0)
        workers[0].start()
        wait_for(lambda: total() >= expected, 150, f"all {expected} images", diag)
        # the restarted worker may still be starting (imports, models) when the other one has finished
        # everything: SIGTERM it once it says it is subscribed (its signal handlers are in place by then)
        wait_for(lambda: workers[0].stderr().count("subscribed to") >= 2, 60, "worker1 subscribed again", diag)
        for proc in cameras.values():
            assert proc.terminate() == 0, proc.stderr()[-2000:]
        for w in workers:
            assert w.terminate() == 0, w.stderr()[-2000:]
    finally:
        for proc in [*cameras.values(), *workers]:
            if proc.proc is not None and proc.proc.poll() is None:
                proc.kill()
        broker.stop()

    got = finals(out)
    assert set(got) == set(CAMERAS), f"folders {sorted(got)}: only camera names"
    summaries: list[dict[str, Any]] = [e for w in workers for e in w.events() if "duplicates" in e]
    duplicates = sum(s["duplicates"] for s in summaries)
    for c, proc in cameras.items():
        queued = {e["image_id"]: Path(e["source"]) for e in proc.events() if e["event"] == "queued"}
        sent = Counter(e["image_id"] for e in proc.events() if e["event"] == "sent")
        assert len(queued) == 3 * PER_PHASE and set(sent) == set(queued) == got[c], (c, sorted(queued), got[c])
        assert set(sent.values()) == {1}, f"{c}: an acknowledged image was sent again: {sent}"
        for iid, source in queued.items():
            assert np.array_equal(read_png(out / c / str(iid) / "final.png"), _reference(c, source, iid)), (c, iid)
    ids = {c: sorted(v) for c, v in got.items()}
    print(json.dumps({"images": expected, "duplicates_dropped": duplicates, "ids": ids}))
