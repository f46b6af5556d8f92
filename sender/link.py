"""Link profiles (MTU, rate, FEC) and a sans-I/O pacer for the sender.

profile = get_profile("lora")
packets = packetize(img, mtu=profile.mtu, header_every_layer=profile.header_every_layer)
pacer = Pacer(profile.rate_bps)
t = pacer.next_send_time(len(wire), now)   # sleep until t, then send
"""

from __future__ import annotations

from dataclasses import dataclass, field

from layercast.common.errors import InputError
from layercast.common.fec import FecPolicy
from layercast.common.transport.lossy import TokenBucket


@dataclass(frozen=True)
class LinkProfile:
    """How to cut and pace packets for one kind of link.

    `mtu` bounds each packet's wire size (None = one packet per layer); `rate_bps` is the pace
    (None = as fast as the transport takes them); `fec` the repair policy; `header_every_layer` puts the
    image header on fragment 0 of every layer so a lost first layer does not lose the image size;
    `bundle` lets whole layers without FEC share one packet (one set of ids, one header, one CRC) on
    the reliability class of the first of them.
    """

    name: str
    mtu: int | None
    rate_bps: float | None
    fec: FecPolicy = field(default_factory=FecPolicy)
    header_every_layer: bool = True
    bundle: bool = False
    description: str = ""


PROFILES: dict[str, LinkProfile] = {
    p.name: p
    for p in (
        LinkProfile("lora", 222, 5470.0, description="LoRa SF7/125 kHz: 222-byte payloads, ~5.5 kbit/s"),
        LinkProfile("sbd", 340, 2400.0, description="Iridium Short Burst Data: 340-byte messages, ~2.4 kbit/s"),
        LinkProfile(
            "webrtc",
            1200,
            None,
            # the semantic channel is reliable and structure is retransmitted: repairs only for texture
            FecPolicy(semantic=0.0, structure=0.0, texture=0.5, semantic_min=0),
            description="WebRTC data channel: 1200-byte SCTP messages",
        ),
        LinkProfile(
            "webrtc-bundle",
            1200,
            None,
            FecPolicy.none(),
            bundle=True,
            description="WebRTC, one reliable 1200-byte message per image (layers bundled on the semantic channel)",
        ),
        LinkProfile(
            "mqtt",
            65536,
            None,
            FecPolicy.none(),  # TCP to the broker: a repair fragment would only repeat what arrives anyway
            bundle=True,
            description="MQTT 5 over TCP: one message per image (layers bundled) up to 64 KiB",
        ),
        LinkProfile(
            "file",
            None,
            None,
            FecPolicy.none(),
            header_every_layer=False,
            description=".lcs container: one packet per layer, no FEC",
        ),
    )
}
"""Built-in link profiles by name."""


def get_profile(name: str) -> LinkProfile:
    """The built-in profile called `name`; InputError listing the known names otherwise."""
    try:
        return PROFILES[name.strip().lower()]
    except KeyError:
        raise InputError(f"unknown link profile {name!r} (known: {', '.join(PROFILES)})") from None


class Pacer(TokenBucket):
    """Token-bucket pacing at `rate_bps` (None = no pacing), with a burst of up to `bucket_bytes`."""

    def next_send_time(self, nbytes: int, now: float) -> float:
        """When a packet of `nbytes` may be sent (>= `now`); reserves its share of the rate."""
        return self.reserve(nbytes, now)
