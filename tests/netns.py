"""A real kernel link for tests: two network namespaces joined by a veth pair, rate-limited and lossy.

    with veth_pair(rate_kbit=128, loss_pct=15) as link:
        proc = link.popen(link.ns_b, ["mosquitto", "-c", conf])
        link.run(link.ns_a, ["ping", ...])
        print(link.dropped(), link.qdisc_stats())

Layout (``k`` counts pairs made by this process; names carry the pid, so concurrent runs never meet)::

    netns lcnt-<pid>-<k>-a                     netns lcnt-<pid>-<k>-b
      lo up                                      lo up
      v<pid>x<k>a 10.213.<k>.1/30  <--veth-->    v<pid>x<k>b 10.213.<k>.2/30
      egress: tbf rate R kbit (sender side)      nft table inet lcloss: input chain drops N % of the
                                                 TCP+UDP packets arriving on the veth (numgen random),
                                                 with a counter; `both_ways=True` adds an output chain
                                                 dropping N % of what B sends back as well.

The private 10.213.0.0/16 addresses exist only inside these namespaces (no route in the host's
namespace). Loss is applied by the kernel, so it hits everything on the wire: for TCP it costs
retransmissions, for UDP (WebRTC/ICE/DTLS/SCTP) the datagram is gone. Loopback traffic inside B
(e.g. a local client of a broker in B) is not dropped: the rule matches the veth only. `tc netem` is
absent from the kernels this runs on, so there is no emulated delay here.

Cleanup is guaranteed: on exit (also on error) every process still inside either namespace is
killed by pid, then both namespaces are deleted (which removes the veth and the nft table with them).
`cleanup_leftovers()` removes any namespace this process created and did not delete.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

PREFIX = "lcnt"
"""Namespace names are ``lcnt-<pid>-<k>-a`` / ``-b``."""

SBIN = "/usr/sbin:/sbin:/usr/local/sbin"
_counter = itertools.count(1)


class NetnsError(RuntimeError):
    """A namespace / tc / nft command failed; the message names the command and its stderr."""


def _run(argv: Sequence[str], *, input_text: str | None = None, timeout: float = 15.0) -> str:
    try:
        res = subprocess.run(list(argv), input=input_text, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as exc:
        raise NetnsError(f"{argv[0]} not found: {exc}") from None
    except subprocess.TimeoutExpired:
        raise NetnsError(f"{' '.join(argv)} did not finish in {timeout} s") from None
    if res.returncode != 0:
        raise NetnsError(f"{' '.join(argv)} failed (exit {res.returncode}): {res.stderr.strip()}")
    return res.stdout


def ns_exec(ns: str, argv: Sequence[str]) -> list[str]:
    """The command line running `argv` inside namespace `ns`: ``ip netns exec NS ...``."""
    return ["ip", "netns", "exec", ns, *argv]


def _our_namespaces() -> list[str]:
    out = _run(["ip", "netns", "list"])
    mine = f"{PREFIX}-{os.getpid()}-"
    return [line.split()[0] for line in out.splitlines() if line.startswith(mine)]


def _kill_and_delete(ns: str) -> None:
    """Kill every process inside `ns` (by pid), then delete the namespace. Never raises."""
    with contextlib.suppress(NetnsError):
        for pid in _run(["ip", "netns", "pids", ns]).split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
    for _ in range(20):
        try:
            _run(["ip", "netns", "del", ns])
            return
        except NetnsError:
            if ns not in [line.split()[0] for line in _run(["ip", "netns", "list"]).splitlines() if line]:
                return
            time.sleep(0.05)


def cleanup_leftovers() -> list[str]:
    """Delete every namespace this process made and did not delete yet (killing what runs in them)."""
    try:
        left = _our_namespaces()
    except NetnsError:
        return []
    for ns in left:
        _kill_and_delete(ns)
    return left


@dataclass
class VethLink:
    """Two namespaces joined by a veth pair; A (`ns_a`, `addr_a`) sends through tbf to B (`ns_b`, `addr_b`)."""

    ns_a: str
    ns_b: str
    dev_a: str
    dev_b: str
    addr_a: str
    addr_b: str
    rate_kbit: float | None
    loss_pct: int
    both_ways: bool = False
    table: str = "lcloss"
    procs: list[subprocess.Popen[Any]] = field(default_factory=list)

    def run(self, ns: str, argv: Sequence[str], *, timeout: float = 30.0, input_text: str | None = None) -> str:
        """Run `argv` inside `ns` to completion; its stdout (NetnsError on a non-zero exit)."""
        return _run(ns_exec(ns, argv), input_text=input_text, timeout=timeout)

    def popen(self, ns: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start `argv` inside `ns` (``subprocess.Popen`` keyword arguments pass through); killed on exit."""
        proc = subprocess.Popen(ns_exec(ns, argv), **kwargs)
        self.procs.append(proc)
        return proc

    def set_rate(self, rate_kbit: float | None, *, burst: int = 4096, latency_ms: int = 400) -> None:
        """(Re)place the tbf qdisc on A's egress; None removes the limit. `burst` bytes must exceed the MTU."""
        with contextlib.suppress(NetnsError):
            self.run(self.ns_a, ["tc", "qdisc", "del", "dev", self.dev_a, "root"])
        self.rate_kbit = rate_kbit
        if rate_kbit is not None:
            self.run(
                self.ns_a,
                [
                    "tc",
                    "qdisc",
                    "add",
                    "dev",
                    self.dev_a,
                    "root",
                    "tbf",
                    "rate",
                    f"{rate_kbit:g}kbit",
                    "burst",
                    str(burst),
                    "latency",
                    f"{latency_ms}ms",
                ],
            )

    def set_loss(self, loss_pct: int, *, both_ways: bool | None = None) -> None:
        """(Re)write the nft table in B: drop `loss_pct` % of TCP+UDP packets on the veth (resets counters)."""
        if not 0 <= loss_pct <= 100:
            raise ValueError(f"loss_pct={loss_pct} is not a percentage 0..100")
        if both_ways is not None:
            self.both_ways = both_ways
        self.loss_pct = loss_pct
        chance = "" if loss_pct == 100 else f" numgen random mod 100 < {loss_pct}"  # nft refuses "< 100"
        match = f"meta l4proto {{ tcp, udp }}{chance} counter drop"
        out_chain = (
            (
                f"  chain output {{\n    type filter hook output priority 0; policy accept;\n"
                f'    oifname "{self.dev_b}" {match}\n  }}\n'
            )
            if self.both_ways
            else ""
        )
        ruleset = (
            f"table inet {self.table} {{\n"
            f"  chain input {{\n    type filter hook input priority 0; policy accept;\n"
            f'    iifname "{self.dev_b}" {match}\n  }}\n{out_chain}}}\n'
        )
        with contextlib.suppress(NetnsError):
            self.run(self.ns_b, ["nft", "delete", "table", "inet", self.table])
        self.run(self.ns_b, ["nft", "-f", "-"], input_text=ruleset)

    def dropped(self) -> dict[str, int]:
        """Packets dropped by the nft rule since the last `set_loss`, per chain (``input`` / ``output``)."""
        doc = json.loads(self.run(self.ns_b, ["nft", "-j", "list", "table", "inet", self.table]))
        counts: dict[str, int] = {}
        for item in doc.get("nftables", []):
            rule = item.get("rule")
            if rule is None:
                continue
            for expr in rule["expr"]:
                if "counter" in expr:
                    counts[rule["chain"]] = counts.get(rule["chain"], 0) + int(expr["counter"]["packets"])
        return counts

    def qdisc_stats(self) -> dict[str, Any]:
        """The tbf qdisc's statistics on A's egress (bytes, packets, drops, overlimits, ...)."""
        stats = json.loads(self.run(self.ns_a, ["tc", "-s", "-j", "qdisc", "show", "dev", self.dev_a]))
        return next((q for q in stats if q.get("root")), {})

    def wait_listening(
        self,
        ns: str,
        port: int,
        *,
        proto: str = "tcp",
        timeout: float = 15.0,
        proc: subprocess.Popen[Any] | None = None,
    ) -> None:
        """Block until something in `ns` listens on `port` (``ss``); fails early when `proc` exits."""
        flag = "-Hltn" if proto == "tcp" else "-Hlun"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise NetnsError(f"process {proc.args!r} exited with {proc.returncode} before listening on {port}")
            if self.run(ns, ["ss", flag, "sport", "=", f":{port}"]).strip():
                return
            time.sleep(0.1)
        raise NetnsError(f"nothing listens on {proto} port {port} in {ns} after {timeout} s")

    def stop_procs(self, *, grace_s: float = 3.0) -> None:
        """Terminate every process started with `popen` (kill after `grace_s`)."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + grace_s
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def missing_tools() -> list[str]:
    """Which of the binaries this helper needs (ip, tc, nft, ss) are not installed."""
    return [t for t in ("ip", "tc", "nft", "ss") if shutil.which(t) is None and shutil.which(t, path=SBIN) is None]


@contextlib.contextmanager
def veth_pair(
    rate_kbit: float | None = None,
    loss_pct: int = 0,
    burst: int = 4096,
    *,
    latency_ms: int = 400,
    both_ways: bool = False,
) -> Iterator[VethLink]:
    """Two fresh namespaces joined by a veth pair with tbf on A's egress and nft loss into B.

    `rate_kbit` None = no rate limit; `burst` is the tbf bucket in bytes (> MTU); `latency_ms` bounds
    the tbf queue (packets waiting longer are dropped, as on a real bottleneck). Everything is removed
    on exit, also after an error. NetnsError when the kernel or a tool refuses (not root, no tbf, ...).
    """
    k = next(_counter)
    pid = os.getpid()
    ns_a, ns_b = f"{PREFIX}-{pid}-{k}-a", f"{PREFIX}-{pid}-{k}-b"
    dev_a, dev_b = f"v{pid}x{k}a", f"v{pid}x{k}b"
    net = f"10.213.{k % 256}"
    link = VethLink(ns_a, ns_b, dev_a, dev_b, f"{net}.1", f"{net}.2", rate_kbit, loss_pct, both_ways)
    created: list[str] = []
    try:
        for ns in (ns_a, ns_b):
            _run(["ip", "netns", "add", ns])
            created.append(ns)
        _run(["ip", "link", "add", dev_a, "netns", ns_a, "type", "veth", "peer", "name", dev_b, "netns", ns_b])
        for ns, dev, addr in ((ns_a, dev_a, link.addr_a), (ns_b, dev_b, link.addr_b)):
            _run(["ip", "-n", ns, "addr", "add", f"{addr}/30", "dev", dev])
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
            _run(["ip", "-n", ns, "link", "set", dev, "up"])
        link.set_rate(rate_kbit, burst=burst, latency_ms=latency_ms)
        link.set_loss(loss_pct)
        yield link
    finally:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            link.stop_procs(grace_s=2.0)
        for ns in created:
            _kill_and_delete(ns)
