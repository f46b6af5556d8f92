"""A real Mosquitto broker for tests: free loopback port, config written by the test, optional
password file, ACL file and TLS listener (CA + server certificate generated here with `cryptography`).

    broker = start_broker(tmp_path, users={"cam1": "pw"}, acl="pattern write layercast/%u/#\\n")
    ...
    broker.restart()          # same port (reconnect tests)
    log = broker.stop()       # terminate and return the broker's log
"""

from __future__ import annotations

import datetime
import getpass
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

MOSQUITTO = shutil.which("mosquitto") or next(
    (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.path.exists(p)), None
)


def require_mosquitto() -> str:
    """Path of the mosquitto binary, or skip the calling test with a reason."""
    if MOSQUITTO is None:
        pytest.skip("mosquitto binary not installed (Debian: apt-get install mosquitto mosquitto-clients)")
    return MOSQUITTO


def require_client(name: str) -> str:
    """Path of a Mosquitto client tool (mosquitto_pub / mosquitto_sub / mosquitto_passwd), or skip."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed (Debian: apt-get install mosquitto-clients)")
    return path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 10.0) -> None:
    """Block until 127.0.0.1:`port` accepts connections (fails early if `proc` exits)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited with code {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a test CA and a server certificate for 127.0.0.1 / localhost signed by it."""

    ca: Path
    cert: Path
    key: Path


def make_tls(directory: Path, *, common_name: str = "localhost") -> TlsFiles:
    """Generate a self-signed CA and a server certificate (SAN localhost + 127.0.0.1) into `directory`."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Layercast test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(directory / "ca.crt", directory / "server.crt", directory / "server.key")
    files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return files


def write_passwords(path: Path, users: dict[str, str]) -> Path:
    """A Mosquitto password file made by Debian's `mosquitto_passwd -b` (first user with -c)."""
    tool = require_client("mosquitto_passwd")
    for i, (user, password) in enumerate(users.items()):
        args = [tool, "-b", *(["-c"] if i == 0 else []), str(path), user, password]
        subprocess.run(args, check=True, capture_output=True, timeout=10)
    return path


@dataclass
class Broker:
    """A running mosquitto: `port` (plain, loopback), `tls_port` (or None), its directory and config."""

    directory: Path
    config: Path
    port: int
    tls_port: int | None = None
    tls: TlsFiles | None = None
    proc: subprocess.Popen[bytes] | None = None
    _log_file: Path | None = None
    _runs: int = 0

    def start(self) -> None:
        """Start (or start again) on the same ports; returns once every listener accepts."""
        binary = require_mosquitto()
        self._runs += 1
        self._log_file = self.directory / f"mosquitto-{self._runs}.log"
        with open(self._log_file, "wb") as log:
            self.proc = subprocess.Popen([binary, "-c", str(self.config)], stdout=log, stderr=subprocess.STDOUT)
        for port in (self.port, self.tls_port):
            if port is not None:
                try:
                    wait_port(port, self.proc)
                except (RuntimeError, TimeoutError) as exc:
                    raise RuntimeError(f"{exc}\n--- broker log ---\n{self.log()}") from None

    def stop(self) -> str:
        """Terminate the broker; returns its log (all runs so far)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        return self.log()

    def restart(self, pause: float = 0.0) -> None:
        """Stop, wait `pause` seconds, start again on the same ports."""
        self.stop()
        time.sleep(pause)
        self.start()

    def log(self) -> str:
        """Everything the broker logged, across restarts."""
        parts = sorted(self.directory.glob("mosquitto-*.log"))
        return "".join(p.read_text(errors="replace") for p in parts)


def base_config(port: int) -> str:
    """Config lines every test broker shares (loopback listener, verbose log to stdout, no persistence)."""
    lines = [
        f"listener {port} 127.0.0.1",
        "persistence false",
        "log_dest stderr",
        "log_type all",
        "connection_messages true",
        "per_listener_settings false",
    ]
    if os.geteuid() == 0:
        # mosquitto started as root drops to user "mosquitto", which cannot read pytest's 0700 tmp dirs
        lines.append(f"user {getpass.getuser()}")
    return "\n".join(lines) + "\n"


def start_broker(
    tmp_path: Path,
    *,
    users: dict[str, str] | None = None,
    acl: str | None = None,
    tls: bool = False,
    extra_conf: str = "",
) -> Broker:
    """Write a config into `tmp_path`/mosquitto and start the broker on free loopback port(s).

    `users` -> password_file (anonymous clients refused); `acl` -> acl_file text; `tls` -> a second
    listener with a generated CA and server certificate (`broker.tls`).
    """
    require_mosquitto()
    directory = tmp_path / "mosquitto"
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = base_config(port)
    if users:
        conf += f"password_file {write_passwords(directory / 'passwd', users)}\nallow_anonymous false\n"
    else:
        conf += "allow_anonymous true\n"
    if acl is not None:
        (directory / "acl").write_text(acl)
        conf += f"acl_file {directory / 'acl'}\n"
    tls_port = None
    tls_files = None
    if tls:
        tls_files = make_tls(directory / "certs")
        tls_port = free_port()
        conf += (
            f"listener {tls_port} 127.0.0.1\n"
            f"cafile {tls_files.ca}\ncertfile {tls_files.cert}\nkeyfile {tls_files.key}\n"
            "tls_version tlsv1.2\n"
        )
    conf += extra_conf
    config = directory / "mosquitto.conf"
    config.write_text(conf)
    broker = Broker(directory, config, port, tls_port, tls_files)
    broker.start()
    return broker


DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
"""The repository's deploy/ folder."""

DEPLOY_ETC = "/etc/layercast/mosquitto/"
"""Where deploy/mosquitto/mosquitto.conf expects its passwd, acl and certs."""


def start_deploy_broker(tmp_path: Path, users: dict[str, str], *, debug_log: bool = True) -> Broker:
    """Start deploy/mosquitto/mosquitto.conf as shipped, with only what a test host needs changed.

    Its /etc/layercast/mosquitto/ paths and persistence_location move into `tmp_path`/etc and
    `tmp_path`/etc/state; the listeners 8883 (all interfaces) and 1883 (loopback) become free loopback
    ports (`broker.tls_port`, `broker.port`); as root, `user mosquitto` becomes the current user (who can
    read pytest's tmp dirs). The ACL file is deploy/mosquitto/acl, the password file holds `users`, and
    `debug_log` appends `log_type debug` (so a test sees "Denied PUBLISH").
    """
    import re

    require_mosquitto()
    directory = tmp_path / "etc"
    directory.mkdir()
    tls = make_tls(directory / "certs")
    assert {tls.ca.name, tls.cert.name, tls.key.name} == {"ca.crt", "server.crt", "server.key"}
    shutil.copy(DEPLOY / "mosquitto" / "acl", directory / "acl")
    write_passwords(directory / "passwd", users)
    state = directory / "state"
    state.mkdir()
    tls_port, plain_port = free_port(), free_port()
    text = (DEPLOY / "mosquitto" / "mosquitto.conf").read_text()
    assert re.search(r"^listener 8883$", text, re.M) and re.search(r"^listener 1883 127\.0\.0\.1$", text, re.M)
    text = re.sub(r"^listener 8883$", f"listener {tls_port} 127.0.0.1", text, flags=re.M)
    text = re.sub(r"^listener 1883 127\.0\.0\.1$", f"listener {plain_port} 127.0.0.1", text, flags=re.M)
    text, n = re.subn(r"^persistence_location .*$", f"persistence_location {state}/", text, flags=re.M)
    assert n == 1, "mosquitto.conf has no persistence_location"
    text = text.replace(DEPLOY_ETC, f"{directory}/")
    if os.geteuid() == 0:  # as root mosquitto would drop to "mosquitto", who cannot read pytest's tmp dir
        text = re.sub(r"^user mosquitto$", f"user {getpass.getuser()}", text, flags=re.M)
    if debug_log:
        text += "log_type debug\n"
    config = directory / "mosquitto.conf"
    config.write_text(text)
    assert DEPLOY_ETC not in text
    broker = Broker(directory, config, plain_port, tls_port, tls)
    broker.start()
    return broker
