"""A seeded, deterministic model of a bad link, as a pure simulator and as a wrapper for any transport.

:class:`LinkModel` describes the link (random and Gilbert-Elliott burst loss, duplication, reordering,
delay and jitter, a token-bucket rate cap). :class:`LinkSimulator` is its sans-I/O core:
``submit(data, now) -> [(delivery_time, data), ...]`` (``[]`` = dropped), so behaviour is tested in
simulated time without sleeping. :class:`LossyTransport` applies the simulator to any
:class:`~layercast.common.transport.base.Transport` in real (event-loop) time.

Order of effects per packet: the token bucket sets its departure time (drop-tail when the queue
exceeds `max_queue_s`), then loss (the lost packet still used its airtime), then delay + jitter, then
reordering (extra delay), then duplication (a second copy). Every effect draws from its own seeded
random stream a fixed number of times per packet, so the same seed and packet sequence give the same
drop pattern whatever the delay or rate settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import math
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from layercast.common.errors import InputError, TransportClosed, TransportError, TransportTimeout
from layercast.common.transport.base import Transport

# --- CLI string parsing -------------------------------------------------------------------------------

_NUM = r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"


def parse_probability(text: str | float, what: str = "probability") -> float:
    """``"5%"``, ``"0.05"`` or ``0.05`` -> 0.05; InputError outside 0..1."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        m = re.fullmatch(_NUM + r"\s*(%?)", text.strip())
        if not m:
            raise InputError(f"{what} {text!r} is not a number like 0.05 or 5%")
        value = float(m.group(1)) / (100.0 if m.group(2) else 1.0)
    if not 0.0 <= value <= 1.0 or math.isnan(value):
        raise InputError(f"{what} {text!r} must be between 0 and 1 (or 0% and 100%)")
    return value


_TIME_UNITS = {"": 1.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "min": 60.0}


def parse_duration(text: str | float, what: str = "duration") -> float:
    """``"300ms"``, ``"0.3s"``, ``"0.3"`` (seconds) or ``0.3`` -> 0.3; InputError if negative or malformed."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        m = re.fullmatch(_NUM + r"\s*([a-zµ]*)", text.strip().lower())
        if not m or m.group(2) not in _TIME_UNITS:
            raise InputError(f"{what} {text!r} is not a duration like 300ms, 0.3s or 0.3")
        value = float(m.group(1)) * _TIME_UNITS[m.group(2)]
    if value < 0 or not math.isfinite(value):
        raise InputError(f"{what} {text!r} must be a finite, non-negative duration")
    return value


_RATE_PREFIX = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9}


def parse_rate(text: str | float, what: str = "rate") -> float:
    """Bits per second, > 0: ``"9600"``, ``"9.6k"``, ``"9.6kbit"``, ``"2Mbps"`` or ``9600``."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        m = re.fullmatch(_NUM + r"\s*([kmg]?)(bps|bit/s|bits?|b/s)?", text.strip().lower())
        if not m:
            raise InputError(f"{what} {text!r} is not a bit rate like 9600, 9.6k or 2Mbps")
        value = float(m.group(1)) * _RATE_PREFIX[m.group(2)]
    if not value > 0 or not math.isfinite(value):
        raise InputError(f"{what} {text!r} must be a positive bit rate")
    return value


def parse_size(text: str | int, what: str = "size") -> int:
    """Bytes: ``"1500"``, ``"1.5k"`` (x1000), ``"2KiB"`` (x1024), ``"1M"`` or ``1500`` -> int >= 0."""
    if isinstance(text, int):
        value = float(text)
    else:
        m = re.fullmatch(_NUM + r"\s*([kmg]?)(i?b?)", text.strip().lower())
        if not m or (m.group(3) == "ib" and not m.group(2)):
            raise InputError(f"{what} {text!r} is not a byte size like 1500, 1.5k or 2KiB")
        base = 1024.0 if m.group(3) == "ib" else 1000.0
        value = float(m.group(1)) * base ** " kmg".index(m.group(2) or " ")
    if value < 0 or not math.isfinite(value):
        raise InputError(f"{what} {text!r} must be a non-negative byte count")
    return int(value)


# --- the model ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LinkModel:
    """Parameters of an emulated link; validated on construction (InputError).

    Loss: each packet is lost with probability `loss`, and also, while the Gilbert-Elliott chain is in
    its bad state, with probability `loss_in_bad`. The chain moves good->bad with `p_good_to_bad` and
    bad->good with `p_bad_to_good` per packet (mean burst length 1/p_bad_to_good packets); build it
    from an average burst loss and mean burst length with :meth:`bursty`.
    `rate_bps` caps the bandwidth with a token bucket of `bucket_bytes` (0 = one packet, i.e. pure
    serialisation delay); packets that would wait longer than `max_queue_s` in it are dropped.
    """

    loss: float = 0.0
    p_good_to_bad: float = 0.0
    p_bad_to_good: float = 1.0
    loss_in_bad: float = 1.0
    duplicate: float = 0.0
    reorder: float = 0.0
    reorder_delay_s: float = 0.05
    delay_s: float = 0.0
    jitter_s: float = 0.0
    rate_bps: float | None = None
    bucket_bytes: int = 0
    max_queue_s: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("loss", "p_good_to_bad", "p_bad_to_good", "loss_in_bad", "duplicate", "reorder"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise InputError(f"link model {name}={v!r} must be a probability between 0 and 1")
        if self.p_good_to_bad > 0 and self.p_bad_to_good <= 0:
            raise InputError("link model p_bad_to_good must be > 0 when bursts are on (else the link never recovers)")
        for name in ("reorder_delay_s", "delay_s", "jitter_s"):
            v = getattr(self, name)
            if not (v >= 0 and math.isfinite(v)):
                raise InputError(f"link model {name}={v!r} must be a finite, non-negative number of seconds")
        if self.rate_bps is not None and not (self.rate_bps > 0 and math.isfinite(self.rate_bps)):
            raise InputError(f"link model rate_bps={self.rate_bps!r} must be positive (or None = unlimited)")
        if self.bucket_bytes < 0:
            raise InputError(f"link model bucket_bytes={self.bucket_bytes} must be >= 0")
        if self.max_queue_s is not None and not self.max_queue_s >= 0:
            raise InputError(f"link model max_queue_s={self.max_queue_s!r} must be >= 0 (or None = unbounded)")

    @staticmethod
    def bursty(burst_loss: float, burst_len: float) -> tuple[float, float]:
        """Gilbert-Elliott (p_good_to_bad, p_bad_to_good) for an average loss `burst_loss` in bursts of
        mean length `burst_len` packets (with loss_in_bad = 1)."""
        if not 0.0 <= burst_loss < 1.0:
            raise InputError(f"burst loss {burst_loss!r} must be in 0..1 (exclusive of 1)")
        if not burst_len >= 1.0:
            raise InputError(f"mean burst length {burst_len!r} must be >= 1 packet")
        p_bg = 1.0 / burst_len
        return burst_loss * p_bg / (1.0 - burst_loss), p_bg

    @classmethod
    def parse(
        cls,
        *,
        loss: str | float | None = None,
        burst: str | float | None = None,
        burst_len: str | float | None = None,
        duplicate: str | float | None = None,
        reorder: str | float | None = None,
        reorder_delay: str | float | None = None,
        delay: str | float | None = None,
        jitter: str | float | None = None,
        rate: str | float | None = None,
        bucket: str | int | None = None,
        max_queue: str | float | None = None,
        seed: int = 0,
    ) -> LinkModel:
        """Build a model from CLI strings, e.g. ``parse(loss="5%", delay="300ms", rate="9.6k")``.

        `burst` is the average loss in bursts (``"5%"``) and `burst_len` their mean length in packets
        (default 3). None leaves a parameter at its default.
        """
        kw: dict[str, float | int | None] = {"seed": int(seed)}
        if loss is not None:
            kw["loss"] = parse_probability(loss, "loss")
        if burst is not None:
            length = float(burst_len) if burst_len is not None else 3.0
            kw["p_good_to_bad"], kw["p_bad_to_good"] = cls.bursty(parse_probability(burst, "burst loss"), length)
        elif burst_len is not None:
            raise InputError("burst length given without a burst loss (add e.g. --burst 5%)")
        if duplicate is not None:
            kw["duplicate"] = parse_probability(duplicate, "duplicate")
        if reorder is not None:
            kw["reorder"] = parse_probability(reorder, "reorder")
        if reorder_delay is not None:
            kw["reorder_delay_s"] = parse_duration(reorder_delay, "reorder delay")
        if delay is not None:
            kw["delay_s"] = parse_duration(delay, "delay")
        if jitter is not None:
            kw["jitter_s"] = parse_duration(jitter, "jitter")
        if rate is not None:
            kw["rate_bps"] = parse_rate(rate)
        if bucket is not None:
            kw["bucket_bytes"] = parse_size(bucket, "bucket")
        if max_queue is not None:
            kw["max_queue_s"] = parse_duration(max_queue, "max queue")
        return cls(**kw)  # type: ignore[arg-type]

    @property
    def expected_loss(self) -> float:
        """Long-run fraction of packets lost (random and burst loss together, queue drops excluded)."""
        pb = self.p_good_to_bad / (self.p_good_to_bad + self.p_bad_to_good) if self.p_good_to_bad else 0.0
        return 1.0 - (1.0 - self.loss) * (1.0 - pb * self.loss_in_bad)

    @property
    def lossless(self) -> bool:
        """True when the model never drops or duplicates."""
        return self.expected_loss == 0.0 and self.duplicate == 0.0 and self.max_queue_s is None


# --- sans-I/O core ------------------------------------------------------------------------------------


class TokenBucket:
    """Token bucket in bytes: `rate_bps` bits/s, holding up to max(`bucket_bytes`, packet) bytes.

    Packets leave in FIFO order; :meth:`reserve` returns when the packet may leave and commits it.
    """

    def __init__(self, rate_bps: float | None, bucket_bytes: int = 0) -> None:
        if rate_bps is not None and not rate_bps > 0:
            raise InputError(f"token bucket rate {rate_bps!r} must be positive (or None = unlimited)")
        self.rate_bps = rate_bps
        self.bucket_bytes = bucket_bytes
        self._tokens = float(bucket_bytes)
        self._t: float | None = None
        self.busy_until = -math.inf
        """Departure time of the last packet reserved."""

    def departure(self, nbytes: int, now: float) -> float:
        """When a packet of `nbytes` submitted at `now` would leave (no state change)."""
        return self._plan(nbytes, now)[0]

    def reserve(self, nbytes: int, now: float) -> float:
        """Departure time of a packet of `nbytes` submitted at `now`; commits it."""
        t, tokens = self._plan(nbytes, now)
        self._tokens, self._t, self.busy_until = tokens, t, t
        return t

    def _plan(self, nbytes: int, now: float) -> tuple[float, float]:
        if self.rate_bps is None:
            return max(now, self.busy_until), 0.0
        rate = self.rate_bps / 8.0
        t = max(now, self.busy_until)
        cap = float(max(self.bucket_bytes, nbytes))
        tokens = self._tokens if self._t is None else self._tokens + (t - self._t) * rate
        tokens = min(cap, tokens)
        if tokens < nbytes:
            t += (nbytes - tokens) / rate
            tokens = float(nbytes)
        return t, tokens - nbytes


@dataclass
class LinkStats:
    """Packet and byte counters of one simulated link direction."""

    submitted: int = 0
    submitted_bytes: int = 0
    lost: int = 0
    queue_dropped: int = 0
    duplicated: int = 0
    delivered: int = 0
    delivered_bytes: int = 0

    @property
    def dropped(self) -> int:
        """Packets that never arrived (lost in flight or dropped from a full queue)."""
        return self.lost + self.queue_dropped


@dataclass
class LinkSimulator:
    """Sans-I/O link: feed packets with their send time, get their delivery times back."""

    model: LinkModel
    stats: LinkStats = field(default_factory=LinkStats)

    def __post_init__(self) -> None:
        seed = self.model.seed
        self._rng_loss = random.Random(f"layercast-link/{seed}/loss")
        self._rng_dup = random.Random(f"layercast-link/{seed}/duplicate")
        self._rng_delay = random.Random(f"layercast-link/{seed}/delay")
        self._bad = False
        self.bucket = TokenBucket(self.model.rate_bps, self.model.bucket_bytes)

    def submit(self, data: bytes, now: float, *, lossless: bool = False) -> list[tuple[float, bytes]]:
        """Deliveries of one packet sent at `now`: ``[]`` if dropped, two entries if duplicated.

        `lossless` (a reliable channel) bypasses loss, duplication, jitter and reordering, keeping
        the rate cap and base delay, so such packets arrive in order.
        """
        m = self.model
        st = self.stats
        st.submitted += 1
        st.submitted_bytes += len(data)
        u_state, u_bad, u_loss = (self._rng_loss.random() for _ in range(3))
        u_dup, u_dup_delay = self._rng_dup.random(), self._rng_dup.random()
        u_jit, u_reo, u_reo_delay = (self._rng_delay.random() for _ in range(3))
        if m.p_good_to_bad:
            self._bad = (u_state >= m.p_bad_to_good) if self._bad else (u_state < m.p_good_to_bad)
        queue_s = m.max_queue_s
        if queue_s is not None and not lossless and self.bucket.departure(len(data), now) - now > queue_s:
            st.queue_dropped += 1
            return []
        depart = self.bucket.reserve(len(data), now)
        if not lossless and (u_loss < m.loss or (self._bad and u_bad < m.loss_in_bad)):
            st.lost += 1
            return []
        if lossless:
            t = depart + m.delay_s
        else:
            t = depart + max(0.0, m.delay_s + (2.0 * u_jit - 1.0) * m.jitter_s)
            if u_reo < m.reorder:
                t += u_reo_delay * m.reorder_delay_s
        out = [(t, data)]
        if not lossless and u_dup < m.duplicate:
            st.duplicated += 1
            out.append((t + u_dup_delay * max(m.jitter_s, 0.001), data))
        st.delivered += len(out)
        st.delivered_bytes += len(data) * len(out)
        return out

    def run(self, packets: Iterable[tuple[float, bytes]]) -> list[tuple[float, bytes]]:
        """Submit (send_time, data) pairs in order; all deliveries sorted by arrival time (stable)."""
        out: list[tuple[float, bytes]] = []
        for now, data in packets:
            out.extend(self.submit(data, now))
        return sorted(out, key=lambda d: d[0])


# --- the wrapper --------------------------------------------------------------------------------------


class LossyTransport(Transport):
    """Wrap any transport with a link model on what it sends and/or what it receives.

    Sending blocks until the packet leaves the emulated token bucket (the backpressure a slow link
    gives); delay, loss and the rest happen in the background, in event-loop time. Packets of
    `reliable_families` (e.g. ``{"semantic"}`` over a reliable WebRTC channel) are never dropped,
    duplicated or reordered. Closing delivers what is still in flight, then closes `inner`.
    """

    def __init__(
        self,
        inner: Transport,
        send_model: LinkModel | None = None,
        recv_model: LinkModel | None = None,
        *,
        reliable_families: Iterable[str] = (),
        max_pending: int = 4096,
    ) -> None:
        super().__init__()
        self.inner = inner
        self.default_timeout = inner.default_timeout
        self.send_sim = LinkSimulator(send_model) if send_model is not None else None
        self.recv_sim = LinkSimulator(recv_model) if recv_model is not None else None
        self.reliable_families = frozenset(reliable_families)
        self.max_pending = max_pending
        self._seq = 0
        self._out: list[tuple[float, int, bytes, str]] = []
        self._out_wake = asyncio.Event()
        self._out_idle = asyncio.Event()
        self._out_idle.set()
        self._out_error: TransportError | None = None
        self._in: list[tuple[float, int, bytes]] = []
        self._in_wake = asyncio.Event()
        self._in_room = asyncio.Event()
        self._in_eof = False
        self._in_error: TransportError | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def _open(self) -> None:
        await self.inner.open()
        if not self._tasks:
            if self.send_sim is not None:
                self._tasks.append(asyncio.create_task(self._pump_out()))
            if self.recv_sim is not None:
                self._tasks.append(asyncio.create_task(self._pump_in()))

    async def _close(self) -> None:
        try:
            await self._drain()
        except TransportClosed:
            pass  # the peer is gone: nothing left to flush
        finally:
            for task in self._tasks:
                task.cancel()
            for task in self._tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            self._tasks.clear()
            self._in_eof = True
            self._in_wake.set()
            await self.inner.close()

    async def _send(self, data: bytes, family: str) -> None:
        sim = self.send_sim
        if sim is None:
            await self.inner.send(data, family=family)
            return
        if self._out_error is not None:
            raise self._out_error
        if not self._tasks:
            raise TransportClosed("LossyTransport is not open: use `async with` or await open() first")
        loop = asyncio.get_running_loop()
        now = loop.time()
        for t, d in sim.submit(data, now, lossless=family in self.reliable_families):
            self._seq += 1
            heapq.heappush(self._out, (t, self._seq, d, family))
            self._out_idle.clear()
            self._out_wake.set()
        wait = sim.bucket.busy_until - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)

    async def _pump_out(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._out:
                self._out_idle.set()
                self._out_wake.clear()
                await self._out_wake.wait()
                continue
            wait = self._out[0][0] - loop.time()
            if wait > 0:
                self._out_wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._out_wake.wait(), wait)
                continue
            _, _, data, family = heapq.heappop(self._out)
            try:
                await self.inner.send(data, family=family)
            except TransportError as exc:
                self._out_error = exc
                self._out.clear()
                self._out_idle.set()
                return

    async def _pump_in(self) -> None:
        assert self.recv_sim is not None
        loop = asyncio.get_running_loop()
        try:
            while True:
                while len(self._in) >= self.max_pending:
                    self._in_room.clear()
                    await self._in_room.wait()
                try:
                    data = await self.inner.recv()
                except TransportTimeout:
                    continue
                for t, d in self.recv_sim.submit(data, loop.time()):
                    self._seq += 1
                    heapq.heappush(self._in, (t, self._seq, d))
                self._in_wake.set()
        except TransportClosed:
            pass
        except TransportError as exc:
            self._in_error = exc
        self._in_eof = True
        self._in_wake.set()

    async def _recv(self) -> bytes:
        if self.recv_sim is None:
            return await self.inner.recv()
        loop = asyncio.get_running_loop()
        while True:
            if self._in:
                wait = self._in[0][0] - loop.time()
                if wait <= 0:
                    data = heapq.heappop(self._in)[2]
                    self._in_room.set()
                    return data
            elif self._in_eof:
                if self._in_error is not None:
                    raise self._in_error
                raise TransportClosed("the wrapped transport closed and every delayed packet was delivered")
            else:
                wait = None
            self._in_wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._in_wake.wait(), wait)

    async def _drain(self) -> None:
        if self.send_sim is not None and self._tasks:
            await self._out_idle.wait()
        if self._out_error is not None:
            raise self._out_error
        await self.inner.drain()
