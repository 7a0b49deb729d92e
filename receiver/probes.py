"""The receiver's side of bandwidth probing (Config.probes): time each probe cluster's padding as it arrives on the
meta channel and say how much came and over how long (a `probe_result` on the control channel). The sender
(sender/probe.py) turns that into the rate the link carried.

Between a cluster's first and last message the rest of the call crosses the link too: the video's RTP packets
(`on_rtp`) and the data channels' other messages (`on_data`). The answer counts those that arrived after the first
message and up to the last: through a full bottleneck every byte of that span went at the link's rate, so the whole
of it is the link's rate, where the padding alone is only the share the video left it.

A cluster is answered once: when all its messages are in, or CLUSTER_WAIT_S after its first one arrived (the rest
were lost: the meta channel never retransmits). At most MAX_OPEN_CLUSTERS are timed at once; older ones are
answered as they stand when a newer one needs the room (a flood of cluster ids holds no memory).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from protocol import messages as msg
from protocol.feedback import RTP_HEADER

# How long after a cluster's first message the receiver answers for it even if some never came: the sender
# spreads a cluster over less than half a second, and the lab's bottleneck queue adds at most 0.3 s.
CLUSTER_WAIT_S = 1.0
MAX_OPEN_CLUSTERS = 4


@dataclass
class _Others:
    """What else arrived: RTP packets (bytes: payload and RTP fixed header) and data-channel messages."""

    rtp_packets: int = 0
    rtp_bytes: int = 0
    data_messages: int = 0
    data_bytes: int = 0


@dataclass
class _Cluster:
    count: int
    first_at: float
    last_at: float
    received: int = 1
    seqs: frozenset = frozenset()
    since_first: _Others = field(default_factory=_Others)  # everything else since the first message
    up_to_last: _Others = field(default_factory=_Others)  # ... as it stood when the latest message arrived


class ProbeTimer:
    """Arrival times of probe clusters; `on_probe` and `expire` return the answers that are due."""

    def __init__(self) -> None:
        self.open: dict[int, _Cluster] = {}
        self.answered: set[int] = set()  # bounded below: only recent ids are kept
        self.results = 0

    def on_probe(self, probe: msg.Probe, now: float) -> list[msg.ProbeResult]:
        if probe.cluster in self.answered:
            return []  # a straggler of a cluster already answered for
        cluster = self.open.get(probe.cluster)
        due: list[msg.ProbeResult] = []
        if cluster is None:
            if len(self.open) >= MAX_OPEN_CLUSTERS:
                oldest = min(self.open, key=lambda k: self.open[k].first_at)
                due.append(self._answer(oldest))
            self.open[probe.cluster] = _Cluster(probe.count, now, now, 1, frozenset({probe.seq}))
        elif probe.seq not in cluster.seqs:
            cluster.received += 1
            cluster.last_at = now
            cluster.seqs = cluster.seqs | {probe.seq}
            cluster.up_to_last = _Others(**vars(cluster.since_first))
        cluster = self.open[probe.cluster]
        if cluster.received >= cluster.count:
            due.append(self._answer(probe.cluster))
        return due

    def on_rtp(self, payload_bytes: int) -> None:
        """An RTP packet of the video arrived (counted for the clusters open now)."""
        for cluster in self.open.values():
            cluster.since_first.rtp_packets += 1
            cluster.since_first.rtp_bytes += payload_bytes + RTP_HEADER

    def on_data(self, message_bytes: int) -> None:
        """A data-channel message other than a probe's arrived."""
        for cluster in self.open.values():
            cluster.since_first.data_messages += 1
            cluster.since_first.data_bytes += message_bytes

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
        others = cluster.up_to_last
        return msg.ProbeResult(cluster=key, received=min(cluster.received, msg.MAX_PROBE_MESSAGES), span_us=min(span, 60_000_000),
                               counted=True,
                               rtp_packets=min(others.rtp_packets, msg.MAX_PROBE_ARRIVALS),
                               rtp_bytes=min(others.rtp_bytes, msg.MAX_PROBE_ARRIVAL_BYTES),
                               data_messages=min(others.data_messages, msg.MAX_PROBE_ARRIVALS),
                               data_bytes=min(others.data_bytes, msg.MAX_PROBE_ARRIVAL_BYTES))
