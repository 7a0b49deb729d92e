"""sender: `vsae send`: ship the model to one or more receivers, then stream the low-res, every-T-th-frame video.

encoder.py (VP8/H.264, and VP9/AV1 for the benches, at any bitrate through PyAV), session.py (one
session: handshake, model transfer and retries, the paced video track, keyframes on request, rate
steps), shapes.py and payload.py (the stream's shape and codec following the estimate), cli.py (the command, one
or several receivers). Imports codec and protocol, never receiver.
"""
