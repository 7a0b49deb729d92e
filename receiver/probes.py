"""The receiver's side of bandwidth probing (Config.probes): time each probe cluster's padding as it arrives on the
meta channel and say how much came and over how long (a `probe_result` on the control channel). The sender
(sender/probe.py) turns that into the rate the link carried.

Between a cluster's first and last message the rest of the call crosses the link too. The answer also counts every
datagram the connection received after the first message and up to the last, the later messages' own included
(`datagrams`, receiver/transport.py): through a full bottleneck all of that span's bytes went at the link's rate, so
together they read the link's rate, where the padding alone is only the share the video left it.

A cluster is answered once: when all its messages are in, or CLUSTER_WAIT_S after its first one arrived (the rest
were lost: the meta channel never retransmits). At most MAX_OPEN_CLUSTERS are timed at once; older ones are
answered as they stand when a newer one needs the room (a flood of cluster ids holds no memory).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from protocol import messages as msg

# How long after a cluster's first message the receiver answers for it even if some never came: the sender
# spreads a cluster over less than half a second, and the lab's bottleneck queue adds at most 0.3 s.
CLUSTER_WAIT_S = 1.0
MAX_OPEN_CLUSTERS = 4


@dataclass
class _Cluster:
    count: int
    first_at: float
    last_at: float
    received: int = 1
    seqs: frozenset = frozenset()
    first_count: tuple[int, int] | None = None  # (datagrams, bytes) received up to the first message, itself included
    last_count: tuple[int, int] | None = None  # ... up to the latest


class ProbeTimer:
    """Arrival times of probe clusters; `on_probe` and `expire` return the answers that are due. `datagrams()`: the
    (datagrams, bytes) the connection received so far (receiver/transport.py; None: the answers count nothing else)."""

    def __init__(self, datagrams: Callable[[], tuple[int, int]] | None = None) -> None:
        self.datagrams = datagrams
        self.open: dict[int, _Cluster] = {}
        self.answered: set[int] = set()  # bounded below: only recent ids are kept
        self.results = 0

    def on_probe(self, probe: msg.Probe, now: float) -> list[msg.ProbeResult]:
        if probe.cluster in self.answered:
            return []  # a straggler of a cluster already answered for
        cluster = self.open.get(probe.cluster)
        due: list[msg.ProbeResult] = []
        count = self.datagrams() if self.datagrams is not None else None
        if cluster is None:
            if len(self.open) >= MAX_OPEN_CLUSTERS:
                oldest = min(self.open, key=lambda k: self.open[k].first_at)
                due.append(self._answer(oldest))
            self.open[probe.cluster] = _Cluster(probe.count, now, now, 1, frozenset({probe.seq}), count, count)
        elif probe.seq not in cluster.seqs:
            cluster.received += 1
            cluster.last_at = now
            cluster.seqs = cluster.seqs | {probe.seq}
            cluster.last_count = count
        cluster = self.open[probe.cluster]
        if cluster.received >= cluster.count:
            due.append(self._answer(probe.cluster))
        return due

    def expire(self, now: float) -> list[msg.ProbeResult]:
        """The clusters whose wait is over, answered as they stand."""
        return [self._answer(k) for k in [k for k, c in self.open.items() if now - c.first_at >= CLUSTER_WAIT_S]]

    def _answer(self, key: int) -> msg.ProbeResult:
        cluster = self.open.pop(key)
        self.answered.add(key)
        if len(self.answered) > 64:
            self.answered = {k for k in self.answered if k > key - 32}
        self.results += 1
        span = round((cluster.last_at - cluster.first_at) * 1e6) if cluster.received > 1 else 0
        counted = cluster.first_count is not None and cluster.last_count is not None
        packets, size = ((cluster.last_count[0] - cluster.first_count[0], cluster.last_count[1] - cluster.first_count[1])
                         if counted else (0, 0))
        return msg.ProbeResult(cluster=key, received=min(cluster.received, msg.MAX_PROBE_MESSAGES), span_us=min(span, 60_000_000),
                               counted=counted, datagrams=max(0, min(packets, msg.MAX_PROBE_ARRIVALS)),
                               datagram_bytes=max(0, min(size, msg.MAX_PROBE_ARRIVAL_BYTES)))
