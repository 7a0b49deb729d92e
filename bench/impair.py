"""A userspace network impairment relay: real IP packets between two network namespaces, with loss, burst
loss (Gilbert-Elliott), delay, jitter, reordering, a bandwidth cap and outages.

Why not `tc netem`: the kernels this project runs on (Firecracker guests) are built without sch_netem
(CONFIG_NET_SCH_NETEM unset, no modules). A TUN device works everywhere, so the middle namespace of the
fault lab routes every forwarded packet into a TUN device; this process reads each packet, decides its fate,
and writes it back into the same device after its delay, and the kernel forwards it on.

Packets are told apart as RFC 7983 demultiplexes them: first byte 20..63 is DTLS (the data channels:
model transfer and control), 128..191 is RTP/RTCP (media). So loss can be aimed at the model transfer
alone, and an outage can be timed from the first media packet.

Run inside the middle namespace: `python -m bench.impair --tun NAME --config JSON --stats FILE`.
SIGTERM/SIGINT end it and write the packet counts to FILE.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import json
import os
import random
import signal
import struct
import sys
import time
from dataclasses import asdict, dataclass, field

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
# Largest packet read from the TUN device (its MTU is the veths' 1500).
READ_BYTES = 65536
# Bandwidth cap: packets wait in a queue at most this long, then are dropped (tbf's `latency`).
QUEUE_LIMIT_S = 0.3


@dataclass
class Impairment:
    """What happens to packets in one direction. Probabilities are per packet; times in milliseconds."""

    loss: float = 0.0  # independent random loss
    burst_p: float = 0.0  # Gilbert-Elliott: P(good -> bad) per packet ...
    burst_r: float = 1.0  # ... P(bad -> good) per packet ...
    burst_loss: float = 1.0  # ... and the loss probability while bad (good state: no extra loss)
    delay_ms: float = 0.0
    jitter_ms: float = 0.0  # uniform +-jitter on the delay (packets can overtake each other, as in netem)
    reorder: float = 0.0  # this fraction of packets skips the delay (arrives ahead of earlier ones)
    rate_kbps: float = 0.0  # bandwidth cap (0: none), from the first media packet on: the model is shipped before the
    # call (a 3 MB model would take half an hour at a media-sized cap)
    from_media: bool = False  # random and burst loss only from the first media packet on (not the model transfer)
    model_loss: float = 0.0  # extra loss on DTLS packets only (data channels: the model transfer)
    model_loss_until_media: bool = True  # ... only until the first media packet
    outage_after_media_s: float | None = None  # drop everything from this long after the first media packet ...
    outage_s: float = 0.0  # ... for this long


@dataclass
class Direction:
    """Per-direction state and counts."""

    impairment: Impairment
    rng: random.Random
    bad: bool = False
    link_free_at: float = 0.0
    counts: dict = field(default_factory=lambda: {
        "packets": 0, "bytes": 0, "delivered": 0, "lost_random": 0, "lost_burst": 0, "lost_model": 0,
        "lost_outage": 0, "lost_queue": 0, "dtls": 0, "rtp": 0, "reordered": 0,
    })


def packet_kind(payload: bytes) -> str:
    """RFC 7983 demultiplexing of the UDP payload."""
    if not payload:
        return "other"
    first = payload[0]
    if 20 <= first <= 63:
        return "dtls"
    if 128 <= first <= 191:
        return "rtp"
    if first <= 3:
        return "stun"
    return "other"


def udp_payload(packet: bytes) -> bytes:
    """The UDP payload of an IPv4 packet (b'' for anything else)."""
    if len(packet) < 28 or packet[0] >> 4 != 4 or packet[9] != 17:
        return b""
    header = (packet[0] & 0x0F) * 4
    return packet[header + 8 :]


class Relay:
    def __init__(self, forward: Impairment, backward: Impairment, forward_dst: str, seed: int = 0):
        self.forward_dst = bytes(int(x) for x in forward_dst.split("."))
        self.directions = {
            "forward": Direction(forward, random.Random(seed)),
            "backward": Direction(backward, random.Random(seed + 1)),
        }
        self.first_media: float | None = None
        self.started = time.monotonic()

    def fate(self, packet: bytes, now: float) -> tuple[str, float | None]:
        """(direction, delay in seconds) for a packet, or (direction, None) when it is dropped."""
        name = "forward" if packet[16:20] == self.forward_dst else "backward"
        d = self.directions[name]
        imp, c, rng = d.impairment, d.counts, d.rng
        c["packets"] += 1
        c["bytes"] += len(packet)
        kind = packet_kind(udp_payload(packet))
        if kind in ("dtls", "rtp"):
            c[kind] += 1
        if kind == "rtp" and self.first_media is None:
            self.first_media = now
        if imp.outage_after_media_s is not None and self.first_media is not None:
            begin = self.first_media + imp.outage_after_media_s
            if begin <= now < begin + imp.outage_s:
                c["lost_outage"] += 1
                return name, None
        if kind == "dtls" and imp.model_loss and (self.first_media is None or not imp.model_loss_until_media):
            if rng.random() < imp.model_loss:
                c["lost_model"] += 1
                return name, None
        streaming = self.first_media is not None or not imp.from_media
        if imp.burst_p and streaming:
            d.bad = (rng.random() >= imp.burst_r) if d.bad else (rng.random() < imp.burst_p)
            if d.bad and rng.random() < imp.burst_loss:
                c["lost_burst"] += 1
                return name, None
        if imp.loss and streaming and rng.random() < imp.loss:
            c["lost_random"] += 1
            return name, None
        delay = imp.delay_ms / 1000
        if imp.jitter_ms:
            delay = max(0.0, delay + rng.uniform(-imp.jitter_ms, imp.jitter_ms) / 1000)
        if imp.reorder and rng.random() < imp.reorder:
            delay = 0.0
            c["reordered"] += 1
        if imp.rate_kbps and self.first_media is not None:
            start = max(now, d.link_free_at)
            if start - now > QUEUE_LIMIT_S:
                c["lost_queue"] += 1
                return name, None
            d.link_free_at = start + len(packet) * 8 / (imp.rate_kbps * 1000)
            delay += d.link_free_at - now
        c["delivered"] += 1
        return name, delay

    def report(self) -> dict:
        return {
            "seconds": round(time.monotonic() - self.started, 2),
            "first_media_s": None if self.first_media is None else round(self.first_media - self.started, 3),
            **{name: {"impairment": asdict(d.impairment), "counts": d.counts} for name, d in self.directions.items()},
        }


def open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


async def run(tun: str, relay: Relay, stats_path: str | None, ready_path: str | None) -> None:
    loop = asyncio.get_running_loop()
    fd = open_tun(tun)
    done = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)

    def write(packet: bytes) -> None:
        try:
            os.write(fd, packet)
        except OSError:
            pass  # the namespace is being torn down

    def readable() -> None:
        while True:
            try:
                packet = os.read(fd, READ_BYTES)
            except BlockingIOError:
                return
            now = loop.time()
            _, delay = relay.fate(packet, now)
            if delay is None:
                continue
            if delay <= 0:
                write(packet)
            else:
                loop.call_at(now + delay, write, packet)

    loop.add_reader(fd, readable)
    if ready_path:
        open(ready_path, "w").write("ready\n")
    await done.wait()
    loop.remove_reader(fd)
    os.close(fd)
    if stats_path:
        with open(stats_path, "w") as f:
            json.dump(relay.report(), f, indent=2)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.impair", description=__doc__.splitlines()[0])
    p.add_argument("--tun", required=True, help="TUN device to attach to (created by the fault lab)")
    p.add_argument("--forward-dst", required=True, help="IPv4 address packets of the forward direction go to (the receiver)")
    p.add_argument("--forward", default="{}", help="JSON Impairment for sender -> receiver")
    p.add_argument("--backward", default="{}", help="JSON Impairment for receiver -> sender")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stats", default=None, help="write packet counts here on exit")
    p.add_argument("--ready", default=None, help="touch this file once attached")
    args = p.parse_args(argv)
    try:
        forward, backward = Impairment(**json.loads(args.forward)), Impairment(**json.loads(args.backward))
    except (TypeError, ValueError) as exc:
        print(f"bench.impair: bad impairment: {exc}", file=sys.stderr)
        return 2
    relay = Relay(forward, backward, args.forward_dst, args.seed)
    asyncio.run(run(args.tun, relay, args.stats, args.ready))
    return 0


if __name__ == "__main__":
    sys.exit(main())
