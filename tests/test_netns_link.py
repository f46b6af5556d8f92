"""A real kernel link: sender and receiver in two network namespaces joined by a veth pair.

The link has a real rate limit (``tc qdisc tbf`` on the sender's egress) and real random loss (an
nftables ``numgen random mod 100 < N drop`` rule on the receiver's ingress), see `tests.netns`. First
the link itself is measured (TCP throughput against the tbf cap, UDP loss against N %), then
Layercast's own ``layercast send`` / ``layercast receive`` commands stream a folder of images across
it, over MQTT (Mosquitto in the receiver's namespace) and over WebRTC (aiortc, host candidates on the
veth addresses). Delay is not emulated here (the kernel has no ``netem``); the in-process lossy-link
wrapper covers it. Needs root, ``ip netns``, tbf and nft: skipped with the reason otherwise.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.imaging import scene
from tests.netns import NetnsError, VethLink, cleanup_leftovers, missing_tools, ns_exec, veth_pair

pytestmark = [pytest.mark.netns, pytest.mark.timeout(150)]

MOSQUITTO = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")

# --- probing, once per session ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def netns_ok() -> Iterator[None]:
    """Skip (with the reason) unless namespaces, veth, tbf and nft all work here; clean up after the session."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root (ip netns add); run the netns tests as root")
    missing = missing_tools()
    if missing:
        pytest.skip(f"missing {', '.join(missing)} (Debian packages iproute2, nftables)")
    try:
        with veth_pair(rate_kbit=1000, loss_pct=1):
            pass
    except NetnsError as exc:
        pytest.skip(f"a veth link with tbf and nft loss cannot be set up here: {exc}")
    try:
        yield
    finally:
        left = cleanup_leftovers()
        assert not left, f"namespaces left behind (now removed): {left}"


# --- step 1: the link itself --------------------------------------------------------------------------------

TCP_SINK = """
import json, socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1); s.settimeout(30)
print("ready", flush=True)
c, _ = s.accept(); c.settimeout(30)
first = c.recv(65536); t0 = t1 = time.monotonic(); n = 0
while True:
    b = c.recv(65536)
    if not b:
        break
    n += len(b); t1 = time.monotonic()
print(json.dumps({"first": len(first), "bytes": n, "seconds": t1 - t0}), flush=True)
"""

TCP_SOURCE = """
import os, socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
c.sendall(os.urandom(int(sys.argv[3]))); c.shutdown(socket.SHUT_WR); c.recv(1); c.close()
"""

UDP_SINK = """
import json, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
s.bind((sys.argv[1], int(sys.argv[2]))); s.settimeout(10)
print("ready", flush=True)
seen = set()
try:
    while True:
        seen.add(int.from_bytes(s.recv(2048)[:4], "big")); s.settimeout(1.0)
except TimeoutError:
    pass
print(json.dumps({"received": len(seen)}), flush=True)
"""

UDP_SOURCE = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(int(sys.argv[3])):
    s.sendto(i.to_bytes(4, "big") + bytes(60), (sys.argv[1], int(sys.argv[2])))
    if i % 20 == 19:
        time.sleep(0.002)
"""

UDP_REFUSED = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
refused = 0
for i in range(int(sys.argv[3])):
    try:
        s.sendto(bytes(64), (sys.argv[1], int(sys.argv[2])))
    except PermissionError:
        refused += 1
print(refused)
"""


def _sink(link: VethLink, script: str, port: int) -> subprocess.Popen[str]:
    """Start a measuring sink in B; returns once it is bound."""
    proc = link.popen(
        link.ns_b, [sys.executable, "-c", script, link.addr_b, str(port)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _sink_result(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def tcp_goodput_kbit(link: VethLink, nbytes: int, port: int) -> float:
    """Send `nbytes` over TCP from A to B; B's goodput in kbit/s (after the first read, i.e. the tbf burst)."""
    sink = _sink(link, TCP_SINK, port)
    link.run(link.ns_a, [sys.executable, "-c", TCP_SOURCE, link.addr_b, str(port), str(nbytes)], timeout=60)
    res = _sink_result(sink)
    assert res["first"] + res["bytes"] == nbytes
    return float(8 * res["bytes"] / res["seconds"] / 1000)


def test_tbf_caps_tcp_throughput(netns_ok: None) -> None:
    """128 KB over TCP: ~10x the cap without tbf, and within [0.8, 1.05] x 256 kbit/s with it."""
    with veth_pair(rate_kbit=None, loss_pct=0) as link:
        free = tcp_goodput_kbit(link, 128_000, 5001)
        link.set_rate(256)
        capped = tcp_goodput_kbit(link, 128_000, 5002)
        stats = link.qdisc_stats()
    print(
        f"TCP goodput A->B: {free:.0f} kbit/s unshaped, {capped:.1f} kbit/s under tbf 256 kbit "
        f"(tbf: {stats.get('bytes')} B, {stats.get('overlimits')} overlimits, {stats.get('drops')} drops)"
    )
    assert stats["kind"] == "tbf" and stats["bytes"] >= 128_000
    assert free > 10 * 256, "the unshaped veth should be far faster than the cap"
    # goodput excludes Ethernet/IP/TCP headers (~4.5 % of a 1514 B frame); tbf counts them
    assert 0.8 * 256 <= capped <= 1.05 * 256


@pytest.mark.parametrize("loss_pct", [15])
def test_nft_drops_n_percent_of_udp(netns_ok: None, loss_pct: int) -> None:
    """2000 datagrams: every one is either received or counted by the nft rule; the drop rate is N % (5 sigma)."""
    n = 2000
    with veth_pair(rate_kbit=None, loss_pct=loss_pct) as link:
        sink = _sink(link, UDP_SINK, 5003)
        link.run(link.ns_a, [sys.executable, "-c", UDP_SOURCE, link.addr_b, "5003", str(n)], timeout=60)
        received = _sink_result(sink)["received"]
        dropped = link.dropped()["input"]
    p = loss_pct / 100
    sd = math.sqrt(n * p * (1 - p))
    print(
        f"UDP A->B: {n} sent, {received} received, {dropped} dropped by nft "
        f"({100 * dropped / n:.1f} %, expected {loss_pct} % +- {100 * 5 * sd / n:.1f})"
    )
    assert received + dropped == n, "every datagram is either received or dropped by the rule"
    assert abs(dropped - n * p) <= 5 * sd


def test_loss_both_ways_drops_what_b_sends(netns_ok: None) -> None:
    """With ``both_ways`` the output chain drops B's packets to A too (100 %: all of them, counted)."""
    with veth_pair(loss_pct=100, both_ways=True) as link:
        refused = link.run(link.ns_b, [sys.executable, "-c", UDP_REFUSED, link.addr_a, "5004", "25"])
        assert int(refused) == 25, "a locally dropped datagram fails sendto with EPERM"
        assert link.dropped() == {"input": 0, "output": 25}
        link.set_loss(0, both_ways=False)
        assert link.dropped() == {"input": 0}


def test_cleanup_after_error(netns_ok: None) -> None:
    """An error inside the block still kills the processes started in the namespaces and deletes both."""
    names: list[str] = []
    with pytest.raises(ZeroDivisionError), veth_pair(rate_kbit=64, loss_pct=10) as link:
        names += [link.ns_a, link.ns_b]
        proc = link.popen(link.ns_b, ["sleep", "60"])
        _ = 1 / 0
    assert proc.poll() is not None
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert not any(line.split()[0] in names for line in listed.splitlines() if line.strip())


# --- step 2: Layercast's own CLI across the link ------------------------------------------------------------

LAYERCAST = [sys.executable, "-m", "layercast"]
N_IMAGES = 6
RATE_KBIT = 96
"""tbf cap of the product runs; the sender paces itself a third below it (``--rate 64k``)."""
LOSS_PCT = 20
BURST = 1600
"""tbf bucket (bytes): just above one frame, so bursts above the rate are shaped, not absorbed."""
PROMPT = "a red house on a green hill under a blue sky, sun, high detail"
ENCODE = [
    "--prompt",
    PROMPT,
    "--bpp",
    "1",
    "--cells",
    "48",
    "--texture-quality",
    "95",
    "--rate",
    "64k",
]
"""Enough bytes that structure (canny) and texture span several 222 B packets, so a loss leaves them partial."""


def make_images(folder: Path, n: int = N_IMAGES) -> dict[str, tuple[int, int]]:
    """`n` different synthetic PNGs (scene seed and size vary); name -> (width, height)."""
    folder.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for i in range(n):
        w, h = 160 + 16 * i, 128 + 8 * (i % 3)
        Image.fromarray(scene(w, h, seed=i)[..., ::-1].copy()).save(folder / f"img{i}.png")
        sizes[f"img{i}.png"] = (w, h)
    return sizes


def start_broker(link: VethLink, tmp_path: Path, port: int = 1883) -> subprocess.Popen[bytes]:
    """Mosquitto inside B listening on B's veth address only (a config written here)."""
    if MOSQUITTO is None:
        pytest.skip("mosquitto binary not found (Debian package 'mosquitto')")
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} {link.addr_b}\nallow_anonymous true\npersistence false\n")
    log = (tmp_path / "mosquitto.log").open("wb")
    proc = link.popen(link.ns_b, [MOSQUITTO, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    log.close()
    link.wait_listening(link.ns_b, port, proc=proc)
    return proc


def wait_for_line(path: Path, prefix: str, proc: subprocess.Popen[Any], timeout: float = 30.0) -> str:
    """The first line of file `path` starting with `prefix` (the receiver announces where it listens)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in path.read_text().splitlines() if path.exists() else []:
            if line.startswith(prefix):
                return line
        if proc.poll() is not None:
            pytest.fail(f"receiver exited with {proc.returncode} before listening: {path.read_text()}")
        time.sleep(0.1)
    pytest.fail(f"receiver did not announce itself within {timeout} s: {path.read_text()}")


def stream_across(link: VethLink, tmp_path: Path, *, on: str, to: str, send_opts: list[str]) -> dict[str, Any]:
    """`layercast receive --on ON` in B, then `layercast send IMGS --to TO` in A; both results and the outputs."""
    sizes = make_images(tmp_path / "imgs")
    out = tmp_path / "out"
    err = tmp_path / "receive.err"
    t0 = time.monotonic()
    with err.open("w") as err_f:
        rx = link.popen(
            link.ns_b,
            [
                *LAYERCAST,
                "receive",
                "--on",
                on,
                "--out",
                str(out),
                "--count",
                str(len(sizes)),
                "--idle-timeout",
                "60",
                "--image-timeout",
                "8",
            ],
            stdout=subprocess.PIPE,
            stderr=err_f,
            text=True,
        )
    listening = wait_for_line(err, "layercast:", rx)
    t_ready = time.monotonic()
    sent = subprocess.run(
        ns_exec(link.ns_a, [*LAYERCAST, "send", str(tmp_path / "imgs"), "--to", to, "--json", *send_opts]),
        capture_output=True,
        text=True,
        timeout=90,
    )
    t_sent = time.monotonic()
    assert sent.returncode == 0, f"{sent.stdout[-2000:]}\n{sent.stderr[-3000:]}"
    rx_out, _ = rx.communicate(timeout=60)
    t_done = time.monotonic()
    assert rx.returncode == 0, f"{rx_out}\n{err.read_text()[-3000:]}"
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    result = {
        "sizes": sizes,
        "send": json.loads(sent.stdout),
        "receive": rx_out,
        "events": events,
        "out": out,
        "dropped": link.dropped().get("input", 0),
        "tbf": link.qdisc_stats(),
        "listening": listening,
        "seconds": {"receiver_up": t_ready - t0, "send": t_sent - t_ready, "receive_done": t_done - t_ready},
    }
    report(result)
    return result


def report(r: dict[str, Any]) -> None:
    """One summary line per run (visible with ``pytest -s``)."""
    ready = [e for e in r["events"] if e["event"] == "ImageReady"]
    partial = sorted({f for e in ready for f in e["partial_families"]})
    missing = sorted({f for e in ready for f in e.get("missing_families", [])})
    sec = r["seconds"]
    print(
        f"\n{r['listening']}\n  sent {len(r['send']['images'])} images, {r['send']['packets']} packets, "
        f"{r['send']['wire_bytes']} B in {r['send']['seconds']} s; nft dropped {r['dropped']} packets; "
        f"tbf passed {r['tbf'].get('bytes')} B ({r['tbf'].get('overlimits')} overlimits, {r['tbf'].get('drops')} "
        f"drops); {sum(e['complete'] for e in ready)}/{len(ready)} images complete, partial {partial}, missing "
        f"{missing}; receiver up {sec['receiver_up']:.1f} s, send {sec['send']:.1f} s, all final "
        f"{sec['receive_done']:.1f} s after start"
    )


def _key(img: dict[str, Any]) -> tuple[str, int]:
    """(camera, image id) of a sent image: receivers file it under its camera, else its stream id."""
    return (img.get("camera") or str(img["stream_id"]), img["image_id"])


def check_outputs(r: dict[str, Any]) -> dict[tuple[str, int], dict[str, set[str]]]:
    """Every sent image has stage PNGs, a final.png of its size and one ImageReady accounting for every layer
    the sender sent (complete, partial or missing); returns image -> {"complete"|"partial"|"missing": families}."""
    doc = r["send"]
    assert doc["failed"] == [] and len(doc["images"]) == len(r["sizes"])
    ready = {(e["camera"], e["image_id"]): e for e in r["events"] if e["event"] == "ImageReady"}
    assert len(ready) == len(r["sizes"]), "one ImageReady per image"
    complete: dict[tuple[str, int], set[str]] = {}
    for e in r["events"]:
        if e["event"] == "LayerComplete":
            complete.setdefault((e["camera"], e["image_id"]), set()).add(e["family"])
    outcome = {}
    for img in doc["images"]:
        key = _key(img)
        folder = r["out"] / key[0] / str(key[1])
        assert sorted(folder.glob("stage-*.png")), f"no stage for {img['name']} in {folder}"
        with Image.open(folder / "final.png") as final:
            assert final.size == r["sizes"][Path(img["name"]).name]
        assert key in ready, f"no ImageReady for {img['name']}"
        got = {
            "complete": complete.get(key, set()),
            "partial": set(ready[key]["partial_families"]),
            "missing": set(ready[key].get("missing_families", [])),
        }
        for layer in img["layers"]:
            assert any(layer["family"] in fams for fams in got.values()), f"{layer['family']} of {img['name']}"
        outcome[key] = got
    assert r["tbf"]["bytes"] >= doc["wire_bytes"], "the packets crossed the shaped veth"
    assert r["dropped"] > 0, "the nft rule dropped packets on the way"
    return outcome


def sent_families(r: dict[str, Any]) -> dict[tuple[str, int], set[str]]:
    """Image -> the layer families the sender reported sending."""
    return {_key(i): {x["family"] for x in i["layers"]} for i in r["send"]["images"]}


def test_cli_over_mqtt_across_lossy_link(netns_ok: None, tmp_path: Path) -> None:
    """MQTT (TCP): the kernel's loss costs retransmissions only, so every layer sent arrives complete."""
    with veth_pair(rate_kbit=RATE_KBIT, loss_pct=LOSS_PCT, burst=BURST) as link:
        start_broker(link, tmp_path)
        for attempt in range(3):  # ~15 TCP packets cross the rule: at 20 % loss none is dropped ~4 % of runs
            r = stream_across(
                link,
                tmp_path / str(attempt),
                on=f"mqtt://{link.addr_b}:1883/layercast",
                to=f"mqtt://{link.addr_b}:1883/layercast/cam1",
                send_opts=["--link", "mqtt", *ENCODE],
            )
            if r["dropped"]:
                break
    outcome = check_outputs(r)
    for key, families in sent_families(r).items():
        assert outcome[key]["complete"] >= families and not outcome[key]["partial"], (key, outcome[key])
    assert not [e for e in r["events"] if e["event"] in ("LayerPartial", "PacketRejected")]


def test_cli_over_webrtc_across_lossy_link(netns_ok: None, tmp_path: Path) -> None:
    """WebRTC (UDP/SCTP): texture goes unreliably and without FEC, so the kernel's loss leaves layers partial."""
    port = 8443
    with veth_pair(rate_kbit=RATE_KBIT, loss_pct=LOSS_PCT, burst=BURST) as link:
        r = stream_across(
            link,
            tmp_path,
            on=f"webrtc://:{port}",
            to=f"webrtc://{link.addr_b}:{port}",
            send_opts=["--link", "lora", "--timeout", "45", "--fec", "semantic=3,structure=0.25,texture=0", *ENCODE],
        )
    outcome = check_outputs(r)
    assert all("semantic" in got["complete"] for got in outcome.values()), "the reliable channel delivers semantic"
    hit = {key: got for key, got in outcome.items() if got["partial"] or got["missing"]}
    assert hit, "20 % loss on ~40 unprotected texture packets leaves some layer partial"
    assert [e for e in r["events"] if e["event"] == "LayerPartial"], "the log names the partial layers"
