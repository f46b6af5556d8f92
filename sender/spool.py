"""A sender's durable outbox: encoded images wait on disk until the link acknowledged them.

    spool = Spool("/var/lib/layercast/spool/cam1", camera="cam1")
    entry = spool.add(source_path, source_key(source_path), encoded)   # durable before it returns
    for entry in spool.pending():                                      # oldest first
        await session.send_image(spool.load(entry), image_id=entry.image_id)
        spool.done(entry)                                              # durable: never sent again

Layout of the spool folder (one camera per folder)::

    camera          the camera name this spool belongs to (a spool is never reused by another camera)
    journal.jsonl   append-only, fsynced records: {"op": "queued", "id", "key", "source"},
                    {"op": "sent", "id"}, {"op": "failed", "key", "source", "error"}; a compaction
                    (at start, then every 10,000 records) rewrites it as {"op": "next", "id"}, the
                    queued records, and {"op": "handled", "key"} for sources still in the folder
    outbox/<id>.lcs the encoded image (a .lcs container), removed once sent
    status.json     backlog and counters (rewritten atomically on every change), for monitoring

Crash safety: `add` journals the image id for the source *before* writing its outbox file, so a sender
killed in between re-encodes that source under the same id; `done` journals "sent" before removing
the file, so an image acknowledged before a crash is never sent again. What remains at-least-once is
the moment between the broker's acknowledgement and the "sent" record: such an image goes out again
under the same (camera, image id), which receivers drop as a duplicate. Image ids grow by one per
image from the journal, so they stay unique per camera across restarts; the first id of a new spool
comes from the clock (`common.identity.clock_image_id`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layercast.common.errors import InputError
from layercast.common.identity import check_camera_name, clock_image_id
from layercast.common.types import EncodedImage

log = logging.getLogger(__name__)

JOURNAL = "journal.jsonl"
OUTBOX = "outbox"
STATUS = "status.json"
COMPACT_EVERY = 10_000
"""Journal records appended between two compactions (each compaction keeps only what is still needed)."""


@dataclass(frozen=True)
class SpoolEntry:
    """One image waiting in the outbox."""

    image_id: int
    key: str
    source: str
    path: Path


def source_key(path: Path, stat: os.stat_result | None = None) -> str:
    """Identity of one version of a source file: path, size and modification time (ns)."""
    st = stat or path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` so that `path` holds either its old content or all of `data`, durably."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    _fsync_dir(path.parent)


class Spool:
    """The durable outbox of one camera; see the module docstring. Not safe for two processes at once
    (the service holds an exclusive lock on the folder while it runs)."""

    def __init__(self, root: Path | str, *, camera: str, first_image_id: Callable[[], int] = clock_image_id) -> None:
        self.root = Path(root)
        self.camera = check_camera_name(camera)
        self.outbox = self.root / OUTBOX
        try:
            self.outbox.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot create spool folder {self.root}: {exc.strerror}") from None
        owner = self.root / "camera"
        if owner.exists():
            found = owner.read_text().strip()
            if found != camera:
                raise InputError(f"spool {self.root} belongs to camera {found!r}, not {camera!r}: give each its own")
        else:
            write_atomic(owner, (camera + "\n").encode())
        self._lock = _lock(self.root)
        self._first_image_id = first_image_id
        self._queued: dict[int, SpoolEntry] = {}
        self._ids_by_key: dict[str, int] = {}
        self._handled: set[str] = set()  # keys sent or failed
        self._next: int | None = None
        self._appended = 0
        self.sent = 0
        self.failed = 0
        self._load()
        self._compact()

    # --- queries ----------------------------------------------------------------------------------------

    @property
    def backlog(self) -> int:
        """Images waiting to be acknowledged."""
        return len(self._queued)

    def pending(self) -> list[SpoolEntry]:
        """Images in the outbox, oldest (lowest id) first."""
        return [self._queued[i] for i in sorted(self._queued)]

    def knows(self, key: str) -> bool:
        """True when this source version is queued, sent or failed (so a scan must not add it again)."""
        return key in self._handled or (key in self._ids_by_key and self._ids_by_key[key] in self._queued)

    def load(self, entry: SpoolEntry) -> EncodedImage:
        """The encoded image of an outbox entry."""
        from layercast.proto.framing import container_to_images

        (image,) = container_to_images(entry.path.read_bytes())
        return image

    def status(self) -> dict[str, Any]:
        """Backlog and counters (what status.json holds)."""
        oldest = min(self._queued) if self._queued else None
        return {
            "camera": self.camera,
            "backlog": self.backlog,
            "oldest_image_id": oldest,
            "next_image_id": self._next,
            "sent": self.sent,
            "failed": self.failed,
        }

    def write_status(self, **extra: Any) -> None:
        """Rewrite status.json (atomically) with `status()` plus `extra` fields and the time."""
        doc = {**self.status(), **extra, "updated": round(time.time(), 3)}
        tmp = self.root / (STATUS + ".tmp")
        tmp.write_text(json.dumps(doc) + "\n")
        tmp.replace(self.root / STATUS)

    # --- changes ----------------------------------------------------------------------------------------

    def add(self, source: Path | str, key: str, image: EncodedImage) -> SpoolEntry:
        """Queue an encoded image of `source` (version `key`); durable when it returns. The image keeps
        the id this key was given before a crash, else gets the next one."""
        from dataclasses import replace

        from layercast.proto.framing import images_to_container

        iid = self._ids_by_key.get(key)
        if iid is None or key in self._handled:
            iid = self._allocate()
        if iid not in self._queued:
            self._append({"op": "queued", "id": iid, "key": key, "source": str(source)})
        entry = SpoolEntry(iid, key, str(source), self.outbox / f"{iid}.lcs")
        data = images_to_container([replace(image, image_id=iid)])
        write_atomic(entry.path, data)
        self._queued[iid] = entry
        self._ids_by_key[key] = iid
        return entry

    def done(self, entry: SpoolEntry) -> None:
        """The link acknowledged `entry`: journal it, then drop its outbox file."""
        self._append({"op": "sent", "id": entry.image_id})
        self._queued.pop(entry.image_id, None)
        self._handled.add(entry.key)
        self.sent += 1
        entry.path.unlink(missing_ok=True)

    def fail(self, source: Path | str, key: str, error: str) -> None:
        """Record a source that cannot be encoded, so the service does not retry it forever."""
        self._append({"op": "failed", "key": key, "source": str(source), "error": error[:500]})
        self._handled.add(key)
        self.failed += 1

    def close(self) -> None:
        """Release the folder lock."""
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    # --- journal ----------------------------------------------------------------------------------------

    def next_image_id(self) -> int:
        """The image id the next `add` gives (encoders size their byte budget with it: every packet carries
        the id)."""
        if self._next is None:
            self._next = self._first_image_id() % 2**32
        return self._next

    def _allocate(self) -> int:
        iid = self.next_image_id()
        self._next = (iid + 1) % 2**32
        return iid

    def _append(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        fd = os.open(self.root / JOURNAL, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        self._appended += 1
        if self._appended >= COMPACT_EVERY:
            self._compact()

    def _records(self) -> Iterable[dict[str, Any]]:
        path = self.root / JOURNAL
        if not path.exists():
            return
        with open(path, "rb") as f:
            for n, raw in enumerate(f, 1):
                try:
                    rec = json.loads(raw)
                except ValueError:
                    # only the last line can be torn (a crash mid-append); anything else is damage
                    log.warning("spool %s: journal line %d is unreadable; ignored", self.root, n)
                    continue
                if isinstance(rec, dict):
                    yield rec

    def _load(self) -> None:
        queued: dict[int, tuple[str, str]] = {}
        top: int | None = None
        for rec in self._records():
            op = rec.get("op")
            try:
                if op == "queued":
                    iid = int(rec["id"])
                    queued[iid] = (str(rec["key"]), str(rec.get("source", "")))
                    self._ids_by_key[str(rec["key"])] = iid
                    self._handled.discard(str(rec["key"]))
                    top = iid if top is None else max(top, iid)
                elif op == "sent":
                    key, _ = queued.pop(int(rec["id"]), ("", ""))
                    if key:
                        self._handled.add(key)
                elif op in ("failed", "handled"):
                    self._handled.add(str(rec["key"]))
                elif op == "next":
                    top = max(top, int(rec["id"]) - 1) if top is not None else int(rec["id"]) - 1
            except (KeyError, TypeError, ValueError):
                log.warning("spool %s: malformed journal record %r ignored", self.root, rec)
        self._next = None if top is None else (top + 1) % 2**32
        for iid, (key, source) in queued.items():
            path = self.outbox / f"{iid}.lcs"
            if path.exists():
                self._queued[iid] = SpoolEntry(iid, key, source, path)
            # else: killed between journalling the id and writing the file; the scan re-adds the
            # source and `add` reuses this id
        for stray in self.outbox.glob("*.tmp"):
            stray.unlink(missing_ok=True)

    def _compact(self) -> None:
        """Rewrite the journal with what is still needed: the next id, queued entries, and the keys of
        handled sources that still exist (so they are not sent again while they stay in the folder)."""
        records: list[dict[str, Any]] = []
        if self._next is not None:
            records.append({"op": "next", "id": self._next})
        for entry in self.pending():
            records.append({"op": "queued", "id": entry.image_id, "key": entry.key, "source": entry.source})
        for key, iid in sorted(self._ids_by_key.items(), key=lambda kv: kv[1]):
            # an id journalled for a source whose outbox file was never written (killed in between):
            # kept while the source is there, so it is queued again under the same id
            if iid not in self._queued and key not in self._handled and _still_there(key):
                records.append({"op": "queued", "id": iid, "key": key, "source": key.split("|", 1)[0]})
        self._ids_by_key = {k: i for k, i in self._ids_by_key.items() if i in self._queued or _still_there(k)}
        live = set()
        for key in self._handled:
            if _still_there(key):
                live.add(key)
        for key in sorted(live):
            records.append({"op": "handled", "key": key})
        self._handled = live
        body = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records).encode()
        write_atomic(self.root / JOURNAL, body)
        self._appended = 0


def _still_there(key: str) -> bool:
    """True when the source version `key` names is still in its folder, unchanged."""
    try:
        return source_key(Path(key.split("|", 1)[0])) == key
    except OSError:
        return False


def _lock(root: Path) -> int | None:
    """An exclusive advisory lock on the spool folder for this process (InputError if taken)."""
    import fcntl

    fd = os.open(root / "lock", os.O_RDWR | os.O_CREAT, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise InputError(f"spool {root} is in use by another sender process") from None
    return fd
