"""deploy/: the Mosquitto config really starts and enforces auth, ACL, TLS and size limits; compose.yaml
parses and wires broker + GPU receiver + sender; the systemd units pass `systemd-analyze verify`."""

from __future__ import annotations

import getpass
import os
import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from layercast.common.errors import TransportError, TransportTimeout
from layercast.common.transport.mqtt import MqttConfig, MqttTransport
from tests.mqtt_broker import Broker, free_port, make_tls, require_client, require_mosquitto, write_passwords

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
ETC = "/etc/layercast/mosquitto/"


def adapted_deploy_broker(tmp_path: Path, users: dict[str, str]) -> Broker:
    """deploy/mosquitto/mosquitto.conf with its paths moved into `tmp_path` and free loopback ports."""
    require_mosquitto()
    directory = tmp_path / "etc"
    directory.mkdir()
    tls = make_tls(directory / "certs")
    assert {tls.ca.name, tls.cert.name, tls.key.name} == {"ca.crt", "server.crt", "server.key"}
    shutil.copy(DEPLOY / "mosquitto" / "acl", directory / "acl")
    write_passwords(directory / "passwd", users)
    tls_port, plain_port = free_port(), free_port()
    text = (DEPLOY / "mosquitto" / "mosquitto.conf").read_text()
    assert re.search(r"^listener 8883$", text, re.M) and re.search(r"^listener 1883 127\.0\.0\.1$", text, re.M)
    text = re.sub(r"^listener 8883$", f"listener {tls_port} 127.0.0.1", text, flags=re.M)
    text = re.sub(r"^listener 1883 127\.0\.0\.1$", f"listener {plain_port} 127.0.0.1", text, flags=re.M)
    text = text.replace(ETC, f"{directory}/")
    if os.geteuid() == 0:  # as root mosquitto would drop to "mosquitto", who cannot read pytest's tmp dir
        text = re.sub(r"^user mosquitto$", f"user {getpass.getuser()}", text, flags=re.M)
    text += "log_type debug\n"  # so the test can see "Denied PUBLISH"
    config = directory / "mosquitto.conf"
    config.write_text(text)
    assert ETC not in text
    broker = Broker(directory, config, plain_port, tls_port, tls)
    broker.start()
    return broker


@pytest.mark.mqtt
async def test_deploy_mosquitto_config_enforces_auth_acl_tls_and_limits(tmp_path: Path) -> None:
    users = {"receiver": "rx-pw", "cam1": "c1-pw", "cam2": "c2-pw"}
    b = adapted_deploy_broker(tmp_path, users)
    try:
        assert b.tls is not None and b.tls_port is not None
        tls: dict[str, Any] = {"port": b.tls_port, "tls": True, "ca_file": str(b.tls.ca)}
        local = MqttConfig(host="127.0.0.1", port=b.port, role="receive", username="receiver", password="rx-pw")
        camera = MqttConfig(host="localhost", role="send", stream="cam1", username="cam1", password="c1-pw", **tls)
        # anonymous clients are refused on both listeners
        for c in (MqttConfig(host="127.0.0.1", port=b.port), MqttConfig(host="localhost", **tls)):
            with pytest.raises(TransportError, match="refused the connection"):
                await MqttTransport(c).open(timeout=10)
        # the TLS listener does not speak plain MQTT
        with pytest.raises(TransportError):
            await MqttTransport(
                MqttConfig(host="127.0.0.1", port=b.tls_port, username="cam1", password="c1-pw", connect_timeout=2)
            ).open(timeout=5)
        async with MqttTransport(local) as rx, MqttTransport(camera) as cam1:
            assert isinstance(rx, MqttTransport) and isinstance(cam1, MqttTransport)
            await cam1.send(b"semantic packet", family="semantic")
            m = await rx.recv_message(timeout=5)
            assert (m.stream, m.family, m.payload, m.qos) == ("cam1", "semantic", b"semantic packet", 1)
            # the ACL's %u pattern: cam1 cannot publish as cam2
            async with MqttTransport(replace(camera, stream="cam2")) as forger:
                with pytest.raises(TransportError, match="refused the publish"):
                    await forger.send(b"forged", family="semantic")
            # message_size_limit: a payload over 65536 bytes is not forwarded
            big = tmp_path / "big.bin"
            big.write_bytes(b"\0" * 70_000)
            subprocess.run(
                [
                    require_client("mosquitto_pub"),
                    "-V",
                    "mqttv5",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(b.port),
                    "-u",
                    "cam2",
                    "-P",
                    "c2-pw",
                    "-q",
                    "1",
                    "-t",
                    "layercast/cam2/structure",
                    "-f",
                    str(big),
                ],
                timeout=10,
                capture_output=True,
            )
            with pytest.raises(TransportTimeout):
                await rx.recv(timeout=0.5)
    finally:
        log = b.stop()
    assert "Denied PUBLISH" in log


def test_compose_file_wires_broker_gpu_receiver_and_sender() -> None:
    yaml = pytest.importorskip("yaml", reason="PyYAML not installed (pip install pyyaml)")
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"broker", "receiver", "sender"}
    broker = services["broker"]
    assert "/etc/layercast/mosquitto/mosquitto.conf" in broker["command"]
    assert any(v.startswith("./mosquitto:/etc/layercast/mosquitto") for v in broker["volumes"])
    assert broker["ports"] == ["8883:8883"]
    receiver = " ".join(services["receiver"]["command"])
    assert "layercast receive --on" in receiver and "--out /data --decoder sd" in receiver
    devices = services["receiver"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "layercast send /images --to" in " ".join(services["sender"]["command"])
    for service in services.values():  # every bind mount source exists or is created by the README steps
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./") and source not in ("./data", "./images", "./models"):
                assert (DEPLOY / source).exists() or "certs" in source, source
    # the env example defines every variable compose and the units use
    env = dict(
        line.split("=", 1)
        for line in (DEPLOY / "layercast.env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    used = set(re.findall(r"\$\$?\{?(LAYERCAST_[A-Z_]+)", (DEPLOY / "compose.yaml").read_text()))
    for unit in (DEPLOY / "systemd").glob("*.service"):
        used |= set(re.findall(r"\$\{?(LAYERCAST_[A-Z_]+)", unit.read_text()))
    assert used <= set(env), used - set(env)
    for key in ("LAYERCAST_RECEIVE_URL", "LAYERCAST_SEND_URL"):
        cfg = MqttConfig.from_url(env[key], role="send" if "SEND" in key else "receive")
        assert cfg.tls and cfg.prefix == "layercast"


def test_systemd_units_verify() -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze not installed")
    units = sorted((DEPLOY / "systemd").glob("*.service"))
    assert [u.name for u in units] == [
        "layercast-mosquitto.service",
        "layercast-receiver.service",
        "layercast-sender@.service",
    ]
    res = subprocess.run([tool, "verify", *map(str, units)], capture_output=True, text=True, timeout=60)
    problems = [
        line
        for line in (res.stdout + res.stderr).splitlines()
        # the venv is not installed here; everything else (unknown keys, bad values) must be clean
        if line.strip() and "/opt/layercast/venv/bin/layercast is not executable" not in line
    ]
    assert not problems, problems
    receiver = (DEPLOY / "systemd" / "layercast-receiver.service").read_text()
    assert "layercast receive --on ${LAYERCAST_RECEIVE_URL}" in receiver
    assert "/etc/layercast/mosquitto/mosquitto.conf" in (DEPLOY / "systemd" / "layercast-mosquitto.service").read_text()
