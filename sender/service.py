"""Store and forward: image files -> durable spool -> link, surviving link outages and restarts.

    spool, enc = Spool(spool_dir, camera="cam1"), Encoder()
    async with SendSession(mqtt_transport, profile="mqtt", camera="cam1") as tx:
        encode = lambda p: tx.encode_file(p, enc, image_id=spool.next_image_id())  # budget with its own id
        service = SpoolService(tx, spool, encode=encode, watch=Path("incoming"))
        await service.run(stop)          # until `stop` is set; or run_once() for a one-shot send

Two tasks share the spool. The *scanner* polls the watched folder every `poll_s` seconds, encodes each
new image file (one whose modification time is `settle_s` old: write then rename into the folder, or
let a writer finish) in a worker thread and adds it to the spool. The *forwarder* sends the spool's
images oldest first; an image leaves the spool only when `SendSession.send_image` returned, which on
MQTT means the broker acknowledged its QoS 1 packets. A failed or timed-out send keeps the image and
retries after a back-off (0.5 s doubling to `retry_max_s`, 10 s: the MQTT reconnect back-off's
ceiling too), so an outage of any length costs only delay, and at most ~10 s once the link is back.
Every change is reported to `on_event` (a dict with an "event" name and the backlog) and written to
the spool's status.json.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from layercast.common.errors import LayercastError, TransportClosed, TransportError
from layercast.sender.image_io import IMAGE_EXTS
from layercast.sender.session import SendSession
from layercast.sender.spool import Spool, SpoolEntry, source_key

log = logging.getLogger(__name__)


@dataclass
class ServiceStats:
    """Counters of one service run."""

    queued: int = 0
    sent: int = 0
    failed: int = 0
    send_errors: int = 0
    started: float = field(default_factory=time.monotonic)


class SpoolService:
    """Scan a folder into a spool and forward the spool over a send session; see the module docstring."""

    def __init__(
        self,
        session: SendSession,
        spool: Spool,
        *,
        encode: Callable[[Path], Any],
        watch: Path | None = None,
        poll_s: float = 1.0,
        settle_s: float = 1.0,
        retry_max_s: float = 10.0,
        status_every_s: float = 30.0,
        on_event: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.session = session
        self.spool = spool
        self.encode = encode
        self.watch = watch
        self.poll_s = poll_s
        self.settle_s = settle_s
        self.retry_max_s = retry_max_s
        self.status_every_s = status_every_s
        self.on_event = on_event
        self.stats = ServiceStats()
        self.link_up: bool | None = None
        self.last_error: str | None = None
        self._wake = asyncio.Event()

    # --- one-shot ---------------------------------------------------------------------------------------

    async def run_once(self, paths: list[Path], *, give_up_s: float | None = None) -> int:
        """Queue `paths` (those not already handled) and forward until the spool is empty, or until the
        link has been failing for `give_up_s` seconds; returns the backlog left (0 = all delivered)."""
        for path in paths:
            await self._queue(path)
        await self._forward(stop=None, give_up_s=give_up_s)
        return self.spool.backlog

    # --- service ----------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Scan and forward until `stop` is set (then finish the image in flight and return).

        Crash-only: when the scanner or the forwarder dies (a spool it cannot write: disk full, a broken
        folder; a transport closed for good, TransportClosed) `run` raises that error instead of carrying
        on as a service that no longer sends. The journal makes a restart safe (the unit restarts the
        process); nothing queued is lost."""
        self._event("started", watch=str(self.watch) if self.watch else None)
        tasks: list[asyncio.Task[Any]] = [asyncio.create_task(self._forward(stop=stop), name="spool-forward")]
        if self.watch is not None:
            tasks.append(asyncio.create_task(self._scan_loop(stop), name="spool-scan"))
        tasks.append(asyncio.create_task(self._status_loop(stop), name="spool-status"))
        stopped = asyncio.create_task(stop.wait(), name="spool-stop")
        try:
            done, _ = await asyncio.wait([stopped, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for t in tasks:
                error = t.exception() if t in done and not t.cancelled() else None
                if error is not None:
                    raise error
        finally:
            self._wake.set()
            for t in (*tasks, stopped):
                t.cancel()
            await asyncio.gather(*tasks, stopped, return_exceptions=True)
            self._event("stopped")

    async def _scan_loop(self, stop: asyncio.Event) -> None:
        assert self.watch is not None
        while not stop.is_set():
            for path in self.scan():
                await self._queue(path)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), self.poll_s)

    async def _status_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), self.status_every_s)
            except asyncio.TimeoutError:
                self._event("status")

    def scan(self) -> list[Path]:
        """New, settled image files in the watched folder (sorted by name), not yet in the spool."""
        if self.watch is None:
            return []
        out: list[Path] = []
        now = time.time()
        try:
            entries = list(os.scandir(self.watch))
        except OSError as exc:
            self._event("scan_error", error=f"{self.watch}: {exc.strerror or exc}")
            return []
        for e in entries:
            if e.name.startswith(".") or Path(e.name).suffix.lower() not in IMAGE_EXTS:
                continue
            try:
                if not e.is_file():
                    continue
                st = e.stat()
            except OSError:
                continue
            if now - st.st_mtime < self.settle_s:
                continue  # still being written: take it on a later scan
            if not self.spool.knows(source_key(Path(e.path), st)):
                out.append(Path(e.path))
        return sorted(out)

    async def _queue(self, path: Path) -> SpoolEntry | None:
        try:
            key = source_key(path)
        except OSError as exc:
            self._event("failed", source=str(path), error=f"cannot read: {exc.strerror or exc}")
            return None
        if self.spool.knows(key):
            return None
        try:
            result = await asyncio.to_thread(self.encode, path)
        except (LayercastError, OSError) as exc:
            self.spool.fail(path, key, f"{type(exc).__name__}: {exc}")
            self.stats.failed += 1
            self._event("failed", source=str(path), error=f"{type(exc).__name__}: {exc}")
            return None
        entry = self.spool.add(path, key, result.image)
        self.stats.queued += 1
        self._event("queued", source=str(path), image_id=entry.image_id, bytes=entry.path.stat().st_size)
        self._wake.set()
        return entry

    async def _forward(self, *, stop: asyncio.Event | None, give_up_s: float | None = None) -> None:
        delay = 0.5
        failing_since: float | None = None
        while stop is None or not stop.is_set():
            pending = self.spool.pending()
            if not pending:
                if stop is None:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            entry = pending[0]
            try:
                image = self.spool.load(entry)
            except (LayercastError, OSError) as exc:  # a damaged outbox file cannot be sent, ever
                self.spool.done(entry)
                self.stats.failed += 1
                self._event("failed", source=entry.source, image_id=entry.image_id, error=f"outbox file: {exc}")
                continue
            try:
                report = await self.session.send_image(image, image_id=entry.image_id, name=entry.source)
            except TransportClosed:
                raise  # this transport cannot come back (e.g. MQTT with reconnect off): end, restart
            except TransportError as exc:
                self.stats.send_errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                now = time.monotonic()
                failing_since = failing_since if failing_since is not None else now
                if self.link_up is not False:
                    self.link_up = False
                self._event("link_down", error=self.last_error, retry_s=round(delay, 2))
                if give_up_s is not None and now - failing_since >= give_up_s:
                    return
                await asyncio.sleep(delay)
                delay = min(self.retry_max_s, delay * 2)
                continue
            delay, failing_since = 0.5, None
            self.spool.done(entry)
            self.stats.sent += 1
            if self.link_up is not True:
                self.link_up = True
                self.last_error = None
            self._event(
                "sent",
                source=entry.source,
                image_id=entry.image_id,
                packets=report.packets,
                wire_bytes=report.wire_bytes,
            )

    def _event(self, name: str, **fields: Any) -> None:
        doc: dict[str, Any] = {
            "event": name,
            "camera": self.spool.camera,
            **fields,
            "backlog": self.spool.backlog,
            "sent": self.stats.sent,
            "failed": self.stats.failed,
            "link_up": self.link_up,
        }
        try:
            self.spool.write_status(link_up=self.link_up, last_error=self.last_error)
        except OSError as exc:
            log.warning("cannot write %s/status.json: %s", self.spool.root, exc)
        if self.on_event is not None:
            self.on_event(doc)
