"""`common.eventloop`: the entry points' event loop (uvloop where installed, else asyncio's), and a real
WebRTC session on uvloop."""

from __future__ import annotations

import asyncio
import inspect
import sys

import pytest

from layercast.common import eventloop
from layercast.common.errors import InputError
from layercast.common.transport.signalling import WebRTCServer, connect_webrtc
from layercast.receiver.session import ReceiveSession
from layercast.sender.session import SendSession
from tests.session_helpers import encoded_samples

pytestmark = pytest.mark.timeout(60)


async def _loop_kind() -> tuple[str, str]:
    await asyncio.sleep(0)
    return eventloop.running_loop_name(), type(asyncio.get_running_loop()).__module__


def test_uvloop_is_installed_with_the_fast_extra_and_auto_picks_it() -> None:
    import uvloop  # the dev extra includes `fast`, which brings uvloop

    assert eventloop.resolve() == eventloop.resolve("auto") == "uvloop"
    name, module = eventloop.run(_loop_kind())
    assert name == "uvloop" and module.startswith("uvloop")
    fresh = uvloop.new_event_loop()
    try:
        assert isinstance(fresh, asyncio.AbstractEventLoop)
    finally:
        fresh.close()


@pytest.mark.parametrize(("loop", "want"), [("uvloop", "uvloop"), ("asyncio", "asyncio")])
def test_run_uses_the_named_loop_and_returns_or_raises_what_the_coroutine_does(loop: str, want: str) -> None:
    name, module = eventloop.run(_loop_kind(), loop=loop)
    assert name == want and module.startswith(want)

    async def boom() -> None:
        raise KeyError("from the coroutine")

    with pytest.raises(KeyError, match="from the coroutine"):
        eventloop.run(boom(), loop=loop)
    with pytest.raises(RuntimeError):  # a fresh loop each run: the caller's running loop is not reused
        asyncio.get_running_loop()


def test_without_uvloop_auto_falls_back_and_uvloop_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop now raises ImportError
    assert eventloop.resolve("auto") == "asyncio"
    assert eventloop.run(_loop_kind())[0] == "asyncio"
    with pytest.raises(InputError, match=r"uvloop is not installed: pip install 'layercast\[fast\]'") as err:
        eventloop.resolve("uvloop")
    assert "\n" not in str(err.value)
    coro = _loop_kind()
    with pytest.raises(InputError):
        eventloop.run(coro, loop="uvloop")
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED, "closed: no never-awaited warning"


def test_unknown_loop_name_is_refused() -> None:
    coro = _loop_kind()
    with pytest.raises(InputError, match="unknown event loop 'trio'; use auto, uvloop, asyncio"):
        eventloop.run(coro, loop="trio")
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED


async def _webrtc_round(count: int) -> tuple[str, int, int, int]:
    images = [r.image for r in encoded_samples()[:count]]
    rx = ReceiveSession(image_timeout=5.0)
    async with rx, WebRTCServer("127.0.0.1", 0, on_transport=rx.serve_transport) as server:
        transport = await connect_webrtc(server.url, timeout=20, camera="cam1")
        async with SendSession(transport, profile="webrtc", rate_bps=0, camera="cam1") as tx:
            for img in images:
                await tx.send_image(img)
        summary = await asyncio.wait_for(rx.run(count=count, until_closed=False), 30)
    return eventloop.running_loop_name(), summary.images, summary.complete, summary.rejected


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_real_webrtc_session_completes_on_each_loop(loop: str) -> None:
    """aiortc's ICE, DTLS and SCTP over loopback UDP, per-layer channels, on a uvloop (and an asyncio) loop."""
    assert eventloop.run(_webrtc_round(3), loop=loop) == (loop, 3, 3, 0)
