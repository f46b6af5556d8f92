"""The sender's asyncio shell: encoded images -> paced, FEC-protected, numbered packets on a transport.

    async with SendSession(transport, profile=get_profile("sbd"), key=key, stream_id=7) as tx:
        report = await tx.send_image(encoded)          # one EncodedImage
        reports = await tx.send_paths(paths, Encoder())   # encode image files and send them

Per image: `proto.framing.packetize` cuts the layers to the profile's MTU (semantic first, the image
header on fragment 0 of every layer on links), `common.fec.add_repair` adds repair fragments per layer
(most for the semantic layer), keyed streams get a strictly increasing `sequence` and an auth tag, and
a sans-I/O `sender.link.Pacer` spaces the packets to the link rate (the session sleeps on the event
loop until each departure time). The report records per-layer packet counts, bytes and send times.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from layercast.common.errors import InputError, LayercastError
from layercast.common.fec import FecPolicy, add_repair
from layercast.common.identity import camera_id, check_camera_name
from layercast.common.transport.base import Transport
from layercast.common.transport.lossy import LinkModel, LossyTransport
from layercast.common.types import DEFAULT_ORDER, EncodedImage, LayerKind
from layercast.proto import framing, pb
from layercast.sender.link import LinkProfile, Pacer, get_profile

if TYPE_CHECKING:
    from layercast.sender.encode import EncodeResult
    from layercast.sender.encoder import Encoder

log = logging.getLogger(__name__)

MAX_SEQUENCE_START = 2**42 - 2**32
"""Sequence numbers stay below 2**42 so they fit the 6 varint bytes `packetize` reserves for them."""


def clock_sequence_start() -> int:
    """A first sequence number that grows with wall time (milliseconds since 1970), so a restarted
    sender is not taken for a replay by a receiver that saw its previous run."""
    return min(int(time.time() * 1000), MAX_SEQUENCE_START)


@dataclass
class LayerSend:
    """What one layer cost on the wire and when it left (seconds after the image's first packet)."""

    family: str
    kind: str
    data_packets: int
    repair_packets: int
    payload_bytes: int
    wire_bytes: int
    first_s: float
    last_s: float
    units: int = 0


@dataclass
class SendReport:
    """One image sent: ids, totals, per-layer detail; `started` is event-loop time of the first packet."""

    stream_id: int
    image_id: int
    name: str
    packets: int
    wire_bytes: int
    payload_bytes: int
    started: float
    duration_s: float
    layers: list[LayerSend] = field(default_factory=list)
    camera: str = ""

    @property
    def overhead(self) -> float:
        """(wire - payload) / payload: framing + FEC + auth as a fraction of the payload."""
        return (self.wire_bytes - self.payload_bytes) / self.payload_bytes if self.payload_bytes else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (times in ms)."""
        return {
            "camera": self.camera,
            "stream_id": self.stream_id,
            "image_id": self.image_id,
            "name": self.name,
            "packets": self.packets,
            "wire_bytes": self.wire_bytes,
            "payload_bytes": self.payload_bytes,
            "overhead_pct": round(100 * self.overhead, 2),
            "duration_ms": round(1e3 * self.duration_s, 1),
            "layers": [
                {
                    "family": x.family,
                    "kind": x.kind,
                    "packets": x.data_packets,
                    "repair_packets": x.repair_packets,
                    "payload_bytes": x.payload_bytes,
                    "wire_bytes": x.wire_bytes,
                    "units": x.units,
                    "first_ms": round(1e3 * x.first_s, 1),
                    "last_ms": round(1e3 * x.last_s, 1),
                }
                for x in self.layers
            ],
        }


@dataclass(frozen=True)
class WirePacket:
    """A packet ready to send: wire bytes, family (reliability class) and whether it is an FEC repair.

    `shares` splits a bundled packet per layer: (kind, payload bytes, wire bytes) for each layer it
    carries, the first layer taking the shared framing; a single-layer packet has one share.
    """

    data: bytes
    family: str
    kind: LayerKind
    repair: bool
    payload_bytes: int
    shares: tuple[tuple[LayerKind, int, int], ...] = ()


def bundle_families(fec: FecPolicy, order: Sequence[str]) -> list[str]:
    """The families, in `order`, whose layers may be bundled: those the FEC policy gives no repairs."""
    return [f for f in order if fec.ratio(f) == 0]


def plan_packets(
    img: EncodedImage,
    *,
    mtu: int | None,
    fec: FecPolicy,
    order: Sequence[str] = DEFAULT_ORDER,
    header_every_layer: bool = True,
    key: bytes | None = None,
    next_sequence: Callable[[], int] | None = None,
    bundle: bool = False,
) -> list[WirePacket]:
    """Pure: the wire packets of one image in send order (each layer's data, then its repairs).

    `next_sequence` numbers packets (required when `key` is set; optional otherwise). `bundle` lets
    consecutive whole layers that get no FEC repairs share a packet where it fits the MTU.
    """
    if key is not None and next_sequence is None:
        raise InputError("a keyed stream needs sequence numbers (replay defence): pass next_sequence")
    families = bundle_families(fec, order) if bundle else []
    data = framing.packetize(
        img, mtu=mtu, order=order, header_every_layer=header_every_layer, keyed=key is not None, bundle=families
    )
    groups: dict[int, list[pb.Packet]] = {}  # a layer's fragments, or one bundled packet (keyed -1, -2, ...)
    for p in data:
        groups.setdefault(p.kind if not p.bundle else -1 - len(groups), []).append(p)
    out: list[WirePacket] = []
    for layer_packets in groups.values():  # dicts keep packetize's (send) order
        k = len(layer_packets)
        for p in layer_packets if layer_packets[0].bundle else add_repair(layer_packets, fec):
            if next_sequence is not None:
                p.sequence = next_sequence()
            repair = not p.bundle and p.fragment_index >= k
            wire = framing.encode_packet(p, key=key)
            if p.bundle:
                parts = [(framing.bundled_kind(b), len(b.units)) for b in p.bundle]
            else:
                parts = [(LayerKind(p.kind), 0 if repair else len(p.payload))]
            shares = tuple(
                (kind, payload, share)
                for (kind, payload), share in zip(parts, framing.wire_shares(p, len(wire)), strict=True)
            )
            kind = shares[0][0]
            out.append(WirePacket(wire, kind.family, kind, repair, sum(s[1] for s in shares), shares))
    return out


class SendSession:
    """Send encoded images over one transport; see the module docstring.

    `profile`: MTU, pace and FEC defaults (a name or a LinkProfile). `fec`: None = the profile's policy,
    `FecPolicy.none()` = off. `rate_bps`: overrides the profile's pace (0 = no pacing). `key`: HMAC key
    of this sender (packets then carry a sequence from `sequence_start`, default the ms clock).
    `link_model`: wrap the transport in a `LossyTransport` emulating that link (loss never touches
    `reliable_families`). `bundle`: None = the profile's choice; True lets whole layers without FEC
    share one packet, which travels on the class of its first layer; a bundle would turn one lost
    packet into a lost image, so bundling is turned off when `link_model` loses packets of that class.
    `camera`: this sender's name (`common.identity`); its packets then carry `camera_id(camera)` as
    their stream id, which receivers check against the topic or connection they arrive on (`stream_id`
    is the raw id of an unnamed sender). Use ``async with`` (opens/drains/closes the transport) or
    manage the transport yourself and call `send_image`.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        profile: LinkProfile | str = "webrtc",
        fec: FecPolicy | None = None,
        key: bytes | None = None,
        stream_id: int = 0,
        order: Sequence[str] = DEFAULT_ORDER,
        rate_bps: float | None = None,
        link_model: LinkModel | None = None,
        reliable_families: Iterable[str] = (),
        first_image_id: int = 0,
        sequence_start: int | None = None,
        send_timeout: float | None = None,
        bundle: bool | None = None,
        camera: str | None = None,
    ) -> None:
        if camera is not None:
            check_camera_name(camera)
            if stream_id not in (0, camera_id(camera)):
                raise InputError(f"camera {camera!r} sends as stream {camera_id(camera)}, not {stream_id}")
            stream_id = camera_id(camera)
        self.camera = camera
        self.profile = get_profile(profile) if isinstance(profile, str) else profile
        self.fec = fec if fec is not None else self.profile.fec
        self.bundle = self.profile.bundle if bundle is None else bundle
        lossy = link_model is not None and (link_model.loss > 0 or link_model.p_good_to_bad > 0)
        first = next(iter(bundle_families(self.fec, order)), None)
        if self.bundle and lossy and first not in set(reliable_families):
            self.bundle = False  # see the docstring: bundles only ride a class that loses nothing
        if not 0 <= stream_id < 2**32:
            raise InputError(f"stream id {stream_id} must be in 0..{2**32 - 1}")
        if not 0 <= first_image_id < 2**32:
            raise InputError(f"first image id {first_image_id} must be in 0..{2**32 - 1}")
        if sorted(order) != sorted(DEFAULT_ORDER):
            raise InputError(f"order must name each of {', '.join(DEFAULT_ORDER)} once, got {list(order)}")
        if key is not None and not 16 <= len(key) <= 1024:
            raise InputError(f"sender key has {len(key)} bytes; use 16..1024 (e.g. 32 random bytes)")
        self.key = key
        self.stream_id = stream_id
        self.order = tuple(order)
        rate = self.profile.rate_bps if rate_bps is None else (rate_bps or None)
        self.pacer = Pacer(rate)
        self.transport: Transport = (
            LossyTransport(transport, send_model=link_model, reliable_families=reliable_families)
            if link_model is not None
            else transport
        )
        self.next_image_id = first_image_id
        if sequence_start is None:
            sequence_start = clock_sequence_start() if key is not None else 1
        if not 1 <= sequence_start <= MAX_SEQUENCE_START:
            raise InputError(f"sequence start {sequence_start} must be in 1..{MAX_SEQUENCE_START}")
        self._sequence = sequence_start - 1
        self.send_timeout = send_timeout
        self.reports: list[SendReport] = []

    async def __aenter__(self) -> SendSession:
        from layercast.common.codecs.edges import warm_up

        await asyncio.to_thread(warm_up)  # compile the edge coder before the link is up, off the event loop
        await self.transport.open()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if et is None:
                await self.transport.drain()
        finally:
            await self.transport.close()

    def edges_travel_whole(self, encoded: EncodedImage) -> bool:
        """True when no stripe of `encoded`'s edge map can be lost alone on this session's link: the
        structure layer rides in one data packet (a bundle, or one fragment of its own). False on a link
        without an MTU (a file keeps the stripes `layercast encode` writes: it may be sent on later over a
        link that cuts it finer). What `encode_file` checks before coding the edge map in one stripe."""
        if self.profile.mtu is None:
            return False
        packets = framing.packetize(
            encoded,
            mtu=self.profile.mtu,
            order=self.order,
            header_every_layer=self.profile.header_every_layer,
            keyed=self.key is not None,
            bundle=bundle_families(self.fec, self.order) if self.bundle else (),
        )
        edges = pb.CODEC_ID_EDGES_CTX
        carrying = [p for p in packets if p.layer.codec == edges or any(d.codec == edges for d in p.bundle)]
        return len(carrying) == 1

    def _next_sequence(self) -> int:
        self._sequence += 1
        return self._sequence

    async def send_image(self, encoded: EncodedImage, *, image_id: int | None = None, name: str = "") -> SendReport:
        """Packetize, protect, pace and send one image; `image_id` None = the session's next id."""
        iid = self.next_image_id if image_id is None else image_id
        if not 0 <= iid < 2**32:
            raise InputError(f"image id {iid} must be in 0..{2**32 - 1}")
        self.next_image_id = (iid + 1) % 2**32
        img = dataclasses.replace(encoded, stream_id=self.stream_id, image_id=iid)
        packets = plan_packets(
            img,
            mtu=self.profile.mtu,
            fec=self.fec,
            order=self.order,
            header_every_layer=self.profile.header_every_layer,
            key=self.key,
            next_sequence=self._next_sequence if self.key is not None else None,
            bundle=self.bundle,
        )
        loop = asyncio.get_running_loop()
        started = loop.time()
        layers: dict[LayerKind, LayerSend] = {}
        sends: list[tuple[WirePacket, float]] = []
        if self.pacer.rate_bps is None:  # unpaced: the whole image in one call (WebRTC bundles its packets)
            await self.transport.send_many([(w.data, w.family) for w in packets], timeout=self.send_timeout)
            sends = [(w, 0.0) for w in packets]
        else:
            for wp in packets:
                depart = self.pacer.next_send_time(len(wp.data), loop.time())
                wait = depart - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                sent_at = loop.time() - started
                await self.transport.send(wp.data, family=wp.family, timeout=self.send_timeout)
                sends.append((wp, sent_at))
        for wp, sent_at in sends:
            for kind, payload, wire in wp.shares:
                ls = layers.get(kind)
                if ls is None:
                    ls = layers[kind] = LayerSend(kind.family, kind.name.lower(), 0, 0, 0, 0, sent_at, sent_at)
                ls.repair_packets += wp.repair
                ls.data_packets += not wp.repair
                ls.payload_bytes += payload
                ls.wire_bytes += wire
                ls.last_s = sent_at
        for layer in img.layers:
            if layer.kind in layers:
                layers[layer.kind].units = len(layer.units)
        report = SendReport(
            camera=self.camera or "",
            stream_id=self.stream_id,
            image_id=iid,
            name=name,
            packets=len(packets),
            wire_bytes=sum(len(w.data) for w in packets),
            payload_bytes=sum(w.payload_bytes for w in packets),
            started=started,
            duration_s=loop.time() - started,
            layers=list(layers.values()),
        )
        self.reports.append(report)
        return report

    def encode_file(self, path: Path, encoder: Encoder, *, image_id: int | None = None) -> EncodeResult:
        """Encode one image file with `encoder` as this camera (blocking: call it in a worker thread).

        The byte budget counts every byte the packets carry, the image id's varint included: `image_id` is
        the id the image will be sent with (None: the session's next id; a spool passes the id it gives).

        With `encoder.auto_stripes` (no explicit stripe count), an image whose structure layer travels in one
        packet (bundled, or one fragment of its own: `edges_travel_whole`) is coded with one edge stripe:
        stripes exist so a lost packet costs one stripe; where the layer travels whole they only cost bytes
        (~5% of the structure). The budget counts one packet per image where this session bundles, else a
        packet per layer (`EncodeOptions.bundle`). Encoder warnings (an empty prompt) are logged.
        """
        iid = self.next_image_id if image_id is None else image_id
        if encoder.options.bundle != self.bundle:  # the budget counts the packets this link carries
            encoder = encoder.with_options(bundle=self.bundle)
        result = None
        if encoder.auto_stripes and self.profile.mtu is not None:
            whole = encoder.with_options(stripe_rows=0).encode(path, stream_id=self.stream_id, image_id=iid)
            if self.edges_travel_whole(whole.image):
                result = whole
        if result is None:
            result = encoder.encode(path, stream_id=self.stream_id, image_id=iid)
        for warning in result.warnings:
            log.warning("%s: %s", path.name, warning)
        return result

    async def send_paths(
        self,
        paths: Sequence[Path],
        encoder: Encoder,
        *,
        progress: bool = True,
        on_error: Callable[[Path, LayercastError], None] | None = None,
    ) -> list[SendReport]:
        """Encode image files with `encoder` and send them in order; the next file is encoded in a worker
        thread while one is sent (see :meth:`encode_file`).

        A file that fails to encode is reported to `on_error` and skipped (raised when None).
        """
        from layercast.progress import Progress

        bar = Progress(len(paths), "send", enabled=progress)
        reports: list[SendReport] = []

        def encode(path: Path, ahead: int) -> EncodeResult:  # `ahead`: images sent before this one
            return self.encode_file(path, encoder, image_id=(self.next_image_id + ahead) % 2**32)

        pending = asyncio.ensure_future(asyncio.to_thread(encode, paths[0], 0)) if paths else None
        for i, path in enumerate(paths):
            assert pending is not None
            try:
                result = await pending
            except LayercastError as exc:
                result = None
                if on_error is None:
                    raise
                on_error(path, exc)
            ahead = 0 if result is None else 1  # encoded while this one is sent
            pending = (
                asyncio.ensure_future(asyncio.to_thread(encode, paths[i + 1], ahead)) if i + 1 < len(paths) else None
            )
            if result is None:
                bar.update(note=f"{path.name}: failed")
                continue
            try:
                report = await self.send_image(result.image, name=str(path))
            except BaseException:
                if pending is not None:
                    pending.cancel()
                raise
            reports.append(report)
            bar.update(note=path.name)
        return reports
