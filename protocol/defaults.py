"""The stream's default shape, which both ends assume when nothing else is said.

`vsae send` streams with these unless told otherwise, and `vsae demo` (and the benches) start both
processes with them, so they belong to neither end: spatial factor S, temporal factor T, the video
bitrate target and the video codec (one of `protocol.messages.CODECS`). The sender's own settings
(retries, rate steps, timeouts) stay in sender/session.py.
"""

from __future__ import annotations

DEFAULT_SCALE = 4  # S: frames sent ÷4 in each dimension
DEFAULT_TEMPORAL = 2  # T: every 2nd frame sent
DEFAULT_KBPS = 20.0  # video bitrate target
DEFAULT_CODEC = "vp8"
