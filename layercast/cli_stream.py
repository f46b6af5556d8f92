"""`layercast send`, `layercast receive` and `layercast demo`: the streaming half of the command line.

`layercast.cli` builds the parser and calls `add_parsers(sub)`; handlers are in `HANDLERS`. Each
handler runs its own event loop (call `cli.main` from synchronous code, as the tests do).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from layercast.common import eventloop
from layercast.common.errors import InputError

PASSWORD_ENV = "LAYERCAST_MQTT_PASSWORD"
DEFAULT_SESSION_EXPIRY = 86400
"""Seconds a broker keeps a receiver's session (and queues its messages) while it is away."""
"""Environment variable with the MQTT password (used when neither --password-file nor the URL gives one)."""

SAMPLES = Path(__file__).resolve().parent / "samples"
"""The sample images `layercast demo` streams by default."""

SEND_EPILOG = """\
destinations:
  webrtc://HOST:PORT                a `layercast receive --on webrtc://:PORT` (HTTP offer/answer signalling)
  mqtt://[USER@]BROKER[:PORT]/PREFIX/CAMERA   an MQTT 5 broker (topics PREFIX/CAMERA/<layer>); URL options:
                                    ?qos=1,0,0&expiry=60,30,30&tls=1&ca=FILE&cert=FILE&key=FILE&insecure=1
                                    &client_id=ID&keepalive=30&session_expiry=S&reconnect=0
  file:PATH, file:-                 a .lcs container file, or stdout

camera identity:
  A camera is named by the MQTT topic level (or --camera); receivers file its images under
  OUT/<camera>/<image>/ and refuse packets that arrive on another camera's topic.

service (store and forward):
  --watch DIR --spool DIR runs until stopped (SIGTERM/Ctrl-C): new image files in DIR (settled for
  --settle seconds; write-then-rename is best) are encoded into the durable outbox in --spool and sent
  oldest first; an image leaves the outbox only when the broker acknowledged it. Broker or network
  outages, and a kill of this process, lose nothing and re-send nothing acknowledged. Backlog and
  counters: --json lines on stdout, log lines on stderr, SPOOL/status.json. Without --watch, --spool
  makes a one-shot send durable (exit 3 when images stay queued after --timeout of failing link).
  A spool it cannot write, or a broker lost with ?reconnect=0, ends the service with exit code 1 (for
  its unit to restart it); the queued images wait in the spool.

passwords (never only in the URL: it shows in `ps`):
  --password-file FILE, else the URL's password, else $LAYERCAST_MQTT_PASSWORD.

examples:
  layercast send photo.png --to file:photo.lcs --camera cam1
  layercast send imgs/ --to webrtc://10.0.0.2:8443 --link webrtc --camera cam1
  layercast send imgs/ --to mqtt://cam1@broker:1883/layercast/cam1 --password-file cam1.pw --key @cam1.key
  layercast send --watch /srv/incoming --spool /var/lib/layercast/spool --to mqtt://cam1@broker/layercast/cam1
  layercast send imgs/ --to webrtc://127.0.0.1:8443 --link sbd --loss 5% --delay 300ms --rate 9600
  layercast send photo.png --to file:- | layercast receive --on file:- --out out/
"""

RECEIVE_EPILOG = """\
sources:
  webrtc://[HOST]:PORT              serve HTTP signalling (POST /offer) for any number of senders
  mqtt://[USER@]BROKER[:PORT]/PREFIX[/CAMERA]   subscribe to PREFIX/+/+ (or one camera, or cam1,cam2);
                                    ?group=G shares the work among receivers (MQTT 5 shared subscription);
                                    ?client_id=ID&session_expiry=S keep a persistent session (default:
                                    client id layercast-rx-<host>-<out hash>, 86400 s; session_expiry=0
                                    for a clean session); ?receive_maximum=N: at most N images handed
                                    over but not yet acknowledged (default 100); also ?tls=1&ca=FILE
                                    &cert=FILE&key=FILE&insecure=1&keepalive=30&reconnect=0 (as for send;
                                    with reconnect=0 a lost broker ends the receiver with exit code 1)
  file:PATH, file:-                 read a .lcs container, or stdin

outputs: OUT/<camera>/<image>/stage-<n>.png (progressive), OUT/<camera>/<image>/final.png, OUT/events.jsonl
  <camera> is the MQTT topic's camera, the WebRTC sender's --camera, or --camera here; else the stream id.
  Delivery: an MQTT message is acknowledged only once its image's final.png is written, and an image
  whose final.png exists is not taken again (duplicates are counted), so a killed receiver loses nothing.
  An output it cannot write ends the receiver with exit code 1 (for its unit to restart it); the image
  stays unacknowledged and comes back.

examples:
  layercast receive --on webrtc://:8443 --out out/ --web 8080      live view on http://127.0.0.1:8080/
  layercast receive --on mqtt://broker/layercast --out out/ --key @keys.txt --count 10
  layercast receive --on file:photo.lcs --out out/ --decoder sd --model ./sd15
"""

DEMO_EPILOG = """\
The demo encodes the sample images, connects a sender and a receiver through a real WebRTC connection
on 127.0.0.1 (aiortc), emulates a thin lossy link on the sender side, and prints when each layer
arrived. Progressive stages land in OUT/demo/<image>/stage-<n>.png (the demo sender is camera "demo").

examples:
  layercast demo
  layercast demo --link lora --loss 10% --delay 600ms --rate 5470
  layercast demo --images my-imgs/ --out my-demo --json
"""


# --- parsers -------------------------------------------------------------------------------------------


def _rate_arg(text: str) -> float:
    from layercast.common.transport.lossy import parse_rate

    try:
        return parse_rate(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_link_options(
    p: argparse.ArgumentParser, *, link: str | None, loss: str | None, delay: str | None, rate: float | None
) -> None:
    g = p.add_argument_group("link (profile, pacing, emulated loss)")
    g.add_argument(
        "--link",
        default=link,
        metavar="PROFILE",
        help="link profile: lora, sbd, webrtc, webrtc-bundle, mqtt, file (MTU, pace, FEC, bundling;"
        " default: from the URL" + (f", here {link}" if link else "") + ")",
    )
    g.add_argument(
        "--rate",
        type=_rate_arg,
        default=rate,
        metavar="BPS",
        help="pace packets to this bit rate, e.g. 9600 or 9.6k (default: the profile's"
        + (f"; here {rate:g}" if rate else "")
        + ")",
    )
    g.add_argument(
        "--fec",
        default="profile",
        help="forward error correction: on (default policy), off, profile (default), or "
        "semantic=3,structure=0.25,texture=0.5",
    )
    g.add_argument(
        "--bundle",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="carry an image's whole layers without FEC in one packet where they fit the MTU (one set of ids,"
        " one header, one CRC; on the first layer's reliability class); default: the profile's choice"
        " (on for mqtt and webrtc-bundle)",
    )
    g.add_argument("--loss", default=loss, help="emulated random packet loss, e.g. 0.05 or 5%%")
    g.add_argument("--burst", help="emulated loss in bursts (Gilbert-Elliott average), e.g. 5%%")
    g.add_argument("--burst-len", help="mean burst length in packets (default 3)")
    g.add_argument("--delay", default=delay, help="emulated one-way delay, e.g. 300ms")
    g.add_argument("--jitter", help="emulated delay jitter, e.g. 20ms")
    g.add_argument("--duplicate", help="emulated duplication probability")
    g.add_argument("--reorder", help="emulated reordering probability")
    g.add_argument("--link-seed", type=int, default=0, help="seed of the emulated link (default 0)")


def add_parsers(sub: Any) -> None:
    """Add `send`, `receive` and `demo` to the `layercast` subcommands."""
    from layercast.cli_options import add_decoder_options, add_encode_options, add_fallback_option, add_loop_option

    fmt = argparse.RawDescriptionHelpFormatter
    s = sub.add_parser(
        "send",
        help="encode images and stream them to a receiver",
        epilog=SEND_EPILOG,
        formatter_class=fmt,
        description="Encode images and send their layers over a link.",
    )
    s.add_argument("inputs", nargs="*", metavar="IMG", help="image files or folders (or --watch DIR)")
    s.add_argument(
        "--to",
        required=True,
        metavar="URL",
        help="webrtc://HOST:PORT, mqtt://BROKER/PREFIX/STREAM, file:PATH or file:-",
    )
    s.add_argument(
        "--key",
        help="sender key: hex digits, or @FILE (one key, or a 'CAMERA HEXKEY' ring: this camera's line);"
        " packets are then authenticated",
    )
    s.add_argument(
        "--camera",
        metavar="NAME",
        help="this camera's name (A-Z a-z 0-9 . _ -); MQTT: default the URL's last level, which it must equal",
    )
    s.add_argument(
        "--first-image-id",
        default="auto",
        help="id of the first image: a number, or auto (from the clock, so a restarted sender "
        "is not mistaken for a repeat; file: destinations start at 0; a --spool keeps its own count)",
    )
    s.add_argument("--timeout", type=float, default=30.0, help="seconds to connect / per send (default 30)")
    svc = s.add_argument_group("service (store and forward; see below)")
    svc.add_argument("--watch", metavar="DIR", help="run as a service: send every new image file that appears in DIR")
    svc.add_argument("--spool", metavar="DIR", help="durable outbox (required with --watch; one per camera)")
    svc.add_argument("--poll", type=float, default=1.0, metavar="S", help="seconds between scans of DIR (default 1)")
    svc.add_argument(
        "--settle", type=float, default=1.0, metavar="S", help="take a file once unmodified for S seconds (default 1)"
    )
    s.add_argument("--password-file", metavar="FILE", help="MQTT password from this file (first line)")
    _add_link_options(s, link=None, loss=None, delay=None, rate=None)
    add_encode_options(s)
    add_loop_option(s)
    s.add_argument("--json", action="store_true", help="print JSON")

    r = sub.add_parser(
        "receive",
        help="receive streams, decode progressively, write stages",
        epilog=RECEIVE_EPILOG,
        formatter_class=fmt,
        description="Receive layered streams and decode each image as its layers arrive.",
    )
    r.add_argument(
        "--on",
        required=True,
        metavar="URL",
        help="webrtc://[HOST]:PORT, mqtt://BROKER/PREFIX[/STREAM], file:PATH or file:-",
    )
    r.add_argument("--out", required=True, help="output folder (stages, final images, events.jsonl)")
    add_decoder_options(r)
    add_fallback_option(r)
    r.add_argument(
        "--camera",
        metavar="NAME",
        help="file: and WebRTC: the camera the packets come from when the sender names none (packets must match)",
    )
    r.add_argument("--password-file", metavar="FILE", help="MQTT password from this file (first line)")
    r.add_argument(
        "--end-session",
        action="store_true",
        help="MQTT: when this worker stops, end its broker session (a worker leaving the pool for good: while"
        " its session exists, the broker keeps queueing its share of a group's messages for it)",
    )
    r.add_argument(
        "--key",
        help="sender key (hex or @FILE), or @FILE of 'CAMERA HEXKEY' lines (a key per camera; a packet keyed"
        " for one camera never lands in another's folder; '* HEXKEY' for the rest)",
    )
    r.add_argument(
        "--web",
        type=int,
        metavar="PORT",
        help="serve the live view on this port (the WebRTC port itself mounts it on the signalling server)",
    )
    r.add_argument("--web-host", default="127.0.0.1", help="address of the live view (default 127.0.0.1)")
    r.add_argument("--count", type=int, help="exit after N images are final")
    r.add_argument("--idle-timeout", type=float, metavar="S", help="exit after S seconds without packets")
    r.add_argument(
        "--linger",
        type=float,
        default=5.0,
        metavar="S",
        help="with --count over WebRTC: wait up to S seconds for the senders to finish draining and hang up"
        " before closing (default 5)",
    )
    r.add_argument(
        "--image-timeout",
        type=float,
        default=10.0,
        help="finish an incomplete image S seconds after its last packet (default 10)",
    )
    add_loop_option(r)
    r.add_argument("--json", action="store_true", help="print JSON")

    d = sub.add_parser(
        "demo",
        help="stream sample images over a lossy WebRTC link on loopback",
        epilog=DEMO_EPILOG,
        formatter_class=fmt,
        description="Sender and receiver in one process over a real WebRTC "
        "connection through an emulated thin, lossy link.",
    )
    d.add_argument(
        "--images", help=f"image folder or file (default: the {len(list(SAMPLES.glob('*.jpg')))} bundled samples)"
    )
    d.add_argument("--limit", type=int, help="send at most N images")
    d.add_argument("--out", default="demo-out", help="output folder (default demo-out)")
    d.add_argument(
        "--web",
        type=int,
        metavar="PORT",
        help="serve the live view on this port (0 = any free port) while the images arrive, and keep serving it"
        " after the demo until Ctrl-C",
    )
    _add_link_options(d, link="sbd", loss="5%", delay="300ms", rate=9600.0)
    add_encode_options(d, resize=512)
    add_decoder_options(d)
    add_loop_option(d)
    d.add_argument("--json", action="store_true", help="print JSON")


# --- shared helpers ------------------------------------------------------------------------------------


async def _until_interrupted() -> None:
    """Wait for SIGINT or SIGTERM."""
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def load_key_arg(spec: str | None) -> Any:
    """--key: hex digits, or @FILE (one key, or a key ring of 'CAMERA HEXKEY' / 'STREAM_ID HEXKEY' /
    '* HEXKEY' lines)."""
    if spec is None:
        return None
    from layercast.common.replay import load_key, load_keyring

    if spec.startswith("@"):
        path = spec[1:]
        if not Path(path).is_file():
            raise InputError(f"key file {path!r} does not exist")
        ring = load_keyring(path)
        return ring.default if ring.default is not None and not ring.per_sender else ring
    return load_key(spec)


def link_model_from_args(args: argparse.Namespace) -> Any:
    """The emulated link of --loss/--burst/--delay/..., or None when none of them is given."""
    from layercast.common.transport.lossy import LinkModel

    names = ("loss", "burst", "burst_len", "delay", "jitter", "duplicate", "reorder")
    if all(getattr(args, n) is None for n in names):
        return None
    return LinkModel.parse(**{n: getattr(args, n) for n in names}, seed=args.link_seed)


def fec_from_args(text: str) -> Any:
    """--fec: None = the profile's policy; otherwise a FecPolicy."""
    from layercast.common.fec import FecPolicy

    return None if text.strip().lower() == "profile" else FecPolicy.parse(text)


def _scheme(url: str) -> str:
    if url.startswith("file:"):
        return "file"
    scheme = urlsplit(url).scheme
    if scheme in ("webrtc", "mqtt", "mqtts"):
        return "mqtt" if scheme == "mqtts" else scheme
    raise InputError(f"unknown address {url!r}: use webrtc://HOST:PORT, mqtt://BROKER/..., file:PATH or file:-")


def _file_path(url: str) -> str:
    path = url[len("file:") :]
    if path.startswith("//"):
        path = path[2:]
    if not path:
        raise InputError("file: needs a path (file:out.lcs) or - for stdio")
    return path


def _make_decoder(args: argparse.Namespace) -> tuple[Any, str | None]:
    from layercast.cli_options import make_decoder

    try:
        return make_decoder(args)
    except ImportError as exc:
        raise InputError(f"the {args.decoder} decoder is not available in this installation: {exc}") from None


def read_password(args: argparse.Namespace, url_password: str | None) -> str | None:
    """The MQTT password: --password-file (first line), else the URL's, else $LAYERCAST_MQTT_PASSWORD."""
    path = getattr(args, "password_file", None)
    if path:
        if url_password is not None:
            raise InputError("the password is given twice (URL and --password-file): keep it in the file only")
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise InputError(f"cannot read --password-file {path}: {exc.strerror or exc}") from None
        if not lines or not lines[0]:
            raise InputError(f"--password-file {path} is empty")
        return lines[0]
    if url_password is not None:
        return url_password
    return os.environ.get(PASSWORD_ENV) or None


def mqtt_config(url: str, args: argparse.Namespace) -> Any:
    """The MqttConfig (receive role) of `url` with the password resolved by `read_password`."""

    from layercast.common.transport.mqtt import MqttConfig

    cfg = MqttConfig.from_url(url, role="receive")
    return replace(cfg, password=read_password(args, cfg.password))


def receiver_mqtt_config(url: str, args: argparse.Namespace) -> Any:
    """A receiver's MqttConfig: persistent session by default (client id from host and output folder,
    86400 s expiry, unless the URL sets them), QoS 1 messages acknowledged once their image is written."""
    import hashlib
    import socket

    cfg = mqtt_config(url, args)
    query = urlsplit(url).query
    changes: dict[str, Any] = {"manual_ack": True}
    if "client_id=" not in query:
        host = "".join(c if c.isalnum() or c in "-_." else "-" for c in socket.gethostname())[:32]
        digest = hashlib.sha256(str(Path(args.out).resolve()).encode()).hexdigest()[:8]
        changes["client_id"] = f"layercast-rx-{host}-{digest}"
    if "session_expiry=" not in query:
        changes["session_expiry"] = DEFAULT_SESSION_EXPIRY
    return replace(cfg, **changes)


def send_camera(url: str, args: argparse.Namespace) -> str | None:
    """The sending camera's name: --camera, or (MQTT) the URL's last level, which must agree."""
    from layercast.common.identity import check_camera_name

    camera = check_camera_name(args.camera) if args.camera else None
    if _scheme(url) != "mqtt":
        return camera
    from layercast.common.transport.mqtt import MqttConfig

    stream = MqttConfig.from_url(url, role="receive").stream
    level = None if stream == "+" else stream
    if camera and level and camera != level:
        raise InputError(f"--camera {camera} differs from the URL's camera {level!r}: the topic names the camera")
    if not (camera or level):
        raise InputError(f"name the camera: {url.rstrip('/')}/CAMERA, or --camera NAME (topics PREFIX/CAMERA/<layer>)")
    return camera or level


@contextlib.asynccontextmanager
async def open_send_transport(url: str, args: argparse.Namespace, camera: str | None = None) -> AsyncIterator[Any]:
    """The transport a `send --to URL` writes to (connected), as `camera`."""
    scheme = _scheme(url)
    if scheme == "file":
        from layercast.common.transport.file import FileTransport

        yield FileTransport(_file_path(url), "w")
    elif scheme == "webrtc":
        from layercast.common.transport.signalling import connect_webrtc

        transport = await connect_webrtc(url, timeout=args.timeout, camera=camera or "")
        yield transport
    else:
        from layercast.common.transport.mqtt import MqttTransport

        cfg = mqtt_config(url, args)
        if getattr(args, "spool", None):  # store and forward: an image nobody received stays queued
            cfg = replace(cfg, require_subscribers=True)
            if "expiry=" not in urlsplit(url).query:  # and waits at the broker as long as a worker's session
                cfg = replace(cfg, expiry=(DEFAULT_SESSION_EXPIRY, *cfg.expiry[1:]))
        yield MqttTransport(
            cfg.with_role("send", camera or cfg.stream),
            default_timeout=args.timeout,
            offline_start=bool(getattr(args, "spool", None)),  # a service waits for its broker
        )


def _emit(args: argparse.Namespace, doc: dict[str, Any], lines: Sequence[str]) -> None:
    if args.json:
        print(json.dumps(doc))
    else:
        for line in lines:
            print(line)


# --- send ----------------------------------------------------------------------------------------------


def cmd_send(args: argparse.Namespace) -> int:
    from layercast.sender.image_io import find_images

    if not args.inputs and not args.watch:
        raise InputError("give image files or folders to send, or --watch DIR to run as a service")
    if args.watch and not args.spool:
        raise InputError("--watch needs --spool DIR: the durable outbox that keeps images until acknowledged")
    if args.spool and _scheme(args.to) != "mqtt":
        raise InputError(
            "--spool and --watch store and forward over MQTT (a broker holds what receivers cannot take yet);"
            " WebRTC and file: destinations send directly"
        )
    if args.watch and not Path(args.watch).is_dir():
        raise InputError(f"--watch {args.watch}: no such folder")
    paths = find_images(args.inputs) if args.inputs else []
    return eventloop.run(_send(args, paths), loop=args.loop)


def _send_session(args: argparse.Namespace, transport: Any, camera: str | None, first: int) -> Any:
    from layercast.common.transport.webrtc import WebRTCConfig
    from layercast.sender.link import get_profile
    from layercast.sender.session import SendSession

    scheme = _scheme(args.to)
    key = load_key_arg(args.key)
    if key is not None and not isinstance(key, bytes):  # a key ring: this camera's own key
        ring = key
        key = ring.key_for_camera(camera) if camera else ring.default
        if key is None:
            raise InputError(f"the key ring {args.key[1:]} has no key for camera {camera!r} (nor a '*' default)")
    reliable = (
        [f for f in ("semantic", "structure", "texture") if WebRTCConfig().policy(f).reliable]
        if scheme == "webrtc"
        else []
    )
    return SendSession(
        transport,
        profile=get_profile(args.link or scheme),
        fec=fec_from_args(args.fec),
        key=key,
        camera=camera,
        order=args.order,
        rate_bps=args.rate,
        link_model=link_model_from_args(args),
        reliable_families=reliable,
        first_image_id=first,
        bundle=args.bundle,
        send_timeout=args.timeout,
    )


async def _send(args: argparse.Namespace, paths: list[Path]) -> int:
    from layercast.cli_options import encoder_from_args
    from layercast.common.identity import clock_image_id

    scheme = _scheme(args.to)
    camera = send_camera(args.to, args)
    if args.first_image_id == "auto":
        first = 0 if scheme == "file" else clock_image_id()
    else:
        try:
            first = int(args.first_image_id)
        except ValueError:
            raise InputError(f"--first-image-id must be a number or auto, got {args.first_image_id!r}") from None
    if args.spool:
        assert camera is not None
        return await _send_spooled(args, paths, camera)
    failures: list[dict[str, str]] = []
    t0 = time.perf_counter()
    async with open_send_transport(args.to, args, camera) as transport:
        session = _send_session(args, transport, camera, first)
        async with session:
            reports = await session.send_paths(
                paths,
                encoder_from_args(args),
                progress=not args.json and args.to != "file:-",
                on_error=lambda p, e: failures.append({"input": str(p), "error": type(e).__name__, "message": str(e)}),
            )
    elapsed = time.perf_counter() - t0
    doc = {
        "to": args.to,
        "link": session.profile.name,
        "bundle": session.bundle,
        "camera": camera,
        "stream_id": session.stream_id,
        "images": [r.to_dict() for r in reports],
        "failed": failures,
        "packets": sum(r.packets for r in reports),
        "wire_bytes": sum(r.wire_bytes for r in reports),
        "seconds": round(elapsed, 3),
        "loop": eventloop.running_loop_name(),
    }
    out = sys.stderr if args.to == "file:-" else sys.stdout
    if args.json:
        print(json.dumps(doc), file=out)
    else:
        for r in reports:
            parts = ", ".join(f"{x.family} {x.data_packets}+{x.repair_packets} pkt {x.wire_bytes} B" for x in r.layers)
            print(
                f"{r.name}: image {r.image_id}, {r.packets} packets, {r.wire_bytes} B [{parts}] "
                f"in {1e3 * r.duration_s:.0f} ms",
                file=out,
            )
        for f in failures:
            print(f"{f['input']}: FAILED {f['error']}: {f['message']}", file=out)
        print(f"sent {len(reports)} image(s), {doc['wire_bytes']} B to {args.to} in {elapsed:.2f} s", file=out)
    return 1 if failures else 0


def _print_service_event(doc: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(doc), flush=True)
        return
    name = doc["event"]
    detail = {
        "queued": lambda: f"queued {doc.get('source')} as image {doc.get('image_id')}",
        "sent": lambda: f"sent image {doc.get('image_id')} ({doc.get('source')}), acknowledged",
        "failed": lambda: f"skipped {doc.get('source')}: {doc.get('error')}",
        "link_down": lambda: f"link down ({doc.get('error')}); retrying in {doc.get('retry_s')} s",
    }.get(name, lambda: name)()
    print(f"layercast send [{doc['camera']}]: {detail}; backlog {doc['backlog']}", file=sys.stderr, flush=True)


async def _send_spooled(args: argparse.Namespace, paths: list[Path], camera: str) -> int:
    """`send --spool` (one-shot, durable) and `send --watch --spool` (a service until SIGTERM)."""
    import signal

    from layercast.cli_options import encoder_from_args
    from layercast.sender.service import SpoolService
    from layercast.sender.spool import Spool

    encoder = encoder_from_args(args)
    spool = Spool(args.spool, camera=camera)
    try:
        t0 = time.perf_counter()
        async with open_send_transport(args.to, args, camera) as transport:
            session = _send_session(args, transport, camera, 0)
            service = SpoolService(
                session,
                spool,
                encode=lambda p: session.encode_file(p, encoder, image_id=spool.next_image_id()),
                watch=Path(args.watch) if args.watch else None,
                poll_s=args.poll,
                settle_s=args.settle,
                on_event=lambda doc: _print_service_event(doc, args.json),
            )
            async with session:
                if args.watch:
                    stop = asyncio.Event()
                    loop = asyncio.get_running_loop()
                    for sig in (signal.SIGTERM, signal.SIGINT):
                        loop.add_signal_handler(sig, stop.set)
                    await service.run(stop)
                    left = spool.backlog
                else:
                    left = await service.run_once(paths, give_up_s=args.timeout)
        doc = {
            "event": "summary",
            "camera": camera,
            "to": args.to,
            "spool": str(spool.root),
            "sent": service.stats.sent,
            "failed": service.stats.failed,
            "backlog": left,
            "seconds": round(time.perf_counter() - t0, 3),
        }
    finally:
        spool.close()
    if args.json:
        print(json.dumps(doc), flush=True)
    else:
        print(
            f"sent {doc['sent']} image(s) to {args.to}; {doc['failed']} failed; {left} left in {spool.root}",
            file=sys.stderr,
        )
    return 3 if left else (1 if service.stats.failed else 0)


# --- receive -------------------------------------------------------------------------------------------


def cmd_receive(args: argparse.Namespace) -> int:
    return eventloop.run(_receive(args), loop=args.loop)


async def _receive(args: argparse.Namespace) -> int:
    from layercast.cli_options import make_receive_decoder
    from layercast.common.identity import check_camera_name
    from layercast.receiver.session import ReceiveSession, Stage
    from layercast.receiver.web import LiveView

    scheme = _scheme(args.on)
    camera = check_camera_name(args.camera) if args.camera else None
    if camera and scheme == "mqtt":
        raise InputError("--camera is for file: and WebRTC sources; on MQTT the topic names each camera")
    try:
        decoder, warning = make_receive_decoder(args)
    except ImportError as exc:
        raise InputError(f"the {args.decoder} decoder is not available in this installation: {exc}") from None
    if warning:
        print(f"layercast: warning: {warning}", file=sys.stderr)
    out = Path(args.out)
    key = load_key_arg(args.key)
    finals: list[dict[str, Any]] = []

    def on_stage(stage: Stage) -> None:
        if not stage.final:
            return
        finals.append(stage.record())
        if not args.json:
            lacking = [f"{f} partial" for f in stage.partial] + [f"{f} lost" for f in stage.missing]
            state = "complete" if stage.complete else ", ".join(lacking)
            print(
                f"camera {stage.camera} image {stage.image_id}: {stage.index} stage(s), "
                f"{'+'.join(stage.layers) or 'no layers'}, {state} -> {stage.path}",
                flush=True,
            )

    async with contextlib.AsyncExitStack() as stack:
        rx = await stack.enter_async_context(
            ReceiveSession(decoder=decoder, out_dir=out, key=key, image_timeout=args.image_timeout)
        )
        rx.add_listener(on_stage)
        view = LiveView(rx) if args.web is not None else None
        until_closed = True
        listening = ""
        mqtt: Any = None
        if scheme == "file":
            from layercast.common.transport.file import FileTransport

            rx.add_transport(FileTransport(_file_path(args.on), "r"), "file", camera=camera)
        elif scheme == "mqtt":
            from layercast.common.transport.mqtt import MqttTransport

            transport = mqtt = MqttTransport(receiver_mqtt_config(args.on, args), offline_start=True)
            transport.end_session_on_close = args.end_session
            await stack.enter_async_context(transport)
            reader = rx.add_transport(transport, "mqtt")
            until_closed = False
            cfg = transport.config
            topics = ", ".join(cfg.subscriptions())
            listening = (
                f"subscribed to {topics} on {transport.where}"
                if transport.connected
                else f"no MQTT broker at {transport.where} yet: connecting in the background to subscribe to {topics}"
            ) + f" as client {cfg.client_id} (session kept {cfg.session_expiry} s)"
        else:
            from layercast.common.transport.signalling import WebRTCServer

            parts = urlsplit(args.on)
            try:
                port = parts.port
            except ValueError as exc:
                raise InputError(f"bad port in {args.on!r}: {exc}") from None
            if port is None:
                raise InputError(f"{args.on!r} needs a port: webrtc://:8443 or webrtc://0.0.0.0:8443")

            async def serve(t: Any) -> None:
                await rx.serve_transport(t, camera=t.camera or camera)

            server = WebRTCServer(parts.hostname or "0.0.0.0", port, on_transport=serve)
            if view is not None and args.web == port:
                view.mount(server.app)
                view = None
                listening = f"live view on http://{parts.hostname or '127.0.0.1'}:{port}/; "
            await stack.enter_async_context(server)
            until_closed = False
            listening += f"WebRTC signalling on {server.url}"
        if view is not None:
            url = await stack.enter_async_context(view.serve(args.web_host, args.web))
            listening = f"live view on {url}; " + listening
        stop = asyncio.Event()
        if mqtt is not None:  # the broker connection ended for good (reconnect off): stop, then fail below
            reader.add_done_callback(lambda _: stop.set())
        if scheme != "file":  # a service: SIGTERM/SIGINT stop it cleanly, with its summary printed
            import signal

            for sig in (signal.SIGTERM, signal.SIGINT):
                asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        if listening:  # stderr, also with --json (stdout carries the JSON); once a signal stops it cleanly
            print(f"layercast: {listening} (Ctrl-C to stop)", file=sys.stderr, flush=True)
        summary = await rx.run(count=args.count, idle_timeout=args.idle_timeout, until_closed=until_closed, stop=stop)
        if mqtt is not None and mqtt.ended is not None:  # crash-only: exit 1 for the unit to restart it
            raise mqtt.ended
        if scheme == "webrtc" and args.count is not None and args.linger > 0:
            await rx.wait_transports_closed(args.linger)  # a sender may still be draining repairs
    doc = {**summary.to_dict(), "finals": finals, "loop": eventloop.running_loop_name()}
    if args.json:
        print(json.dumps(doc))
    else:
        print(
            f"received {summary.images} image(s): {summary.complete} complete, {summary.partial} partial, "
            f"{summary.stages} stage(s), {summary.rejected} packet(s) rejected; output in {out}/ "
            f"(events: {summary.events_log})"
        )
    return 0


# --- demo ----------------------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    return eventloop.run(_demo(args), loop=args.loop)


async def _demo(args: argparse.Namespace) -> int:
    from layercast.cli_options import encoder_from_args
    from layercast.common.transport.signalling import WebRTCServer, connect_webrtc
    from layercast.common.transport.webrtc import WebRTCConfig
    from layercast.receiver.session import ReceiveSession
    from layercast.sender.image_io import find_images
    from layercast.sender.link import get_profile
    from layercast.sender.session import SendSession

    t_start = time.perf_counter()
    if args.images:
        paths = find_images([args.images])
    else:
        paths = sorted(SAMPLES.glob("*.jpg"))
        if not paths:
            raise InputError(f"no sample images in {SAMPLES}: pass --images DIR")
    if args.limit is not None:
        if args.limit < 1:
            raise InputError("--limit must be at least 1")
        paths = paths[: args.limit]
    profile = get_profile(args.link)
    model = link_model_from_args(args)
    decoder, warning = _make_decoder(args)
    if warning:
        print(f"layercast: warning: {warning}", file=sys.stderr)
    out = Path(args.out)
    encoder = encoder_from_args(args)
    encoded = [await asyncio.to_thread(encoder.encode, p) for p in paths]
    t_encoded = time.perf_counter()
    config = WebRTCConfig()
    reliable = [f for f in ("semantic", "structure", "texture") if config.policy(f).reliable]
    delay = model.delay_s if model is not None else 0.0
    reports = []
    rx = ReceiveSession(decoder=decoder, out_dir=out, image_timeout=max(1.0, 4 * delay + 0.5))
    server = WebRTCServer("127.0.0.1", 0, config, on_transport=rx.serve_transport)
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(rx)
        await stack.enter_async_context(server)
        if args.web is not None:
            from layercast.receiver.web import LiveView

            view = LiveView(rx)
            stack.callback(view.close)
            web_url = await stack.enter_async_context(view.serve("127.0.0.1", args.web))
            print(f"layercast: live view on {web_url}", file=sys.stderr, flush=True)
        transport = await connect_webrtc(server.url, config, timeout=30, camera="demo")
        t_connected = time.perf_counter()
        session = SendSession(
            transport,
            profile=profile,
            fec=fec_from_args(args.fec),
            rate_bps=args.rate,
            link_model=model,
            reliable_families=reliable,
            camera="demo",
            bundle=args.bundle,
        )
        async with session:
            for path, res in zip(paths, encoded, strict=True):
                reports.append(await session.send_image(res.image, name=path.name))
            await session.transport.drain()
            await asyncio.sleep(min(0.2, 0.05 + delay / 4))  # the last packets cross the real connection
        await rx.finish()
        if args.web is not None:
            print("layercast: demo done; the live view stays up until Ctrl-C", file=sys.stderr, flush=True)
            await _until_interrupted()
    elapsed = time.perf_counter() - t_start
    rows: list[dict[str, Any]] = []
    for rep in reports:
        rec = rx.records.get((rep.camera or str(rep.stream_id), rep.image_id))
        layers: dict[str, Any] = {}
        for fam in ("semantic", "structure", "texture"):
            arr = rec.layers.get(fam) if rec else None
            layers[fam] = (
                None
                if arr is None
                else {
                    "ms": round(1e3 * (arr.time - rep.started), 1),
                    "complete": arr.complete,
                    "missing_units": arr.missing_units,
                    "unit_count": arr.unit_count,
                    "recovered": arr.recovered,
                }
            )
        final = rec.final if rec else None
        rows.append(
            {
                "name": rep.name,
                "image_id": rep.image_id,
                "payload_bytes": rep.payload_bytes,
                "wire_bytes": rep.wire_bytes,
                "packets": rep.packets,
                "layers": layers,
                "first_stage_ms": round(1e3 * (rec.first_stage - rep.started), 1) if rec and rec.first_stage else None,
                "stages": rec.stages if rec else 0,
                "complete": bool(rec and rec.complete),
                "partial": list(rec.partial) if rec else [],
                "missing": list(rec.missing) if rec else [],
                "final": str(final.path) if final and final.path else None,
            }
        )
    doc: dict[str, Any] = {
        "out": str(out),
        "events_log": rx.summary.events_log,
        "link": profile.name,
        "rate_bps": session.pacer.rate_bps,
        "loss": model.expected_loss if model else 0.0,
        "delay_s": delay,
        "images": rows,
        "summary": rx.summary.to_dict(),
        "loop": eventloop.running_loop_name(),
        "seconds": {
            "total": round(elapsed, 2),
            "encode": round(t_encoded - t_start, 2),
            "connect": round(t_connected - t_encoded, 2),
        },
    }
    if args.json:
        print(json.dumps(doc))
        return 0
    rate = f"{session.pacer.rate_bps:g} bit/s" if session.pacer.rate_bps else "unpaced"
    print(
        f"layercast demo: {len(rows)} image(s) over WebRTC on 127.0.0.1, link {profile.name} "
        f"(MTU {profile.mtu}), {rate}, loss {100 * doc['loss']:.1f}%, delay {1e3 * delay:.0f} ms"
    )
    print("layer arrival after the image's first packet (ms; * = partial, + = FEC repaired):")
    print(
        f"{'image':<14}{'bytes':>6}{'pkts':>5}{'semantic':>10}{'structure':>11}{'texture':>10}"
        f"{'1st view':>10}{'stages':>7}  result"
    )
    for row in rows:
        cells = []
        for fam in ("semantic", "structure", "texture"):
            info = row["layers"][fam]
            if info is None:
                cells.append("lost")
            else:
                mark = "" if info["complete"] else "*"
                mark += "+" if info["recovered"] else ""
                cells.append(f"{info['ms']:.0f}{mark}")
        result = (
            "complete"
            if row["complete"]
            else ", ".join([f"{f} partial" for f in row["partial"]] + [f"{f} lost" for f in row["missing"]])
        )
        first = f"{row['first_stage_ms']:.0f}" if row["first_stage_ms"] is not None else "-"
        print(
            f"{row['name'][:13]:<14}{row['payload_bytes']:>6}{row['packets']:>5}{cells[0]:>10}{cells[1]:>11}"
            f"{cells[2]:>10}{first:>10}{row['stages']:>7}  {result}"
        )
    s = rx.summary
    print(
        f"{s.images} image(s), {s.stages} stage(s), {s.complete} complete, {s.partial} partial, "
        f"{s.cancelled} stale decode(s) cancelled; {elapsed:.1f} s in all"
    )
    print(f"output: {out}/demo/<image>/stage-<n>.png and final.png; events: {s.events_log}")
    return 0


HANDLERS: dict[str, Any] = {"send": cmd_send, "receive": cmd_receive, "demo": cmd_demo}
