"""receiver: `vsae recv` and `vsae demo`: take the model and the low-res stream, rebuild hi-res full-rate video.

session.py (one session at a time: verification, resumable model transfer, stats), jitter.py (the video
jitter buffer), feedback.py (transport feedback for the sender's estimate), probes.py (bandwidth probes' timing),
transport.py (the datagrams the connection took in, for the probes), worker.py (the reconstruction thread),
sampler.py (RSS / fps samples), cli.py (`vsae recv`), demo.py (`vsae demo`: sender and receiver as two processes on
loopback, side-by-side video), spawn.py (the argv that starts a `vsae` child process). Imports codec and protocol,
never sender.
"""
