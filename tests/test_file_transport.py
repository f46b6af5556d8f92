"""The `.lcs` file / stdio transport: byte-identical to the framing container, clean EOF, truncation."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from layercast.common import limits
from layercast.common.errors import (
    BitstreamError,
    InputError,
    LimitError,
    TransportClosed,
    TransportError,
    TruncatedError,
    VersionError,
)
from layercast.common.transport.file import FileTransport
from layercast.proto.framing import MAGIC, encode_varint, iter_container, write_container


async def write(path: Path, packets: list[bytes]) -> None:
    async with FileTransport(path, "w") as t:
        for p in packets:
            await t.send(p, family="structure")


async def read_all(path: Path) -> list[bytes]:
    async with FileTransport(path, "r") as t:
        return [p async for p in t]


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.binary(max_size=400), max_size=30))
def test_round_trip_matches_the_framing_container(tmp_path: Path, packets: list[bytes]) -> None:
    path = tmp_path / "x.lcs"
    asyncio.run(write(path, packets))
    assert path.read_bytes() == write_container(packets)
    assert list(iter_container(path.read_bytes())) == packets
    assert asyncio.run(read_all(path)) == packets


async def test_recv_after_the_last_record_raises_closed(tmp_path: Path) -> None:
    path = tmp_path / "two.lcs"
    await write(path, [b"a", b"bb"])
    async with FileTransport(path, "r") as t:
        assert await t.recv(timeout=1) == b"a"
        assert await t.recv(timeout=1) == b"bb"
        with pytest.raises(TransportClosed, match="after 2 packets"):
            await t.recv(timeout=1)


@pytest.mark.parametrize(
    ("content", "error", "match"),
    [
        (MAGIC + encode_varint(10) + b"short", TruncatedError, "ends inside a 10-byte packet"),
        (MAGIC + b"\x81", TruncatedError, "ends inside a packet length"),
        (MAGIC + b"\xff" * 11, BitstreamError, "longer than 10 bytes"),
        (MAGIC + encode_varint(limits.MAX_PACKET_BYTES + 1), LimitError, "exceeds"),
    ],
)
async def test_damaged_records(tmp_path: Path, content: bytes, error: type[Exception], match: str) -> None:
    path = tmp_path / "bad.lcs"
    path.write_bytes(content)
    async with FileTransport(path, "r") as t:
        with pytest.raises(error, match=match):
            await t.recv(timeout=1)


@pytest.mark.parametrize(
    ("content", "error"),
    [(b"LCS\x02", VersionError), (b"PNG\x00rest", BitstreamError), (b"LC", BitstreamError)],
)
async def test_bad_magic(tmp_path: Path, content: bytes, error: type[Exception]) -> None:
    path = tmp_path / "bad.lcs"
    path.write_bytes(content)
    with pytest.raises(error):
        await FileTransport(path, "r").open()


async def test_mode_and_path_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="mode"):
        FileTransport(tmp_path / "x", "a")  # type: ignore[arg-type]  # the bad mode is the point
    with pytest.raises(InputError, match="cannot open"):
        await FileTransport(tmp_path / "missing.lcs", "r").open()
    await write(tmp_path / "ok.lcs", [b"p"])
    async with FileTransport(tmp_path / "ok.lcs", "r") as t:
        with pytest.raises(TransportError, match="opened for reading"):
            await t.send(b"x")
    async with FileTransport(tmp_path / "w.lcs", "w") as t:
        with pytest.raises(TransportError, match="opened for writing"):
            await t.recv(timeout=1)
        with pytest.raises(LimitError):
            await t.send(b"x" * (limits.MAX_PACKET_BYTES + 1))


def test_stdout_to_stdin_pipe(tmp_path: Path) -> None:
    """`-` is stdout for a writer and stdin for a reader: a real two-process pipe."""
    writer = (
        "import asyncio\n"
        "from layercast.common.transport.file import FileTransport\n"
        "async def main():\n"
        "    async with FileTransport('-', 'w') as t:\n"
        "        for i in range(20):\n"
        "            await t.send(bytes([i]) * (i * 37 % 300))\n"
        "asyncio.run(main())\n"
    )
    reader = (
        "import asyncio, sys\n"
        "from layercast.common.transport.file import FileTransport\n"
        "async def main():\n"
        "    async with FileTransport('-', 'r') as t:\n"
        "        sizes = [len(p) async for p in t]\n"
        "    print(sizes)\n"
        "asyncio.run(main())\n"
    )
    w = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE)
    r = subprocess.run([sys.executable, "-c", reader], stdin=w.stdout, capture_output=True, text=True, timeout=60)
    assert w.wait(timeout=60) == 0
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str([i * 37 % 300 for i in range(20)])
