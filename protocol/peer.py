"""WebRTC plumbing both peers share: a loopback-only peer connection, codec choice, data-channel sends.

Everything a vsae process sends stays on the address the user gives (127.0.0.1 by default): no STUN
server (`iceServers=[]`, aiortc's default would contact a public one) and host candidates on that
one address only.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
from typing import Sequence

import aioice.ice
from aiortc import RTCConfiguration, RTCDataChannel, RTCPeerConnection, RTCRtpSender, RTCRtpTransceiver

from .messages import Message, encode

DEFAULT_HOST = "127.0.0.1"
# Data-channel flow control: stop queueing above HIGH bytes buffered, resume when it drains to LOW.
BUFFER_HIGH = 256 * 1024
BUFFER_LOW = 64 * 1024
CODEC_MIME = {"vp8": "video/VP8", "h264": "video/H264"}


def codec_list(text: str) -> tuple[str, ...]:
    """An argparse type: codecs by name, comma-separated (`h264`, `vp8,h264`)."""
    names = tuple(name.strip().lower() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in CODEC_MIME]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"expected codecs from {', '.join(CODEC_MIME)}, comma-separated, got {text!r}")
    return names


def parse_address(text: str, default_host: str = DEFAULT_HOST) -> tuple[str, int]:
    """'HOST:PORT' or ':PORT' or 'PORT' -> (host, port); the host must be an IP literal."""
    host, _, port = text.rpartition(":")
    host = host.strip("[]") or default_host
    try:
        ipaddress.ip_address(host)
        number = int(port)
    except ValueError:
        raise ValueError(f"expected HOST:PORT with an IP address, e.g. 127.0.0.1:8765, got {text!r}") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"port {number} out of range")
    return host, number


def restrict_host_candidates(host: str = DEFAULT_HOST) -> None:
    """Gather ICE host candidates on `host` only.

    aioice enumerates every interface and leaves 127.0.0.1 out; its only hook is the module-level
    `get_host_addresses`, which it looks up at gather time. This process then talks on `host` alone.
    """
    ipaddress.ip_address(host)  # raises ValueError for anything but an IP literal
    aioice.ice.get_host_addresses = lambda use_ipv4=True, use_ipv6=True: [host]


def new_peer_connection(host: str = DEFAULT_HOST) -> RTCPeerConnection:
    restrict_host_candidates(host)
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


def prefer_codec(transceiver: RTCRtpTransceiver, codec: str | Sequence[str]) -> None:
    """Offer only `codec` (plus its retransmission format) on a video transceiver; several: in that order, the
    first the one the stream starts with (a sender that switches codec mid-call, sender/payload.py)."""
    capabilities = RTCRtpSender.getCapabilities("video").codecs
    names = (codec,) if isinstance(codec, str) else tuple(codec)
    chosen = [c for name in names for c in capabilities if c.mimeType == CODEC_MIME[name]]
    transceiver.setCodecPreferences(chosen + [c for c in capabilities if c.mimeType == "video/rtx"])


def install_event_loop() -> str:
    """Use uvloop: aiortc runs on it here with ICE reaching `completed` (checked by the loopback tests)."""
    try:
        import uvloop
    except ImportError:  # not installed on this platform (e.g. Windows): the stock loop works too
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


async def send_message(channel: RTCDataChannel, message: Message) -> int:
    """Send one message, waiting while the channel's buffer is above BUFFER_HIGH; returns its size."""
    data = encode(message)
    if channel.bufferedAmount > BUFFER_HIGH:
        drained = asyncio.Event()
        channel.bufferedAmountLowThreshold = BUFFER_LOW
        channel.once("bufferedamountlow", drained.set)
        while channel.bufferedAmount > BUFFER_HIGH and channel.readyState == "open":
            try:
                await asyncio.wait_for(drained.wait(), 1.0)
            except asyncio.TimeoutError:  # re-check: the event may have fired before we listened
                pass
    if channel.readyState != "open":
        raise ConnectionError(f"data channel {channel.label!r} is {channel.readyState}")
    channel.send(data)
    return len(data)
