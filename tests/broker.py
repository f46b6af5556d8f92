"""A real Mosquitto broker for tests: started on a free loopback port with a config written by the test.

from tests.broker import mosquitto_broker  # noqa: F401  (pytest fixture -> port)
proc, port = start_mosquitto(tmp_path, extra_conf="...")
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

MOSQUITTO = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_mosquitto(
    tmp_path: Path, extra_conf: str = "", *, wait_s: float = 10.0
) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``mosquitto -c conf`` on a free 127.0.0.1 port; returns (process, port) once it accepts TCP.

    Skips the calling test when the binary is missing. `extra_conf` is appended to the config
    (default: anonymous access on the one listener).
    """
    if MOSQUITTO is None:
        pytest.skip("mosquitto binary not found (Debian package 'mosquitto')")
    for _attempt in range(3):
        port = free_port()
        conf = tmp_path / f"mosquitto-{port}.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n{extra_conf}\n")
        log = open(tmp_path / f"mosquitto-{port}.log", "wb")  # noqa: SIM115 (kept open for the process)
        proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    return proc, port
            except OSError:
                time.sleep(0.05)
        stop_mosquitto(proc)
    raise RuntimeError(f"mosquitto did not start; see {tmp_path}/mosquitto-*.log")


def stop_mosquitto(proc: subprocess.Popen[bytes]) -> None:
    """Terminate the broker (kill after 5 s)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def mosquitto_broker(tmp_path: Path) -> Iterator[int]:
    """A fresh Mosquitto on a free loopback port for one test; yields the port."""
    proc, port = start_mosquitto(tmp_path)
    try:
        yield port
    finally:
        stop_mosquitto(proc)
