"""The lossy-link model: CLI parsing, seeded loss/burst/duplication/reordering, rates in simulated time,
and the LossyTransport wrapper on a real in-memory pair."""

from __future__ import annotations

import asyncio
import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from layercast.common.errors import InputError, TransportClosed
from layercast.common.transport.lossy import (
    LinkModel,
    LinkSimulator,
    LossyTransport,
    TokenBucket,
    parse_duration,
    parse_probability,
    parse_rate,
    parse_size,
)
from layercast.common.transport.memory import memory_pair
from layercast.sender.link import Pacer

PKTS = [bytes([i % 256]) * 100 for i in range(2000)]


def drop_pattern(model: LinkModel, packets: list[bytes] = PKTS, spacing: float = 0.01) -> list[bool]:
    sim = LinkSimulator(model)
    return [not sim.submit(p, i * spacing) for i, p in enumerate(packets)]


# --- parsing ------------------------------------------------------------------------------------------


@given(st.floats(min_value=0.0, max_value=1.0, allow_nan=False))
def test_probability_parses_as_fraction_and_percent(p: float) -> None:
    assert parse_probability(repr(p)) == p
    assert parse_probability(f"{p * 100!r}%") == pytest.approx(p, abs=1e-12)
    assert parse_probability(p) == p


@pytest.mark.parametrize("bad", ["-1%", "101%", "1.5", "five", "", "5%%", "nan"])
def test_bad_probabilities_are_rejected(bad: str) -> None:
    with pytest.raises(InputError, match="loss"):
        parse_probability(bad, "loss")


@pytest.mark.parametrize(
    ("text", "seconds"), [("300ms", 0.3), ("0.3s", 0.3), ("0.3", 0.3), ("250us", 250e-6), ("2min", 120.0)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["-3ms", "3 hours", "ms", "1e999"])
def test_bad_durations(bad: str) -> None:
    with pytest.raises(InputError, match="delay"):
        parse_duration(bad, "delay")


@pytest.mark.parametrize(
    ("text", "bps"),
    [("9600", 9600.0), ("9.6k", 9600.0), ("9.6kbit", 9600.0), ("2Mbps", 2e6), ("64kb/s", 64e3)],
)
def test_rates(text: str, bps: float) -> None:
    assert parse_rate(text) == pytest.approx(bps)


@pytest.mark.parametrize("bad", ["0", "-5k", "fast", "9.6x"])
def test_bad_rates(bad: str) -> None:
    with pytest.raises(InputError, match="rate"):
        parse_rate(bad)


def test_sizes() -> None:
    assert parse_size("1500") == 1500
    assert parse_size("1.5k") == 1500
    assert parse_size("2KiB") == 2048
    assert parse_size(7) == 7
    with pytest.raises(InputError, match="byte size"):
        parse_size("12 apples")


def test_model_parse_from_cli_strings() -> None:
    m = LinkModel.parse(loss="5%", delay="300ms", rate="9.6k", jitter="20ms", duplicate="0.01", seed=7)
    got = (m.loss, m.delay_s, m.rate_bps, m.jitter_s, m.duplicate, m.seed)
    assert got == (0.05, 0.3, 9600.0, 0.02, 0.01, 7)
    b = LinkModel.parse(burst="5%", burst_len="4")
    assert b.p_bad_to_good == 0.25
    assert b.expected_loss == pytest.approx(0.05)
    with pytest.raises(InputError, match="burst length given without"):
        LinkModel.parse(burst_len="4")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"loss": 1.5}, "loss"),
        ({"delay_s": -1.0}, "delay_s"),
        ({"rate_bps": 0.0}, "rate_bps"),
        ({"p_good_to_bad": 0.1, "p_bad_to_good": 0.0}, "never recovers"),
        ({"bucket_bytes": -1}, "bucket_bytes"),
    ],
)
def test_invalid_models_are_rejected(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(InputError, match=match):
        LinkModel(**kwargs)  # type: ignore[arg-type]


# --- the simulator ------------------------------------------------------------------------------------


def test_same_seed_same_drops_other_seed_other_drops() -> None:
    a = drop_pattern(LinkModel(loss=0.2, seed=3))
    assert a == drop_pattern(LinkModel(loss=0.2, seed=3))
    assert a != drop_pattern(LinkModel(loss=0.2, seed=4))
    # the drop pattern does not depend on the delay, jitter or rate settings
    assert a == drop_pattern(LinkModel(loss=0.2, seed=3, delay_s=0.3, jitter_s=0.05, rate_bps=1e6))


def test_random_loss_rate_is_what_was_asked() -> None:
    sim = LinkSimulator(LinkModel(loss=0.2, seed=11))
    for i, p in enumerate(PKTS * 5):
        sim.submit(p, i * 0.001)
    s = sim.stats
    assert s.submitted == 10000
    assert s.lost / s.submitted == pytest.approx(0.2, abs=0.015)
    assert s.delivered == s.submitted - s.dropped
    assert s.delivered_bytes == 100 * s.delivered


def test_gilbert_elliott_bursts_have_the_asked_rate_and_length() -> None:
    p_gb, p_bg = LinkModel.bursty(0.05, 4.0)
    model = LinkModel(p_good_to_bad=p_gb, p_bad_to_good=p_bg, seed=5)
    drops = drop_pattern(model, PKTS * 20)
    runs, cur = [], 0
    for d in drops:
        if d:
            cur += 1
        elif cur:
            runs.append(cur)
            cur = 0
    assert sum(drops) / len(drops) == pytest.approx(0.05, abs=0.01)
    assert sum(runs) / len(runs) == pytest.approx(4.0, rel=0.15)
    # random loss at the same rate has runs of ~1 packet
    iid = drop_pattern(LinkModel(loss=0.05, seed=5), PKTS * 20)
    iid_runs = sum(1 for i in range(1, len(iid)) if iid[i] and not iid[i - 1])
    assert sum(iid) / iid_runs < 1.2


def test_rate_cap_measured_in_simulated_time() -> None:
    sim = LinkSimulator(LinkModel(rate_bps=9600))
    out = sim.run((0.0, b"x" * 120) for _ in range(100))
    # 100 x 120 B = 96000 bits at 9600 bit/s: the last byte leaves at 10 s; serialisation is FIFO
    assert out[-1][0] == pytest.approx(10.0)
    assert out[0][0] == pytest.approx(0.1)
    assert [t for t, _ in out] == sorted(t for t, _ in out)
    total_bits = 8 * sum(len(d) for _, d in out)
    assert total_bits / out[-1][0] == pytest.approx(9600)


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    bucket = TokenBucket(8000, bucket_bytes=1000)  # 1000 B/s, burst 1000 B
    times = [bucket.reserve(100, 0.0) for _ in range(12)]
    assert times[:10] == [0.0] * 10
    assert times[10] == pytest.approx(0.1)
    assert times[11] == pytest.approx(0.2)
    # idle time refills the bucket, up to its size only
    assert bucket.reserve(1000, 5.0) == 5.0
    assert bucket.reserve(100, 5.0) == pytest.approx(5.1)


def test_pacer_is_the_same_token_bucket() -> None:
    pacer = Pacer(9600)
    t, now = 0.0, 0.0
    for _ in range(10):
        t = pacer.next_send_time(1200, now)
    assert t == pytest.approx(10.0)
    assert Pacer(None).next_send_time(10**6, 3.0) == 3.0


def test_queue_limit_drops_tail() -> None:
    sim = LinkSimulator(LinkModel(rate_bps=8000, max_queue_s=0.5))
    out = sim.run((0.0, b"q" * 100) for _ in range(20))
    assert len(out) == 5
    assert sim.stats.queue_dropped == 15
    assert out[-1][0] == pytest.approx(0.5)


def test_delay_and_jitter_bounds() -> None:
    sim = LinkSimulator(LinkModel(delay_s=0.3, jitter_s=0.05, seed=2))
    arrivals = [sim.submit(b"d", i * 1.0)[0][0] - i * 1.0 for i in range(500)]
    assert all(0.25 - 1e-9 <= a <= 0.35 + 1e-9 for a in arrivals)
    assert max(arrivals) - min(arrivals) > 0.08  # jitter actually varies


def test_reordering_and_duplication_are_seeded_and_counted() -> None:
    model = LinkModel(reorder=0.2, reorder_delay_s=0.1, duplicate=0.1, seed=9)
    sims = [LinkSimulator(model) for _ in range(2)]
    outs = [s.run((i * 0.01, i.to_bytes(2, "big")) for i in range(2000)) for s in sims]
    assert outs[0] == outs[1]
    out = outs[0]
    assert sims[0].stats.duplicated == len(out) - 2000
    assert sims[0].stats.duplicated / 2000 == pytest.approx(0.1, abs=0.02)
    order = [int.from_bytes(d, "big") for _, d in out]
    inversions = sum(1 for a, b in itertools.pairwise(order) if b < a)
    assert inversions > 100
    assert sorted(set(order)) == list(range(2000))


def test_lossless_packets_bypass_loss() -> None:
    sim = LinkSimulator(LinkModel(loss=1.0, duplicate=1.0, delay_s=0.2))
    assert sim.submit(b"r", 0.0, lossless=True) == [(0.2, b"r")]
    assert sim.submit(b"u", 0.0) == []


@given(st.lists(st.binary(min_size=1, max_size=300), max_size=60), st.integers(0, 2**32))
def test_deliveries_are_a_subset_with_copies(packets: list[bytes], seed: int) -> None:
    sim = LinkSimulator(LinkModel(loss=0.3, duplicate=0.2, reorder=0.3, rate_bps=64000, seed=seed))
    out = sim.run((i * 0.001, p) for i, p in enumerate(packets))
    s = sim.stats
    assert len(out) == len(packets) - s.dropped + s.duplicated
    assert all(d in packets for _, d in out)
    assert all(not math.isnan(t) and t >= 0 for t, _ in out)


# --- the wrapper on a real pair -----------------------------------------------------------------------


async def test_wrapper_drops_exactly_what_the_simulator_drops() -> None:
    model = LinkModel(loss=0.3, seed=21)
    a, b = memory_pair()
    lossy = LossyTransport(a, send_model=model)
    async with lossy, b:
        for i in range(200):
            await lossy.send(i.to_bytes(2, "big"), family="texture")
        await lossy.drain(timeout=5)
        await lossy.close()
        got = [int.from_bytes(d, "big") async for d in b]
    expected = [i for i, dropped in enumerate(drop_pattern(model, [b"xx"] * 200)) if not dropped]
    assert got == expected
    assert lossy.send_sim is not None and lossy.send_sim.stats.lost == 200 - len(got)


async def test_wrapper_delays_in_loop_time_and_flushes_on_close() -> None:
    a, b = memory_pair()
    lossy = LossyTransport(a, send_model=LinkModel(delay_s=0.05))
    loop = asyncio.get_running_loop()
    async with b:
        async with lossy:
            t0 = loop.time()
            await lossy.send(b"late")
            assert b.pending == 0
            assert await b.recv(timeout=1) == b"late"
            assert loop.time() - t0 >= 0.045
            await lossy.send(b"in flight at close")
            assert b.pending == 0
        assert await b.recv(timeout=1) == b"in flight at close"


async def test_wrapper_rate_cap_blocks_the_sender() -> None:
    a, b = memory_pair()
    lossy = LossyTransport(a, send_model=LinkModel(rate_bps=80_000))  # 10 kB/s
    loop = asyncio.get_running_loop()
    async with lossy, b:
        t0 = loop.time()
        for _ in range(8):
            await lossy.send(b"r" * 500)
        elapsed = loop.time() - t0
        assert 0.38 <= elapsed < 1.0  # 4 kB at 10 kB/s
        assert len([await b.recv(timeout=1) for _ in range(8)]) == 8


async def test_reliable_family_is_never_dropped() -> None:
    a, b = memory_pair()
    lossy = LossyTransport(a, send_model=LinkModel(loss=1.0), reliable_families={"semantic"})
    async with lossy, b:
        await lossy.send(b"prompt", family="semantic")
        await lossy.send(b"edges", family="structure")
        await lossy.drain(timeout=1)
        await lossy.close()
        assert [d async for d in b] == [b"prompt"]


async def test_receive_side_model_and_end_of_stream() -> None:
    a, b = memory_pair()
    lossy_b = LossyTransport(b, recv_model=LinkModel(loss=0.5, delay_s=0.01, seed=4))
    async with a, lossy_b:
        for i in range(40):
            await a.send(bytes([i]))
        await a.close()
        got = [d[0] async for d in lossy_b]
        pattern = drop_pattern(LinkModel(loss=0.5, seed=4), [b"x"] * 40)
        expected = [i for i, dropped in enumerate(pattern) if not dropped]
        assert got == expected
        with pytest.raises(TransportClosed):
            await lossy_b.recv(timeout=1)


async def test_send_before_open_is_refused() -> None:
    a, _ = memory_pair()
    with pytest.raises(TransportClosed, match="not open"):
        await LossyTransport(a, send_model=LinkModel()).send(b"x")
