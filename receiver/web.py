"""Live view of a receiver (aiohttp): one card per camera, updated by server-sent events.

    view = LiveView(session)
    view.mount(server.app)                           # on the WebRTC signalling server's app, or
    async with view.serve("127.0.0.1", 8080):        # standalone on its own port
        ...
    view.close()

A camera's card (the page is ``receiver/live.html``: no external JS, CSS or fonts, so it works offline)
shows the newest image's prompt and negative prompt as soon as its semantic layer lands, when each of
its layer families arrived (ms after the image's first event at the receiver), and a "receiving image
N" line; its picture is the most refined stage so far (more layers beat fewer, final beats refining).
A newer image takes the picture over only once it shows something: a structure or texture layer, or
pixels that vary (a decoder that paints from the prompt alone); a stage with only the prompt is a flat
fill under the preview decoder, and would blank the card between images of a slow stream. Below: the
last `finals_per_stream` final images as thumbnails.

Updates are pushed (``GET /updates``, ``text/event-stream``): after every change each connected page
gets the whole state document, at most one message per `sse_min_interval` seconds. There is no
per-client queue, only a "changed" flag, so a slow browser skips to the latest state instead of
growing memory. A stream ends on `close()` (later requests get 204, which tells EventSource to stop),
on application shutdown when the view was added with `mount`, `app` or `serve`, and after `sse_max_s`
seconds (the browser reconnects by itself), which bounds how long a server that was not told can wait
for it at exit. The page polls ``/events`` only where EventSource does not exist.

Routes::

    GET /                                   the page
    GET /updates                            text/event-stream: event "state", data = the state document
    GET /events?since=N                     JSON: the state document, plus "events": stage records after N
    GET /stage/<stream>/latest.png          the latest stage of a stream's latest image (PNG)
    GET /stage/<stream>/<image>/latest.png  the latest stage of one image (PNG)
    GET /stage/<stream>/<image>/best.png    the most refined stage of one image (PNG)
    GET /thumb/<stream>/<image>.png         a small PNG of a final image

The state document: ``decoder``, ``seq`` (stages so far; also ``stages``), ``version`` (changes so
far), ``streams`` (per camera, the record of its latest stage) and ``cameras`` (per camera: ``shown``,
the stage in the picture; ``receiving``, the newest image; ``finals``, newest first). Stage records
carry the image's ``prompt``, ``negative_prompt`` and ``arrivals`` ({family: {"ms", "complete"}}).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import numpy as np

from layercast.common.errors import TransportError
from layercast.common.types import Prompt
from layercast.receiver.events import Event, ImageReady, LayerComplete, LayerPartial, LayerSetChanged
from layercast.receiver.session import ReceiveSession, Stage

if TYPE_CHECKING:
    from aiohttp import web

log = logging.getLogger(__name__)

FAMILIES = ("semantic", "structure", "texture")
FLAT_STD = 2.0
"""A stage whose pixels vary less than this (standard deviation, 0-255) shows nothing: a flat fill."""
THUMB_PX = 96
"""Thumbnails of final images fit in THUMB_PX x THUMB_PX."""


@functools.cache
def page_html() -> str:
    """The live page (``receiver/live.html``, shipped as package data)."""
    return resources.files("layercast.receiver").joinpath("live.html").read_text(encoding="utf-8")


def encode_png(rgb: np.ndarray, max_side: int | None = None) -> bytes:
    """PNG bytes of an RGB uint8 image (light compression: `receiver.png`), scaled down to fit `max_side`
    if given."""
    from PIL import Image

    from layercast.receiver import png

    if max_side is not None and max(rgb.shape[:2]) > max_side:
        im = Image.fromarray(rgb)
        im.thumbnail((max_side, max_side))
        rgb = np.asarray(im)
    return png.encode_png(rgb)


@dataclass(eq=False)
class _Shot:
    """One stage as the view keeps it: its place in the stage sequence and its PNGs once asked for."""

    stage: Stage
    seq: int
    informative: bool
    png: bytes | None = None
    thumb: bytes | None = None

    @property
    def rank(self) -> tuple[int, bool]:
        """More layers beat fewer; with the same layers, the final stage beats a refining one."""
        return sum(f != "semantic" for f in self.stage.layers), self.stage.final


@dataclass(eq=False)
class _Image:
    """What the view knows about one image of a camera."""

    camera: str
    stream_id: int
    image_id: int
    order: int
    """Arrival order within the camera (image ids restart when a sender does)."""
    first: float
    """Event-loop time of the image's first event."""
    prompt: str = ""
    negative: str = ""
    arrivals: dict[str, dict[str, Any]] = field(default_factory=dict)
    latest: _Shot | None = None
    best: _Shot | None = None
    final: _Shot | None = None


@dataclass
class _Camera:
    images: OrderedDict[int, _Image] = field(default_factory=OrderedDict)
    finals: deque[_Image] = field(default_factory=deque)
    shown: _Image | None = None
    """The image in the card's picture."""
    newest: _Image | None = None
    """The image that arrived last."""
    staged: _Image | None = None
    """The image of the latest stage."""
    count: int = 0


class _Client:
    """One connected page: woken on every change; `stop` ends its stream."""

    def __init__(self) -> None:
        self.wake = asyncio.Event()
        self.stop = False


def _encoded(shot: _Shot, *, thumb: bool = False) -> bytes:
    """The shot's PNG (or thumbnail), encoded on first use."""
    if thumb:
        if shot.thumb is None:
            shot.thumb = encode_png(shot.stage.rgb, THUMB_PX)
        return shot.thumb
    if shot.png is None:
        shot.png = encode_png(shot.stage.rgb)
    return shot.png


def _informative(stage: Stage) -> bool:
    """Does the stage show something: a structure or texture layer, or pixels that are not one flat fill?"""
    if any(f != "semantic" for f in stage.layers):
        return True
    return float(np.asarray(stage.rgb)[::8, ::8].std()) > FLAT_STD


def _takes_picture(img: _Image, shown: _Image | None) -> bool:
    """Should the card's picture become `img`'s best stage? Yes for the image already shown, and for a newer
    image that shows something (or when what is shown is no better than a flat fill)."""
    if shown is None or shown is img:
        return True
    if img.order < shown.order or img.best is None:
        return False
    return img.best.informative or shown.best is None or not shown.best.informative


class LiveView:
    """Serves a session's progress over HTTP; see the module docstring.

    Keeps, per camera, the last `images_per_stream` images (their latest and most refined stages, in
    memory) and the last `finals_per_stream` final ones; the last `max_events` stage records for
    ``/events``. `sse_min_interval`: seconds between two messages to one page; `sse_heartbeat_s`: a
    comment line after that much silence (keeps proxies from closing the stream); `sse_max_s`: a
    stream's lifetime before the page reconnects.
    """

    def __init__(
        self,
        session: ReceiveSession,
        *,
        images_per_stream: int = 8,
        finals_per_stream: int = 8,
        max_events: int = 512,
        sse_min_interval: float = 0.05,
        sse_heartbeat_s: float = 5.0,
        sse_max_s: float = 15.0,
    ) -> None:
        self.session = session
        self.images_per_stream = images_per_stream
        self.finals_per_stream = finals_per_stream
        self.sse_min_interval = sse_min_interval
        self.sse_heartbeat_s = sse_heartbeat_s
        self.sse_max_s = sse_max_s
        self._cameras: dict[str, _Camera] = {}
        self._events: deque[dict[str, Any]] = deque(maxlen=max_events)
        self.seq = 0
        """Stages seen so far."""
        self.version = 0
        """Changes seen so far (stages and assembler events): what a page is sent on."""
        self.sse_connections = 0
        """Event streams opened so far."""
        self.sse_messages = 0
        """State messages sent on event streams so far."""
        self._clients: set[_Client] = set()
        self._doc: tuple[int, bytes] | None = None
        self._closed = False
        self._removers = [session.add_listener(self._on_stage), session.add_event_listener(self._on_event)]

    @property
    def sse_clients(self) -> int:
        """Pages connected to ``/updates`` now."""
        return len(self._clients)

    def close(self) -> None:
        """Stop listening to the session and end every event stream (new ones get 204: no more updates)."""
        self._closed = True
        for remove in self._removers:
            remove()
        self._removers = []
        self.end_streams()

    def end_streams(self) -> None:
        """End the event streams open now (their pages reconnect, unless the server is going away)."""
        for client in self._clients:
            client.stop = True
            client.wake.set()

    # --- what the session tells us ------------------------------------------------------------------

    def _changed(self) -> None:
        self.version += 1
        for client in self._clients:
            client.wake.set()

    def _camera(self, name: str) -> _Camera:
        cam = self._cameras.get(name)
        if cam is None:
            cam = self._cameras[name] = _Camera(finals=deque(maxlen=self.finals_per_stream))
        return cam

    def _image(self, name: str, stream_id: int, image_id: int, now: float, *, fresh: bool) -> _Image:
        """The image's record; a new one when unknown, or when `fresh` news comes for a finished one
        (a restarted sender reuses image ids)."""
        cam = self._camera(name)
        img = cam.images.get(image_id)
        if img is None or (fresh and img.final is not None):
            cam.count += 1
            img = _Image(name, stream_id, image_id, cam.count, now)
            cam.images[image_id] = img
            cam.images.move_to_end(image_id)
            while len(cam.images) > self.images_per_stream:
                cam.images.popitem(last=False)
            if cam.newest is None or img.order > cam.newest.order:
                cam.newest = img
        return img

    def _on_event(self, ev: Event) -> None:
        try:
            self._apply_event(ev)
        except Exception:  # the view must never break the session's packet handling
            log.exception("live view could not take %s", type(ev).__name__)

    def _apply_event(self, ev: Event) -> None:
        if not isinstance(ev, LayerComplete | LayerPartial | LayerSetChanged | ImageReady):
            return  # rejected packets: not an image's progress
        img = self._image(ev.camera or str(ev.stream_id), ev.stream_id, ev.image_id, ev.time, fresh=True)
        ms = round(1e3 * (ev.time - img.first), 1)
        prompt: Any = None
        if isinstance(ev, LayerComplete):
            img.arrivals[ev.family] = {"ms": ms, "complete": True}
            prompt = ev.value
        elif isinstance(ev, LayerPartial):
            img.arrivals.setdefault(ev.family, {"ms": ms, "complete": False})
        else:
            prompt = ev.layers.prompt
        if isinstance(prompt, Prompt):
            img.prompt, img.negative = prompt.text, prompt.negative
        self._changed()

    def _on_stage(self, stage: Stage) -> None:
        self.seq += 1
        name = stage.camera or str(stage.stream_id)
        cam = self._camera(name)
        img = self._image(name, stage.stream_id, stage.image_id, stage.time, fresh=False)
        shot = _Shot(stage, self.seq, _informative(stage))
        img.latest, cam.staged = shot, img
        if img.best is None or shot.rank >= img.best.rank:
            img.best = shot
        if stage.final:
            img.final = shot
            if img not in cam.finals:
                cam.finals.append(img)
        if _takes_picture(img, cam.shown):
            cam.shown = img
        self._events.append(self._summary(shot, img))
        self._changed()

    # --- documents ----------------------------------------------------------------------------------

    @staticmethod
    def _summary(shot: _Shot, img: _Image) -> dict[str, Any]:
        """The record of one stage (what ``/events`` lists, and the ``shown`` picture of a card)."""
        stage = shot.stage
        return {
            "seq": shot.seq,
            "camera": img.camera,
            "stream_id": stage.stream_id,
            "image_id": stage.image_id,
            "stage": stage.index,
            "final": stage.final,
            "complete": stage.complete,
            "partial": list(stage.partial),
            "missing": list(stage.missing),
            "layers": list(stage.layers),
            "reason": stage.reason,
            "decoder": stage.decoder,
            "decode_ms": round(stage.decode_ms, 2),
            "notes": list(stage.notes),
            "prompt": img.prompt,
            "negative_prompt": img.negative,
            "arrivals": {f: dict(a) for f, a in img.arrivals.items()},
        }

    @staticmethod
    def _url(img: _Image, what: str) -> str:
        return f"{quote(img.camera, safe='')}/{img.image_id}/{what}"

    def _camera_doc(self, name: str, cam: _Camera) -> dict[str, Any]:
        shown = None
        if cam.shown is not None and cam.shown.best is not None:
            shown = self._summary(cam.shown.best, cam.shown)
            shown["src"] = f"stage/{self._url(cam.shown, 'best.png')}?v={cam.shown.best.seq}"
        receiving = None
        if cam.newest is not None:
            img = cam.newest
            latest = img.latest.stage if img.latest is not None else None
            receiving = {
                "image_id": img.image_id,
                "prompt": img.prompt,
                "negative_prompt": img.negative,
                "arrivals": {f: dict(a) for f, a in img.arrivals.items()},
                "stage": latest.index if latest is not None else 0,
                "layers": list(latest.layers) if latest is not None else [],
                "decoder": latest.decoder if latest is not None else None,
                "decode_ms": round(latest.decode_ms, 2) if latest is not None else None,
                "notes": list(latest.notes) if latest is not None else [],
                "final": img.final is not None,
                "complete": img.final.stage.complete if img.final is not None else None,
                "shown": cam.shown is img,
            }
        finals = [
            {
                "image_id": img.image_id,
                "seq": img.final.seq,
                "prompt": img.prompt,
                "complete": img.final.stage.complete,
                "thumb": f"thumb/{quote(img.camera, safe='')}/{img.image_id}.png?v={img.final.seq}",
                "src": f"stage/{self._url(img, 'best.png')}?v={img.final.seq}",
            }
            for img in reversed(cam.finals)
            if img.final is not None
        ]
        stream_id = cam.newest.stream_id if cam.newest is not None else None
        return {"camera": name, "stream_id": stream_id, "shown": shown, "receiving": receiving, "finals": finals}

    def snapshot(self) -> dict[str, Any]:
        """The state document (see the module docstring), without the event list."""
        streams = []
        for name in sorted(self._cameras):
            img = self._cameras[name].staged
            if img is not None and img.latest is not None:
                streams.append(self._summary(img.latest, img))
        return {
            "decoder": self.session.summary.decoder,
            "seq": self.seq,
            "stages": self.seq,
            "version": self.version,
            "streams": streams,
            "cameras": [self._camera_doc(n, self._cameras[n]) for n in sorted(self._cameras)],
        }

    def state(self, since: int = 0) -> dict[str, Any]:
        """The document ``GET /events`` returns: the state, plus the stage records after `since`."""
        return {**self.snapshot(), "events": [e for e in self._events if e["seq"] > since]}

    def _sse_message(self) -> bytes:
        if self._doc is None or self._doc[0] != self.version:
            data = json.dumps(self.snapshot(), separators=(",", ":"))
            self._doc = (self.version, f"event: state\nid: {self.version}\ndata: {data}\n\n".encode())
        return self._doc[1]

    def _find(self, camera: str | int, image_id: int | None) -> _Image | None:
        cam = self._cameras.get(str(camera))
        if cam is None:
            return None
        if image_id is None:
            return cam.staged
        img = cam.images.get(image_id)
        if img is None:
            img = next((f for f in cam.finals if f.image_id == image_id), None)
        if img is None and cam.shown is not None and cam.shown.image_id == image_id:
            img = cam.shown
        return img

    def _shot(self, what: str, camera: str | int, image_id: int | None) -> _Shot | None:
        """The stage `what` ("latest", "best" or "final") of a camera's image (None: its newest image)."""
        img = self._find(camera, image_id)
        if img is None:
            return None
        shot: _Shot | None = getattr(img, what)
        return shot

    def latest_png(self, camera: str | int, image_id: int | None = None) -> bytes | None:
        """PNG of the latest stage of a camera's image (or of its latest image); None if unknown."""
        shot = self._shot("latest", camera, image_id)
        return None if shot is None else _encoded(shot)

    def best_png(self, camera: str | int, image_id: int) -> bytes | None:
        """PNG of the most refined stage of a camera's image; None if unknown."""
        shot = self._shot("best", camera, image_id)
        return None if shot is None else _encoded(shot)

    def thumb_png(self, camera: str | int, image_id: int) -> bytes | None:
        """A small PNG of a camera's final image; None if unknown or not final."""
        shot = self._shot("final", camera, image_id)
        return None if shot is None else _encoded(shot, thumb=True)

    # --- aiohttp ------------------------------------------------------------------------------------

    def routes(self, prefix: str = "") -> list[web.RouteDef]:
        """The live view's routes. Prefer `mount`, which also ends event streams at shutdown."""
        from aiohttp import web

        return [
            web.get(prefix + "/", self._page),
            web.get(prefix + "/updates", self._updates),
            web.get(prefix + "/events", self._events_handler),
            web.get(prefix + "/stage/{stream}/latest.png", self._latest_png),
            web.get(prefix + "/stage/{stream}/{image}/latest.png", self._latest_png),
            web.get(prefix + "/stage/{stream}/{image}/best.png", self._best_png),
            web.get(prefix + "/thumb/{stream}/{image}.png", self._thumb_png),
        ]

    def mount(self, app: web.Application, prefix: str = "") -> None:
        """Add the routes to an aiohttp application (before it starts), ending event streams on its shutdown."""
        app.add_routes(self.routes(prefix))
        app.on_shutdown.append(self._on_shutdown)

    def app(self) -> web.Application:
        """A standalone aiohttp application with the live view."""
        from aiohttp import web

        app = web.Application()
        self.mount(app)
        return app

    async def _on_shutdown(self, app: web.Application) -> None:
        self.end_streams()

    @contextlib.asynccontextmanager
    async def serve(self, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
        """Run the live view on its own port; yields its URL (``http://host:port/``)."""
        from aiohttp import web

        runner = web.AppRunner(self.app(), access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            try:
                await site.start()
            except OSError as exc:
                raise TransportError(f"live view cannot listen on {host}:{port}: {exc}") from exc
            bound = runner.addresses[0][1]
            yield f"http://{host}:{bound}/"
        finally:
            await runner.cleanup()

    async def _page(self, request: web.Request) -> web.Response:
        from aiohttp import web

        return web.Response(text=page_html(), content_type="text/html", headers={"Cache-Control": "no-store"})

    async def _updates(self, request: web.Request) -> web.StreamResponse:
        """The event stream of one page: the state now, then again after every change."""
        from aiohttp import web

        if self._closed:
            return web.Response(status=204)  # EventSource does not reconnect after a 204
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        )
        await resp.prepare(request)
        client = _Client()
        self._clients.add(client)
        self.sse_connections += 1
        loop = asyncio.get_running_loop()
        end = loop.time() + self.sse_max_s
        sent = -1
        try:
            await resp.write(b"retry: 1000\n\n")  # reconnect after 1 s (the page also says so)
            while not client.stop and loop.time() < end:
                client.wake.clear()
                if sent != self.version:
                    sent = self.version
                    await resp.write(self._sse_message())  # waits while the page is slow to read
                    self.sse_messages += 1
                    await asyncio.sleep(self.sse_min_interval)  # changes meanwhile go in the next message
                    continue
                try:
                    await asyncio.wait_for(client.wake.wait(), min(self.sse_heartbeat_s, end - loop.time()))
                except asyncio.TimeoutError:
                    await resp.write(b": still here\n\n")
        except ConnectionResetError:  # the page went away
            pass
        finally:
            self._clients.discard(client)
        return resp

    async def _events_handler(self, request: web.Request) -> web.Response:
        from aiohttp import web

        try:
            since = int(request.query.get("since", "0"))
        except ValueError:
            return web.Response(status=400, text="since must be an integer")
        return web.json_response(self.state(since), headers={"Cache-Control": "no-store"})

    async def _latest_png(self, request: web.Request) -> web.Response:
        return await self._png(request, "latest")

    async def _best_png(self, request: web.Request) -> web.Response:
        return await self._png(request, "best")

    async def _thumb_png(self, request: web.Request) -> web.Response:
        return await self._png(request, "final", thumb=True)

    async def _png(self, request: web.Request, what: str, *, thumb: bool = False) -> web.Response:
        from aiohttp import web

        try:
            image = int(request.match_info["image"]) if "image" in request.match_info else None
        except ValueError:
            return web.Response(status=400, text="image ids are integers")
        shot = self._shot(what, request.match_info["stream"], image)  # looked up here, encoded once in a thread
        if shot is None:
            return web.Response(status=404, text="no such stage for that stream/image (yet)")
        png = await asyncio.to_thread(_encoded, shot, thumb=thumb)
        return web.Response(body=png, content_type="image/png", headers={"Cache-Control": "no-store"})
