"""Camera identity: names, the wire stream id derived from a name, and unique image ids.

A camera (any sender: edge camera, IoT node) is named by a short string, the MQTT topic's stream level
(``layercast/<camera>/<family>``) or ``--camera NAME`` on WebRTC and files. Receivers key every image
by ``(camera, image_id)`` and write ``OUT/<camera>/<image>/``, so two cameras can never merge layers
or overwrite each other's outputs, whatever image ids they pick.

On the wire, `Packet.stream_id` carries :func:`camera_id` of the name: a 21-bit check value (at most
3 varint bytes) that lets a receiver refuse a packet arriving on another camera's topic or
connection. It is a check, not the key: two names with the same id still land in different folders
where the transport names the camera (MQTT topic, WebRTC offer). A packet from a transport that names
no camera (a file, an unnamed peer) is filed under the decimal stream id, as before.
"""

from __future__ import annotations

import re
import time
from functools import lru_cache

from layercast.common.errors import InputError

CAMERA_ID_BITS = 21
"""Bits of the wire check value: ids fit 3 varint bytes."""

MAX_CAMERA_NAME = 64
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def is_camera_name(name: str) -> bool:
    """True for a usable camera name: 1..64 of ``A-Z a-z 0-9 . _ -``, starting with a letter or digit.

    The same string is an MQTT topic level and a folder name, so no ``/``, wildcards, spaces, ``..``
    or leading dot can reach the file system.
    """
    return bool(_NAME.fullmatch(name))


def check_camera_name(name: str) -> str:
    """`name` if it is a usable camera name (see `is_camera_name`), else InputError."""
    if not is_camera_name(name):
        raise InputError(
            f"camera name {name!r} must be 1..{MAX_CAMERA_NAME} characters of A-Z a-z 0-9 . _ -, "
            "starting with a letter or digit (it is an MQTT topic level and a folder name)"
        )
    return name


@lru_cache(maxsize=4096)
def camera_id(name: str) -> int:
    """The wire `stream_id` of a camera name: CRC-32C of its UTF-8 bytes folded to 1..2**21-1."""
    from layercast.proto.framing import crc32c

    return crc32c(name.encode()) % ((1 << CAMERA_ID_BITS) - 1) + 1


def stream_label(stream_id: int) -> str:
    """The folder / key of a packet whose transport names no camera: its decimal stream id."""
    return str(stream_id)


def clock_image_id(now: float | None = None) -> int:
    """A first image id from wall time (milliseconds, modulo 2**28), so a restarted one-shot sender's
    images are not taken for repeats of its previous run (a spooled sender persists its ids instead)."""
    return int((time.time() if now is None else now) * 1000) % (1 << 28)
