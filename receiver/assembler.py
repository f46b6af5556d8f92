"""Sans-I/O progressive assembler: wire packets in, typed events out. No sockets, no sleeps, no clock.

    asm = Assembler(key=None, image_timeout=10.0)
    for ev in asm.receive(wire_bytes, now):      # any order, duplicates, losses
        ...                                       # LayerSetChanged -> decode a fresher preview
    t = asm.next_timer()                          # call handle_timer(t) when the clock reaches it
    asm.finish_all(now)                           # end of stream: every open image yields ImageReady

Images are keyed by (camera, image id): `receive(data, now, camera=...)` names the camera the
transport says the packet came from (MQTT topic level, WebRTC offer); the packet's `stream_id` must
then equal `common.identity.camera_id(camera)` (else a counted StreamMismatchError reject). Without a
camera the packet is filed under its decimal stream id. Per image it verifies (CRC, auth + replay
window when keyed), drops duplicates, recovers lost fragments with FEC, rebuilds units, decodes each
layer with its registered codec (a partial layer where the codec allows it, e.g. an edge map with a
`known` mask) and emits the events of `receiver.events`. Every image that got a packet yields exactly
one ImageReady: when its expected layer families are complete, or `image_timeout` seconds after its
last packet (at most `max_image_age` after its first), or when `max_images` newer images push it out.
Memory is bounded by `max_images` x `max_bytes_per_image` plus the decoded values.

With `defer_decode=True` a layer whose units are all in is not decoded inside `receive`: it becomes a
`LayerDecodeJob` (`take_decode_jobs()`), which the caller runs anywhere (e.g. a worker thread) and hands
back with `deliver(job, value, error, now)`; that call emits what `receive` would have (LayerComplete,
LayerSetChanged, ImageReady when it was the last layer). The assembler itself stays single-threaded and
clock-free: jobs are plain values, and an image finished (timeout, eviction, `finish_all`) while a job of
it is out decodes that layer in place, so its ImageReady never misses a layer; the late result is ignored.

    asm = Assembler(defer_decode=True)
    events = asm.receive(data, now)
    for job in asm.take_decode_jobs():
        value, error = job.run()                  # anywhere, any thread
        events += asm.deliver(job, value, error, job.time)
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from layercast.common import limits
from layercast.common.errors import (
    AuthError,
    BitstreamError,
    CodecError,
    LayercastError,
    LimitError,
    StreamMismatchError,
)
from layercast.common.fec import BLOCK_HEADER, FEC_ZFEC, ZFEC_MAX_BLOCKS, block_size, recover
from layercast.common.identity import camera_id, stream_label
from layercast.common.registry import decode_layer
from layercast.common.replay import KeyRing, ReplayStore, ReplayWindow, as_keyring
from layercast.common.types import DEFAULT_ORDER, LayerKind, LayerSet
from layercast.proto import pb
from layercast.proto.framing import collect_units, decode_packet, edge_geometry, unbundle, wire_shares
from layercast.receiver.events import (
    Event,
    ImageReady,
    LayerComplete,
    LayerPartial,
    LayerSetChanged,
    PacketRejected,
)


@dataclass(eq=False)
class LayerDecodeJob:
    """A layer whose units all arrived, to be decoded by the caller (`Assembler(defer_decode=True)`).

    `run()` decodes it (any thread: it touches nothing of the assembler) and returns (value, None) or
    (None, the exception it raised); hand that back to the assembler with `Assembler.deliver`."""

    camera: str
    stream_id: int
    image_id: int
    kind: LayerKind
    descriptor: pb.LayerDescriptor
    units: list[bytes | None]
    time: float
    """The `now` at which the layer's last unit arrived (what its events carry when delivered with it)."""

    def run(self) -> tuple[Any, BaseException | None]:
        try:
            return decode_layer(self.descriptor, self.units), None
        except Exception as exc:  # reported through deliver as a typed reject
            return None, exc


DEFAULT_LONG_SIDE = 512
"""Long side of the image size assumed when no packet with the image header arrived."""


@dataclass
class _Layer:
    kind: LayerKind
    desc: pb.LayerDescriptor
    k: int
    r: int
    fec: int
    frags: dict[int, pb.Packet] = field(default_factory=dict)
    repair_size: int | None = None
    stored_bytes: int = 0
    wire_bytes: int = 0
    recovered: int = 0
    units: list[bytes | None] | None = None
    units_known: int = 0
    value: Any = None
    complete: bool = False
    failed: bool = False
    partial_known: int = -1  # units_known at the last LayerPartial (-1: none emitted)
    partial_due: float | None = None
    last_partial: float = -math.inf
    pending: LayerDecodeJob | None = None  # all units in, value being decoded by the caller (defer_decode)

    @property
    def family(self) -> str:
        return self.kind.family


@dataclass
class _Image:
    stream_id: int
    image_id: int
    first: float
    last: float
    camera: str = ""
    header: pb.ImageHeader | None = None
    layers: dict[int, _Layer] = field(default_factory=dict)
    nbytes: int = 0


class Assembler:
    """Reassemble images from packets; see the module docstring.

    `key`: None (unauthenticated), one key for every stream, a ``{stream_id: key}`` mapping or a
    :class:`~layercast.common.replay.KeyRing` (keys by camera name: a packet from a named camera is
    checked with that camera's key, so one keyed for another camera fails). When keyed, every packet
    must authenticate and carry a fresh `sequence` (>= 1, per stream, within a `replay_window`-packet
    window, at most `max_sequence_ahead_ms` ahead of `wall_ms()`, the wall clock in ms by default).
    `replay_store`: keeps each window's newest sequence across restarts (read at construction).
    `expected_families`: the layer families that make an image complete (used until the bitstream's
    ImageHeader carries a `layer_count`; then that count decides).
    `partial_interval`: least time between two partial decodes of one layer (later units are decoded
    at the next timer). `already_done(camera, image_id)`: asked once when a packet would open a new
    image; True means that image was finished before (e.g. its output exists from an earlier run), so
    the packet is dropped as a duplicate (counted in `stats["done_before"]`). `defer_decode`: complete
    layers are decoded by the caller (`take_decode_jobs` / `deliver`, see the module docstring).
    """

    def __init__(
        self,
        key: bytes | Mapping[int, bytes] | KeyRing | None = None,
        image_timeout: float = 10.0,
        max_images: int = 64,
        max_bytes_per_image: int = 2 * 1024 * 1024,
        *,
        max_image_age: float | None = None,
        max_fragments_per_layer: int = limits.MAX_FRAGMENTS,
        expected_families: Sequence[str] = DEFAULT_ORDER,
        partial_interval: float = 0.25,
        replay_window: int = 64,
        max_streams: int = 1024,
        max_finished: int = 4096,
        already_done: Callable[[str, int], bool] | None = None,
        replay_store: ReplayStore | None = None,
        max_sequence_ahead_ms: int | None = 600_000,
        wall_ms: Callable[[], float] = lambda: time.time() * 1000,
        defer_decode: bool = False,
    ) -> None:
        if not image_timeout > 0:
            raise ValueError("image_timeout must be positive")
        if max_images < 1 or max_bytes_per_image < 1 or max_fragments_per_layer < 1:
            raise ValueError("max_images, max_bytes_per_image and max_fragments_per_layer must be >= 1")
        self.keys = as_keyring(key)
        self.image_timeout = float(image_timeout)
        self.max_image_age = float(max_image_age) if max_image_age is not None else 6.0 * self.image_timeout
        self.max_images = max_images
        self.max_bytes_per_image = max_bytes_per_image
        self.max_fragments_per_layer = max_fragments_per_layer
        self.expected_families = tuple(expected_families)
        self.partial_interval = partial_interval
        self.replay_window = replay_window
        self.max_streams = max_streams
        self.max_finished = max_finished
        self.already_done = already_done
        self.replay_store = replay_store
        self._saved_tops = replay_store.load() if replay_store is not None else {}
        self.max_sequence_ahead_ms = max_sequence_ahead_ms
        self.wall_ms = wall_ms
        self.defer_decode = defer_decode
        self._jobs: list[LayerDecodeJob] = []
        self._new_timer: float | None = None  # the earliest timer set since take_new_timer
        self._images: OrderedDict[tuple[str, int], _Image] = OrderedDict()
        self._finished: OrderedDict[tuple[str, int], None] = OrderedDict()
        self._windows: OrderedDict[str, ReplayWindow] = OrderedDict()
        self.last_key: tuple[str, int] | None = None
        """(camera, image id) of the image the last packet given to `receive` went into; None when that
        packet was rejected or belonged to an image already finished."""
        self.stats: dict[str, int] = dict.fromkeys(
            (
                "packets",
                "accepted",
                "rejected",
                "duplicate",
                "redundant",
                "late",
                "late_data",
                "done_before",
                "recovered",
                "images",
                "internal_errors",
            ),
            0,
        )
        """Counters: packets seen, accepted, rejected, duplicates dropped, redundant (layer already
        complete), late (image already finished; late_data: of those, data rather than FEC repairs),
        done_before (image finished in an earlier run, see `already_done`), fragments recovered by FEC,
        images finished."""

    # --- public API -----------------------------------------------------------------------------------

    @property
    def images_in_flight(self) -> int:
        return len(self._images)

    def receive(self, data: bytes, now: float, *, camera: str | None = None) -> list[Event]:
        """Process one packet's wire bytes received at `now` from `camera` (None: the transport names
        no camera; the packet is filed under its stream id); returns the events it caused.

        Never raises: a packet that trips an unexpected error (a bug this packet found) becomes a
        PacketRejected with error "InternalError: <type>", like any other refused packet."""
        try:
            return self._receive(data, now, camera)
        except Exception as exc:  # no packet may stop a receiver: counted and reported
            self.last_key = None
            return [self._internal(None, None, exc, now, camera or "")]

    def _receive(self, data: bytes, now: float, camera: str | None) -> list[Event]:
        self.stats["packets"] += 1
        self.last_key = None
        try:
            p = self._authenticate(data, camera)
        except LayercastError as exc:
            return [self._reject(None, None, exc, now, camera or "")]
        sid, iid = p.stream_id, p.image_id
        cam = camera if camera is not None else stream_label(sid)
        key = (cam, iid)
        if key in self._finished:
            self.stats["late"] += 1
            if p.bundle or p.fragment_index < p.fragment_count:
                self.stats["late_data"] += 1  # not an FEC repair: the image's data again, or too late
            return []
        events: list[Event] = []
        img = self._images.get(key)
        if img is None:
            if self.already_done is not None and self.already_done(cam, iid):
                self.stats["done_before"] += 1
                self._remember_finished(key)
                return []
            while len(self._images) >= self.max_images:
                events += self._finish(next(iter(self._images.values())), now)
            img = self._images[key] = _Image(sid, iid, first=now, last=now, camera=cam)
            self._note_timer(self._deadline(img))
        img.last = max(img.last, now)
        for q, nbytes in zip(unbundle(p), wire_shares(p, len(data)), strict=True):
            try:
                events += self._add(img, q, nbytes, now)
            except LayercastError as exc:
                events.append(self._reject(sid, iid, exc, now, cam))
            if key in self._finished:
                break
        if not img.layers and img.header is None:
            self._images.pop(key, None)  # a rejected first packet does not open an image
        elif key in self._images or key in self._finished:
            self.last_key = key
        return events

    def take_decode_jobs(self) -> list[LayerDecodeJob]:
        """The layer decodes `defer_decode` left to the caller since the last call (oldest first)."""
        jobs, self._jobs = self._jobs, []
        return jobs

    def deliver(self, job: LayerDecodeJob, value: Any, error: BaseException | None, now: float) -> list[Event]:
        """Hand back a `LayerDecodeJob`'s result (`job.run()`): the events its layer's completion causes,
        or a PacketRejected when the decode raised. A job whose image finished meanwhile (its layer was
        then decoded in place) or that was delivered before yields nothing. Never raises."""
        try:
            img = self._images.get((job.camera, job.image_id))
            L = img.layers.get(job.kind) if img is not None else None
            if img is None or L is None or L.pending is not job:
                return []
            L.pending = None
            if error is None:
                return self._completed(img, L, value, now)
            return self._layer_failed(img, L, error, now)
        except Exception as exc:  # a bug a packet found: counted and reported, like receive's
            return [self._internal(job.stream_id, job.image_id, exc, now, job.camera)]

    def next_timer(self) -> float | None:
        """The next time `handle_timer` has work (an image timeout or a deferred partial decode)."""
        times = [self._deadline(img) for img in self._images.values()]
        times += [
            L.partial_due for img in self._images.values() for L in img.layers.values() if L.partial_due is not None
        ]
        return min(times) if times else None

    def take_new_timer(self) -> float | None:
        """The earliest timer set since the last call (a new image's deadline, a partial decode falling
        due), or None: an image's deadline only moves later as packets come, so a caller sleeping until
        `next_timer` needs waking only when this is earlier (O(1) per packet, where `next_timer` scans)."""
        t, self._new_timer = self._new_timer, None
        return t

    def _note_timer(self, t: float) -> None:
        if self._new_timer is None or t < self._new_timer:
            self._new_timer = t

    def handle_timer(self, now: float) -> list[Event]:
        """Run due partial decodes and finish images whose time is up."""
        events: list[Event] = []
        for img in list(self._images.values()):
            for L in img.layers.values():
                if L.partial_due is not None and L.partial_due <= now:
                    events += self._partial(img, L, now)
            if self._deadline(img) <= now:
                events += self._finish(img, now)
        return events

    def finish_all(self, now: float) -> list[Event]:
        """Finish every open image now (end of stream): each yields its ImageReady."""
        events: list[Event] = []
        for img in list(self._images.values()):
            events += self._finish(img, now)
        return events

    # --- packet intake --------------------------------------------------------------------------------

    def _authenticate(self, data: bytes, camera: str | None) -> pb.Packet:
        keys = self.keys
        if not keys.keyed:
            return _check_camera(decode_packet(data), camera)
        if camera is not None:
            key = keys.key_for_camera(camera)  # the transport names the camera: its key, nobody else's
            if key is None:
                raise AuthError(f"no key is configured for camera {camera!r}")
        elif keys.per_sender:
            sid = decode_packet(data).stream_id  # unauthenticated peek, only to pick the key
            key = keys.key_for(sid)
            if key is None:
                raise AuthError(f"no key is configured for stream {sid}")
        else:
            key = keys.default
        p = _check_camera(decode_packet(data, key=key), camera)
        wkey = stream_label(p.stream_id)
        window = self._windows.get(wkey)
        if window is None:
            top = self._saved_tops.get(wkey, 0)
            window = self._windows[wkey] = ReplayWindow(
                self.replay_window, top=top, max_ahead=self.max_sequence_ahead_ms
            )
            while len(self._windows) > self.max_streams:
                self._windows.popitem(last=False)
        else:
            self._windows.move_to_end(wkey)
        try:
            window.check(p.sequence, self.wall_ms())
        except AuthError as exc:
            raise _Located(p, exc) from None
        before = window.top
        window.update(p.sequence)
        if window.top != before:
            self._saved_tops[wkey] = window.top  # an evicted window comes back with its newest number
            if self.replay_store is not None:
                self.replay_store.save(wkey, window.top)
        return p

    def _reject(
        self, sid: int | None, iid: int | None, exc: LayercastError, now: float, camera: str = ""
    ) -> PacketRejected:
        self.stats["rejected"] += 1
        if isinstance(exc, _Located):
            sid, iid, exc = exc.packet.stream_id, exc.packet.image_id, exc.error
        return PacketRejected(sid, iid, str(exc), type(exc).__name__, now, camera)

    def _add(self, img: _Image, p: pb.Packet, nbytes: int, now: float) -> list[Event]:
        # Check everything first; change state only for a packet that passes.
        new_header = p.HasField("header") and img.header is None
        # decoder hints ride only on the first layer's header; the rest of the header must agree everywhere
        new_hints = (
            p.HasField("header")
            and img.header is not None
            and p.header.HasField("hints")
            and not img.header.HasField("hints")
        )
        if p.HasField("header") and img.header is not None and _header_core(img.header) != _header_core(p.header):
            raise BitstreamError("image header differs from the one an earlier fragment carried")
        L = img.layers.get(p.kind)
        new_layer = L is None
        if L is None:
            L = self._new_layer(p)
        else:
            self._check_consistent(L, p)
            if p.part_count > 1 and p.fragment_index < L.k:
                for g in L.frags.values():
                    if g.part_count > 1 and g.unit_first == p.unit_first and g.part_count != p.part_count:
                        raise BitstreamError(
                            f"fragment cuts unit {p.unit_first} into {p.part_count} slices; an earlier one"
                            f" into {g.part_count}"
                        )
        idx = p.fragment_index
        redundant = L.complete or L.failed or L.pending is not None
        duplicate = not redundant and idx in L.frags
        if not (redundant or duplicate):
            if img.nbytes + nbytes > self.max_bytes_per_image:
                raise LimitError(f"image {img.image_id} exceeds the {self.max_bytes_per_image}-byte limit per image")
            if idx >= L.k:
                self._check_repair(L, p)
            elif L.repair_size is not None and block_size(p) > L.repair_size:
                raise BitstreamError("data fragment is larger than the layer's FEC block size")
        events: list[Event] = []
        if new_layer:
            img.layers[p.kind] = L
        if new_header:
            img.header = pb.ImageHeader()
            img.header.CopyFrom(p.header)
            events += self._header_changed(img, now)
        elif new_hints and img.header is not None:
            img.header.hints.CopyFrom(p.header.hints)
        if redundant or duplicate:
            self.stats["redundant" if redundant else "duplicate"] += 1
            if new_header and self._is_complete(img):
                events += self._finish(img, now)
            return events
        self.stats["accepted"] += 1
        if idx >= L.k:
            L.repair_size = len(p.payload)
        L.frags[idx] = p
        L.stored_bytes += nbytes
        L.wire_bytes += nbytes
        img.nbytes += nbytes
        try:
            events += self._progress(img, L, [p] if idx < L.k else [], now)
        except LayercastError as exc:
            self._fail(img, L)
            events.append(self._reject(img.stream_id, img.image_id, exc, now, img.camera))
        return events

    def _new_layer(self, p: pb.Packet) -> _Layer:
        if not p.HasField("layer"):
            raise BitstreamError("the first fragment of a layer carries no layer descriptor")
        if p.fragment_count + p.repair_count > self.max_fragments_per_layer:
            raise LimitError(
                f"layer declares {p.fragment_count}+{p.repair_count} fragments, more than the "
                f"{self.max_fragments_per_layer} allowed per layer"
            )
        desc = pb.LayerDescriptor()
        desc.CopyFrom(p.layer)
        fec = FEC_ZFEC if p.fec_scheme == FEC_ZFEC or p.fragment_index >= p.fragment_count else p.fec_scheme
        return _Layer(LayerKind(p.kind), desc, p.fragment_count, p.repair_count, fec)

    @staticmethod
    def _check_consistent(L: _Layer, p: pb.Packet) -> None:
        if p.fragment_count != L.k or p.repair_count != L.r:
            raise BitstreamError(
                f"fragment declares {p.fragment_count}+{p.repair_count} fragments; its layer has {L.k}+{L.r}"
            )
        if p.HasField("layer") and p.layer.SerializeToString(deterministic=True) != L.desc.SerializeToString(
            deterministic=True
        ):
            raise BitstreamError("layer descriptor differs from the one an earlier fragment carried")

    @staticmethod
    def _check_repair(L: _Layer, p: pb.Packet) -> None:
        if p.fec_scheme != FEC_ZFEC:
            raise BitstreamError(f"repair fragment with fec_scheme {p.fec_scheme}; this build knows {FEC_ZFEC} (zfec)")
        if L.k + L.r > ZFEC_MAX_BLOCKS:
            raise LimitError(f"FEC block of {L.k}+{L.r} fragments exceeds zfec's {ZFEC_MAX_BLOCKS}")
        if len(p.payload) < BLOCK_HEADER.size or (L.repair_size is not None and len(p.payload) != L.repair_size):
            raise BitstreamError("repair fragment size differs from the layer's other repair fragments")
        if any(i < L.k and block_size(f) > len(p.payload) for i, f in L.frags.items()):
            raise BitstreamError("repair fragment is smaller than a data fragment of its layer")

    # --- layer progress -------------------------------------------------------------------------------

    def _progress(self, img: _Image, L: _Layer, new: list[pb.Packet], now: float) -> list[Event]:
        events: list[Event] = []
        data_count = sum(1 for i in L.frags if i < L.k)
        if data_count < L.k and L.r and len(L.frags) >= L.k:
            for f in recover(list(L.frags.values())):
                if f.fragment_index not in L.frags:
                    L.frags[f.fragment_index] = f
                    L.recovered += 1
                    self.stats["recovered"] += 1
                    new.append(f)
                    if f.HasField("header") and img.header is None:
                        img.header = pb.ImageHeader()
                        img.header.CopyFrom(f.header)  # the lost fragment's header, restored by FEC
                        events += self._header_changed(img, now)
        if not new:
            return events
        units = self._merge_units(L, new)
        known = sum(u is not None for u in units)
        if known == len(units):
            return events + self._complete(img, L, units, now)
        if known > L.units_known:
            L.units_known = known
            if now - L.last_partial >= self.partial_interval:
                return events + self._partial(img, L, now)
            L.partial_due = L.last_partial + self.partial_interval
            self._note_timer(L.partial_due)
        return events

    def _header_changed(self, img: _Image, now: float) -> list[Event]:
        if any(x.value is not None for x in img.layers.values()):
            return [LayerSetChanged(img.stream_id, img.image_id, self._layerset(img), "header", now, img.camera)]
        return []

    @staticmethod
    def _merge_units(L: _Layer, new: list[pb.Packet]) -> list[bytes | None]:
        """Add the units carried by the `new` data fragments to the layer's unit list (incremental)."""
        n = L.desc.unit_count
        if L.units is None:
            L.units = [None] * n
        units = L.units
        for f in new:
            if f.part_count > 1:
                group = [g for i, g in L.frags.items() if i < L.k and g.part_count > 1 and g.unit_first == f.unit_first]
                got = collect_units(n, group)
            else:
                got = collect_units(n, [f])
            for i, u in enumerate(got):
                if u is not None and units[i] is None:
                    units[i] = u
        return units

    def _complete(self, img: _Image, L: _Layer, units: list[bytes | None], now: float) -> list[Event]:
        if self.defer_decode:
            L.pending = LayerDecodeJob(img.camera, img.stream_id, img.image_id, L.kind, L.desc, units, now)
            L.partial_due = None
            L.units_known = len(units)
            self._release(img, L)
            self._jobs.append(L.pending)
            return []
        value = decode_layer(L.desc, units)
        L.units_known = len(units)
        self._release(img, L)
        return self._completed(img, L, value, now)

    @staticmethod
    def _release(img: _Image, L: _Layer) -> None:
        img.nbytes -= L.stored_bytes  # the fragments are no longer needed
        L.frags.clear()
        L.stored_bytes = 0

    def _decode_pending(self, img: _Image, L: _Layer, now: float) -> list[Event]:
        """Decode, here and now, a layer whose job is still out (its image is being finished)."""
        job, L.pending = L.pending, None
        assert job is not None
        value, error = job.run()
        if error is None:
            return self._completed(img, L, value, now, finish=False)
        return self._layer_failed(img, L, error, now)  # never raised: this may run from a timer

    def _layer_failed(self, img: _Image, L: _Layer, error: BaseException, now: float) -> list[Event]:
        """A layer's decode raised: the layer is dropped; a codec's refusal is a typed reject, anything
        else (a bug this layer found) an InternalError one."""
        self._fail(img, L)
        if isinstance(error, LayercastError):
            return [self._reject(img.stream_id, img.image_id, error, now, img.camera)]
        return [self._internal(img.stream_id, img.image_id, error, now, img.camera)]

    def _internal(
        self, sid: int | None, iid: int | None, exc: BaseException, now: float, camera: str
    ) -> PacketRejected:
        """An unexpected error, counted and reported as an "InternalError" reject."""
        self.stats["rejected"] += 1
        self.stats["internal_errors"] += 1
        return PacketRejected(sid, iid, f"{type(exc).__name__}: {exc}"[:300], "InternalError", now, camera)

    def _completed(self, img: _Image, L: _Layer, value: Any, now: float, *, finish: bool = True) -> list[Event]:
        """A layer decoded to `value`: LayerComplete, LayerSetChanged, and ImageReady when it was the last
        (unless `finish` is False: the caller is finishing the image)."""
        L.value, L.complete, L.partial_due = value, True, None
        units = L.units or []
        payload = sum(len(u) for u in units if u is not None)
        layers = self._layerset(img)
        events: list[Event] = [
            LayerComplete(
                img.stream_id,
                img.image_id,
                L.family,
                L.kind,
                value,
                payload,
                now,
                L.wire_bytes,
                L.recovered,
                img.camera,
            ),
            LayerSetChanged(img.stream_id, img.image_id, layers, f"{L.family} complete", now, img.camera),
        ]
        if finish and self._is_complete(img):
            events += self._finish(img, now, layers)
        return events

    def _is_complete(self, img: _Image) -> bool:
        """All layers arrived: as many complete layers as the header's `layer_count` where the bitstream
        has that field, else every family of `expected_families`."""
        count = int(getattr(img.header, "layer_count", 0)) if img.header is not None else 0
        if count:
            return sum(L.complete for L in img.layers.values()) >= count
        done = {L.family for L in img.layers.values() if L.complete}
        return all(f in done for f in self.expected_families)

    def _partial(self, img: _Image, L: _Layer, now: float) -> list[Event]:
        L.partial_due = None
        L.last_partial = now
        L.partial_known = L.units_known
        units = L.units if L.units is not None else [None] * L.desc.unit_count
        value = None
        if L.units_known:
            try:
                value = decode_layer(L.desc, units)
            except CodecError:
                value = None  # this codec cannot use a partial layer (or this one)
        missing = tuple(i for i, u in enumerate(units) if u is None)
        events: list[Event] = [
            LayerPartial(img.stream_id, img.image_id, L.family, missing, value, now, L.kind, len(units), img.camera)
        ]
        if value is not None:
            L.value = value
            events.append(
                LayerSetChanged(
                    img.stream_id, img.image_id, self._layerset(img), f"{L.family} partial", now, img.camera
                )
            )
        return events

    def _fail(self, img: _Image, L: _Layer) -> None:
        L.failed, L.partial_due = True, None
        img.nbytes -= L.stored_bytes
        L.frags.clear()
        L.stored_bytes = 0

    # --- finishing ------------------------------------------------------------------------------------

    def _deadline(self, img: _Image) -> float:
        return min(img.last + self.image_timeout, img.first + self.max_image_age)

    def _finish(self, img: _Image, now: float, layers: LayerSet | None = None) -> list[Event]:
        events: list[Event] = []
        for L in list(img.layers.values()):
            if L.pending is not None:  # its job is still out: the final layer set must not miss it
                events += self._decode_pending(img, L, now)
                layers = None
        for L in img.layers.values():
            if not L.complete and not L.failed and (L.partial_due is not None or L.partial_known != L.units_known):
                events += self._partial(img, L, now)
        key = (img.camera, img.image_id)
        del self._images[key]
        self._remember_finished(key)
        self.stats["images"] += 1
        complete_fams = {L.family for L in img.layers.values() if L.complete}
        seen = {L.family for L in img.layers.values()}
        partial = tuple(
            f for f in (*DEFAULT_ORDER, *sorted(seen - set(DEFAULT_ORDER))) if f in seen and f not in complete_fams
        )
        complete = self._is_complete(img)
        missing = () if complete else tuple(f for f in self.expected_families if f not in seen)
        layers = layers if layers is not None else self._layerset(img)
        events.append(ImageReady(img.stream_id, img.image_id, layers, complete, partial, now, missing, img.camera))
        return events

    def _remember_finished(self, key: tuple[str, int]) -> None:
        self._finished[key] = None
        while len(self._finished) > self.max_finished:
            self._finished.popitem(last=False)

    # --- layer sets -----------------------------------------------------------------------------------

    def _layerset(self, img: _Image) -> LayerSet:
        header = pb.ImageHeader()
        header.CopyFrom(img.header if img.header is not None else _guess_header(img))
        values: dict[str, list[tuple[bool, bool, Any]]] = {}
        for L in img.layers.values():
            if L.value is not None:
                values.setdefault(L.family, []).append((L.complete, L.kind == LayerKind.STRUCTURE_EDGES, L.value))

        def best(family: str) -> Any:
            cands = values.get(family)
            return max(cands, key=lambda c: (c[0], c[1]))[2] if cands else None

        return LayerSet(header=header, prompt=best("semantic"), structure=best("structure"), texture=best("texture"))


def _guess_header(img: _Image) -> pb.ImageHeader:
    """Image size from a layer descriptor's aspect ratio at DEFAULT_LONG_SIDE; seed absent (0)."""
    w = h = 0
    for kind in (LayerKind.STRUCTURE_EDGES, LayerKind.STRUCTURE_POSE, LayerKind.TEXTURE):
        L = img.layers.get(kind)
        if L is None:
            continue
        params = L.desc.WhichOneof("params")
        if params == "edges":
            w, h, _rows = edge_geometry(L.desc.edges)
        elif params == "pose":
            w, h = L.desc.pose.width, L.desc.pose.height
        elif params == "colormap":
            w, h = L.desc.colormap.grid_width, L.desc.colormap.grid_height
        if w and h:
            break
    if not (w and h):
        return pb.ImageHeader(width=DEFAULT_LONG_SIDE, height=DEFAULT_LONG_SIDE)
    scale = DEFAULT_LONG_SIDE / max(w, h)
    return pb.ImageHeader(width=max(1, round(w * scale)), height=max(1, round(h * scale)))


def _check_camera(p: pb.Packet, camera: str | None) -> pb.Packet:
    """`p`, or StreamMismatchError when a named camera's stream id is not the packet's."""
    if camera is not None and p.stream_id != camera_id(camera):
        raise _Located(
            p,
            StreamMismatchError(
                f"packet of stream {p.stream_id} arrived as camera {camera!r}, whose stream id is "
                f"{camera_id(camera)} (sent by another camera, or the sender's --camera differs)"
            ),
        )
    return p


class _Located(LayercastError):
    """An error on an authenticated packet whose stream and image ids can be reported."""

    def __init__(self, packet: pb.Packet, error: LayercastError) -> None:
        super().__init__(str(error))
        self.packet = packet
        self.error = error


def _header_core(header: pb.ImageHeader) -> bytes:
    """A header's bytes without its decoder hints (which only the first layer carries)."""
    core = pb.ImageHeader()
    core.CopyFrom(header)
    core.ClearField("hints")
    return core.SerializeToString(deterministic=True)
