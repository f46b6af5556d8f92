"""deploy/ units and compose services run as they would be run.

The receiver's systemd ExecStart is expanded the way systemd does it (specifiers %i %H %d, `${VAR}` inside
a word, `$VAR` split into words, EnvironmentFile= and Environment=, LoadCredential= into a credentials
directory), with the deploy paths moved to a test host (a tmp tree, the deploy broker config on free
loopback ports, the venv's `layercast`), and run as a real process: without the models of deploy/sd.toml it
must exit at once with one "refuses to start" line and no traceback; with `--fallback preview` appended it
must start and subscribe with its persistent session. The compose receiver's `sh -c` command runs the same
way with its volumes and secrets mapped. The sender unit and compose sender must parse with the real
`layercast send` parser. No file carries a password in a URL or on a command line."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from layercast.cli import build_parser
from layercast.common.transport.mqtt import MqttConfig
from layercast.receiver.models import SDConfig
from tests.mqtt_broker import DEPLOY, Broker, start_deploy_broker

UNITS = DEPLOY / "systemd"
PASSWORD_IN_URL = re.compile(r"://[^/@\s]+:[^/@\s]+@")
PASSWORD_FLAGS = re.compile(r"(?:^|\s)(?:-P|--pw|--password|--passwd)(?:[\s=]|$)")


# --- systemd semantics, as far as these units use them ------------------------------------------------


def read_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """section -> key -> values (repeated keys accumulate; backslash continues a line)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path.name}: {line!r} outside a section"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: {line!r} is not KEY=VALUE"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def read_env_file(path: Path) -> dict[str, str]:
    """An EnvironmentFile= (KEY=VALUE lines, # comments, optional quotes)."""
    env = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key), f"{path.name}: bad line {line!r}"
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key] = value
    return env


def specifiers(text: str, *, instance: str = "", credentials: str = "") -> str:
    """Resolve the unit specifiers the deploy units use."""
    table = {"i": instance, "H": socket.gethostname(), "d": credentials, "%": "%"}

    def one(m: re.Match[str]) -> str:
        assert m.group(1) in table, f"specifier %{m.group(1)} not handled by this test"
        return table[m.group(1)]

    return re.sub(r"%(.)", one, text)


def exec_words(line: str, env: Mapping[str, str]) -> list[str]:
    """systemd's command line expansion: words (quotes honoured), `${VAR}` replaced inside a word,
    a word that is exactly `$VAR` replaced by the value split at whitespace (no word when empty)."""
    words: list[str] = []
    for word in shlex.split(line):
        whole = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word)
        if whole:
            words += env.get(whole.group(1), "").split()
        else:
            words.append(re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: env.get(m.group(1), ""), word))
    return words


def map_paths(text: str, mapping: Mapping[str, str]) -> str:
    """Replace deploy paths/hosts by the test host's, each only where it starts a path (not inside one)."""
    if not mapping:
        return text
    keys = sorted(mapping, key=len, reverse=True)
    pattern = re.compile(r"(?<![\w./-])(" + "|".join(map(re.escape, keys)) + r")(?![\w.-])")
    return pattern.sub(lambda m: mapping[m.group(1)], text)


def layercast_executable() -> str:
    """The `layercast` console script of the environment running the tests (what pip installs in a venv)."""
    exe = Path(sys.executable).parent / "layercast"
    if not exe.exists():
        pytest.skip(f"no layercast console script next to {sys.executable} (pip install -e .)")
    return str(exe)


def clean_environ() -> dict[str, str]:
    """This process's environment without anything a deploy setting or password could leak through."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("LAYERCAST_", "HF_", "CREDENTIALS_"))}


# --- the test host -------------------------------------------------------------------------------------


RX_PASSWORD = "rx-password-from-file"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Any:
    b = start_deploy_broker(tmp_path_factory.mktemp("deploy-broker"), {"receiver": RX_PASSWORD, "cam1": "c1"})
    yield b
    b.stop()


def worker_host(tmp: Path, b: Broker) -> dict[str, Any]:
    """A worker host as deployed, under `tmp`: /etc/layercast (ca.crt, sd.toml naming models that are not
    installed, secrets/receiver.pw mode 0600), /var/lib/layercast, the venv, and the broker's address.
    `mapping` takes each deploy path or address to the test host's."""
    assert b.tls is not None and b.tls_port is not None
    etc, state, models = tmp / "etc", tmp / "var-lib-layercast", tmp / "models"
    (etc / "secrets").mkdir(parents=True)
    state.mkdir()
    shutil.copy(b.tls.ca, etc / "ca.crt")
    secret = etc / "secrets" / "receiver.pw"
    secret.write_text(RX_PASSWORD)  # no newline, as `openssl rand | tr -d '\n'` writes it
    secret.chmod(0o600)
    mapping = {
        "/opt/layercast/venv/bin/layercast": layercast_executable(),
        "/etc/layercast": str(etc),
        "/var/lib/layercast": str(state),
        "/srv/layercast": str(tmp / "srv"),
        "broker:8883": f"localhost:{b.tls_port}",
    }
    (etc / "sd.toml").write_text(map_paths((DEPLOY / "sd.toml").read_text(), mapping))
    return {"mapping": mapping, "etc": etc, "state": state, "models": models, "secret": secret}


def systemd_command(
    unit: str, mapping: Mapping[str, str], tmp: Path, *, instance: str = ""
) -> tuple[list[str], dict[str, str]]:
    """ExecStart of deploy/systemd/`unit` as systemd would run it, with `mapping` applied: (argv, environment).
    Credentials whose source file exists are copied into `tmp`/credentials (%d)."""
    service = read_unit(UNITS / unit)["Service"]
    env = clean_environ()
    for assignment in service.get("Environment", []):
        for item in shlex.split(specifiers(assignment, instance=instance)):
            key, _, value = item.partition("=")
            env[key] = map_paths(value, mapping)
    for file in service.get("EnvironmentFile", []):
        optional = file.startswith("-")
        path = Path(map_paths(specifiers(file.lstrip("-"), instance=instance), mapping))
        if path == Path(mapping.get("/etc/layercast", "/etc/layercast")) / "layercast.env":
            path = DEPLOY / "layercast.env.example"
        if optional and not path.exists():
            continue
        env.update({k: map_paths(v, mapping) for k, v in read_env_file(path).items()})
    credentials = tmp / "credentials"
    credentials.mkdir(exist_ok=True)
    for load in service.get("LoadCredential", []):
        name, _, source = specifiers(load, instance=instance).partition(":")
        if Path(map_paths(source, mapping)).is_file():
            shutil.copy(map_paths(source, mapping), credentials / name)
    env["CREDENTIALS_DIRECTORY"] = str(credentials)
    (exec_start,) = service["ExecStart"]
    words = exec_words(specifiers(exec_start, instance=instance, credentials=str(credentials)), env)
    return [map_paths(w, mapping) for w in words], env


def compose_service(name: str) -> dict[str, Any]:
    yaml = pytest.importorskip("yaml", reason="PyYAML not installed (pip install pyyaml)")
    compose: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    service: dict[str, Any] = compose["services"][name]
    service["_secrets"] = {s: compose["secrets"][s]["file"] for s in service.get("secrets", [])}
    return service


def compose_mounts(name: str, host: Mapping[str, Any], tmp: Path) -> dict[str, str]:
    """Container path -> test host path for a compose service's volumes and secrets (and the host's
    other paths); writes the sd.toml the ./sd.toml mount shows, naming the models where ./models shows them."""
    service = compose_service(name)
    mapping = dict(host["mapping"])
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            mapped = {
                "./mosquitto/certs/ca.crt": str(host["etc"] / "ca.crt"),
                "./sd.toml": str(host["etc"] / "sd.toml"),
                "./models": str(host["models"]),
            }.get(source, str(tmp / source[2:]))
        else:  # a named volume
            mapped = str(tmp / "volumes" / source)
        mapping[target] = mapped
    for secret in service["_secrets"]:
        mapping[f"/run/secrets/{secret}"] = str(host["secret"])
    (host["etc"] / "sd.toml").write_text(map_paths((DEPLOY / "sd.toml").read_text(), mapping))
    return mapping


def compose_command(name: str, mapping: Mapping[str, str], *, path: str) -> tuple[list[str], dict[str, str]]:
    """A compose service's `sh -c` command as its container runs it: env_file and environment set, `path`
    as PATH, `mapping` (see `compose_mounts`) applied: (argv, environment)."""
    service = compose_service(name)
    sh, dash_c, script = service["command"]
    assert (sh, dash_c) == ("sh", "-c")
    script = script.replace("$$", "$")  # compose's escape: the container's shell expands these
    env = clean_environ()
    env["PATH"] = path
    env.update({k: map_paths(v, mapping) for k, v in read_env_file(DEPLOY / "layercast.env.example").items()})
    env.update({k: map_paths(str(v), mapping) for k, v in service.get("environment", {}).items()})
    return ["sh", "-c", map_paths(script, mapping)], env


def run_to_exit(argv: list[str], env: Mapping[str, str], cwd: Path) -> tuple[int, str, float]:
    t0 = time.monotonic()
    res = subprocess.run(argv, env=dict(env), cwd=cwd, capture_output=True, text=True, timeout=120)
    return res.returncode, res.stderr, time.monotonic() - t0


def assert_refusal(rc: int, stderr: str, seconds: float, missing: Path) -> None:
    lines = stderr.strip().splitlines()
    assert rc == 1, stderr
    assert "Traceback" not in stderr
    assert len(lines) == 1, f"expected one line, got:\n{stderr}"
    line = lines[0]
    assert line.startswith("layercast: error: receive refuses to start"), line
    assert str(missing) in line and "model_index.json" in line, line  # what is missing, what to put there
    assert "--fallback preview" in line
    assert seconds < 30, f"the refusal took {seconds:.1f} s"


def start_until(argv: list[str], env: Mapping[str, str], cwd: Path, marker: str, timeout: float = 90) -> str:
    """Start a long-running command, wait until its stderr shows `marker`, stop it; returns its stderr."""
    err = cwd / "stderr.txt"
    with open(err, "w") as f:
        proc = subprocess.Popen(argv, env=dict(env), cwd=cwd, stdout=subprocess.DEVNULL, stderr=f)
    try:
        deadline = time.monotonic() + timeout
        while marker not in err.read_text():
            assert proc.poll() is None, f"exited with {proc.returncode}:\n{err.read_text()}"
            assert time.monotonic() < deadline, f"no {marker!r} after {timeout} s:\n{err.read_text()}"
            time.sleep(0.1)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    return err.read_text()


# --- the receiver ---------------------------------------------------------------------------------------


@pytest.mark.mqtt
def test_receiver_unit_refuses_to_start_without_models_and_starts_with_fallback_preview(
    broker: Broker, tmp_path: Path
) -> None:
    host = worker_host(tmp_path, broker)
    argv, env = systemd_command("layercast-receiver.service", host["mapping"], tmp_path)
    assert argv[:2] == [layercast_executable(), "receive"]
    assert "--fallback" not in argv and argv[argv.index("--decoder") + 1] == "sd"
    missing = host["state"] / "models" / "stable-diffusion-v1-5"
    assert not missing.exists()

    rc, stderr, seconds = run_to_exit(argv, env, tmp_path)
    assert_refusal(rc, stderr, seconds, missing)

    # the explicit opt-in: the same command with --fallback preview starts, says so, and subscribes with
    # the unit's persistent session and the password from its credential
    stderr = start_until([*argv, "--fallback", "preview"], env, tmp_path, "subscribed to")
    assert "Traceback" not in stderr
    assert "warning" in stderr and "--fallback preview" in stderr and "preview decoder" in stderr
    assert "$share/workers/layercast/+/+" in stderr
    log = broker.log()
    assert f"as worker-{socket.gethostname()} (p5, c0" in log and "u'receiver'" in log


@pytest.mark.mqtt
def test_compose_receiver_refuses_to_start_without_models(broker: Broker, tmp_path: Path) -> None:
    host = worker_host(tmp_path, broker)
    venv = str(Path(layercast_executable()).parent)
    argv, env = compose_command(
        "receiver", compose_mounts("receiver", host, tmp_path), path=f"{venv}{os.pathsep}{os.environ['PATH']}"
    )
    assert "--fallback" not in argv[-1]
    rc, stderr, seconds = run_to_exit(argv, env, tmp_path)
    assert_refusal(rc, stderr, seconds, host["models"] / "stable-diffusion-v1-5")
    # with the explicit opt-in in LAYERCAST_RECEIVE_ARGS it starts
    env["LAYERCAST_RECEIVE_ARGS"] = "--fallback preview"
    stderr = start_until(argv, env, tmp_path, "subscribed to")
    assert "Traceback" not in stderr and "--fallback preview" in stderr
    assert f"as {env['LAYERCAST_WORKER_ID']} (p5, c0" in broker.log()


def test_receiver_unit_and_compose_parse_with_the_receive_parser(tmp_path: Path) -> None:
    """Every option the deployed receivers pass is one `layercast receive` knows (pending until receive
    has --password-file)."""
    argv, _ = systemd_command("layercast-receiver.service", {}, tmp_path)
    unit_args = parse_or_fail(argv[1:], "the receiver unit")
    cargv, cenv = compose_command("receiver", {}, path=f"{fake_layercast(tmp_path)}{os.pathsep}/usr/bin:/bin")
    compose_args = parse_or_fail(captured_argv(cargv, cenv, tmp_path), "the compose receiver")
    for args in (unit_args, compose_args):
        assert args.command == "receive" and args.decoder == "sd" and args.sd_config == "/etc/layercast/sd.toml"
        assert getattr(args, "fallback", "none") == "none"
        cfg = MqttConfig.from_url(args.on, role="receive")
        assert cfg.password is None and cfg.username == "receiver" and cfg.tls
        assert cfg.group == "workers" and cfg.session_expiry == 86400 and cfg.client_id
    assert MqttConfig.from_url(unit_args.on).client_id == f"worker-{socket.gethostname()}"
    assert unit_args.password_file == str(tmp_path / "credentials" / "mqtt-password")
    assert compose_args.password_file == "/run/secrets/receiver_password"


# --- the sender -----------------------------------------------------------------------------------------


def fake_layercast(tmp: Path) -> Path:
    """A `layercast` on PATH that prints its argv as JSON (how the container's shell expands a command)."""
    bindir = tmp / "fakebin"
    bindir.mkdir(exist_ok=True)
    exe = bindir / "layercast"
    exe.write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    exe.chmod(0o755)
    return bindir


def captured_argv(argv: list[str], env: Mapping[str, str], cwd: Path) -> list[str]:
    res = subprocess.run(argv, env=dict(env), cwd=cwd, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    words: list[str] = json.loads(res.stdout)
    return words


def parse_or_fail(words: list[str], what: str) -> Any:
    parser = build_parser()
    try:
        return parser.parse_args(words)
    except SystemExit:
        pytest.fail(f"{what} passes options `layercast {words[0]}` does not know: {shlex.join(words)}")


def test_sender_unit_and_compose_sender_parse_with_the_send_parser(tmp_path: Path) -> None:
    """The long-lived camera service: --watch, --spool in its StateDirectory, --password-file from its
    credential, the camera's own user and stream (pending until send has --watch/--spool/--password-file)."""
    unit = read_unit(UNITS / "layercast-sender@.service")["Service"]
    assert unit["Restart"] == ["always"]
    (state,) = unit["StateDirectory"]
    (load,) = unit["LoadCredential"]
    assert load == "mqtt-password:/etc/layercast/secrets/%i.pw"
    argv, _ = systemd_command("layercast-sender@.service", {}, tmp_path, instance="cam7")
    args = parse_or_fail(argv[1:], "the sender unit")
    assert args.command == "send" and args.watch == "/srv/layercast/cam7"
    assert args.spool == f"/var/lib/{specifiers(state, instance='cam7')}" == "/var/lib/layercast/spool/cam7"
    assert args.password_file == str(tmp_path / "credentials" / "mqtt-password")
    assert args.link == "mqtt" and args.json
    cfg = MqttConfig.from_url(args.to, role="send")
    assert (cfg.username, cfg.stream, cfg.password, cfg.tls) == ("cam7", "cam7", None, True)
    assert cfg.expiry[0] == 86400 and cfg.ca_file == "/etc/layercast/ca.crt"

    cargv, cenv = compose_command("sender", {}, path=f"{fake_layercast(tmp_path)}{os.pathsep}/usr/bin:/bin")
    words = captured_argv(cargv, cenv, tmp_path)
    args = parse_or_fail(words, "the compose sender")
    assert args.command == "send" and args.watch == "/images" and args.spool == "/var/lib/layercast/spool"
    assert args.password_file == "/run/secrets/camera_password"
    cfg = MqttConfig.from_url(args.to, role="send")
    assert (cfg.username, cfg.stream, cfg.password) == ("cam1", "cam1", None)


# --- files ----------------------------------------------------------------------------------------------


def deploy_texts() -> dict[str, str]:
    files = [*UNITS.glob("*.service"), DEPLOY / "compose.yaml", DEPLOY / "layercast.env.example"]
    files += [DEPLOY / "sd.toml", DEPLOY / "Dockerfile", DEPLOY / "README.md", *(DEPLOY / "mosquitto").iterdir()]
    return {p.name: p.read_text() for p in files if p.is_file()}


def test_no_password_in_a_url_an_environment_file_or_a_command_line() -> None:
    texts = deploy_texts()
    assert {"layercast-receiver.service", "layercast-sender@.service", "compose.yaml"} <= set(texts)
    for name, text in texts.items():
        assert not PASSWORD_IN_URL.search(text), f"{name}: {PASSWORD_IN_URL.search(text)}"
    # command lines: the units' Exec lines and compose's commands
    commands = []
    for unit in UNITS.glob("*.service"):
        service = read_unit(unit)["Service"]
        commands += [v for k, vs in service.items() if k.startswith("Exec") for v in vs]
    yaml = pytest.importorskip("yaml", reason="PyYAML not installed (pip install pyyaml)")
    for service in yaml.safe_load(texts["compose.yaml"])["services"].values():
        command = service.get("command", [])
        commands.append(command if isinstance(command, str) else " ".join(command))
    assert len(commands) >= 6
    for command in commands:
        assert not PASSWORD_FLAGS.search(command), command
        assert "PASSWORD=" not in command and "LAYERCAST_MQTT_PASSWORD" not in command, command
    # the clients that connect to the broker take their password from a file
    assert sum("--password-file" in c for c in commands) == 4
    # environment: neither the env file nor the units nor compose set a password variable
    env = read_env_file(DEPLOY / "layercast.env.example")
    assert not [k for k in env if "PASS" in k or "SECRET" in k], env
    for unit in UNITS.glob("*.service"):
        for assignment in read_unit(unit)["Service"].get("Environment", []):
            assert "PASS" not in assignment.upper(), assignment
    for service in yaml.safe_load(texts["compose.yaml"])["services"].values():
        assert not [k for k in service.get("environment", {}) if "PASS" in k.upper()]
    # the URLs the deploy builds carry a user and no password
    for key in ("LAYERCAST_RECEIVE_URL",):
        assert MqttConfig.from_url(env[key] + "&client_id=w", role="receive").password is None


def test_sd_toml_loads_and_names_models_where_units_and_compose_put_them() -> None:
    cfg = SDConfig.from_file(DEPLOY / "sd.toml")
    paths = [cfg.model, *cfg.controlnets.values(), *cfg.adapters.values(), cfg.lcm_lora]
    assert cfg.model and "canny" in cfg.controlnets  # the default structure layer decodes with its ControlNet
    for path in filter(None, paths):
        assert path.startswith("/var/lib/layercast/models/"), path
    receiver = read_unit(UNITS / "layercast-receiver.service")["Service"]
    assert receiver["StateDirectory"] == ["layercast"]  # /var/lib/layercast, the models' parent
    volumes = compose_service("receiver")["volumes"]
    assert "./models:/var/lib/layercast/models:ro" in volumes and "./sd.toml:/etc/layercast/sd.toml:ro" in volumes
    assert "--sd-config /etc/layercast/sd.toml" in receiver["ExecStart"][0]


def test_units_run_as_their_users_and_keep_their_state() -> None:
    receiver = read_unit(UNITS / "layercast-receiver.service")["Service"]
    sender = read_unit(UNITS / "layercast-sender@.service")["Service"]
    broker = read_unit(UNITS / "layercast-mosquitto.service")["Service"]
    assert receiver["User"] == sender["User"] == ["layercast"] and broker["User"] == ["mosquitto"]
    assert receiver["LoadCredential"] == ["mqtt-password:/etc/layercast/secrets/receiver.pw"]
    assert "&client_id=worker-%H" in receiver["ExecStart"][0]  # one persistent session per worker host
    assert sender["StateDirectory"] == ["layercast/spool/%i"]
    assert "--spool /var/lib/layercast/spool/%i" in sender["ExecStart"][0]
    # the broker's state is not under the receiver's StateDirectory (which systemd may chown to layercast)
    assert not broker["StateDirectory"][0].startswith("layercast/")
