"""A userspace network impairment relay: real IP packets between two network namespaces, with loss, burst
loss (Gilbert-Elliott), delay, jitter, reordering, a bandwidth cap and outages.

Why not `tc netem`: the kernels this project runs on (Firecracker guests) are built without sch_netem
(CONFIG_NET_SCH_NETEM unset, no modules). A TUN device works everywhere, so the middle namespace of the
fault lab routes every forwarded packet into a TUN device; this process reads each packet, decides its fate,
and writes it back into the same device after its delay, and the kernel forwards it on.

Packets are told apart as RFC 7983 demultiplexes them: first byte 20..63 is DTLS (the data channels:
model transfer and control), 128..191 is RTP/RTCP, and RTCP is told from media RTP as RFC 5761 does. So
loss can be aimed at the model transfer alone, and a cap or an outage can be timed from the first media
packet (not from the first RTCP sender report, which may leave while the model is still on its way).

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
    # call (a 3 MB model would take half an hour at a media-sized cap) ...
    rate_from_start: bool = False  # ... or from the first packet on (a model transfer under the cap)
    rate_steps: list = field(default_factory=list)  # [[seconds after the first media packet, kbps], ...]: the cap from then on
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
        "lost_outage": 0, "lost_queue": 0, "dtls": 0, "rtp": 0, "rtcp": 0, "tcp": 0, "reordered": 0,
    })
    # Per second since the first media packet (the call's clock): bytes delivered by kind and packets dropped.
    seconds: dict = field(default_factory=dict)

    def rate_at(self, since_media: float | None) -> float:
        """The cap in force (kbps; 0: none) this long after the first media packet (None: before it)."""
        imp = self.impairment
        if since_media is None:
            return imp.rate_kbps if imp.rate_from_start else 0.0
        rate = imp.rate_kbps
        for at, kbps in sorted(imp.rate_steps):
            if since_media >= at:
                rate = kbps
        return rate

    def tally(self, since_media: float | None, kind: str, size: int, delivered: bool) -> None:
        if since_media is None:
            return
        second = self.seconds.setdefault(int(since_media), {"rtp": 0, "rtcp": 0, "dtls": 0, "tcp": 0, "other": 0, "dropped": 0})
        if delivered:
            second[kind if kind in second else "other"] += size
        else:
            second["dropped"] += 1


def packet_kind(payload: bytes) -> str:
    """RFC 7983 demultiplexing of the UDP payload."""
    if not payload:
        return "other"
    first = payload[0]
    if 20 <= first <= 63:
        return "dtls"
    if 128 <= first <= 191:
        # RFC 5761: a second byte of 192..223 is an RTCP packet type (SR, RR, SDES, BYE, feedback), not media.
        return "rtcp" if len(payload) > 1 and 192 <= payload[1] <= 223 else "rtp"
    if first <= 3:
        return "stun"
    return "other"


def is_tcp(packet: bytes) -> bool:
    return len(packet) >= 20 and packet[0] >> 4 == 4 and packet[9] == 6


def rtp_id(payload: bytes) -> tuple[int, int]:
    """(payload type, sequence number) of an RTP packet."""
    return (payload[1] & 0x7F, int.from_bytes(payload[2:4], "big")) if len(payload) >= 4 else (-1, -1)


def udp_payload(packet: bytes) -> bytes:
    """The UDP payload of an IPv4 packet (b'' for anything else)."""
    if len(packet) < 28 or packet[0] >> 4 != 4 or packet[9] != 17:
        return b""
    header = (packet[0] & 0x0F) * 4
    return packet[header + 8 :]


class Relay:
    def __init__(self, forward: Impairment, backward: Impairment, forward_dst: str, seed: int = 0, trace: bool = False):
        self.forward_dst = bytes(int(x) for x in forward_dst.split("."))
        self.directions = {
            "forward": Direction(forward, random.Random(seed)),
            "backward": Direction(backward, random.Random(seed + 1)),
        }
        self.first_media: float | None = None
        self.started = time.monotonic()
        # With `trace`: every packet after the first media packet, as [seconds since it, direction, kind, bytes,
        # delay in seconds or None when dropped, RTP payload type, RTP sequence number] (-1: not RTP).
        self.trace: list[list] | None = [] if trace else None

    def fate(self, packet: bytes, now: float) -> tuple[str, float | None]:
        """(direction, delay in seconds) for a packet, or (direction, None) when it is dropped."""
        name = "forward" if packet[16:20] == self.forward_dst else "backward"
        d = self.directions[name]
        c = d.counts
        c["packets"] += 1
        c["bytes"] += len(packet)
        kind = "tcp" if is_tcp(packet) else packet_kind(udp_payload(packet))
        if kind in c:
            c[kind] += 1
        if kind == "rtp" and self.first_media is None:
            self.first_media = now
        since_media = None if self.first_media is None else now - self.first_media
        delay = self._delay(d, kind, len(packet), now)
        d.tally(since_media, kind, len(packet), delay is not None)
        if self.trace is not None and since_media is not None:
            pt, seq = rtp_id(udp_payload(packet)) if kind == "rtp" else (-1, -1)
            self.trace.append([round(since_media, 4), name, kind, len(packet),
                               None if delay is None else round(delay, 4), pt, seq])
        return name, delay

    def _delay(self, d: Direction, kind: str, size: int, now: float) -> float | None:
        """The packet's delay in seconds, or None when it is dropped."""
        imp, c, rng = d.impairment, d.counts, d.rng
        if imp.outage_after_media_s is not None and self.first_media is not None:
            begin = self.first_media + imp.outage_after_media_s
            if begin <= now < begin + imp.outage_s:
                c["lost_outage"] += 1
                return None
        if kind == "dtls" and imp.model_loss and (self.first_media is None or not imp.model_loss_until_media):
            if rng.random() < imp.model_loss:
                c["lost_model"] += 1
                return None
        streaming = self.first_media is not None or not imp.from_media
        if imp.burst_p and streaming:
            d.bad = (rng.random() >= imp.burst_r) if d.bad else (rng.random() < imp.burst_p)
            if d.bad and rng.random() < imp.burst_loss:
                c["lost_burst"] += 1
                return None
        if imp.loss and streaming and rng.random() < imp.loss:
            c["lost_random"] += 1
            return None
        delay = imp.delay_ms / 1000
        if imp.jitter_ms:
            delay = max(0.0, delay + rng.uniform(-imp.jitter_ms, imp.jitter_ms) / 1000)
        if imp.reorder and rng.random() < imp.reorder:
            delay = 0.0
            c["reordered"] += 1
        rate = d.rate_at(None if self.first_media is None else now - self.first_media)
        if rate:
            start = max(now, d.link_free_at)
            if start - now > QUEUE_LIMIT_S:
                c["lost_queue"] += 1
                return None
            d.link_free_at = start + size * 8 / (rate * 1000)
            delay += d.link_free_at - now
        c["delivered"] += 1
        return delay

    def report(self) -> dict:
        return {
            "seconds": round(time.monotonic() - self.started, 2),
            "first_media_s": None if self.first_media is None else round(self.first_media - self.started, 3),
            **{name: {"impairment": asdict(d.impairment), "counts": d.counts,
                      "per_second": [{"t": t, **d.seconds[t]} for t in sorted(d.seconds)]}
               for name, d in self.directions.items()},
        }


def open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


async def run(tun: str, relay: Relay, stats_path: str | None, ready_path: str | None, trace_path: str | None = None) -> None:
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
    if trace_path and relay.trace is not None:
        with open(trace_path, "w") as f:
            json.dump(relay.trace, f)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.impair", description=__doc__.splitlines()[0])
    p.add_argument("--tun", required=True, help="TUN device to attach to (created by the fault lab)")
    p.add_argument("--forward-dst", required=True, help="IPv4 address packets of the forward direction go to (the receiver)")
    p.add_argument("--forward", default="{}", help="JSON Impairment for sender -> receiver")
    p.add_argument("--backward", default="{}", help="JSON Impairment for receiver -> sender")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stats", default=None, help="write packet counts here on exit")
    p.add_argument("--ready", default=None, help="touch this file once attached")
    p.add_argument("--trace", default=None, help="write every packet's fate here on exit (JSON)")
    args = p.parse_args(argv)
    try:
        forward, backward = Impairment(**json.loads(args.forward)), Impairment(**json.loads(args.backward))
    except (TypeError, ValueError) as exc:
        print(f"bench.impair: bad impairment: {exc}", file=sys.stderr)
        return 2
    relay = Relay(forward, backward, args.forward_dst, args.seed, trace=bool(args.trace))
    asyncio.run(run(args.tun, relay, args.stats, args.ready, args.trace))
    return 0


if __name__ == "__main__":
    sys.exit(main())
