"""The bench's sender in its own process: stream pre-encoded images from a `.lcs` file as fast as the link
takes them, as a camera on another host would (so the receiver's throughput is measured on its own cores).

    python -m layercast.bench.remote_sender IMAGES.lcs URL COUNT [PROFILE [LOOP]]

URL is mqtt://HOST:PORT/PREFIX/STREAM or http://HOST:PORT/offer (WebRTC signalling); LOOP: auto (default),
uvloop or asyncio (`common.eventloop`). Prints one JSON line: seconds to send, and the process's CPU seconds
over the same span (`cpu_s`, with the edge coder's warm-up).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


async def send(lcs: Path, url: str, count: int, profile: str) -> dict[str, float]:
    """Send `count` images (cycling through the file's) over `url`; returns timings."""
    from layercast.common.transport.base import Transport
    from layercast.proto import framing
    from layercast.sender.session import SendSession

    images = framing.container_to_images(lcs.read_bytes())
    transport: Transport
    if url.startswith("mqtt"):
        from layercast.common.transport.mqtt import MqttTransport

        transport = MqttTransport.from_url(url, role="send")
    else:
        from layercast.common.transport.signalling import connect_webrtc

        transport = await connect_webrtc(url, timeout=30, camera="bench")
    t0 = time.perf_counter()
    c0 = time.process_time()
    async with SendSession(transport, profile=profile, rate_bps=0, camera=transport.camera or "bench") as tx:
        for i in range(count):
            await tx.send_image(images[i % len(images)])
        t_sent = time.perf_counter()
    out = {
        "send_s": round(t_sent - t0, 3),
        "total_s": round(time.perf_counter() - t0, 3),
        "cpu_s": round(time.process_time() - c0, 3),
    }
    bundler = getattr(transport, "bundler", None)  # WebRTC: the SCTP packets its messages left in
    if bundler is not None:
        out["sctp_packets"] = bundler.packets
    return out


def main(argv: list[str]) -> int:
    """Entry point: IMAGES.lcs URL COUNT [PROFILE [LOOP]]."""
    from layercast.common import eventloop

    lcs, url, count = Path(argv[0]), argv[1], int(argv[2])
    profile = argv[3] if len(argv) > 3 else ("mqtt" if url.startswith("mqtt") else "webrtc")
    loop = argv[4] if len(argv) > 4 else "auto"
    print(json.dumps(eventloop.run(send(lcs, url, count, profile), loop=loop)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
