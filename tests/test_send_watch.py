"""Store and forward: the durable spool (crash points, ids, locking) and `layercast send --watch` as a real
process through a real Mosquitto that is stopped and restarted, with the sender SIGKILLed mid-run."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from layercast.common.errors import InputError
from layercast.sender.spool import Spool, source_key
from tests.fleet_helpers import Proc, finals, make_images, persistent_broker, sender_argv, wait_for
from tests.mqtt_broker import Broker
from tests.session_helpers import encoded_samples


def test_spool_ids_and_crash_points(tmp_path: Path) -> None:
    image = encoded_samples()[0].image
    srcs = make_images(tmp_path / "in", 3)
    keys = [source_key(p) for p in srcs]
    root = tmp_path / "spool"
    sp = Spool(root, camera="cam1", first_image_id=lambda: 100)
    e0, e1 = sp.add(srcs[0], keys[0], image), sp.add(srcs[1], keys[1], image)
    assert (e0.image_id, e1.image_id) == (100, 101) and sp.backlog == 2
    assert sp.load(e1).image_id == 101 and sp.load(e1).layers[0].units == image.layers[0].units
    with pytest.raises(InputError, match="in use by another sender"):
        Spool(root, camera="cam1")
    sp.done(e0)
    sp.close()
    with pytest.raises(InputError, match="belongs to camera 'cam1'"):
        Spool(root, camera="cam2")

    # reopened (after a restart): the journal, not the clock, gives the next id; what was sent stays sent
    sp = Spool(root, camera="cam1", first_image_id=lambda: 5)
    assert [e.image_id for e in sp.pending()] == [101]
    assert sp.knows(keys[0]) and sp.knows(keys[1]) and not sp.knows(keys[2])
    assert sp.add(srcs[2], keys[2], image).image_id == 102
    sp.close()

    # killed after journalling an id but before its outbox file was written: the source is taken again
    # under the same id, so a receiver that somehow saw it would drop the repeat
    (root / "outbox" / "102.lcs").unlink()
    sp = Spool(root, camera="cam1")
    assert [e.image_id for e in sp.pending()] == [101] and not sp.knows(keys[2])
    assert sp.add(srcs[2], keys[2], image).image_id == 102
    # a torn last journal line (killed mid-append) is ignored
    sp.close()
    with open(root / "journal.jsonl", "ab") as f:
        f.write(b'{"op":"sent","i')
    sp = Spool(root, camera="cam1")
    assert [e.image_id for e in sp.pending()] == [101, 102]
    status = sp.status()
    assert status["backlog"] == 2 and status["next_image_id"] == 103
    sp.close()


@pytest.mark.mqtt
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_send_watch_survives_sigkill_and_broker_outage(tmp_path: Path) -> None:
    """Every image is delivered once the broker is back; none is sent twice after its acknowledgement."""
    broker = persistent_broker(tmp_path)
    watch, spool, out = tmp_path / "incoming", tmp_path / "spool", tmp_path / "out"
    url = f"mqtt://127.0.0.1:{broker.port}/layercast/cam1"
    rx = Proc(["receive", "--on", f"{url}?client_id=w1&session_expiry=600", "--out", str(out)], tmp_path / "rx")
    tx = Proc(sender_argv(url, watch, spool), tmp_path / "tx")

    def diag() -> str:
        return f"--- sender ---\n{tx.stderr()[-3000:]}\n--- receiver ---\n{rx.stderr()[-3000:]}"

    def sent_ids() -> list[int]:
        return [e["image_id"] for e in tx.events() if e["event"] == "sent"]

    try:
        rx.start()
        make_images(watch, 3)
        tx.start()
        wait_for(lambda: len(finals(out).get("cam1", ())) == 3, 60, "3 images before the outage", diag)
        tx.kill()  # SIGKILL: no clean-up
        broker.stop()
        make_images(watch, 3, start=3)
        tx.start()
        wait_for(lambda: sum(e["event"] == "queued" for e in tx.events()) == 6, 30, "3 more queued", diag)
        wait_for(lambda: any(e["event"] == "link_down" for e in tx.events()), 30, "the sender to see the outage")
        assert len(sent_ids()) == 3
        tx.kill()  # killed again, in the middle of the outage, with a backlog
        tx.start()
        broker.start()
        wait_for(lambda: len(finals(out).get("cam1", ())) == 6, 90, "all 6 images after the outage", diag)
        wait_for(lambda: len(sent_ids()) == 6, 30, "the sender to count all 6 acknowledged", diag)
        assert tx.terminate() == 0  # SIGTERM: a clean stop
    finally:
        for p in (tx, rx):
            if p.proc is not None and p.proc.poll() is None:
                p.kill()
        broker.stop()
    counts = Counter(sent_ids())
    assert sorted(counts) == sorted(finals(out)["cam1"]) and set(counts.values()) == {1}, counts
    assert [e["image_id"] for e in tx.events() if e["event"] == "queued"] == sorted(counts)
    status = json.loads((spool / "status.json").read_text())
    assert status["backlog"] == 0 and status["camera"] == "cam1" and not list((spool / "outbox").iterdir())


def _replace_by_a_file(folder: Path) -> None:
    shutil.rmtree(folder)
    folder.write_bytes(b"")  # in the field: a full disk


def _back_to_a_folder(folder: Path) -> None:
    folder.unlink()
    folder.mkdir()


Fault = Callable[[Path, Broker, int], object]
CRASHES: dict[str, tuple[str, str, Fault, str, Fault]] = {
    # case: (URL options of the process that must exit, that process, what breaks, its last stderr line's
    # text, what repairs it); the callables get (tmp_path, broker, the next image's id)
    "sender: broken spool": (
        "",
        "tx",
        lambda tmp, broker, _: _replace_by_a_file(tmp / "spool" / "outbox"),
        "Not a directory",
        lambda tmp, broker, _: _back_to_a_folder(tmp / "spool" / "outbox"),
    ),
    **{
        f"{role}: lost broker without reconnect": (
            "reconnect=0",
            who,
            lambda tmp, broker, _: broker.stop(),
            "lost and reconnect is off",
            lambda tmp, broker, _: broker.start(),
        )
        for role, who in (("sender", "tx"), ("worker", "rx"))
    },
    "worker: unwritable output folder": (
        "",
        "rx",
        lambda tmp, broker, image_id: (tmp / "out" / "cam1" / str(image_id)).write_bytes(b""),  # not a folder
        "File exists",
        lambda tmp, broker, image_id: (tmp / "out" / "cam1" / str(image_id)).unlink(),
    ),
}


@pytest.mark.mqtt
@pytest.mark.timeout(180)
@pytest.mark.parametrize("case", list(CRASHES))
def test_a_service_that_cannot_go_on_exits_and_its_restart_delivers_the_image(tmp_path: Path, case: str) -> None:
    """Crash-only services: a sender whose spool cannot be written or whose transport is closed for good
    (`reconnect=0` and the broker gone), and a worker that cannot write its output, end with a one-line
    error and code 1, instead of living on without sending (or receiving) again. Nothing is lost: the
    image waits in the camera's spool, or unacknowledged in the worker's broker session; the unit restarts
    the process, and once the fault is gone the image comes out, once."""
    query, who, breaks, message, repairs = CRASHES[case]
    broker = persistent_broker(tmp_path)
    watch, spool, out = tmp_path / "incoming", tmp_path / "spool", tmp_path / "out"
    url = f"mqtt://127.0.0.1:{broker.port}/layercast/cam1"
    rx_url = f"{url}?client_id=w1&session_expiry=600" + (f"&{query}" if query and who == "rx" else "")
    rx = Proc(["receive", "--on", rx_url, "--out", str(out)], tmp_path / "rx")
    tx = Proc(sender_argv(url + (f"?{query}" if query and who == "tx" else ""), watch, spool), tmp_path / "tx")
    crashing = {"tx": tx, "rx": rx}[who]

    def diag() -> str:
        return f"--- sender ---\n{tx.stderr()[-3000:]}\n--- receiver ---\n{rx.stderr()[-3000:]}"

    try:
        rx.start()
        make_images(watch, 1)
        tx.start()
        wait_for(lambda: len(finals(out).get("cam1", ())) == 1, 60, "the first image", diag)
        (first,) = finals(out)["cam1"]
        breaks(tmp_path, broker, first + 1)
        make_images(watch, 1, start=1)
        assert crashing.proc is not None
        try:
            code = crashing.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{who} kept running ({case})\n{diag()}") from None
        assert code == 1, diag()
        last = crashing.stderr().strip().splitlines()[-1]
        assert last.startswith("layercast: error: ") and message in last, diag()
        repairs(tmp_path, broker, first + 1)
        crashing.start()
        wait_for(lambda: len(finals(out).get("cam1", ())) == 2, 60, "the second image after the restart", diag)
        assert tx.terminate() == 0 and rx.terminate() == 0
    finally:
        for p in (tx, rx):
            if p.proc is not None and p.proc.poll() is None:
                p.kill()
        broker.stop()
    sent = [e["image_id"] for e in tx.events() if e.get("event") == "sent"]
    assert len(sent) == len(set(sent)) == 2 and set(sent) == finals(out)["cam1"]
