"""The `mosquitto_broker` pytest fixture: a fresh Mosquitto per test (built on tests/mqtt_broker.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from mqtt_broker import free_port, start_broker

__all__ = ["free_port", "mosquitto_broker"]


@pytest.fixture
def mosquitto_broker(tmp_path: Path) -> Iterator[int]:
    """A fresh anonymous Mosquitto on a free loopback port for one test; yields the port."""
    broker = start_broker(tmp_path)
    try:
        yield broker.port
    finally:
        broker.stop()
