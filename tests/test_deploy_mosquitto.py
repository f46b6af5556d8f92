"""deploy/: the Mosquitto config really starts and enforces auth, ACL, TLS and size limits, keeps worker
sessions across restarts as its comments say, and the README's "adding a camera" commands work as written;
compose.yaml parses and wires broker + GPU receiver + sender; the systemd units pass `systemd-analyze verify`."""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from layercast.common.errors import TransportError, TransportTimeout
from layercast.common.transport.mqtt import MqttConfig, MqttTransport
from tests.mqtt_broker import DEPLOY, DEPLOY_ETC, Broker, require_client, start_deploy_broker


def env_example() -> dict[str, str]:
    """deploy/layercast.env.example as KEY -> value."""
    return dict(
        line.split("=", 1)
        for line in (DEPLOY / "layercast.env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )


def tls_options(b: Broker) -> dict[str, Any]:
    assert b.tls is not None and b.tls_port is not None
    return {"host": "localhost", "port": b.tls_port, "tls": True, "ca_file": str(b.tls.ca)}


async def assert_refused(b: Broker, user: str, password: str, stream: str) -> None:
    """A QoS 1 publish by `user` on layercast/`stream`/semantic is refused by the broker's ACL."""
    cfg = MqttConfig(role="send", stream=stream, username=user, password=password, **tls_options(b))
    async with MqttTransport(cfg) as tx:
        with pytest.raises(TransportError, match="refused the publish"):
            await tx.send(f"{user} as {stream}".encode(), family="semantic")


async def publish(b: Broker, user: str, password: str, stream: str, payload: bytes) -> None:
    cfg = MqttConfig(role="send", stream=stream, username=user, password=password, **tls_options(b))
    async with MqttTransport(cfg) as tx:
        await tx.send(payload, family="semantic")


@pytest.mark.mqtt
async def test_deploy_mosquitto_config_enforces_auth_acl_tls_and_limits(tmp_path: Path) -> None:
    users = {"receiver": "rx-pw", "cam1": "c1-pw"}
    b = start_deploy_broker(tmp_path, users)
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
            # message_size_limit: a payload over 65536 bytes is not forwarded, even on the camera's own topic
            big = tmp_path / "big.bin"
            big.write_bytes(b"\0" * 70_000)
            pub = [require_client("mosquitto_pub"), "-V", "mqttv5", "-h", "127.0.0.1", "-p", str(b.port)]
            subprocess.run(
                [*pub, "-u", "cam1", "-P", "c1-pw", "-q", "1", "-t", "layercast/cam1/structure", "-f", str(big)],
                timeout=10,
                capture_output=True,
            )
            with pytest.raises(TransportTimeout):
                await rx.recv(timeout=0.5)
    finally:
        b.stop()


def readme_block(marker: str) -> str:
    """The lines of a deploy/README.md code block from the line starting with `marker` to the next blank line."""
    lines = (DEPLOY / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(marker))
    end = next(i for i in range(start, len(lines)) if not lines[i].strip())
    return "\n".join(lines[start:end]) + "\n"


@pytest.mark.mqtt
async def test_deploy_acl_only_cameras_publish_and_only_their_own_stream(tmp_path: Path) -> None:
    # cam2 has an account but no ACL block (an account nobody granted anything)
    users = {"receiver": "rx-pw", "ops": "ops-pw", "cam1": "c1-pw", "cam2": "c2-pw"}
    b = start_deploy_broker(tmp_path, users)
    try:
        rx_cfg = MqttConfig(role="receive", username="receiver", password="rx-pw", **tls_options(b))
        async with MqttTransport(rx_cfg) as rx:
            assert isinstance(rx, MqttTransport)
            # neither the receiver nor the operator account can publish: not a camera's topic, nor a topic
            # named after themselves (which a `pattern write layercast/%u/#` line would allow)
            for user, password in (("receiver", "rx-pw"), ("ops", "ops-pw")):
                for stream in ("cam1", user):
                    await assert_refused(b, user, password, stream)
            await assert_refused(b, "cam2", "c2-pw", "cam2")
            # a camera publishes its own stream only
            await publish(b, "cam1", "c1-pw", "cam1", b"from cam1")
            await assert_refused(b, "cam1", "c1-pw", "cam2")

            # README "Accounts and adding a camera", broker-host commands as written, on this broker
            script = readme_block("# broker host: account, ACL block, reload")
            assert script.count(DEPLOY_ETC) == 2 and "systemctl reload layercast-mosquitto" in script
            assert b.proc is not None
            script = script.replace(DEPLOY_ETC, f"{b.directory}/")
            script = script.replace("systemctl reload layercast-mosquitto", f"kill -HUP {b.proc.pid}")
            work = tmp_path / "admin"
            work.mkdir()
            done = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", "umask 077\n" + script],
                cwd=work,
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert done.returncode == 0, done.stderr
            cam7_pw = (work / "cam7.pw").read_text()
            assert len(cam7_pw) >= 40 and "\n" not in cam7_pw
            assert (work / "cam7.pw").stat().st_mode & 0o077 == 0
            # the reload is asynchronous: the new account works within a few seconds
            deadline = time.monotonic() + 10
            while True:
                try:
                    await publish(b, "cam7", cam7_pw, "cam7", b"from cam7")
                    break
                except TransportError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.2)
            await assert_refused(b, "cam7", cam7_pw, "cam1")
            await assert_refused(b, "receiver", "rx-pw", "cam7")

            got = [await rx.recv_message(timeout=5) for _ in range(2)]
            assert [(m.stream, m.payload) for m in got] == [("cam1", b"from cam1"), ("cam7", b"from cam7")]
            with pytest.raises(TransportTimeout):  # nothing refused above reached the receiver
                await rx.recv(timeout=0.5)
    finally:
        log = b.stop()
    assert log.count("Denied PUBLISH") >= 8


def worker_sub(b: Broker, cfg: MqttConfig, password: str, count: int, wait: float) -> list[str]:
    """One connection of a worker's persistent session with Debian's mosquitto_sub (independent of the
    transport under test): the client id, session expiry and shared subscription of `cfg`; returns the
    payloads received (at most `count`, or whatever arrived in `wait` seconds). mosquitto_sub acknowledges
    each QoS 1 message as it arrives and disconnects cleanly, keeping the session."""
    assert b.tls is not None and b.tls_port is not None and cfg.client_id and cfg.session_expiry
    argv = [require_client("mosquitto_sub"), "-V", "mqttv5", "-h", "localhost", "-p", str(b.tls_port)]
    argv += ["--cafile", str(b.tls.ca), "-u", str(cfg.username), "-P", password, "-i", cfg.client_id]
    argv += ["-c", "-x", str(cfg.session_expiry), "-q", "1", "-C", str(count), "-W", str(int(wait)), "-F", "%p"]
    for topic in cfg.subscriptions():
        argv += ["-t", topic]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=wait + 10)
    assert res.returncode in (0, 27), res.stderr  # 27: -W timed out
    return res.stdout.split()


@pytest.mark.mqtt
async def test_deploy_persistence_keeps_worker_sessions_and_queues_across_restarts(tmp_path: Path) -> None:
    conf = (DEPLOY / "mosquitto" / "mosquitto.conf").read_text()
    assert re.search(r"^persistence true$", conf, re.M)
    autosave = int(re.findall(r"^autosave_interval (\d+)$", conf, re.M)[0])
    assert 1 <= autosave <= 60
    assert int(re.findall(r"^max_queued_messages (\d+)$", conf, re.M)[0]) >= 10_000

    b = start_deploy_broker(tmp_path, {"receiver": "rx-pw", "cam1": "c1-pw"})
    try:
        # the worker's session exactly as deployed: the env example URL + the receiver unit's client_id
        env = env_example()
        unit = (DEPLOY / "systemd" / "layercast-receiver.service").read_text()
        assert "--on ${LAYERCAST_RECEIVE_URL}&client_id=worker-%H " in unit
        url = env["LAYERCAST_RECEIVE_URL"] + f"&client_id=worker-{socket.gethostname()}"
        worker = MqttConfig.from_url(url, role="receive")
        assert worker.group == "workers" and worker.session_expiry == 86400 and worker.password is None
        # ... and the sender's message expiry (semantic carries the bundled image)
        sender = MqttConfig.from_url(f"mqtts://cam1@broker:8883/layercast/cam1?{env['LAYERCAST_SEND_OPTIONS']}")
        assert sender.expiry[0] >= worker.session_expiry

        async def camera(payload: str) -> None:
            cfg = MqttConfig(role="send", stream="cam1", username="cam1", password="c1-pw", **tls_options(b))
            cfg = replace(cfg, expiry=sender.expiry)
            async with MqttTransport(cfg) as tx:
                await tx.send(payload.encode(), family="semantic")

        assert worker_sub(b, worker, "rx-pw", 1, 1) == []  # creates the session, then goes away
        await camera("queued-while-away")
        # clean restart (systemctl restart / docker stop: SIGTERM): the queued message is on disk
        b.restart()
        assert list((b.directory / "state").iterdir()), "nothing in persistence_location"
        assert worker_sub(b, worker, "rx-pw", 1, 10) == ["queued-while-away"]
        await camera("lost-in-crash")
        # crash within the autosave interval: the state of the last save (the clean stop) comes back
        assert b.proc is not None
        b.proc.send_signal(signal.SIGKILL)
        b.proc.wait(timeout=5)
        b.start()
        # the message delivered since the save comes again; the one received since the save is gone
        assert worker_sub(b, worker, "rx-pw", 2, 3) == ["queued-while-away"]
    finally:
        log = b.stop()
    assert f"as worker-{socket.gethostname()} (p5, c0" in log  # clean start off: a persistent session


def test_compose_file_wires_broker_gpu_receiver_and_sender() -> None:
    yaml = pytest.importorskip("yaml", reason="PyYAML not installed (pip install pyyaml)")
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"broker", "receiver", "sender"}
    broker = services["broker"]
    assert "mosquitto -c /etc/layercast/mosquitto/mosquitto.conf" in broker["command"][-1]
    assert any(v.startswith("./mosquitto:/etc/layercast/mosquitto") for v in broker["volumes"])
    assert broker["ports"] == ["8883:8883"]
    # the broker's state volume is where mosquitto.conf persists, and handed to the mosquitto user
    conf = (DEPLOY / "mosquitto" / "mosquitto.conf").read_text()
    location = re.findall(r"^persistence_location (\S+)$", conf, re.M)[0].rstrip("/")
    assert f"broker-data:{location}" in broker["volumes"] and "broker-data" in compose["volumes"]
    assert f"chown mosquitto:mosquitto {location} && exec mosquitto" in broker["command"][-1]
    receiver = " ".join(services["receiver"]["command"])
    assert "layercast receive --on" in receiver and "--out /data --decoder sd --sd-config" in receiver
    assert "--fallback" not in receiver
    devices = services["receiver"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    sender = " ".join(services["sender"]["command"])
    assert "layercast send --watch /images --spool /var/lib/layercast/spool" in sender
    assert "spool:/var/lib/layercast/spool" in services["sender"]["volumes"]
    assert services["sender"]["restart"] == "always"
    for name in ("receiver", "sender"):  # each password is a docker secret, passed as a file
        (secret,) = services[name]["secrets"]
        assert f"--password-file /run/secrets/{secret}" in " ".join(services[name]["command"])
        assert compose["secrets"][secret]["file"].startswith("./secrets/")
    for service in services.values():  # every bind mount source exists or is created by the README steps
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./") and source not in ("./data", "./images", "./models"):
                assert (DEPLOY / source).exists() or "certs" in source, source
    # the env example defines every variable compose and the units use
    env = env_example()
    used = set(re.findall(r"\$\$?\{?(LAYERCAST_[A-Z_]+)", (DEPLOY / "compose.yaml").read_text()))
    for unit in (DEPLOY / "systemd").glob("*.service"):
        used |= set(re.findall(r"\$\{?(LAYERCAST_[A-Z_]+)", unit.read_text()))
    assert used <= set(env), used - set(env)
    # as compose runs it (systemd appends &client_id=worker-%H instead)
    cfg = MqttConfig.from_url(f"{env['LAYERCAST_RECEIVE_URL']}&client_id={env['LAYERCAST_WORKER_ID']}", role="receive")
    assert cfg.tls and cfg.prefix == "layercast" and cfg.password is None and cfg.session_expiry > 0


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
    broker = (DEPLOY / "systemd" / "layercast-mosquitto.service").read_text()
    assert "/etc/layercast/mosquitto/mosquitto.conf" in broker
    # the broker unit's state directory is mosquitto.conf's persistence_location
    conf = (DEPLOY / "mosquitto" / "mosquitto.conf").read_text()
    location = re.findall(r"^persistence_location (\S+)$", conf, re.M)[0]
    state = re.findall(r"^StateDirectory=(\S+)$", broker, re.M)[0]
    assert location == f"/var/lib/{state}/"
    assert re.search(r"^User=mosquitto$", broker, re.M)  # so the state directory is the broker's own
