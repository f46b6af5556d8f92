"""Seeded mutation fuzzing of every path that parses bytes: packets into the assembler (alone and in
sequences, then the finished images rendered by the preview decoder), and `.lcs` files through
container parsing and decoding. Only typed Layercast errors may come out; an untyped exception (or the
assembler's "InternalError" reject, which means one was caught) is a finding.

    python -m layercast.bench.fuzz --inputs 1000000 --seed 1      # a campaign; prints JSON figures

Mutations: byte flips, inserts, deletes, truncation and splices of valid packets and files; and
*structure-aware* ones: a valid packet is parsed, 1-3 of its fields (ids, counts, indices, sizes,
descriptor parameters, unit bytes) set to boundary values or random bytes, and re-serialised with a
correct CRC-32C, so the mutation reaches past the checksum into framing, FEC and the layer codecs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import resource
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from google.protobuf.descriptor import FieldDescriptor

from layercast.common.errors import LayercastError
from layercast.proto import framing, pb

INTERESTING: tuple[int, ...] = (
    0,
    1,
    2,
    3,
    7,
    8,
    15,
    16,
    31,
    32,
    63,
    64,
    127,
    128,
    255,
    256,
    4095,
    4096,
    4097,
    16383,
    16384,
    16385,
)
INTERESTING += (65535, 65536, 2**31 - 1, 2**31, 2**32 - 1)
_UINT_MAX = {FieldDescriptor.TYPE_UINT32: 2**32 - 1, FieldDescriptor.TYPE_UINT64: 2**64 - 1}


@dataclasses.dataclass
class Figures:
    """What a campaign saw."""

    inputs: int = 0
    accepted: int = 0
    rejects: Counter[str] = dataclasses.field(default_factory=Counter)
    findings: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    slowest_s: float = 0.0
    slowest_kind: str = ""
    seconds: float = 0.0
    peak_rss_mb: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": self.inputs,
            "accepted": self.accepted,
            "rejects": dict(self.rejects.most_common()),
            "findings": len(self.findings),
            "first_findings": self.findings[:5],
            "slowest_input_s": round(self.slowest_s, 4),
            "slowest_kind": self.slowest_kind,
            "seconds": round(self.seconds, 1),
            "inputs_per_s": round(self.inputs / self.seconds) if self.seconds else None,
            "peak_rss_mb": round(self.peak_rss_mb, 1),
        }


def seed_corpus() -> list[pb.Packet]:
    """Valid packets of the bundled sample images: per-layer fragments at three MTUs (slices and FEC
    repairs included), bundles, and keyed packets."""
    from layercast.cli_stream import SAMPLES
    from layercast.common.fec import FecPolicy, add_repair
    from layercast.sender.encode import EncodeOptions
    from layercast.sender.encoder import Encoder

    encoder = Encoder(EncodeOptions(max_bytes=500), resize=192)
    images = [encoder.encode(p).image for p in sorted(SAMPLES.glob("*.jpg"))]
    out: list[pb.Packet] = []
    for i, img in enumerate(images):
        img = dataclasses.replace(img, stream_id=7, image_id=i)
        for mtu in (None, 160, 300):
            packets = framing.packetize(img, mtu=mtu, header_every_layer=mtu is not None)
            by_kind: dict[int, list[pb.Packet]] = {}
            for p in packets:
                by_kind.setdefault(p.kind, []).append(p)
            for group in by_kind.values():
                out += add_repair(group, FecPolicy.parse("on")) if mtu else group
        out += framing.packetize(img, bundle=framing.DEFAULT_ORDER)
    return out


def _set_random_field(rng: random.Random, msg: Any) -> None:
    """Set one scalar field of `msg` (or of a message inside it) to a boundary or random value."""
    fields = [f for f in msg.DESCRIPTOR.fields if not f.is_repeated]
    repeated = [f for f in msg.DESCRIPTOR.fields if f.is_repeated]
    if repeated and rng.random() < 0.2:
        items = getattr(msg, repeated[0].name)
        if len(items):
            _set_random_field(rng, items[rng.randrange(len(items))])
            return
    if not fields:
        return
    f = rng.choice(fields)
    if f.type == FieldDescriptor.TYPE_MESSAGE:
        _set_random_field(rng, getattr(msg, f.name))
        return
    if f.type in _UINT_MAX:
        top = _UINT_MAX[f.type]
        value = rng.choice(INTERESTING) if rng.random() < 0.8 else rng.randrange(top + 1)
        setattr(msg, f.name, min(value, top))
    elif f.type == FieldDescriptor.TYPE_ENUM:
        setattr(msg, f.name, rng.choice([0, 1, 2, 3, 4, 5, 99, 2**31 - 1]))
    elif f.type == FieldDescriptor.TYPE_BOOL:
        setattr(msg, f.name, not getattr(msg, f.name))
    elif f.type == FieldDescriptor.TYPE_BYTES:
        setattr(msg, f.name, _mutate_bytes(rng, getattr(msg, f.name)))
    elif f.type == FieldDescriptor.TYPE_STRING:
        setattr(msg, f.name, rng.choice(["", "x" * rng.randrange(2000), "\u00e9\u4e2d"]))
    elif f.type == FieldDescriptor.TYPE_FLOAT:
        setattr(msg, f.name, rng.choice([0.0, -1.0, 1e30, float("nan"), float("inf")]))


def _mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        if op == 0 and b:
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        elif op == 1 and b:
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif op == 2:
            at = rng.randrange(len(b) + 1)
            b[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 3 and b:
            at = rng.randrange(len(b))
            del b[at : at + rng.randint(1, 8)]
        elif op == 4 and b:
            del b[rng.randrange(len(b)) :]
        elif op == 5 and b:
            at = rng.randrange(len(b))
            b[at:at] = b[rng.randrange(len(b)) :][: rng.randint(1, 64)]
    return bytes(b)


def mutate_packet(rng: random.Random, corpus: Sequence[pb.Packet], key: bytes | None = None) -> bytes:
    """One mutated wire packet: structure-aware (re-serialised, correct CRC) or raw bytes."""
    base = rng.choice(corpus)
    if rng.random() < 0.7:
        p = pb.Packet()
        p.CopyFrom(base)
        for _ in range(rng.randint(1, 3)):
            _set_random_field(rng, p)
        try:
            return framing.encode_packet(p, key=key)
        except (ValueError, TypeError):
            return framing.encode_packet(base, key=key)
    return _mutate_bytes(rng, framing.encode_packet(base, key=key))


def _render(layers: Any) -> None:
    from layercast.receiver.preview import PreviewDecoder

    PreviewDecoder().decode(layers)


def _timed(figures: Figures, kind: str, fn: Callable[[], None]) -> None:
    t = time.perf_counter()
    fn()
    dt = time.perf_counter() - t
    if dt > figures.slowest_s:
        figures.slowest_s, figures.slowest_kind = dt, kind


def _finding(figures: Figures, kind: str, exc: BaseException, data: bytes | Sequence[bytes]) -> None:
    sample = data if isinstance(data, bytes) else b"".join(data)
    figures.findings.append({"kind": kind, "error": f"{type(exc).__name__}: {exc}"[:300], "input": sample[:200].hex()})


def fuzz_packets(rng: random.Random, corpus: Sequence[pb.Packet], n: int, figures: Figures) -> None:
    """`n` sequences of 1-8 packets (mutated, mixed with valid ones) into one assembler each; every
    finished image is rendered."""
    from layercast.receiver.assembler import Assembler
    from layercast.receiver.events import ImageReady, PacketRejected

    done = 0
    while done < n:
        asm = Assembler(image_timeout=1.0)
        seq = [
            mutate_packet(rng, corpus) if rng.random() < 0.6 else framing.encode_packet(rng.choice(corpus))
            for _ in range(rng.randint(1, 8))
        ]

        def run(asm: Any = asm, seq: list[bytes] = seq) -> None:
            events = []
            for i, data in enumerate(seq):
                events += asm.receive(data, float(i))
            events += asm.finish_all(100.0)
            for ev in events:
                if isinstance(ev, PacketRejected):
                    figures.rejects[ev.error] += 1
                    if ev.error == "InternalError":
                        figures.findings.append(
                            {"kind": "packet", "error": ev.reason, "input": b"".join(seq)[:200].hex()}
                        )
                elif isinstance(ev, ImageReady):
                    figures.accepted += 1
                    try:
                        _render(ev.layers)
                    except LayercastError as exc:
                        figures.rejects[f"render:{type(exc).__name__}"] += 1

        try:
            _timed(figures, "packet sequence", run)
        except Exception as exc:  # a finding: the test fails on it
            _finding(figures, "packet", exc, seq)
        figures.inputs += len(seq)
        done += len(seq)


def fuzz_files(rng: random.Random, corpus: Sequence[pb.Packet], n: int, figures: Figures) -> None:
    """`n` mutated `.lcs` files through container parsing, image assembly and the preview decoder."""
    from layercast.receiver.layers import layerset_from_image

    for _ in range(n):
        packets = [framing.encode_packet(p) for p in rng.sample(list(corpus), k=min(len(corpus), rng.randint(1, 6)))]
        if rng.random() < 0.5:
            packets[rng.randrange(len(packets))] = mutate_packet(rng, corpus)
            data = framing.write_container(packets)
        else:
            data = _mutate_bytes(rng, framing.write_container(packets))

        def run(data: bytes = data) -> None:
            try:
                images = framing.container_to_images(data)
                for img in images:
                    _render(layerset_from_image(img))
                figures.accepted += 1
            except LayercastError as exc:
                figures.rejects[f"file:{type(exc).__name__}"] += 1

        try:
            _timed(figures, "file", run)
        except Exception as exc:
            _finding(figures, "file", exc, data)
        figures.inputs += 1


def campaign(inputs: int, seed: int = 0, *, files_share: float = 0.2) -> Figures:
    """Fuzz `inputs` inputs (a `files_share` of them files) from `seed`; returns the figures."""
    rng = random.Random(seed)
    corpus = seed_corpus()
    figures = Figures()
    t = time.perf_counter()
    n_files = int(inputs * files_share)
    fuzz_files(rng, corpus, n_files, figures)
    fuzz_packets(rng, corpus, inputs - n_files, figures)
    figures.seconds = time.perf_counter() - t
    figures.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of a campaign: prints its figures as JSON; exit 1 on any finding."""
    ap = argparse.ArgumentParser(prog="python -m layercast.bench.fuzz", description=__doc__.split("\n\n")[0])
    ap.add_argument("--inputs", type=int, default=100_000, help="inputs to try (default 100000)")
    ap.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    args = ap.parse_args(argv)
    figures = campaign(args.inputs, args.seed)
    print(json.dumps(figures.to_dict(), indent=1))
    return 1 if figures.findings else 0


if __name__ == "__main__":
    sys.exit(main())
