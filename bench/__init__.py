"""bench: `vsae bench rd|speed|faults|load|soak` and the scripts behind the README's measurements.

rd.py with bdrate.py and codecs.py (rate-quality against VP8/x264/VP9/AV1), speed.py (throughput and
stage times), stream.py (repeated two-process streams), model_sweep.py, faults.py with impair.py (the
network fault lab), soak.py (long runs), load.py (several receivers), cli.py (the `vsae bench` plug-in).
The top layer: may import codec, protocol, sender and receiver; no other package imports bench (the
`vsae` command line loads cli.py as an entry-point plug-in).
"""
