"""The live view's bitrate: aiortc's VP8 encoder, raised from its 0.5 Mbps default for a local browser.

The view sends the rebuilt and the bicubic picture to a browser on loopback or the LAN, where bandwidth is
plentiful and a second lossy coding step would blur what the viewer is meant to judge. aiortc has no public
setting for its encoder's bitrate: the Vp8Encoder reads the module-level `DEFAULT_BITRATE` when it is made and
clamps the browser's REMB estimate to `MAX_BITRATE`. `raise_bitrate` sets both, and fails loudly (instead of
silently sending at the default) if a future aiortc renames them.
"""

from __future__ import annotations

import aiortc.codecs.vpx as vpx

# Start at, and allow up to, this many bits per second per track (two tracks: rebuilt and bicubic).
VIEW_BITRATE = 4_000_000
_NAMES = ("DEFAULT_BITRATE", "MAX_BITRATE", "Vp8Encoder")


def raise_bitrate(bitrate: int = VIEW_BITRATE) -> None:
    missing = [name for name in _NAMES if not hasattr(vpx, name)]
    if missing:
        raise RuntimeError(f"aiortc.codecs.vpx has no {', '.join(missing)}: this aiortc changed its VP8 encoder; "
                           "update receiver/viewrate.py")
    vpx.MAX_BITRATE = max(vpx.MAX_BITRATE, bitrate)
    vpx.DEFAULT_BITRATE = bitrate
