"""protocol: what sender and receiver agree on: the wire messages, frame timing, defaults, auth and WebRTC plumbing.

messages.py (the versioned msgpack message set, validated on the way in), timing.py (frame identity
from RTP timestamps), defaults.py (the stream's default scale, temporal factor, bitrate and codec),
auth.py (the optional shared secret), peer.py (loopback-only peer connections, codec choice,
data-channel sends), signaling.py (HTTP offer/answer). Imports only codec; sender and receiver import
this, never each other.
"""
