"""Typed outcomes of the sans-I/O assembler (see `receiver.assembler`).

Per image the assembler emits, in order of arrival: `LayerSetChanged` whenever a new layer value
becomes available (drives progressive decoding), `LayerComplete` / `LayerPartial` per layer, and
exactly one `ImageReady` (all expected layers complete, or the image timed out). `PacketRejected`
reports every packet refused, with the reason. Every event carries `time`, the `now` it happened at,
and `camera`, the name its image is filed under (`common.identity`): images are keyed by
(camera, image_id).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from layercast.common.types import LayerKind, LayerSet


@dataclass(frozen=True)
class PacketRejected:
    """A packet (or a whole layer's data) was refused. `error` is the error type's name, e.g. "AuthError".

    `stream_id`/`image_id` are None when the packet could not be trusted enough to read them.
    """

    stream_id: int | None
    image_id: int | None
    reason: str
    error: str
    time: float
    camera: str = ""
    """The camera the image belongs to (see `common.identity`): the key, with `image_id`, of its outputs."""


@dataclass(frozen=True)
class LayerComplete:
    """Every unit of a layer arrived (directly or through FEC) and decoded to `value`.

    `nbytes` is the layer's payload (sum of its units); `wire_bytes` the packet bytes accepted for it;
    `recovered` the data fragments restored by FEC.
    """

    stream_id: int
    image_id: int
    family: str
    kind: LayerKind
    value: Any
    nbytes: int
    time: float
    wire_bytes: int = 0
    recovered: int = 0
    camera: str = ""
    """The camera the image belongs to (see `common.identity`): the key, with `image_id`, of its outputs."""


@dataclass(frozen=True)
class LayerPartial:
    """Some units of a layer are missing (so far). `value` is the partial decode (e.g. an EdgeMap with a
    `known` mask) or None when the codec cannot use a partial layer."""

    stream_id: int
    image_id: int
    family: str
    missing_units: tuple[int, ...]
    value: Any | None
    time: float
    kind: LayerKind = LayerKind.SEMANTIC
    unit_count: int = 0
    camera: str = ""
    """The camera the image belongs to (see `common.identity`): the key, with `image_id`, of its outputs."""


@dataclass(frozen=True)
class ImageReady:
    """The image is finished: decode `layers` for the final output; no more events for it follow.

    `complete` is True when every expected layer family arrived whole. `partial_families` got some
    packets but not all units; `missing_families` got none.
    """

    stream_id: int
    image_id: int
    layers: LayerSet
    complete: bool
    partial_families: tuple[str, ...]
    time: float
    missing_families: tuple[str, ...] = ()
    camera: str = ""
    """The camera the image belongs to (see `common.identity`): the key, with `image_id`, of its outputs."""


@dataclass(frozen=True)
class LayerSetChanged:
    """A new layer value (or the image header) became available: decode `layers` for a fresher stage.

    `reason` says what changed, e.g. "semantic complete", "structure partial", "header".
    """

    stream_id: int
    image_id: int
    layers: LayerSet
    reason: str
    time: float
    camera: str = ""
    """The camera the image belongs to (see `common.identity`): the key, with `image_id`, of its outputs."""


Event = PacketRejected | LayerComplete | LayerPartial | ImageReady | LayerSetChanged
"""Any assembler event."""


def event_record(event: Event) -> dict[str, Any]:
    """A JSON-ready summary of an event for the event log (layer values become their family names)."""
    out: dict[str, Any] = {"event": type(event).__name__}
    for f in fields(event):
        v = getattr(event, f.name)
        if f.name == "value":
            out["has_value"] = v is not None
        elif isinstance(v, LayerSet):
            out["layers"] = v.present()
            out["width"], out["height"] = v.width, v.height
        elif isinstance(v, LayerKind):
            out[f.name] = v.name.lower()
        elif isinstance(v, tuple):
            out[f.name] = list(v)
        else:
            out[f.name] = v
    return out
