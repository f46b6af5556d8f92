"""The live view's state and event stream, without a browser: what a camera's card is told to show, the
pushed updates (coalesced, never queued), and event streams that end when the server does."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from layercast.common.errors import TransportClosed
from layercast.common.transport.base import Transport
from layercast.receiver.layers import layerset_from_image
from layercast.receiver.session import ReceiveSession
from layercast.receiver.web import THUMB_PX, LiveView
from layercast.sender.session import SendSession
from tests.session_helpers import encoded_samples, read_png

pytestmark = pytest.mark.timeout(60)

CAMERA = "cam8"


class Outbox(Transport):
    """Keeps what a sender sends, with each packet's family, for a test to deliver when it likes."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[str, bytes]] = []

    async def _open(self) -> None:
        pass

    async def _close(self) -> None:
        pass

    async def _send(self, data: bytes, family: str) -> None:
        self.sent.append((family, data))

    async def _recv(self) -> bytes:
        raise TransportClosed("an outbox receives nothing")


async def image_packets(count: int) -> list[list[tuple[str, bytes]]]:
    """The packets of `count` images (the samples in turn) from camera CAMERA, image by image."""
    out = Outbox()
    images = []
    async with SendSession(out, camera=CAMERA) as tx:
        for i in range(count):
            before = len(out.sent)
            await tx.send_image(encoded_samples()[i % len(encoded_samples())].image)
            images.append(out.sent[before:])
    return images


async def deliver(rx: ReceiveSession, packets: list[tuple[str, bytes]], families: set[str] | None = None) -> None:
    for family, data in packets:
        if families is None or family in families:
            rx.feed(data, camera=CAMERA)
    await rx.wait_decodes()


def card(view: LiveView) -> dict[str, Any]:
    (cam,) = view.snapshot()["cameras"]
    assert cam["camera"] == CAMERA
    return cam


def prompt_of(index: int) -> tuple[str, str]:
    p = layerset_from_image(encoded_samples()[index % len(encoded_samples())].image).prompt
    assert p is not None
    return p.text, p.negative


async def test_card_keeps_the_refined_picture_while_the_next_image_has_only_its_prompt() -> None:
    images = await image_packets(2)
    async with ReceiveSession() as rx:
        view = LiveView(rx)
        await deliver(rx, images[0])
        cam = card(view)
        assert cam["shown"]["image_id"] == 0 and cam["shown"]["final"] and cam["shown"]["complete"]
        assert [f["image_id"] for f in cam["finals"]] == [0]

        await deliver(rx, images[1], {"semantic"})  # the next image: its prompt, nothing else yet
        cam = card(view)
        receiving = cam["receiving"]
        assert receiving["image_id"] == 1 and not receiving["final"] and not receiving["shown"]
        assert (receiving["prompt"], receiving["negative_prompt"]) == prompt_of(1)
        assert list(receiving["arrivals"]) == ["semantic"] and receiving["arrivals"]["semantic"]["complete"]
        assert cam["shown"]["image_id"] == 0, "a flat prompt-only stage must not replace the refined picture"
        assert cam["shown"]["prompt"] == prompt_of(0)[0]
        assert view.snapshot()["streams"][0]["image_id"] == 1, "/events still reports the latest stage"
        flat = read_png(view.latest_png(CAMERA, 1) or b"")
        shown = read_png(view.best_png(CAMERA, 0) or b"")
        assert flat.std() < 2 < 20 < shown.std(), "the newest stage is a flat fill; the shown one is not"

        await deliver(rx, images[1], {"structure"})
        cam = card(view)
        assert cam["shown"]["image_id"] == 1 and cam["shown"]["layers"] == ["semantic", "structure"]
        assert not cam["shown"]["final"] and cam["receiving"]["shown"]
        assert cam["shown"]["arrivals"]["structure"]["ms"] >= cam["shown"]["arrivals"]["semantic"]["ms"] >= 0

        await deliver(rx, images[1], {"texture"})
        cam = card(view)
        assert cam["shown"]["image_id"] == 1 and cam["shown"]["final"]
        assert cam["shown"]["decoder"] == "preview" and cam["shown"]["src"].startswith(f"stage/{CAMERA}/1/best.png")
        assert [f["image_id"] for f in cam["finals"]] == [1, 0]
        thumb = read_png(view.thumb_png(CAMERA, 1) or b"")
        assert max(thumb.shape[:2]) <= THUMB_PX and thumb.std() > 20
        records = view.state(0)["events"]
        assert {r["prompt"] for r in records} == {prompt_of(0)[0], prompt_of(1)[0]}
        view.close()


async def read_sse(resp: Any) -> dict[str, str]:
    """The next server-sent event (field -> value; comment lines skipped); {} at the end of the stream."""
    fields: dict[str, str] = {}
    while True:
        line = await resp.content.readline()
        if not line:
            return fields
        text = line.decode().rstrip("\n")
        if not text:
            if "data" in fields:
                return fields
            continue
        if text.startswith(":"):
            continue
        name, _, value = text.partition(": ")
        fields[name] = value


async def test_updates_are_pushed_coalesced_and_end_with_the_server() -> None:
    from aiohttp import ClientSession

    images = await image_packets(3)
    loop = asyncio.get_running_loop()
    async with ReceiveSession() as rx, ClientSession() as http:
        view = LiveView(rx, sse_min_interval=0.2)
        async with view.serve("127.0.0.1", 0) as url:
            resp = await http.get(url + "updates")
            assert resp.status == 200 and resp.content_type == "text/event-stream"
            first = await read_sse(resp)
            assert first["event"] == "state" and json.loads(first["data"])["cameras"] == []
            assert view.sse_clients == 1 and view.sse_connections == 1

            await deliver(rx, images[0], {"semantic"})
            doc = json.loads((await read_sse(resp))["data"])
            assert doc["cameras"][0]["receiving"]["prompt"] == prompt_of(0)[0]

            version, t0 = view.version, loop.time()
            for packets in images:  # many changes, fewer messages: each carries the latest state, no backlog
                await deliver(rx, packets)
            changes = view.version - version
            messages: list[dict[str, str]] = []
            while not messages or json.loads(messages[-1]["data"])["version"] < view.version:
                messages.append(await read_sse(resp))
            at_most = (loop.time() - t0) / view.sse_min_interval + 2
            assert changes >= 10 and len(messages) <= at_most, (changes, len(messages), at_most)
            last = json.loads(messages[-1]["data"])
            assert [f["image_id"] for f in last["cameras"][0]["finals"]] == [2, 1, 0]
            t0 = loop.time()
        assert loop.time() - t0 < 2, "the open event stream must not hold the server's shutdown"
        assert await read_sse(resp) == {} and view.sse_clients == 0
        resp.release()
        view.close()


async def test_event_streams_end_on_close_on_mounted_shutdown_and_after_their_lifetime() -> None:
    from aiohttp import ClientSession

    from layercast.common.transport.signalling import WebRTCServer

    loop = asyncio.get_running_loop()
    async with ReceiveSession() as rx, ClientSession() as http:
        short = LiveView(rx, sse_max_s=0.5)
        view = LiveView(rx)
        server = WebRTCServer("127.0.0.1", 0)
        server.add_routes(short.routes(prefix="/plain"))  # routes only: the stream's lifetime bounds it
        view.mount(server.app)
        async with server:
            base = f"http://127.0.0.1:{server.port}"
            t0 = loop.time()
            async with http.get(base + "/plain/updates") as resp:
                while await read_sse(resp):
                    pass
            assert 0.4 < loop.time() - t0 < 3, "a stream ends after sse_max_s; the page reconnects"
            resp = await http.get(base + "/updates")
            assert (await read_sse(resp))["event"] == "state"
            t0 = loop.time()
        assert loop.time() - t0 < 2, "mount() ends open streams when the application shuts down"
        assert await read_sse(resp) == {}
        resp.release()
        short.close()
        view.close()

        view = LiveView(rx)
        async with view.serve("127.0.0.1", 0) as url:
            resp = await http.get(url + "updates")
            assert (await read_sse(resp))["event"] == "state"
            view.close()
            assert await read_sse(resp) == {}, "close() ends the stream"
            resp.release()
            async with http.get(url + "updates") as after:
                assert after.status == 204, "204 tells EventSource to stop reconnecting"
            async with http.get(url + "events") as r:
                assert r.status == 200 and (await r.json())["cameras"] == []


def test_page_is_self_contained_and_writes_received_text_as_text() -> None:
    from layercast.receiver.web import page_html

    page = page_html()
    assert "Layercast live view" in page and 'new EventSource("updates")' in page
    assert "http://" not in page and "https://" not in page and "<link" not in page, "no external resources"
    assert "innerHTML" not in page and "insertAdjacentHTML" not in page and "document.write" not in page
