"""WebRTC data-channel transport (aiortc): one SCTP channel per reliability class, paced on bufferedAmount.

Channels are *negotiated out of band* with fixed stream ids, created by both peers before the
connection comes up, so neither side depends on the in-band DCEP open handshake or on the
``datachannel`` event, and a browser peer only has to mirror this table::

    family     id  default policy (sender side)
    semantic   0   reliable, ordered
    structure  1   unordered, maxRetransmits=2
    texture    2   unordered, maxRetransmits=0

Partial reliability is a property of the *sending* side: each peer applies its own `WebRTCConfig`
to what it sends, the receiving SCTP stack honours FORWARD-TSN whatever its own policy says.

Backpressure: `send` waits while the family's ``bufferedAmount`` is above `WebRTCConfig.high_watermark`,
until the ``bufferedamountlow`` event (threshold `low_watermark`). Without pacing a 1000 x 1 KB burst on
an unreliable channel lost ~11 % on loopback; paced it arrives whole (see tests).

Signalling (who carries the SDP) lives in :mod:`.signalling`; this module only turns an offer into an
answer and back. aiortc checks that the certificate presented in the DTLS handshake matches the SDP's
``a=fingerprint``; `WebRTCConfig.pinned_fingerprints` additionally refuses a remote SDP whose fingerprint
is not pinned (AuthError), and `WebRTCConfig.certificate_pem` gives a peer a stable identity to pin.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from layercast.common import limits
from layercast.common.errors import AuthError, InputError, TransportClosed, TransportError
from layercast.common.identity import is_camera_name
from layercast.common.transport.base import FAMILIES, Transport
from layercast.common.transport.sctp_ack import MAX_DELAY, DelayedAck
from layercast.common.transport.sctp_bundle import ChunkBundler

if TYPE_CHECKING:
    from aiortc import RTCDataChannel, RTCPeerConnection

log = logging.getLogger(__name__)

CHANNEL_IDS = {"semantic": 0, "structure": 1, "texture": 2}
"""Fixed SCTP stream id of each family's negotiated channel (append-only, like every wire id)."""

MAX_SDP_BYTES = 65536
"""Largest SDP accepted from a remote peer."""

_FINGERPRINT_RE = re.compile(r"^a=fingerprint:(\S+)\s+([0-9A-Fa-f:]+)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class ChannelPolicy:
    """Reliability of one data channel: reliable+ordered by default; at most one of the two limits."""

    ordered: bool = True
    max_retransmits: int | None = None
    max_packet_lifetime_ms: int | None = None

    def __post_init__(self) -> None:
        if self.max_retransmits is not None and self.max_packet_lifetime_ms is not None:
            raise InputError("a channel policy takes max_retransmits or max_packet_lifetime_ms, not both")
        for name in ("max_retransmits", "max_packet_lifetime_ms"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 65535:
                raise InputError(f"{name}={value} is out of range 0..65535")

    @property
    def reliable(self) -> bool:
        """True when every message is retransmitted until acknowledged."""
        return self.max_retransmits is None and self.max_packet_lifetime_ms is None


@dataclass(frozen=True)
class IceServer:
    """A STUN/TURN server (``stun:host:port`` / ``turn:host:port``); none is needed on loopback or a LAN."""

    url: str
    username: str | None = None
    credential: str | None = None


@dataclass(frozen=True)
class WebRTCConfig:
    """Everything a WebRTC peer is configured with. Frozen; validates itself."""

    semantic: ChannelPolicy = ChannelPolicy()
    structure: ChannelPolicy = ChannelPolicy(ordered=False, max_retransmits=2)
    texture: ChannelPolicy = ChannelPolicy(ordered=False, max_retransmits=0)
    ice_servers: tuple[IceServer | str, ...] = ()
    """STUN/TURN servers (plain URL strings are accepted too); none needed on loopback or a LAN."""
    high_watermark: int = 64 * 1024
    """`send` waits while a channel has more than this many bytes buffered above SCTP."""
    low_watermark: int = 16 * 1024
    """... until it drops to this (the channel's bufferedAmountLowThreshold)."""
    max_message_bytes: int = limits.MAX_PACKET_BYTES
    """Larger outgoing packets are refused, larger incoming ones dropped (and counted)."""
    recv_queue_limit: int = 65536
    """Packets held for `recv`; beyond this incoming packets are dropped (and counted)."""
    socket_buffer_bytes: int = 4 << 20
    """Kernel buffer asked for on the ICE UDP sockets (see `enlarge_socket_buffers`; 0 = system default)."""
    pinned_fingerprints: tuple[str, ...] = ()
    """If set, the remote SDP must carry one of these (``"sha-256 AB:CD:..."`` or just the hex)."""
    certificate_pem: bytes | None = None
    """PEM private key + certificate for a stable DTLS identity (see `generate_certificate_pem`)."""
    bundle_chunks: bool = True
    """Put DATA chunks handed to SCTP in one event-loop turn into shared packets, never two of one channel
    (RFC 4960 bundling, see `.sctp_bundle`; `send_many` hands out a batch in one turn); False = a packet
    per message, as aiortc does."""
    sack_delay: float = 0.02
    """Seconds a received SCTP packet's acknowledgement may wait to be sent together with the next one's
    (RFC 4960 delayed ack, at most 0.2; see `.sctp_ack`); 0 = acknowledge every packet, as aiortc does."""

    def __post_init__(self) -> None:
        if not 0 <= self.low_watermark <= self.high_watermark:
            raise InputError("need 0 <= low_watermark <= high_watermark")
        if not 1 <= self.max_message_bytes <= 262144:
            raise InputError("max_message_bytes must be in 1..262144 (aiortc's SCTP limit is 256 KiB)")
        if self.recv_queue_limit < 1:
            raise InputError("recv_queue_limit must be >= 1")
        if self.socket_buffer_bytes < 0:
            raise InputError("socket_buffer_bytes must be >= 0")
        if not 0 <= self.sack_delay <= MAX_DELAY:
            raise InputError(f"sack_delay must be in 0..{MAX_DELAY} seconds (RFC 4960 section 6.2)")
        object.__setattr__(
            self, "pinned_fingerprints", tuple(normalize_fingerprint(p) for p in self.pinned_fingerprints)
        )
        servers = tuple(IceServer(s) if isinstance(s, str) else s for s in self.ice_servers)
        for server in servers:
            if not isinstance(server, IceServer) or not server.url.startswith(("stun:", "turn:", "turns:")):
                raise InputError(f"ICE server {server!r} must be a stun:/turn:/turns: URL or an IceServer")
        object.__setattr__(self, "ice_servers", servers)

    def policy(self, family: str) -> ChannelPolicy:
        """The channel policy of a family."""
        if family not in CHANNEL_IDS:
            raise InputError(f"unknown layer family {family!r}; expected one of {', '.join(FAMILIES)}")
        policy: ChannelPolicy = getattr(self, family)
        return policy


@dataclass(frozen=True)
class SessionDescription:
    """An SDP offer or answer as signalling carries it (JSON ``{"sdp": ..., "type": ...}``)."""

    sdp: str
    type: str
    peer_id: str = ""
    """Who sent the offer / gets the answer (MQTT signalling); empty over HTTP."""
    camera: str = ""
    """Offers: the sending camera's name (`common.identity`), which the receiver files its images
    under; empty = unnamed (images filed under the packets' stream id)."""

    def __post_init__(self) -> None:
        if self.type not in ("offer", "answer"):
            raise TransportError(f"session description type {self.type!r} is not 'offer' or 'answer'")
        if not isinstance(self.sdp, str) or not self.sdp.startswith("v=0"):
            raise TransportError("session description is not SDP (must start with 'v=0')")
        if len(self.sdp.encode("utf-8", "replace")) > MAX_SDP_BYTES:
            raise TransportError(f"SDP larger than {MAX_SDP_BYTES} bytes")
        if self.camera and not is_camera_name(self.camera):
            raise TransportError(f"offer names camera {self.camera[:80]!r}, which is not a usable camera name")

    def to_json(self) -> dict[str, str]:
        """The W3C RTCSessionDescriptionInit dictionary."""
        doc = {"sdp": self.sdp, "type": self.type}
        if self.camera:
            doc["camera"] = self.camera
        return doc

    @classmethod
    def from_json(cls, obj: Any, peer_id: str = "") -> SessionDescription:
        """Parse a decoded JSON object; TransportError when it is not a session description."""
        if not isinstance(obj, dict) or not isinstance(obj.get("sdp"), str) or "type" not in obj:
            raise TransportError('signalling message must be a JSON object {"sdp": str, "type": str}')
        camera = obj.get("camera", "")
        if not isinstance(camera, str):
            raise TransportError("signalling message's camera must be a string")
        return cls(sdp=obj["sdp"], type=str(obj["type"]), peer_id=peer_id, camera=camera)


@dataclass
class WebRTCStats:
    """Counters of one transport (mutable, for logs and tests)."""

    sent: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAMILIES, 0))
    received: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAMILIES, 0))
    bytes_sent: int = 0
    bytes_received: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: {"oversize": 0, "text": 0, "overflow": 0})


def datachannel_init(config: WebRTCConfig | None = None) -> dict[str, dict[str, Any]]:
    """The W3C ``RTCDataChannelInit`` of each family, for a browser peer to mirror (JSON-ready)."""
    config = config or WebRTCConfig()
    table: dict[str, dict[str, Any]] = {}
    for family in FAMILIES:
        p = config.policy(family)
        init: dict[str, Any] = {"negotiated": True, "id": CHANNEL_IDS[family], "ordered": p.ordered}
        if p.max_retransmits is not None:
            init["maxRetransmits"] = p.max_retransmits
        if p.max_packet_lifetime_ms is not None:
            init["maxPacketLifeTime"] = p.max_packet_lifetime_ms
        table[family] = init
    return table


# --- fingerprints and certificates ------------------------------------------------------------------


def normalize_fingerprint(text: str) -> str:
    """``"sha-256 AB:CD:..."`` in canonical form; a bare hex value is taken as sha-256."""
    parts = text.strip().split()
    algorithm, value = ("sha-256", parts[0]) if len(parts) == 1 else (parts[0].lower(), parts[-1])
    if len(parts) not in (1, 2) or not re.fullmatch(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2})+", value):
        raise InputError(f"fingerprint {text!r} is not 'sha-256 AB:CD:...' (hex pairs separated by ':')")
    return f"{algorithm} {value.upper()}"


def sdp_fingerprints(sdp: str) -> list[str]:
    """The ``a=fingerprint`` values of an SDP, normalized (session and media level)."""
    out = []
    for algorithm, value in _FINGERPRINT_RE.findall(sdp):
        with contextlib.suppress(InputError):
            out.append(normalize_fingerprint(f"{algorithm} {value}"))
    return out


def check_pinned(sdp: str, pins: tuple[str, ...]) -> None:
    """AuthError unless `pins` is empty or one of the SDP's fingerprints is pinned.

    One match suffices: aiortc (like browsers) requires every fingerprint in the SDP to match the
    certificate the peer presents in the DTLS handshake.
    """
    if not pins:
        return
    found = sdp_fingerprints(sdp)
    if not found:
        raise AuthError("remote SDP has no a=fingerprint line; a pinned peer must present one")
    if not set(found) & set(pins):
        shown = next((f for f in found if f.startswith("sha-256 ")), found[0])
        raise AuthError(
            f"remote DTLS fingerprint {shown} is not pinned (expected {' or '.join(pins)}); refusing the connection"
        )


def generate_certificate_pem() -> bytes:
    """A fresh DTLS identity (EC P-256 key + self-signed certificate, 30 days), PEM, for `certificate_pem`."""
    from aiortc.rtcdtlstransport import RTCCertificate
    from cryptography.hazmat.primitives import serialization

    cert = RTCCertificate.generateCertificate()
    key_pem = cert._key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem + cert._cert.public_bytes(serialization.Encoding.PEM)


def certificate_fingerprint(pem: bytes) -> str:
    """``"sha-256 AB:CD:..."`` of the certificate in `pem` (what a peer pins)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise InputError(f"certificate_pem holds no PEM certificate: {exc}") from exc
    digest = cert.fingerprint(hashes.SHA256()).hex().upper()
    return "sha-256 " + ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def _load_certificate(pem: bytes) -> Any:
    from aiortc.rtcdtlstransport import RTCCertificate
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key = serialization.load_pem_private_key(pem, password=None)
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise InputError(f"certificate_pem must hold a PEM private key and certificate: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise InputError("certificate_pem: the DTLS key must be an elliptic-curve key (P-256)")
    return RTCCertificate(key=key, cert=cert)


@contextlib.contextmanager
def _mapped(what: str) -> Iterator[None]:
    """The one choke point mapping aiortc / aioice errors into the Layercast tree."""
    from aiortc.exceptions import InternalError, InvalidAccessError, InvalidStateError, OperationError

    try:
        yield
    except InvalidStateError as exc:
        raise TransportClosed(f"WebRTC {what}: the peer connection is closed ({exc or 'closed'})") from exc
    except (InvalidAccessError, InternalError, OperationError) as exc:
        raise TransportError(f"WebRTC {what} failed: {exc}") from exc
    except ValueError as exc:
        raise TransportError(f"WebRTC {what}: the remote description is not usable: {exc}") from exc
    except ConnectionError as exc:
        raise TransportError(f"WebRTC {what}: {exc} (is the peer reachable? check ICE servers)") from exc


# --- the transport ----------------------------------------------------------------------------------


def enlarge_socket_buffers(pc: Any, nbytes: int) -> list[int]:
    """Ask for `nbytes` of kernel receive and send buffer on the peer connection's UDP sockets; returns
    the receive sizes granted (the kernel caps them at net.core.rmem_max / wmem_max).

    A receiver busy decoding reads its socket late: with the default ~200 KB buffer an unpaced burst of
    1200-byte SCTP packets overflows it, the unreliable channels lose messages and SCTP's congestion
    control backs off for seconds. aiortc does not expose the sockets, so this walks its ICE objects
    (RTCPeerConnection -> SCTP -> DTLS -> ICE -> aioice Connection) and does nothing if they moved.
    """
    import socket

    granted = []
    ice = getattr(
        getattr(getattr(getattr(pc, "sctp", None), "transport", None), "transport", None), "_connection", None
    )
    for protocol in getattr(ice, "_protocols", ()):
        sock = getattr(getattr(protocol, "transport", None), "get_extra_info", lambda _: None)("socket")
        if sock is None:
            continue
        with contextlib.suppress(OSError):
            for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                if sock.getsockopt(socket.SOL_SOCKET, opt) < nbytes:  # only ever grow (aioice sets 256 KiB)
                    sock.setsockopt(socket.SOL_SOCKET, opt, nbytes)
            granted.append(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
    return granted


class WebRTCTransport(Transport):
    """A WebRTC peer: three negotiated data channels, one per layer family, merged into one `recv` queue.

    Created unconnected; signalling then calls `create_offer` + `accept_answer` (offerer) or
    `accept_offer` (answerer), and `open()` waits until every channel is open. Use
    :func:`.signalling.connect_webrtc` / :class:`.signalling.WebRTCServer` rather than this by hand.
    """

    def __init__(self, config: WebRTCConfig | None = None) -> None:
        super().__init__()
        self.config = config or WebRTCConfig()
        self.stats = WebRTCStats()
        self._pc: RTCPeerConnection | None = None
        self._channels: dict[str, RTCDataChannel] = {}
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._low: dict[str, asyncio.Event] = {f: asyncio.Event() for f in FAMILIES}
        self._opened = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self._lost: str | None = None
        self._remote_sdp = ""
        self.delayed_ack: DelayedAck | None = None
        """The SCTP delayed-acknowledgement policy once the channels are open (None: `sack_delay` is 0,
        or this aiortc lacks the internals it wraps)."""
        self.bundler: ChunkBundler | None = None
        """The SCTP chunk bundler once the channels are open (None: `bundle_chunks` is off, or this aiortc
        lacks the internals it wraps)."""

    async def __aenter__(self) -> WebRTCTransport:
        await self.open()
        return self

    @property
    def alive(self) -> bool:
        """True until this side closed or the peer connection was lost."""
        return not self._closed and self._lost is None

    # -- setup -------------------------------------------------------------------------------------

    @property
    def peer_connection(self) -> RTCPeerConnection:
        """The aiortc RTCPeerConnection (created on first use)."""
        if self._pc is None:
            from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection

            ice = [s if isinstance(s, IceServer) else IceServer(s) for s in self.config.ice_servers]
            servers = [RTCIceServer(s.url, s.username, s.credential) for s in ice]
            self._pc = pc = RTCPeerConnection(RTCConfiguration(iceServers=servers))
            if self.config.certificate_pem is not None:
                if not hasattr(pc, "_RTCPeerConnection__certificates"):
                    raise TransportError("this aiortc version cannot take a fixed DTLS certificate")
                pc._RTCPeerConnection__certificates = [_load_certificate(self.config.certificate_pem)]
            pc.on("connectionstatechange", self._on_state)
        return self._pc

    def channel(self, family: str) -> RTCDataChannel:
        """The aiortc RTCDataChannel of a family (after the offer / answer was made)."""
        self.config.policy(family)
        if family not in self._channels:
            raise TransportError(f"no {family} channel yet: signalling has not run")
        return self._channels[family]

    @property
    def local_fingerprint(self) -> str:
        """This peer's DTLS fingerprint, ``"sha-256 AB:..."`` (what the other side may pin)."""
        pc = self.peer_connection
        desc = pc.localDescription
        found = [f for f in sdp_fingerprints(desc.sdp) if f.startswith("sha-256 ")] if desc else []
        if found:
            return found[0]
        certs = getattr(pc, "_RTCPeerConnection__certificates", [])
        for fp in certs[0].getFingerprints() if certs else []:
            if fp.algorithm == "sha-256":
                return f"sha-256 {fp.value}"
        raise TransportError("local fingerprint unknown before the offer / answer is made")

    @property
    def remote_fingerprint(self) -> str | None:
        """The remote SDP's sha-256 fingerprint (which aiortc verified in the DTLS handshake), or None."""
        found = [f for f in sdp_fingerprints(self._remote_sdp) if f.startswith("sha-256 ")]
        return found[0] if found else None

    def _make_channels(self) -> None:
        pc = self.peer_connection
        for family in FAMILIES:
            p = self.config.policy(family)
            ch = pc.createDataChannel(
                family,
                ordered=p.ordered,
                maxRetransmits=p.max_retransmits,
                maxPacketLifeTime=p.max_packet_lifetime_ms,
                negotiated=True,
                id=CHANNEL_IDS[family],
            )
            ch.bufferedAmountLowThreshold = self.config.low_watermark
            ch.on("message", lambda msg, f=family: self._on_message(f, msg))
            ch.on("bufferedamountlow", self._low[family].set)
            ch.on("open", self._on_open)
            ch.on("close", lambda f=family: self._on_lost(f"the {f} channel closed"))
            self._channels[family] = ch
        self._on_open()

    async def create_offer(self) -> SessionDescription:
        """Offerer: make the channels and the local offer (ICE candidates gathered, as aiortc does)."""
        from aiortc import RTCSessionDescription

        pc = self.peer_connection
        with _mapped("create offer"):
            self._make_channels()
            await pc.setLocalDescription(await pc.createOffer())
            desc = pc.localDescription
        assert isinstance(desc, RTCSessionDescription)
        return SessionDescription(sdp=desc.sdp, type=desc.type)

    async def accept_answer(self, answer: SessionDescription) -> None:
        """Offerer: apply the remote answer (pinned fingerprint checked first)."""
        from aiortc import RTCSessionDescription

        if answer.type != "answer":
            raise TransportError(f"expected an SDP answer, got {answer.type!r}")
        check_pinned(answer.sdp, self.config.pinned_fingerprints)
        self._remote_sdp = answer.sdp
        with _mapped("set answer"):
            await self.peer_connection.setRemoteDescription(RTCSessionDescription(answer.sdp, "answer"))

    async def accept_offer(self, offer: SessionDescription) -> SessionDescription:
        """Answerer: apply the remote offer (pinned fingerprint checked first), make channels, answer."""
        from aiortc import RTCSessionDescription

        if offer.type != "offer":
            raise TransportError(f"expected an SDP offer, got {offer.type!r}")
        if "m=application" not in offer.sdp:
            raise TransportError("the offer has no data-channel section (m=application)")
        check_pinned(offer.sdp, self.config.pinned_fingerprints)
        self._remote_sdp = offer.sdp
        pc = self.peer_connection
        with _mapped("answer offer"):
            await pc.setRemoteDescription(RTCSessionDescription(offer.sdp, "offer"))
            self._make_channels()
            await pc.setLocalDescription(await pc.createAnswer())
            desc = pc.localDescription
        assert isinstance(desc, RTCSessionDescription)
        return SessionDescription(sdp=desc.sdp, type=desc.type, peer_id=offer.peer_id)

    # -- events ------------------------------------------------------------------------------------

    def _on_open(self) -> None:
        if len(self._channels) == len(FAMILIES) and all(ch.readyState == "open" for ch in self._channels.values()):
            if self.config.socket_buffer_bytes:
                try:  # an aiortc event handler: nothing may escape into aiortc
                    enlarge_socket_buffers(self.peer_connection, self.config.socket_buffer_bytes)
                except Exception:  # pragma: no cover - aiortc internals moved
                    log.debug("could not enlarge the ICE socket buffers", exc_info=True)
            sctp = self.peer_connection.sctp
            try:  # as above: the SCTP policies only ever install, or leave aiortc as it is
                if self.config.sack_delay and self.delayed_ack is None:
                    self.delayed_ack = DelayedAck.install(sctp, self.config.sack_delay)
                if self.config.bundle_chunks and self.bundler is None:
                    self.bundler = ChunkBundler.install(sctp)
            except Exception:  # pragma: no cover - aiortc internals moved
                log.debug("could not install delayed acks or chunk bundling", exc_info=True)
            self._opened.set()

    def _on_state(self) -> None:
        state = self.peer_connection.connectionState
        if state in ("failed", "closed"):
            self._on_lost(f"peer connection {state}")

    def _on_lost(self, why: str) -> None:
        if self._lost is not None:
            return
        self._lost = why
        self._queue.put_nowait(None)
        for ev in self._low.values():
            ev.set()
        self._opened.set()

    def _on_message(self, family: str, msg: bytes | str) -> None:
        if not isinstance(msg, bytes):
            self.stats.dropped["text"] += 1
            return
        if len(msg) > self.config.max_message_bytes:
            self.stats.dropped["oversize"] += 1
            return
        if self._queue.qsize() >= self.config.recv_queue_limit or self._lost is not None:
            self.stats.dropped["overflow"] += 1
            return
        self.stats.received[family] += 1
        self.stats.bytes_received += len(msg)
        self._queue.put_nowait(msg)
        # data proves the association works even if a channel's "open" has not fired yet (SCTP delivers
        # DATA to a side still waiting for its lost COOKIE-ACK): let the reader start
        self._opened.set()

    # -- Transport ---------------------------------------------------------------------------------

    async def _open(self) -> None:
        if not self._channels:
            raise TransportError("WebRTC transport not signalled: use connect_webrtc() or WebRTCServer")
        await self._opened.wait()
        if self._lost is not None and self._queue.qsize() <= 1:  # only the end-of-stream marker
            raise TransportError(
                f"WebRTC connection could not be established: {self._lost} "
                "(ICE or DTLS failed: peer unreachable, or its certificate does not match its SDP)"
            )

    async def _close(self) -> None:
        self._on_lost("closed locally")
        if self.delayed_ack is not None:
            self.delayed_ack.cancel()
        if self._pc is not None:
            with _mapped("close"):
                # shielded: a close timeout must not cancel aiortc's own pending close (its `isClosed`
                # future would be cancelled under it, and its later set_result raise InvalidStateError)
                await asyncio.shield(self._pc.close())

    async def _send(self, data: bytes, family: str) -> None:
        await self._send_one(data, family)
        # One packet per event-loop turn: asyncio reads one UDP datagram per socket per turn, so a
        # burst sent within one turn overflows the (loopback / same-process) receive buffer.
        await asyncio.sleep(0)

    async def _send_many(self, packets: Sequence[tuple[bytes, str]]) -> None:
        # one turn for the batch: SCTP bundles its messages into as few packets as fit (`bundle_chunks`)
        for data, family in packets:
            await self._send_one(data, family)
        await asyncio.sleep(0)

    async def _send_one(self, data: bytes, family: str) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InputError(f"send takes bytes, not {type(data).__name__}")
        if len(data) > self.config.max_message_bytes:
            limit = self.config.max_message_bytes
            raise InputError(f"packet of {len(data)} bytes exceeds max_message_bytes={limit}")
        self.config.policy(family)
        ch = self.channel(family)
        low = self._low[family]
        async with self._send_lock:
            while True:
                if self._lost is not None:
                    raise TransportClosed(f"WebRTC transport closed: {self._lost}")
                low.clear()
                if ch.bufferedAmount <= self.config.high_watermark:
                    break
                await low.wait()
            with _mapped("send"):
                ch.send(bytes(data))
            self.stats.sent[family] += 1
            self.stats.bytes_sent += len(data)

    async def _recv(self) -> bytes:
        if self._closed:
            raise TransportClosed("WebRTC transport is closed")
        item = await self._queue.get()
        if item is None:
            self._queue.put_nowait(None)
            raise TransportClosed(f"WebRTC transport closed: {self._lost}")
        return item

    async def _drain(self) -> None:
        """Wait until no channel buffers data and SCTP has every chunk acknowledged (or abandoned)."""
        sctp = self._pc.sctp if self._pc is not None else None
        while self._lost is None:
            buffered = sum(ch.bufferedAmount for ch in self._channels.values())
            pending = len(getattr(sctp, "_outbound_queue", ())) + len(getattr(sctp, "_sent_queue", ()))
            queued = len(getattr(sctp, "_data_channel_queue", ()))
            if buffered == 0 and pending == 0 and queued == 0:
                return
            await asyncio.sleep(0.005)
        raise TransportClosed(f"WebRTC transport closed before drain finished: {self._lost}")
