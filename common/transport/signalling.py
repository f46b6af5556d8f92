"""WebRTC signalling: how an SDP offer reaches the receiver and its answer comes back.

Two carriers behind one small base class (`Signalling`: connect / send / receive / close):

* **HTTP** (as aiortc's server example): the receiver runs `WebRTCServer`, the sender POSTs
  ``{"sdp": ..., "type": "offer"}`` to ``http://HOST:PORT/offer`` and gets the answer as the response
  (403 when a pinned fingerprint does not match, 400 for a bad offer, 503 when full).
* **MQTT** (a camera behind NAT needs only the broker), topics under ``layercast/<receiver-id>/signal/``::

      layercast/<receiver-id>/signal/<peer-id>/offer    sender -> receiver   {"sdp", "type": "offer"}
      layercast/<receiver-id>/signal/<peer-id>/answer   receiver -> sender   {"sdp", "type": "answer"}
                                                                          or {"error": str, "auth": bool}

  QoS 1, not retained, MQTT 5 message expiry (`MqttSignalling.expiry_s`). The receiver subscribes to
  ``layercast/<receiver-id>/signal/+/offer``; each sender subscribes to its own answer topic before it
  publishes its offer. Ids are ``[A-Za-z0-9_.-]{1,64}``.

`signalling_from_url` builds either from a URL; `connect_webrtc` is the sender side, `WebRTCServer` /
`MqttWebRTCServer` the receiver side: every accepted offer makes one peer connection, one transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import re
import ssl
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from layercast.common.errors import (
    AuthError,
    InputError,
    LayercastError,
    TransportClosed,
    TransportError,
    TransportTimeout,
)
from layercast.common.transport.webrtc import MAX_SDP_BYTES, SessionDescription, WebRTCConfig, WebRTCTransport

log = logging.getLogger(__name__)

TOPIC_PREFIX = "layercast"
_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")

OnTransport = Callable[[WebRTCTransport], Awaitable[None]]


def _check_id(value: str, what: str) -> str:
    if not _ID_RE.fullmatch(value):
        raise InputError(f"{what} {value!r} must be 1-64 characters of A-Z a-z 0-9 _ . -")
    return value


class Signalling(ABC):
    """Carries session descriptions between two peers. ``async with`` = connect / close."""

    async def __aenter__(self) -> Signalling:
        await self.connect()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @abstractmethod
    async def connect(self, *, timeout: float | None = None) -> None:
        """Open the carrier (HTTP session, broker connection)."""

    @abstractmethod
    async def send(self, desc: SessionDescription, *, timeout: float | None = None) -> None:
        """Send an offer (sender) or an answer to `desc.peer_id` (receiver)."""

    @abstractmethod
    async def receive(self, *, timeout: float | None = None) -> SessionDescription:
        """The next answer (sender) or offer (receiver); TransportTimeout after `timeout`."""

    @abstractmethod
    async def close(self) -> None:
        """Release the carrier; idempotent."""

    async def reject(self, peer_id: str, error: LayercastError) -> None:
        """Tell a peer its offer was refused (where the carrier can); default: nothing."""
        return None


async def _timed(coro: Awaitable[Any], timeout: float | None, what: str) -> Any:
    try:
        return await asyncio.wait_for(coro, timeout)
    except asyncio.TimeoutError:
        raise TransportTimeout(f"{what} timed out after {timeout:g} s") from None


# --- HTTP -------------------------------------------------------------------------------------------


class HttpSignalling(Signalling):
    """Sender side of HTTP signalling: `send(offer)` POSTs it, `receive()` returns the answer."""

    def __init__(self, url: str, *, timeout: float = 30.0) -> None:
        if urlsplit(url).scheme not in ("http", "https"):
            raise InputError(f"HTTP signalling needs an http(s):// URL, got {url!r}")
        self.url = url
        self.timeout = timeout
        self._session: Any = None
        self._answer: SessionDescription | None = None

    async def connect(self, *, timeout: float | None = None) -> None:
        import aiohttp

        if self._session is None:
            limit = aiohttp.ClientTimeout(total=timeout or self.timeout)
            self._session = aiohttp.ClientSession(timeout=limit)

    async def send(self, desc: SessionDescription, *, timeout: float | None = None) -> None:
        import aiohttp

        if self._session is None:
            await self.connect()
        try:
            async with self._session.post(self.url, json=desc.to_json()) as resp:
                text = await resp.text()
                if resp.status == 403:
                    raise AuthError(f"signalling server {self.url} refused the offer: {text}")
                if resp.status != 200:
                    raise TransportError(f"signalling server {self.url} answered HTTP {resp.status}: {text[:200]}")
                obj = json.loads(text)
        except (aiohttp.ClientError, OSError) as exc:
            raise TransportError(f"cannot reach signalling server {self.url}: {exc}") from exc
        except json.JSONDecodeError as exc:
            raise TransportError(f"signalling server {self.url} sent no JSON answer: {exc}") from exc
        except asyncio.TimeoutError:
            raise TransportTimeout(f"signalling server {self.url} did not answer in time") from None
        self._answer = SessionDescription.from_json(obj)

    async def receive(self, *, timeout: float | None = None) -> SessionDescription:
        if self._answer is None:
            raise TransportError("HTTP signalling: no answer yet (send the offer first)")
        answer, self._answer = self._answer, None
        return answer

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


# --- MQTT -------------------------------------------------------------------------------------------


class MqttSignalling(Signalling):
    """Signalling over MQTT 5 topics (see the module doc). `role` "offer" = sender, "answer" = receiver."""

    def __init__(
        self,
        host: str,
        receiver_id: str,
        *,
        port: int | None = None,
        role: str = "offer",
        peer_id: str | None = None,
        username: str | None = None,
        password: str | None = None,
        tls: bool | ssl.SSLContext = False,
        timeout: float = 30.0,
        expiry_s: int = 60,
    ) -> None:
        if role not in ("offer", "answer"):
            raise InputError(f"MQTT signalling role must be 'offer' or 'answer', not {role!r}")
        self.host = host
        self.port = port if port is not None else (8883 if tls else 1883)
        self.receiver_id = _check_id(receiver_id, "receiver id")
        self.peer_id = _check_id(peer_id, "peer id") if peer_id else uuid.uuid4().hex[:16]
        self.role = role
        self.username, self.password = username, password
        self.tls = tls
        self.timeout = timeout
        self.expiry_s = expiry_s
        self._client: Any = None
        self._stack: contextlib.AsyncExitStack | None = None

    def topic(self, peer_id: str, what: str) -> str:
        """``layercast/<receiver-id>/signal/<peer-id>/<what>`` (what: offer | answer)."""
        return f"{TOPIC_PREFIX}/{self.receiver_id}/signal/{peer_id}/{what}"

    async def connect(self, *, timeout: float | None = None) -> None:
        import aiomqtt

        if self._client is not None:
            return
        ctx = self.tls if isinstance(self.tls, ssl.SSLContext) else None
        if self.tls is True:
            ctx = ssl.create_default_context()
        who = self.peer_id if self.role == "offer" else uuid.uuid4().hex[:12]
        client = aiomqtt.Client(
            self.host,
            self.port,
            username=self.username,
            password=self.password,
            identifier=f"layercast-sig-{self.role}-{who}",
            protocol=aiomqtt.ProtocolVersion.V5,
            tls_context=ctx,
            timeout=timeout or self.timeout,
        )
        stack = contextlib.AsyncExitStack()
        try:
            await stack.enter_async_context(client)
            sub = self.topic(self.peer_id, "answer") if self.role == "offer" else self.topic("+", "offer")
            await client.subscribe(sub, qos=1)
        except aiomqtt.MqttError as exc:
            await stack.aclose()
            raise TransportError(f"MQTT signalling: cannot use broker {self.host}:{self.port}: {exc}") from exc
        self._client, self._stack = client, stack

    async def _publish(self, topic: str, obj: dict[str, Any]) -> None:
        import aiomqtt
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        if self._client is None:
            await self.connect()
        props = Properties(PacketTypes.PUBLISH)
        props.MessageExpiryInterval = self.expiry_s
        try:
            await self._client.publish(topic, json.dumps(obj), qos=1, properties=props)
        except aiomqtt.MqttError as exc:
            raise TransportError(f"MQTT signalling: publish to {topic} failed: {exc}") from exc

    async def send(self, desc: SessionDescription, *, timeout: float | None = None) -> None:
        if self.role == "offer":
            topic = self.topic(self.peer_id, "offer")
        else:
            topic = self.topic(_check_id(desc.peer_id, "answer's peer id"), "answer")
        await _timed(self._publish(topic, desc.to_json()), timeout or self.timeout, "MQTT signalling send")

    async def reject(self, peer_id: str, error: LayercastError) -> None:
        if self.role == "answer":
            obj = {"error": str(error), "auth": isinstance(error, AuthError)}
            await self._publish(self.topic(peer_id, "answer"), obj)

    async def receive(self, *, timeout: float | None = None) -> SessionDescription:
        limit = self.timeout if timeout is None else timeout
        return await _timed(self._next(), limit, "MQTT signalling receive")

    async def _next(self) -> SessionDescription:
        import aiomqtt

        if self._client is None:
            await self.connect()
        while True:
            try:
                msg = await self._client.messages.__anext__()
            except aiomqtt.MqttError as exc:
                raise TransportClosed(f"MQTT signalling: broker connection lost: {exc}") from exc
            parts = str(msg.topic).split("/")
            if len(parts) != 5 or not _ID_RE.fullmatch(parts[3]):
                continue
            peer = parts[3]
            payload = msg.payload
            if not isinstance(payload, (bytes, bytearray)):
                payload = str(payload).encode()
            try:
                if len(payload) > MAX_SDP_BYTES + 1024:
                    raise TransportError("signalling message too large")
                obj = json.loads(payload)
                if self.role == "offer" and isinstance(obj, dict) and "error" in obj:
                    err = AuthError if obj.get("auth") else TransportError
                    raise err(f"receiver {self.receiver_id} refused the offer: {obj['error']}")
                desc = SessionDescription.from_json(obj, peer_id=peer)
            except (json.JSONDecodeError, UnicodeDecodeError, TransportError) as exc:
                if self.role == "offer":
                    raise TransportError(f"bad answer on {msg.topic}: {exc}") from exc
                log.warning("ignoring bad offer on %s: %s", msg.topic, exc)
                continue
            return desc

    async def close(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            with contextlib.suppress(Exception):  # the broker may already be gone; nothing left to release
                await stack.aclose()


def signalling_from_url(url: str, *, role: str = "offer") -> Signalling:
    """A Signalling for a URL.

    ``http(s)://HOST:PORT/offer``; ``webrtc://HOST:PORT`` (= ``http://HOST:PORT/offer``);
    ``mqtt[s]://[USER:PASS@]BROKER[:PORT]/<receiver-id>[?peer=<peer-id>]``.
    """
    parts = urlsplit(url)
    if parts.scheme in ("http", "https"):
        if role != "offer":
            raise InputError("an HTTP URL signals the sender side only; the receiver runs WebRTCServer")
        return HttpSignalling(url)
    if parts.scheme == "webrtc":
        if not parts.hostname or not parts.port:
            raise InputError(f"webrtc URL {url!r} needs HOST:PORT")
        return HttpSignalling(f"http://{parts.netloc.rpartition('@')[2]}/offer")
    if parts.scheme in ("mqtt", "mqtts"):
        rid = parts.path.strip("/")
        if not parts.hostname or not rid:
            raise InputError(f"MQTT signalling URL {url!r} must be mqtt://BROKER[:PORT]/<receiver-id>")
        peer = parse_qs(parts.query).get("peer", [None])[0]
        return MqttSignalling(
            parts.hostname,
            rid,
            port=parts.port,
            role=role,
            peer_id=peer,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            tls=parts.scheme == "mqtts",
        )
    raise InputError(
        f"unknown signalling URL {url!r}: use http://HOST:PORT/offer, webrtc://HOST:PORT or mqtt://BROKER/ID"
    )


async def connect_webrtc(
    target: str | Signalling, config: WebRTCConfig | None = None, *, timeout: float = 30.0, camera: str = ""
) -> WebRTCTransport:
    """Sender side: offer through `target` (URL or Signalling), apply the answer; the open transport.
    `camera` names this sender in the offer (the receiver files its images under that name)."""
    sig = signalling_from_url(target) if isinstance(target, str) else target
    transport = WebRTCTransport(config)
    transport.camera = camera or None

    async def run() -> None:
        await sig.connect()
        offer = await transport.create_offer()
        await sig.send(dataclasses.replace(offer, camera=camera) if camera else offer)
        await transport.accept_answer(await sig.receive(timeout=None))
        await transport.open(timeout=None)

    try:
        await _timed(run(), timeout, "WebRTC connect")
    except BaseException:
        await transport.close()
        raise
    finally:
        await sig.close()
    return transport


# --- receiver side ----------------------------------------------------------------------------------


class _Acceptor:
    """Turns offers into open transports, each handed to `on_transport` (closed when it returns) or queued."""

    def __init__(
        self,
        config: WebRTCConfig | None,
        on_transport: OnTransport | None,
        max_peers: int,
        open_timeout: float,
    ) -> None:
        self.config = config or WebRTCConfig()
        self.on_transport = on_transport
        self.max_peers = max_peers
        self.open_timeout = open_timeout
        self._accepted: asyncio.Queue[WebRTCTransport] = asyncio.Queue()
        self._live: set[WebRTCTransport] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def _answer(self, offer: SessionDescription) -> SessionDescription:
        self._live = {t for t in self._live if t.alive}
        if len(self._live) >= self.max_peers:
            raise TransportError(f"receiver is full ({self.max_peers} peers); try again later")
        transport = WebRTCTransport(self.config)
        transport.camera = offer.camera or None
        try:
            answer = await transport.accept_offer(offer)
        except BaseException:
            await transport.close()
            raise
        self._live.add(transport)
        task = asyncio.create_task(self._finish(transport))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return answer

    async def _finish(self, transport: WebRTCTransport) -> None:
        try:
            await transport.open(timeout=self.open_timeout)
        except TransportError as exc:
            log.warning("WebRTC peer did not connect: %s", exc)
            await transport.close()
            return
        if self.on_transport is None:
            self._accepted.put_nowait(transport)
            return
        try:
            await self.on_transport(transport)
        except LayercastError as exc:
            log.warning("on_transport ended with %s: %s", type(exc).__name__, exc)
        finally:
            await transport.close()

    async def accept(self, *, timeout: float | None = None) -> WebRTCTransport:
        """The next connected transport (without `on_transport`); TransportTimeout after `timeout`."""
        return await _timed(self._accepted.get(), timeout, "accept")

    def __aiter__(self) -> AsyncIterator[WebRTCTransport]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[WebRTCTransport]:
        while True:
            yield await self._accepted.get()

    async def _shutdown(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for transport in list(self._live):
            await transport.close()
        self._live.clear()


class WebRTCServer(_Acceptor):
    """Receiver side of HTTP signalling: an aiohttp app serving ``POST <path>`` (offer in, answer out).

    Mount extra routes (e.g. a live-view page) with `add_routes` or on `app` before entering.
    Port 0 picks a free port; `port` / `url` tell which after ``async with``.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        config: WebRTCConfig | None = None,
        on_transport: OnTransport | None = None,
        *,
        path: str = "/offer",
        max_peers: int = 64,
        open_timeout: float = 30.0,
    ) -> None:
        from aiohttp import web

        super().__init__(config, on_transport, max_peers, open_timeout)
        self.host, self._port, self.path = host, port, path
        self.app = web.Application(client_max_size=MAX_SDP_BYTES + 4096)
        self.app.router.add_post(path, self._handle_offer)
        self._runner: Any = None

    def add_routes(self, routes: Any) -> None:
        """Mount extra aiohttp routes (a list of ``web.get(...)`` etc.) before the server starts."""
        if self._runner is not None:
            raise InputError("add routes before the server starts (aiohttp freezes its router)")
        self.app.add_routes(routes)

    @property
    def port(self) -> int:
        """The bound TCP port (after start)."""
        if self._runner is None:
            raise TransportError("WebRTCServer is not started")
        return int(self._runner.addresses[0][1])

    @property
    def url(self) -> str:
        """``http://HOST:PORT<path>``: what a sender passes to `connect_webrtc`."""
        return f"http://{self.host}:{self.port}{self.path}"

    async def __aenter__(self) -> WebRTCServer:
        from aiohttp import web

        self._runner = runner = web.AppRunner(self.app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self._port).start()
        except OSError as exc:
            await runner.cleanup()
            self._runner = None
            raise TransportError(f"cannot listen on {self.host}:{self._port}: {exc}") from exc
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._shutdown()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle_offer(self, request: Any) -> Any:
        from aiohttp import web

        try:
            offer = SessionDescription.from_json(await request.json())
            answer = await self._answer(offer)
        except json.JSONDecodeError:
            return web.Response(status=400, text='body must be JSON {"sdp": ..., "type": "offer"}')
        except AuthError as exc:
            return web.Response(status=403, text=str(exc))
        except TransportError as exc:
            return web.Response(status=503 if "full" in str(exc) else 400, text=str(exc))
        return web.json_response(answer.to_json())


class MqttWebRTCServer(_Acceptor):
    """Receiver side of MQTT signalling: answers every offer on ``layercast/<receiver-id>/signal/+/offer``."""

    def __init__(
        self,
        signalling: MqttSignalling | str,
        config: WebRTCConfig | None = None,
        on_transport: OnTransport | None = None,
        *,
        max_peers: int = 64,
        open_timeout: float = 30.0,
    ) -> None:
        super().__init__(config, on_transport, max_peers, open_timeout)
        sig = signalling_from_url(signalling, role="answer") if isinstance(signalling, str) else signalling
        if not isinstance(sig, MqttSignalling) or sig.role != "answer":
            raise InputError("MqttWebRTCServer needs an mqtt:// URL or an MqttSignalling with role='answer'")
        self.signalling = sig
        self._loop_task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> MqttWebRTCServer:
        await self.signalling.connect()
        self._loop_task = asyncio.create_task(self._serve())
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        await self._shutdown()
        await self.signalling.close()

    async def _serve(self) -> None:
        while True:
            try:
                offer = await self.signalling.receive(timeout=None)
            except TransportTimeout:
                continue
            except TransportClosed as exc:
                log.error("MQTT signalling stopped: %s", exc)
                return
            try:
                await self.signalling.send(await self._answer(offer))
            except LayercastError as exc:
                log.warning("refused offer from %s: %s", offer.peer_id, exc)
                with contextlib.suppress(TransportError):
                    await self.signalling.reject(offer.peer_id, exc)
