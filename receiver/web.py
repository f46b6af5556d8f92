"""Live view of a receiver (aiohttp): every stream's latest stage in a page that updates by itself.

    view = LiveView(session)
    server.add_routes(view.routes())                 # on the WebRTC signalling server's app, or
    async with view.serve("127.0.0.1", 8080):        # standalone on its own port
        ...

Routes (no external JS or CSS; the page polls ``/events`` once a second)::

    GET /                                   HTML page: one card per stream with its latest stage
    GET /events?since=N                     JSON {"seq": last, "streams": [...], "events": [stages > N]}
    GET /stage/<stream>/<image>/latest.png  the latest stage of one image (PNG)
    GET /stage/<stream>/latest.png          the latest stage of a stream's latest image (PNG)
"""

from __future__ import annotations

import contextlib
import io
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from layercast.common.errors import TransportError
from layercast.receiver.session import ReceiveSession, Stage

if TYPE_CHECKING:
    from aiohttp import web

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Layercast live view</title>
<style>
body{font-family:system-ui,sans-serif;margin:1rem;background:#111;color:#eee}
h1{font-size:1.2rem;margin:0 0 .5rem}
#streams{display:flex;flex-wrap:wrap;gap:1rem}
.card{background:#222;border-radius:6px;padding:.5rem;width:340px}
.card img{width:100%;image-rendering:auto;background:#333;display:block}
.meta{font-size:.8rem;color:#aaa;margin-top:.3rem}
.final{color:#7c7}.partial{color:#eb6}
#status{font-size:.8rem;color:#888}
</style></head>
<body><h1>Layercast live view</h1>
<div id="status">waiting for images...</div>
<div id="streams"></div>
<script>
"use strict";
let seq = 0;
const cards = {};
function card(s) {
  let c = cards[s.camera];
  if (!c) {
    c = document.createElement("div");
    c.className = "card";
    c.id = "stream-" + s.camera;
    c.innerHTML = '<div><b></b></div><img alt=""><div class="meta"></div>';
    c.querySelector("b").textContent = "camera " + s.camera;
    document.getElementById("streams").appendChild(c);
    cards[s.camera] = c;
  }
  const img = c.querySelector("img");
  const src = "stage/" + encodeURIComponent(s.camera) + "/" + s.image_id + "/latest.png?v=" + s.seq;
  if (img.dataset.src !== src) { img.src = src; img.dataset.src = src; }
  img.dataset.image = s.image_id;
  img.dataset.stage = s.stage;
  const state = s.final ? (s.complete ? "final" : "final (partial: " + s.partial.join(", ") + ")") : "refining";
  const m = c.querySelector(".meta");
  m.className = "meta " + (s.final ? (s.complete ? "final" : "partial") : "");
  m.textContent = "image " + s.image_id + " · stage " + s.stage + " · " + (s.layers.join("+") || "no layers")
    + " · " + state + " · " + s.decoder + " " + s.decode_ms.toFixed(1) + " ms";
}
async function poll() {
  try {
    const r = await fetch("events?since=" + seq, {cache: "no-store"});
    const doc = await r.json();
    for (const s of doc.streams) card(s);
    seq = doc.seq;
    document.getElementById("status").textContent =
      doc.streams.length + " camera(s), " + doc.stages + " stage(s) so far; decoder: " + doc.decoder;
  } catch (e) {
    document.getElementById("status").textContent = "receiver unreachable: " + e;
  }
  setTimeout(poll, 1000);
}
poll();
</script></body></html>
"""


@dataclass
class _Latest:
    stage: Stage
    seq: int
    png: bytes | None = None


def encode_png(rgb: np.ndarray) -> bytes:
    """PNG bytes of an RGB uint8 image (light compression)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


class LiveView:
    """Serves a session's latest stages over HTTP; see the module docstring.

    Keeps the latest stage of the last `images_per_stream` images of each stream (pixels in memory)
    and the last `max_events` stage records for ``/events``.
    """

    def __init__(self, session: ReceiveSession, *, images_per_stream: int = 8, max_events: int = 512) -> None:
        self.session = session
        self.images_per_stream = images_per_stream
        self._images: dict[str, OrderedDict[int, _Latest]] = {}
        self._events: deque[dict[str, Any]] = deque(maxlen=max_events)
        self.seq = 0
        self._remove = session.add_listener(self._on_stage)

    def close(self) -> None:
        """Stop listening to the session."""
        self._remove()

    def _on_stage(self, stage: Stage) -> None:
        self.seq += 1
        per = self._images.setdefault(stage.camera or str(stage.stream_id), OrderedDict())
        per[stage.image_id] = _Latest(stage, self.seq)
        per.move_to_end(stage.image_id)
        while len(per) > self.images_per_stream:
            per.popitem(last=False)
        self._events.append(self._summary(stage, self.seq))

    @staticmethod
    def _summary(stage: Stage, seq: int) -> dict[str, Any]:
        return {
            "seq": seq,
            "camera": stage.camera or str(stage.stream_id),
            "stream_id": stage.stream_id,
            "image_id": stage.image_id,
            "stage": stage.index,
            "final": stage.final,
            "complete": stage.complete,
            "partial": list(stage.partial),
            "layers": list(stage.layers),
            "reason": stage.reason,
            "decoder": stage.decoder,
            "decode_ms": round(stage.decode_ms, 2),
        }

    def state(self, since: int = 0) -> dict[str, Any]:
        """The document ``GET /events`` returns."""
        streams = []
        for sid in sorted(self._images):
            per = self._images[sid]
            if per:
                latest = next(reversed(per.values()))
                streams.append(self._summary(latest.stage, latest.seq))
        return {
            "decoder": self.session.summary.decoder,
            "seq": self.seq,
            "stages": self.seq,
            "streams": streams,
            "events": [e for e in self._events if e["seq"] > since],
        }

    def latest_png(self, camera: str | int, image_id: int | None = None) -> bytes | None:
        """PNG of the latest stage of a camera's image (or of its latest image); None if unknown."""
        per = self._images.get(str(camera))
        if not per:
            return None
        entry = per.get(image_id) if image_id is not None else next(reversed(per.values()))
        if entry is None:
            return None
        if entry.png is None:
            entry.png = encode_png(entry.stage.rgb)
        return entry.png

    # --- aiohttp ------------------------------------------------------------------------------------

    def routes(self, prefix: str = "") -> list[web.RouteDef]:
        """The live view's routes (mount them on any aiohttp app, e.g. WebRTCServer.add_routes)."""
        from aiohttp import web

        return [
            web.get(prefix + "/", self._page),
            web.get(prefix + "/events", self._events_handler),
            web.get(prefix + "/stage/{stream}/latest.png", self._png),
            web.get(prefix + "/stage/{stream}/{image}/latest.png", self._png),
        ]

    def app(self) -> web.Application:
        """A standalone aiohttp application with the live view."""
        from aiohttp import web

        app = web.Application()
        app.add_routes(self.routes())
        return app

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

        return web.Response(text=PAGE, content_type="text/html", headers={"Cache-Control": "no-store"})

    async def _events_handler(self, request: web.Request) -> web.Response:
        from aiohttp import web

        try:
            since = int(request.query.get("since", "0"))
        except ValueError:
            return web.Response(status=400, text="since must be an integer")
        return web.json_response(self.state(since), headers={"Cache-Control": "no-store"})

    async def _png(self, request: web.Request) -> web.Response:
        from aiohttp import web

        try:
            image = int(request.match_info["image"]) if "image" in request.match_info else None
        except ValueError:
            return web.Response(status=400, text="image ids are integers")
        png = self.latest_png(request.match_info["stream"], image)
        if png is None:
            return web.Response(status=404, text="no stage for that stream/image yet")
        return web.Response(body=png, content_type="image/png", headers={"Cache-Control": "no-store"})
