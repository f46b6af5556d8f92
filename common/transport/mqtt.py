"""MQTT 5 transport over a broker (aiomqtt; Mosquitto from Debian in tests and deploy/).

Topic scheme (also in deploy/README.md)::

    <prefix>/<stream>/<family>          e.g. layercast/cam1/semantic
                                             layercast/cam1/structure
                                             layercast/cam1/texture

* ``prefix`` defaults to ``layercast`` (may have several levels, never wildcards or a leading ``$``);
  ``stream`` is the camera / sender id (one topic level: no ``/``, ``+``, ``#``); ``family`` is the
  layer family of `base.FAMILIES`.
* Payload = exactly one wire packet (`proto.framing.encode_packet` bytes); no extra envelope, so
  Debian's clients watch and inject directly. A bundled packet (the ``mqtt`` link profile sends each
  image as one) goes on the topic of its first layer, normally ``semantic``::

      mosquitto_sub -t 'layercast/#' -F '%t %l'
      mosquitto_pub -t layercast/cam1/semantic -f packet.bin

* QoS per family (default semantic 1, structure 0, texture 0) and an MQTT 5 Message Expiry Interval
  per family (default 60 / 30 / 30 s) so a broker never delivers stale layers late; 0 = no expiry.
* Receivers subscribe to ``<prefix>/+/+`` (all streams), ``<prefix>/<stream>/+`` or one filter per
  stream of a comma list. With ``group`` the filters become MQTT 5 shared subscriptions
  ``$share/<group>/<prefix>/<stream>/+``: the broker hands each message to one member of the group.

Worker affinity (one image's layers decoded by one worker): a shared subscription balances per
*message*. Mosquitto rotates round-robin per message, so a group spreads the packets of one image over
its members; use it there only when every worker may see every stream's partial images, or else
partition by stream instead (each receiver gets its own ``stream=cam1,cam2`` list, no group). EMQX
(which also clusters brokers) offers ``broker.shared_subscription_strategy = hash_clientid``: each camera
publishes through one client, so all its packets, and therefore every layer of every image it sends,
land on the same worker, while different cameras spread over the group.

Identity: the stream level names the camera (`common.identity`). A message on a topic whose stream
level is not a usable camera name is dropped (counted in `MqttStats.dropped_topic`); the receive
session checks each packet's stream id against its topic's camera.

Acknowledgements: with `manual_ack` a receiver acknowledges a QoS 1 message only when told to
(`ack`), which the receive session does once the message's image is written; a receiver killed
before that gets the message again from its persistent session (fixed `client_id`,
`session_expiry`). Acknowledgements of a connection that was lost are dropped: the broker resends
those messages on the next connection.

Reconnects: a lost connection is re-established in the background with bounded, jittered exponential
back-off (`backoff_delay`); a `send` during the outage waits for the new connection and fails with
TransportTimeout at its timeout. QoS 1 publishes cut by the outage are sent again (at least once; the
assembler drops duplicates).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import math
import random
import socket
import ssl
import uuid
from collections import deque
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

from layercast.common import limits
from layercast.common.errors import (
    InputError,
    NoSubscribersError,
    TransportClosed,
    TransportError,
    TransportTimeout,
)
from layercast.common.identity import is_camera_name
from layercast.common.transport.base import FAMILIES, Transport

if TYPE_CHECKING:
    import aiomqtt

log = logging.getLogger(__name__)

NO_MATCHING_SUBSCRIBERS = 16
"""MQTT 5 PUBACK reason code 0x10."""
DEFAULT_PREFIX = "layercast"
DEFAULT_QOS = (1, 0, 0)
"""QoS of (semantic, structure, texture)."""
DEFAULT_EXPIRY = (60, 30, 30)
"""MQTT 5 Message Expiry Interval in seconds of (semantic, structure, texture); 0 = never expires."""
ROLES = ("send", "receive")
_BAD_LEVEL_CHARS = ("/", "+", "#", "\x00")


# --- pure helpers: topics, back-off ----------------------------------------------------------------


def topic_for(prefix: str, stream: str, family: str) -> str:
    """The topic of one stream's family: ``<prefix>/<stream>/<family>``."""
    return f"{prefix}/{stream}/{family}"


def parse_topic(topic: str, prefix: str) -> tuple[str, str] | None:
    """(stream, family) of a topic in the scheme under `prefix`, or None if it is not one."""
    head = prefix + "/"
    if not topic.startswith(head):
        return None
    parts = topic[len(head) :].split("/")
    if len(parts) != 2 or not parts[0] or parts[1] not in FAMILIES:
        return None
    return parts[0], parts[1]


def backoff_delay(
    attempt: int, *, initial: float, maximum: float, jitter: float, rng: random.Random | None = None
) -> float:
    """Seconds to wait before reconnect attempt `attempt` (0-based).

    ``min(maximum, initial * 2**attempt)`` scaled down by a random factor in ``[1 - jitter, 1]``, so
    many clients that lost the same broker do not come back in lockstep. Always within
    ``[0, maximum]``.
    """
    base = min(maximum, initial * 2.0 ** min(attempt, 60))
    r = (rng or random).random()
    return base * (1.0 - jitter * r)


# --- configuration -----------------------------------------------------------------------------------


def _check_level(value: str, what: str) -> None:
    if not value or any(c in value for c in _BAD_LEVEL_CHARS):
        raise InputError(f"{what} {value!r} must be one non-empty MQTT topic level (no '/', '+', '#')")


@dataclass(frozen=True)
class MqttConfig:
    """Where and how to reach the broker; validated on construction (InputError).

    `stream`: for ``role="send"`` the camera id this sender publishes as (one topic level); for
    ``role="receive"`` ``"+"`` (every stream), one id, or a comma list of ids. `qos` / `expiry` are
    per family in `base.FAMILIES` order. `port` None means 8883 with TLS, 1883 without.
    """

    host: str = "localhost"
    port: int | None = None
    prefix: str = DEFAULT_PREFIX
    stream: str = "+"
    role: str = "receive"
    qos: tuple[int, int, int] = DEFAULT_QOS
    expiry: tuple[int, int, int] = DEFAULT_EXPIRY
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    tls_insecure: bool = False
    """Skip the server host name check (the chain is still verified), like mosquitto_pub --insecure."""
    client_id: str | None = None
    """None: a random id per connection. Fix it (unique per process) to resume a session."""
    keepalive: int = 30
    group: str | None = None
    """Receivers: MQTT 5 shared subscription group (``$share/<group>/...``)."""
    session_expiry: int = 0
    """Seconds the broker keeps this client's session (subscriptions, queued QoS 1 messages) while it
    is offline; needs a fixed `client_id`. 0 = a clean session every connection."""
    reconnect: bool = True
    backoff_initial: float = 0.2
    backoff_max: float = 10.0
    backoff_jitter: float = 0.5
    connect_timeout: float = 10.0
    max_queued: int = 10_000
    """Received QoS 0 packets buffered before new ones are dropped (counted in `MqttStats.dropped_full`).
    QoS 1 messages are never dropped (a broker resends an unacknowledged one only at a reconnect):
    `receive_maximum` bounds them instead."""
    receive_maximum: int = 100
    """Receivers: the MQTT 5 Receive Maximum, the most QoS 1 messages the broker sends this client before
    it acknowledges some (with `manual_ack`, about the images a worker may hold open at once)."""
    require_subscribers: bool = False
    """Senders: a QoS 1 publish the broker answers with 'No matching subscribers' (MQTT 5 PUBACK
    reason 16) raises NoSubscribersError instead of counting as sent. Mosquitto queues messages for
    an offline client's persistent subscription, but not for a shared subscription group with no
    member online (e.g. just after a broker restart, before the workers are back): a store-and-forward
    sender keeps such an image and sends it again."""
    manual_ack: bool = False
    """Receivers: acknowledge QoS 1 messages only through `MqttTransport.ack` (see the module docstring)."""

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise InputError(f"MQTT role {self.role!r} is not one of {', '.join(ROLES)}")
        if not self.host:
            raise InputError("MQTT broker host is empty: give one, e.g. mqtt://broker.example:1883/layercast/cam1")
        if self.port is not None and not 1 <= self.port <= 65535:
            raise InputError(f"MQTT port {self.port} is outside 1..65535")
        if not self.prefix or self.prefix.startswith("$") or any(c in self.prefix for c in "+#\x00"):
            raise InputError(f"topic prefix {self.prefix!r} must be non-empty, without wildcards or a leading '$'")
        if any(not level for level in self.prefix.split("/")):
            raise InputError(f"topic prefix {self.prefix!r} has an empty level")
        if self.role == "send":
            if self.stream == "+" or "," in self.stream:
                raise InputError("a sender publishes as one stream: give its id, e.g. mqtt://broker/layercast/cam1")
            _check_level(self.stream, "stream id")
        else:
            for s in self.streams:
                if s != "+":
                    _check_level(s, "stream id")
        if self.group is not None:
            if self.role != "receive":
                raise InputError("a shared subscription group only applies to receivers")
            _check_level(self.group, "shared subscription group")
        for name, values, top in (("qos", self.qos, 2), ("expiry", self.expiry, 2**32 - 1)):
            if len(values) != len(FAMILIES) or any(not 0 <= int(v) <= top for v in values):
                raise InputError(
                    f"MQTT {name} {values!r} needs {len(FAMILIES)} values in 0..{top} ({', '.join(FAMILIES)})"
                )
        if (self.cert_file is None) != (self.key_file is None):
            raise InputError("a TLS client certificate needs both cert and key files")
        if self.keepalive < 5 or self.keepalive > 65535:
            raise InputError(f"MQTT keepalive {self.keepalive} s is outside 5..65535")
        if not (0 < self.backoff_initial <= self.backoff_max) or not 0 <= self.backoff_jitter <= 1:
            raise InputError("back-off needs 0 < initial <= max and 0 <= jitter <= 1")
        if self.session_expiry < 0 or (self.session_expiry and not self.client_id):
            raise InputError("session_expiry needs a fixed client_id and must be >= 0")
        if self.max_queued < 1:
            raise InputError("max_queued must be at least 1")
        if not 1 <= self.receive_maximum <= 65535:
            raise InputError("receive_maximum must be 1..65535 (MQTT 5 Receive Maximum)")

    @property
    def streams(self) -> tuple[str, ...]:
        """The stream ids of `stream` (a comma list for receivers)."""
        return tuple(s.strip() for s in self.stream.split(","))

    @property
    def effective_port(self) -> int:
        """`port`, or the MQTT default for the TLS setting."""
        return self.port if self.port is not None else (8883 if self.tls else 1883)

    def qos_for(self, family: str) -> int:
        """QoS of a family's messages."""
        return int(self.qos[_family_index(family)])

    def expiry_for(self, family: str) -> int:
        """Message Expiry Interval (s) of a family's messages; 0 = none."""
        return int(self.expiry[_family_index(family)])

    def topic(self, family: str) -> str:
        """A sender's topic for `family`."""
        _family_index(family)
        return topic_for(self.prefix, self.stream, family)

    def subscriptions(self) -> list[str]:
        """A receiver's topic filters (shared when `group` is set)."""
        filters = [f"{self.prefix}/{s}/+" for s in self.streams]
        if self.group:
            filters = [f"$share/{self.group}/{f}" for f in filters]
        return filters

    @classmethod
    def from_url(cls, url: str, **overrides: Any) -> MqttConfig:
        """Parse ``mqtt[s]://[user[:pass]@]host[:port][/prefix[/...]/stream][?query]``.

        One path level is the prefix; with two or more the last is the stream. Query keys:
        ``qos`` and ``expiry`` (one value for every family or three comma separated, semantic first),
        ``tls``, ``ca``, ``cert``, ``key``, ``insecure``, ``group``, ``client_id``, ``keepalive``,
        ``session_expiry``, ``receive_maximum``, ``reconnect``. ``mqtts://`` implies TLS. `overrides`
        (e.g. ``role="send"``) win over the URL.
        """
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise InputError(f"{url!r} is not an MQTT URL: use mqtt://host[:port]/prefix/stream")
        try:
            port = parts.port
        except ValueError as exc:
            raise InputError(f"bad port in {url!r}: {exc}") from None
        kw: dict[str, Any] = {"host": parts.hostname or "", "port": port, "tls": parts.scheme == "mqtts"}
        if parts.username:
            kw["username"] = unquote(parts.username)
        if parts.password is not None:
            kw["password"] = unquote(parts.password)
        levels = [unquote(p) for p in parts.path.split("/") if p]
        if len(levels) == 1:
            kw["prefix"] = levels[0]
        elif len(levels) >= 2:
            kw["prefix"] = "/".join(levels[:-1])
            kw["stream"] = levels[-1]
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            kw.update(_query_option(key, value, url))
        kw.update(overrides)
        return cls(**kw)

    def with_role(self, role: str, stream: str | None = None) -> MqttConfig:
        """A copy for another role (and stream)."""
        return replace(self, role=role, stream=self.stream if stream is None else stream)


def _disconnect_ending_session(client: aiomqtt.Client) -> None:
    """Make the client's next DISCONNECT carry Session Expiry Interval 0 (MQTT 5: the session ends)."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.DISCONNECT)
    props.SessionExpiryInterval = 0
    paho = client._client
    inner = paho.disconnect
    setattr(paho, "disconnect", lambda *a, **k: inner(properties=props))  # noqa: B010 - one-off instance override


def _family_index(family: str) -> int:
    try:
        return FAMILIES.index(family)
    except ValueError:
        raise InputError(f"unknown layer family {family!r}: use one of {', '.join(FAMILIES)}") from None


def _flag(value: str, key: str, url: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on", ""):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise InputError(f"{key}={value!r} in {url!r} is not a boolean (use 1 or 0)")


def _int(value: str, key: str, url: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise InputError(f"{key}={value!r} in {url!r} is not an integer") from None


def _triple(value: str, key: str, url: str) -> tuple[int, int, int]:
    items = [_int(v, key, url) for v in value.split(",")]
    if len(items) == 1:
        items = items * len(FAMILIES)
    if len(items) != len(FAMILIES):
        raise InputError(f"{key}={value!r} in {url!r}: give one value or {len(FAMILIES)} ({', '.join(FAMILIES)})")
    return (items[0], items[1], items[2])


def _query_option(key: str, value: str, url: str) -> dict[str, Any]:
    if key in ("qos", "expiry"):
        return {key: _triple(value, key, url)}
    if key in ("tls", "insecure", "reconnect"):
        return {{"insecure": "tls_insecure"}.get(key, key): _flag(value, key, url)}
    if key in ("ca", "cert", "key"):
        return {f"{key}_file": value, **({"tls": True} if key == "ca" else {})}
    if key in ("group", "client_id"):
        return {key: value}
    if key in ("keepalive", "session_expiry", "receive_maximum"):
        return {key: _int(value, key, url)}
    raise InputError(
        f"unknown option {key!r} in {url!r}: use qos, expiry, tls, ca, cert, key, insecure, group, "
        "client_id, keepalive, session_expiry, receive_maximum, reconnect"
    )


# --- the transport ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MqttMessage:
    """One received packet with where it came from."""

    stream: str
    family: str
    payload: bytes
    qos: int
    expiry: int | None
    """Remaining Message Expiry Interval (s) the broker forwarded, None when the sender set none."""
    mid: int = 0
    """MQTT packet id (QoS > 0), for `MqttTransport.ack`."""
    connection: int = 0
    """Which connection of the transport delivered it (acks are valid only on that one)."""


@dataclass
class MqttStats:
    """Counters of one transport (cumulative across reconnects)."""

    published: int = 0
    received: int = 0
    dropped_topic: int = 0
    dropped_oversize: int = 0
    dropped_full: int = 0
    refused: int = 0
    reconnects: int = 0
    acked: int = 0
    unrouted: int = 0
    """QoS 1 publishes the broker acknowledged with 'No matching subscribers' (nobody got them)."""
    ack_dropped: int = 0
    """Acks not sent because their connection was lost (the broker resends those messages)."""


_PUBLISH_MIDS: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("mqtt_publish_mids", default=None)
"""Message ids handed out by paho while a `_send` publishes (to match PUBACK reason codes to it)."""


class MqttTransport(Transport):
    """Send packets to, or receive them from, an MQTT 5 broker (see the module docstring)."""

    def __init__(
        self,
        config: MqttConfig,
        *,
        default_timeout: float | None = None,
        rng: random.Random | None = None,
        offline_start: bool = False,
    ) -> None:
        """`offline_start`: connect in the background (with `config.reconnect`), the first attempt included,
        as a service must that starts before its broker or while the broker is too busy to answer: `open`
        waits for the first attempt (at most its timeout) but never fails for the broker; sends wait for
        the connection. Without it `open` connects and raises on failure."""
        super().__init__()
        self.config = config
        self.offline_start = offline_start and config.reconnect
        self.end_session_on_close = False
        """Close with a DISCONNECT that sets the session expiry to 0, so the broker drops this client's
        session: for a worker leaving a shared-subscription group for good (while its persistent session
        exists, Mosquitto keeps handing it its share of the group's messages, queued for nobody)."""
        if default_timeout is not None:
            self.default_timeout = default_timeout
        self.stats = MqttStats()
        self._rng = rng or random.Random()
        self._client: aiomqtt.Client | None = None
        self._online = asyncio.Event()
        self._tried = asyncio.Event()  # the first connect attempt has ended, either way
        self._lost: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._inbox: deque[MqttMessage] = deque()
        self._wake = asyncio.Event()
        self._end: TransportError | None = None
        self._closing = False
        self._refused: dict[int, str] = {}
        self._unrouted: set[int] = set()
        self._properties: dict[str, Any] = {}
        self._connection = 0

    @classmethod
    def from_url(cls, url: str, *, role: str = "receive", **options: Any) -> MqttTransport:
        """A transport for ``mqtt://...`` (see `MqttConfig.from_url`); `options` override URL values."""
        return cls(MqttConfig.from_url(url, role=role, **options))

    @property
    def connected(self) -> bool:
        """True while a broker connection is up."""
        return self._online.is_set() and self._end is None

    @property
    def ended(self) -> TransportError | None:
        """Why the transport ended by itself (its connection lost with reconnect off); None while it runs
        and after `close`."""
        return None if self._closing else self._end

    @property
    def camera(self) -> str | None:
        """A sender's camera (its topic's stream level); None for a receiver (each message names its own)."""
        return self.config.stream if self.config.role == "send" else None

    @camera.setter
    def camera(self, value: str | None) -> None:
        raise AttributeError("an MQTT transport's camera is its topic's stream level")

    def ack(self, message: MqttMessage) -> None:
        """Acknowledge a QoS 1 message received with `manual_ack` (no-op otherwise, or when its
        connection is gone: the broker then delivers it again)."""
        if not self.config.manual_ack or message.qos == 0:
            return
        client = self._client
        if client is None or message.connection != self._connection or not self.connected:
            self.stats.ack_dropped += 1
            return
        client._client.ack(message.mid, message.qos)
        self.stats.acked += 1

    @property
    def where(self) -> str:
        """host:port, for messages."""
        return f"{self.config.host}:{self.config.effective_port}"

    # -- connection ----------------------------------------------------------------------------------

    async def open(self, *, timeout: float | None = None) -> None:
        """Connect (see `Transport.open`); a broker that accepts but does not answer in time is named.

        With `offline_start` it waits for the first attempt's outcome, at most `timeout`, and never
        raises for the broker: connected (and subscribed) on return where the broker answered."""
        limit = self.default_timeout if timeout is None else timeout
        try:
            await super().open(timeout=timeout)
        except TransportTimeout:
            advice = ": is an MQTT broker listening there, and is it overloaded? (--timeout S waits longer)"
            raise self._no_connack(limit, advice) from None
        if self.offline_start and not self._tried.is_set():
            try:
                await asyncio.wait_for(self._tried.wait(), limit)
            except asyncio.TimeoutError:
                log.warning(
                    "MQTT broker %s has not answered within %g s; connecting in the background", self.where, limit
                )

    def _tls_context(self) -> ssl.SSLContext | None:
        cfg = self.config
        if not cfg.tls:
            return None
        try:
            ctx = ssl.create_default_context(cafile=cfg.ca_file)
            if cfg.cert_file and cfg.key_file:
                ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise TransportError(f"cannot load TLS files (ca={cfg.ca_file}, cert={cfg.cert_file}): {exc}") from None
        if cfg.tls_insecure:
            ctx.check_hostname = False
        return ctx

    def _new_client(self) -> aiomqtt.Client:
        import aiomqtt
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        cfg = self.config
        connect_props = Properties(PacketTypes.CONNECT)
        if cfg.session_expiry:
            connect_props.SessionExpiryInterval = cfg.session_expiry
        if cfg.role == "receive":
            connect_props.ReceiveMaximum = cfg.receive_maximum
        client = aiomqtt.Client(
            cfg.host,
            cfg.effective_port,
            username=cfg.username,
            password=cfg.password,
            identifier=cfg.client_id or f"layercast-{cfg.role}-{uuid.uuid4().hex[:12]}",
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=not cfg.session_expiry,
            keepalive=cfg.keepalive,
            timeout=cfg.connect_timeout,
            properties=connect_props,
            tls_context=self._tls_context(),
            # without TCP_NODELAY a QoS 1 publish queued behind QoS 0 ones waits for a delayed ACK (~40 ms)
            socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
        )
        self._watch_pubacks(client)
        if cfg.manual_ack:
            client._client.manual_ack_set(True)
        return client

    def _watch_pubacks(self, client: aiomqtt.Client) -> None:
        # aiomqtt ignores PUBACK reason codes, so a QoS 1 publish the broker's ACL refused would look
        # delivered. Record failures per message id from the paho client it wraps.
        paho = client._client
        inner_publish = paho.publish
        inner_on_publish: Any = paho.on_publish

        def publish(*args: Any, **kwargs: Any) -> Any:
            info = inner_publish(*args, **kwargs)
            sink = _PUBLISH_MIDS.get()
            if sink is not None:
                sink.append(info.mid)
            return info

        def on_publish(c: Any, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
            if getattr(reason, "is_failure", False):
                self._refused[mid] = str(reason)
            elif getattr(reason, "value", 0) == NO_MATCHING_SUBSCRIBERS:
                self._unrouted.add(mid)
            inner_on_publish(c, userdata, mid, reason, properties)

        setattr(paho, "publish", publish)  # noqa: B010 - instance attribute shadows the method
        paho.on_publish = on_publish

    def _no_connack(self, seconds: float, advice: str = "") -> TransportTimeout:
        return TransportTimeout(f"no answer (CONNACK) from MQTT broker {self.where} within {seconds:g} s{advice}")

    def _connect_error(self, exc: Exception) -> TransportError:
        from aiomqtt.exceptions import MqttConnectError

        text = str(exc)
        if isinstance(exc, MqttConnectError):
            rc = getattr(exc.rc, "value", exc.rc)
            if rc in (4, 5, 134, 135):
                return TransportError(
                    f"MQTT broker {self.where} refused the connection ({text}): check the user name and "
                    f"password (user {self.config.username!r} from mqtt://USER@host; the password from "
                    "--password-file FILE or $LAYERCAST_MQTT_PASSWORD) against the broker's password_file and ACL"
                )
            return TransportError(f"MQTT broker {self.where} refused the connection: {text}")
        if "timed out" in text.lower():
            return self._no_connack(self.config.connect_timeout)
        if "certificate" in text.lower() or "ssl" in text.lower():
            return TransportError(
                f"TLS handshake with MQTT broker {self.where} failed ({text}): check the CA file "
                f"({self.config.ca_file}), the broker certificate's host name, or the port (plain vs TLS)"
            )
        return TransportError(f"cannot reach MQTT broker {self.where} ({text}): is it running and listening there?")

    async def _connect(self) -> None:
        """Connect once (and subscribe when receiving); raises TransportError."""
        import aiomqtt

        client = self._new_client()
        try:
            await client.__aenter__()
        except aiomqtt.MqttError as exc:
            raise self._connect_error(exc) from None
        try:
            if self.config.role == "receive":
                await self._subscribe(client)
        except BaseException:
            await self._drop(client)
            raise
        self._client = client
        self._connection += 1
        self._lost = asyncio.get_running_loop().create_future()
        self._online.set()

    async def _subscribe(self, client: aiomqtt.Client) -> None:
        import aiomqtt

        top = max(self.config.qos)
        for topic in self.config.subscriptions():
            try:
                granted = await client.subscribe(topic, qos=top)
            except aiomqtt.MqttError as exc:
                raise TransportError(f"cannot subscribe to {topic!r} on {self.where}: {exc}") from None
            for code in granted:
                if getattr(code, "is_failure", False):
                    raise TransportError(
                        f"MQTT broker {self.where} refused the subscription {topic!r} ({code}): the ACL "
                        f"must let user {self.config.username!r} read {self.config.prefix}/#"
                    )

    async def _drop(self, client: aiomqtt.Client) -> None:
        import aiomqtt

        try:
            await client.__aexit__(None, None, None)
        except (aiomqtt.MqttError, OSError) as exc:
            log.debug("MQTT disconnect from %s: %s", self.where, exc)

    async def _open(self) -> None:
        if self._task is not None:
            return
        if not self.offline_start:
            await self._connect()
        # offline_start: every connect, the first too, runs in the background task, so a broker that is
        # unreachable, refuses, or accepts and never answers (a stalled attempt lasts `connect_timeout`,
        # which may be longer than `open`'s own timeout) cannot fail `open`
        connected = not self.offline_start
        self._task = asyncio.create_task(self._supervise(connected), name=f"mqtt-{self.config.role}-{self.where}")

    async def _supervise(self, connected: bool = True) -> None:
        """Pump messages; on a lost connection (or none yet) reconnect with back-off until closed. Should
        it fail (a bug), the transport ends with TransportClosed, never a silent dead connection."""
        try:
            await self._pump_and_reconnect(connected)
        except Exception as exc:
            log.exception("MQTT connection to %s failed", self.where)
            self._finish(TransportClosed(f"MQTT connection to {self.where} failed: {type(exc).__name__}: {exc}"))

    async def _pump_and_reconnect(self, connected: bool) -> None:
        import aiomqtt

        first = not connected  # an offline start: the first attempt goes at once
        while True:
            if connected:
                client = self._client
                assert client is not None
                try:
                    async for message in client.messages:
                        self._deliver(message)
                except aiomqtt.MqttError as exc:
                    if not self._closing:
                        log.warning("MQTT connection to %s lost: %s", self.where, exc)
                self._set_offline()
                await self._drop(client)
                if self._closing:
                    return
                if not self.config.reconnect:
                    self._finish(TransportClosed(f"MQTT connection to {self.where} lost and reconnect is off"))
                    return
            connected = True
            attempt = 0
            while True:
                cfg = self.config
                delay = backoff_delay(
                    attempt,
                    initial=cfg.backoff_initial,
                    maximum=cfg.backoff_max,
                    jitter=cfg.backoff_jitter,
                    rng=self._rng,
                )
                await asyncio.sleep(0.0 if first and attempt == 0 else delay)
                try:
                    await self._connect()
                except TransportError as exc:
                    self._tried.set()
                    attempt += 1
                    level = logging.WARNING if attempt & (attempt - 1) == 0 else logging.INFO  # 1, 2, 4, 8...
                    if first and attempt == 1:
                        log.warning(
                            "MQTT broker %s is not reachable yet (%s); connecting in the background", self.where, exc
                        )
                    else:
                        log.log(level, "MQTT reconnect %d to %s failed: %s", attempt, self.where, exc)
                    continue
                self._tried.set()
                if not first:
                    self.stats.reconnects += 1
                verb = "connected" if first else "reconnected"
                log.info("MQTT %s to %s after %d attempt(s)", verb, self.where, attempt + 1)
                first = False
                break

    def _set_offline(self) -> None:
        self._online.clear()
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)

    def _finish(self, end: TransportError) -> None:
        if self._end is None:
            self._end = end
        self._wake.set()
        self._online.set()  # wakes senders waiting for a connection; they see `_end` and raise

    async def _close(self) -> None:
        self._closing = True
        client = self._client
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if client is not None and self._online.is_set():
            self._set_offline()
            if self.end_session_on_close:
                _disconnect_ending_session(client)
            await self._drop(client)
        self._finish(TransportClosed(f"MQTT transport to {self.where} is closed"))

    # -- sending -------------------------------------------------------------------------------------

    def _publish_properties(self, family: str) -> Any:
        props = self._properties.get(family)
        if props is None and self.config.expiry_for(family):
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            props = Properties(PacketTypes.PUBLISH)
            props.MessageExpiryInterval = self.config.expiry_for(family)
            self._properties[family] = props
        return props

    async def _send(self, data: bytes, family: str) -> None:
        import aiomqtt

        if self.config.role != "send":
            raise TransportError("this MQTT transport was opened to receive; open one with role='send' to publish")
        if len(data) > limits.MAX_PACKET_BYTES:
            raise InputError(f"packet of {len(data)} bytes exceeds the {limits.MAX_PACKET_BYTES}-byte limit")
        topic = self.config.topic(family)
        qos = self.config.qos_for(family)
        props = self._publish_properties(family)
        while True:
            if self._end is not None:
                raise self._end
            await self._online.wait()
            client, lost = self._client, self._lost
            assert client is not None and lost is not None
            mids: list[int] = []
            token = _PUBLISH_MIDS.set(mids)
            try:
                pub = asyncio.ensure_future(client.publish(topic, data, qos=qos, properties=props, timeout=math.inf))
            finally:
                _PUBLISH_MIDS.reset(token)
            try:
                await asyncio.wait((pub, lost), return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                pub.cancel()
                raise
            if not pub.done():  # connection lost mid-publish: send again on the next connection
                pub.cancel()
                continue
            try:
                pub.result()
            except aiomqtt.MqttError as exc:
                log.debug("MQTT publish to %s failed (%s); waiting for the connection", topic, exc)
                if not lost.done():
                    await asyncio.wait((lost,), timeout=0.05)
                continue
            unrouted = [m for m in mids if m in self._unrouted]
            self._unrouted.difference_update(unrouted)
            if unrouted:
                self.stats.unrouted += 1
                if self.config.require_subscribers:
                    raise NoSubscribersError(
                        f"MQTT broker {self.where} took the publish to {topic!r} but no receiver subscribes to it "
                        "(PUBACK 'No matching subscribers': none connected, or no member of a shared "
                        "subscription group online); it was not delivered"
                    )
            refused = [self._refused.pop(m) for m in mids if m in self._refused]
            if refused:
                self.stats.refused += 1
                raise TransportError(
                    f"MQTT broker {self.where} refused the publish to {topic!r} ({refused[0]}): its ACL does "
                    f"not let user {self.config.username!r} write there (a camera may publish only to "
                    f"{self.config.prefix}/<its user name>/#)"
                )
            self.stats.published += 1
            return

    # -- receiving -----------------------------------------------------------------------------------

    def _deliver(self, message: aiomqtt.Message) -> None:
        topic = message.topic.value
        parsed = parse_topic(topic, self.config.prefix)
        if parsed is None or not is_camera_name(parsed[0]):
            self.stats.dropped_topic += 1
            log.warning("dropped MQTT message on %r: not <prefix>/<camera>/<family>", topic[:200])
            self._ack_now(message)
            return
        payload = message.payload
        if not isinstance(payload, (bytes, bytearray)):
            payload = str(payload).encode()
        if len(payload) > limits.MAX_PACKET_BYTES:
            self.stats.dropped_oversize += 1
            log.warning("dropped %d-byte MQTT message on %r: over the packet limit", len(payload), topic)
            self._ack_now(message)
            return
        if len(self._inbox) >= self.config.max_queued and not message.qos:
            self.stats.dropped_full += 1  # QoS 0: nobody resends it; QoS 1 stays (bounded by receive_maximum)
            return
        expiry = getattr(message.properties, "MessageExpiryInterval", None) if message.properties else None
        self._inbox.append(
            MqttMessage(
                parsed[0], parsed[1], bytes(payload), int(message.qos), expiry, int(message.mid), self._connection
            )
        )
        self.stats.received += 1
        self._wake.set()

    def _ack_now(self, message: aiomqtt.Message) -> None:
        """Acknowledge a message that will never be worth redelivering (bad topic, oversize)."""
        if self.config.manual_ack and message.qos and self._client is not None:
            self._client._client.ack(int(message.mid), int(message.qos))

    async def _next_message(self) -> MqttMessage:
        while True:
            if self._inbox:
                return self._inbox.popleft()
            if self._end is not None:
                raise self._end
            if self._task is None:
                raise TransportClosed("MQTT transport is not open: use `async with` or `await open()`")
            self._wake.clear()
            await self._wake.wait()

    async def recv_message(self, *, timeout: float | None = None) -> MqttMessage:
        """The next packet with its stream, family, QoS and remaining expiry."""
        result: MqttMessage = await self._with_timeout(self._next_message(), timeout, "recv")
        return result

    async def _recv(self) -> bytes:
        return (await self._next_message()).payload
