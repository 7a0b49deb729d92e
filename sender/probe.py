"""Bandwidth probes: how a sender held low by a narrow spell finds out that the link widened again.

A video sender that sends what its estimate allows learns nothing about capacity above it: the receiver reports
no loss and its REMB follows what it receives (aiortc's is at most 1.5x that), so after a link narrows and widens
again the estimate climbs back one report at a time (the fault lab's 60 -> 15 -> 60 kbps cap: 6 -> 7 kbps in the
8 s at 60). libwebrtc probes instead: a short burst above the estimate, timed at the receiver (TWCC), and a jump
to what got through. aiortc has no TWCC and no RTP padding path, so vsae probes on its own data channel: a
cluster of PROBE_MESSAGES equal padding messages spread evenly over PROBE_S on the unordered, unretransmitted
meta channel, at PROBE_GAIN x the estimate less what the video sends (measured: its target overstates it).

The receiver times their arrival (receiver/probes.py) and answers with how many came and over how long. All of
them, at no less than SUCCESS_SHARE of the rate they were sent at: the link carries the video and the padding
together, and the estimate jumps to SUCCESS_LINK_SHARE of that. Otherwise the probe failed and the next waits twice as
long (BACKOFF_S), so a link that really is narrow is probed rarely: each failed probe queues about
PROBE_S x (PROBE_GAIN - 1) of the estimate. A failed probe still reads the link: everything that arrived in the
cluster's span, the video's packets and every other datagram beside the padding; the estimate goes up to that where
it is higher (FAILED_RAISE).

Probes run only after the slow start (itself a probe), while the estimate is under what the video asks for, once
the estimate has not gone under what is sent (nor a queue shown) for QUIET_S, and while no background flow shares
the link (a model transfer paced in the estimate climbs by itself, sender/pacer.py). While the receiver sends
transport feedback (receiver/feedback.py), it says more: when the link widened (probe at once), when it is full (no
probe), whether a failure was the link's or the cluster's noise (QUIET_FEEDBACK_S and what follows).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable

from protocol import messages as msg

from .bwe import FEEDBACK_HOLD_CLIMB_S, WIDENED_FRESH_S
from .pacer import UDP_IP_BYTES, wire_bytes

log = logging.getLogger("vsae.sender")

# The probe's total rate, a multiple of the estimate (the video's rate plus the padding): the link is found in a
# few doublings, as libwebrtc's 2x-after-2x probes after a drop. Doubling also keeps a probe clear of the link it
# tests: at 1.5x an estimate 20 % under a full link the total was only ~20 % over it, the bottleneck's queue
# absorbed that for the cluster's time, and the probe "passed" at 95 % (the fault lab's 15 kbps cap: the estimate
# went to 16.3 kbps, 27 frames concealed); at 2x the same link lets through about 60 %.
PROBE_GAIN = 2.0
# A cluster spreads over this long: long enough for the receiver's clock (its event loop shares the CPU with the
# rebuild: a few ms of jitter), short enough that a failed probe does not overflow the queue (the fault lab's
# bottleneck queue is 0.3 s; a failed probe over a full link queues about PROBE_S x (PROBE_GAIN - 1) of it).
PROBE_S = 0.2
# Three messages, two gaps to time: at a narrow link's rates each message is mostly headers (136 bytes on the wire
# with no padding at all), and a fourth added a quarter to a failed probe's queue (the lab's 15 kbps cap: 0.29 s of
# its 0.3 s queue with four).
PROBE_MESSAGES = 3
# A probe succeeds when every message came, at no less than this share of the rate they were sent at; the
# estimate then goes to ACCEPT_SHARE of what got through (the video as sent plus the padding as it arrived: a
# probe a little over a full link still passes, and the video must not follow it there).
# At a narrow link's rates a cluster is three packets among two or three of the video's, and its timing is noisy: a
# probe through the lab's 15 kbps cap at 1.7x its rate arrived at 88 % (the estimate followed it over the cap: 38
# concealed), while on wide links the share read 1.0-1.5.
SUCCESS_SHARE = 0.95
ACCEPT_SHARE = 0.9
# ... but a success timed by everything that crossed the link in its span (a receiver that counts every datagram,
# `link_kbps`) read no more than the link carries: the estimate goes to this share of that, libwebrtc's target
# utilization of a probe's receive rate (probe_bitrate_estimator.cc, kTargetUtilizationFraction). At ACCEPT_SHARE a
# success a little under the lab's widened 60 kbps link (its span read 56.1 kbps of 62.6 sent) left the estimate at
# 50.5 kbps, under the 51 that count as climbed back, and the next probe failed with a queue and backed off 15 s
# (stop 36's whole table). Failures keep ACCEPT_SHARE: they built a queue, and the video must leave room to drain it
# (at 0.95, 116 of the 151 failed probes on the 60 kbps link that raised nothing in stop 36's runs would have raised
# the estimate, 113 of them to 56-57.4 kbps).
SUCCESS_LINK_SHARE = 0.95
# A failed probe still times the link: everything that arrived between its first and last message (the receiver
# counts every datagram its connection took in, receiver/probes.py) crossed the bottleneck in that span, which a queue
# kept busy, so it came at the link's rate and no faster. The estimate goes to ACCEPT_SHARE of that (no more than was
# sent) when that is this much above it, as after a success, and the next probe follows soon. Before, a failed probe
# read the video as sent plus the padding as it arrived: the lab's stepped cap's 60 kbps link read 41-81 kbps (median
# 68, over 71 probes), so the estimate either stayed where it was (45-51 kbps, under the 51 that count as climbed back)
# or went over the link and overflowed its queue.
FAILED_RAISE = 1.05
# ... but a failure that offered the link this much more than its span read (the video and the padding, planned) read
# the link full: the link is what it read. Its raise stands, and no follow-up goes soon: the next waits as after a
# failure (a link that widens further shows in the feedback first, BandwidthEstimator.link_widened). Over the lab's
# stepped cap (stop 37's and 38's runs), the 96 raises that offered 1.15x or more read 57.0-60.3 kbps of the 60 kbps
# link; 79 were followed up within 2 s, 64 of those failed (42 with a queue the feedback read), and 15 raised the
# estimate by 0-5.6 kbps. 2.6-2.8 s after such a failed follow-up's answer aiortc's REMB cut the estimate to 43-50
# kbps, under the 51 that count as climbed back, in 5 of the 44 stepped rows run with stop 37's code in stop 38. The
# 65 raises that offered less read 27-60 kbps, and their follow-ups found up to 24 kbps more: they are followed up as
# before.
FULL_READ_OFFER = 1.15
# ... at once where its messages carried at least this much padding each. Messages of hardly more than headers (a
# narrow link's probe) raise only once the transport feedback read no queue from the video's packets sent beside them
# (CONFIRM_S): over a narrow link a probe at twice the estimate builds one, and the span's reading there is only as
# good as the relay's and the receiver's timing (a cluster with a message lost read the lab's 15 kbps link at 24 kbps).
# Without that, such a failure raised nothing, and the stepped cap's first probe on the widened link, whose padding
# arrived at 83-94 % of its rate with no queue behind it while its span read 27-47 kbps (1.7-2.6x the estimate), left
# the climb back 4-5 s long (8 of 70 stepped rows with the stop-35 code, over stop 35's runs and stop 36's).
RAISE_MIN_PAYLOAD = 200
# Probing waits this long after the estimate last went down (a believed REMB too: under the lab's 15 kbps cap they
# come every second or three, and a probe right after the slow start's end met a full queue: 1 of 5 arrived), and
# this long after the last probe: after a success
# (the next probe goes higher at once), after a failure (doubling each time, up to the last: a narrow link is
# probed every BACKOFF_S[1] at most, a widened one found within that).
QUIET_S = 3.0
AFTER_SUCCESS_S = 0.25
# A failed probe costs the video a tenth of a second of queue; a narrow spell is probed every 6 s at most, so a
# link that widens again is found within that (with 12 s the fault lab's stepped cap sent its first probe 3.2-4.6 s
# after the step up).
BACKOFF_S = (3.0, 6.0)
# While the receiver sends transport feedback, a link that widened a lot shows in it before any probe
# (BandwidthEstimator.link_widened: a probe then goes at once), a little by the estimate's slow climb through clean
# reports. So once the link has shown itself full (a cut for a standing queue or for a queue's loss, or a queue
# standing at the link's rate: BandwidthEstimator.full_at), probing blind waits QUIET_FEEDBACK_S after that, nor does a
# success's follow-up go into it, and a failure the feedback confirms backs off BACKOFF_FEEDBACK_S. A blind
# probe over a narrow link overflows its queue: over the lab's stepped cap each failed probe in the 8 s at 15 kbps
# dropped a packet (the step down then never settled by the lab's measure) and found nothing the feedback did not
# find when the link widened; over its 15 kbps cap one at 12 s dropped 10 packets, 27 frames concealed. A link that
# has shown nothing (the slow start ended on a REMB, as aiortc's often reads a keyframe) is probed after QUIET_S where
# the feedback reads room for it (BandwidthEstimator.reads_room): with no blind probe there, the lab's delay row
# stayed at 10.6-12.4 of its 20 kbps for the whole call.
QUIET_FEEDBACK_S = 15.0
BACKOFF_FEEDBACK_S = (15.0, 30.0)
# ... but only for a failure the feedback confirms: a reading of a queue (FEEDBACK_HOLD_QUEUE_S, or a full link's,
# BandwidthEstimator.full_at) within CONFIRM_S of the answer, from the video's packets that crossed the link beside the
# padding, or their queue risen over the one before the probe (PROBE_RISE_S: at 60 kbps a probe over the link reads
# 100-140 ms against 20-60 ms before, short of the hold's level over the packets' own time). Without one the
# cluster's timing was noise (three messages: one read 52 % of its rate on a link that had just widened to 60 kbps,
# and the video stayed at 17-23 kbps for the 8 s after it), and the next probe goes UNCONFIRMED_RETRY_S later.
CONFIRM_S = 0.3
UNCONFIRMED_RETRY_S = 1.0
# ... at most this many times in a row: then the backoff as for any failure (a cluster that keeps failing without a
# queue in sight is not noise).
UNCONFIRMED_RETRIES = 2
# The receiver's answer comes within an RTT of the cluster's end; past this it counts as a failure.
RESULT_TIMEOUT_S = 2.0
# Probe only while the estimate is under this share of the video's request (its wire cost): near it there is
# nothing to find out.
WANTED_SHARE = 0.95


@dataclass
class ProbeOutcome:
    at: float
    planned_kbps: float  # the probe's total rate (video + padding, wire)
    padding_kbps: float
    measured_kbps: float | None  # the padding's rate at the receiver
    received: int
    ok: bool
    raised: bool = False  # failed, but what got through was well above the estimate (FAILED_RAISE)
    confirmed: bool | None = None  # failed, and the transport feedback showed the queue it built (None: no feedback)
    sent_ms: float | None = None  # the cluster's span as sent (the sender's loop may sleep past a gap)
    through_kbps: float | None = None  # what got through, as the estimate would take it (its share of it)
    link_kbps: float | None = None  # everything that arrived in the cluster's span, padding and the rest (on the wire)
    read_full: bool = False  # raised, by a span that read the link full (FULL_READ_OFFER): no follow-up soon


@dataclass
class Prober:
    """Decides when to probe and what a probe's answer means. `link` is the sender's side of it (the track):
    `estimator`, `sent_kbps()` (measured), `request_wire_kbps()`, `background` and `on_probe_success(kbps)`. `send(data)`
    puts a message on the meta channel; `clock` and `sleep` are injectable for tests."""

    link: object
    send: Callable[[bytes], None]
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], object] = asyncio.sleep
    cluster: int = 0
    last_probe_at: float = -math.inf
    wait_s: float = AFTER_SUCCESS_S
    failures_in_a_row: int = 0
    unconfirmed_in_a_row: int = 0
    outcomes: list[ProbeOutcome] = field(default_factory=list)
    _answer: asyncio.Future | None = None

    def due(self, now: float) -> bool:
        link = self.link
        bwe = link.estimator
        estimate = bwe.estimate(now)
        # With transport feedback: a link the feedback says widened (since the last probe) is probed at once, and a
        # success is followed up at once (its jump is news newer than the last decrease and the link's last showing
        # itself full); a blind probe waits QUIET_FEEDBACK_S after the link showed itself full, and elsewhere goes
        # only where the feedback reads room.
        # Under a narrow link the stepped cap's widening showed for 0.3-0.6 s, and QUIET_S after a REMB's trim a second
        # before had let it pass unprobed (the first probe came 6 s later).
        widened = bwe.feedbacks and now - bwe.widened_at <= WIDENED_FRESH_S and bwe.widened_at > self.last_probe_at
        followed_up = (bwe.feedbacks and self.failures_in_a_row == 0 and self.last_probe_at > bwe.quiet_since()
                       and self.last_probe_at > bwe.full_at())
        if widened or followed_up:
            may_probe = True
        elif bwe.feedbacks:  # blind: not right after the link showed itself full, and only where it reads faster
            may_probe = (now - bwe.full_at() >= QUIET_FEEDBACK_S and now - bwe.quiet_since() >= QUIET_S
                         and bwe.reads_room(now))
        else:
            may_probe = now - bwe.quiet_since() >= QUIET_S
        return (link.background is None
                and not bwe.starting  # the slow start is a probe of its own
                and estimate < WANTED_SHARE * link.request_wire_kbps()
                and may_probe
                and now - bwe.feedback_full_at >= FEEDBACK_HOLD_CLIMB_S  # no standing queue in the feedback
                and now - self.last_probe_at >= (AFTER_SUCCESS_S if widened else self.wait_s))

    def plan(self, now: float) -> tuple[float, float, int, float]:
        """(total kbps, padding kbps, padding bytes per message, seconds between messages) of the next probe: the
        padding over PROBE_S in PROBE_MESSAGES - 1 gaps (the first message starts the receiver's clock), the gaps
        longer where even an empty message is more than the padding rate allows."""
        estimate = self.link.estimator.estimate(now)
        total = min(PROBE_GAIN * estimate, self.link.request_wire_kbps() * 1.1)
        padding = max(1.0, total - self.link.sent_kbps())
        gap = PROBE_S / (PROBE_MESSAGES - 1)
        empty = wire_bytes(len(self._message(0, b"")))
        payload = int(min(msg.MAX_PROBE_BYTES, max(0.0, padding * 125 * gap - empty)))
        gap = max(gap, (empty + payload) * 8 / 1000 / padding)
        return total, padding, payload, gap

    def _message(self, seq: int, data: bytes) -> bytes:
        return msg.encode(msg.Probe(cluster=self.cluster, seq=seq, count=PROBE_MESSAGES, data=data))

    async def probe(self) -> ProbeOutcome:
        """Send one cluster and wait for its answer; the estimate jumps on a success."""
        now = started = self.clock()
        self.cluster += 1
        total, padding, payload, gap = self.plan(now)
        self._answer = asyncio.get_running_loop().create_future()
        message_wire = 0
        first_sent = last_sent = started
        for seq in range(PROBE_MESSAGES):
            data = self._message(seq, bytes(payload))
            message_wire = wire_bytes(len(data))
            last_sent = self.clock()
            if seq == 0:
                first_sent = last_sent
            self.send(data)
            if seq < PROBE_MESSAGES - 1:
                await self.sleep(gap)
        self.link.estimator.on_probe_sent(self.clock())
        try:
            result = await asyncio.wait_for(asyncio.shield(self._answer), RESULT_TIMEOUT_S)
        except asyncio.TimeoutError:
            result = None
        self._answer = None
        # The rate the messages went out at: their gaps as slept, which can run past the plan on a busy machine (a
        # cluster that left slow arrives slow however wide the link). In the fault lab on the 2-core machine: a median
        # of 200.9 ms for 200 planned, at most 210.6, over 93 probes (`sent_ms`).
        sent_span = last_sent - first_sent
        sent_kbps = message_wire * 8 / 1000 * ((PROBE_MESSAGES - 1) / sent_span if sent_span > 0 else 1 / gap)
        measured = None
        if result is not None and result.received > 1 and result.span_us > 0:
            measured = message_wire * 8 / 1000 * (result.received - 1) / (result.span_us / 1e6)
        whole = result is not None and result.received == PROBE_MESSAGES and measured is not None
        ok = whole and measured >= SUCCESS_SHARE * sent_kbps
        link_read = self._link_read(result)
        # What got through: everything that arrived in the cluster's span (FAILED_RAISE), no more than the video as sent
        # and the padding; ACCEPT_SHARE of it (SUCCESS_LINK_SHARE after a success). The video as sent and the padding
        # as it arrived alone read a success over a full link past it: the lab's stepped cap, 65-71 kbps of the 60 kbps
        # link where the span read 59.5-59.6 (the padding came at full rate while the queue took the video's frames).
        # A receiver that counts only the padding (`counted` unset): the video as sent and the padding as it arrived, and
        # a failure raises nothing.
        got_through = None
        if whole:
            video = self.link.sent_kbps()
            got_through = (ACCEPT_SHARE * (video + min(measured, sent_kbps)) if link_read is None
                           else (SUCCESS_LINK_SHARE if ok else ACCEPT_SHARE) * min(link_read, video + sent_kbps))
        wider = (not ok and got_through is not None and link_read is not None
                 and got_through >= FAILED_RAISE * self.link.estimator.estimate(now))
        raised = wider and payload >= RAISE_MIN_PAYLOAD
        confirmed = None
        if not (ok or raised) and self.link.estimator.feedbacks:
            await self.sleep(CONFIRM_S)  # the feedback on the video's packets sent beside the padding
            bwe = self.link.estimator
            confirmed = max(bwe.feedback_full_at, bwe.full_at()) >= started or bwe.queue_rose(started)
            raised = wider and not confirmed  # small messages: the link took them with no queue
        read_full = raised and link_read is not None and total >= FULL_READ_OFFER * link_read
        now = self.clock()
        outcome = ProbeOutcome(round(now, 3), round(total, 2), round(sent_kbps, 2),
                               None if measured is None else round(measured, 2), 0 if result is None else result.received, ok,
                               raised, confirmed, round(sent_span * 1000, 1),
                               None if got_through is None else round(got_through, 2),
                               None if link_read is None else round(link_read, 2), read_full)
        self.outcomes.append(outcome)
        if ok or raised:
            self.failures_in_a_row = self.unconfirmed_in_a_row = 0
            backoff = BACKOFF_FEEDBACK_S if self.link.estimator.feedbacks else BACKOFF_S
            self.wait_s = backoff[0] if read_full else AFTER_SUCCESS_S
            self.last_probe_at = now
            self.link.on_probe_success(got_through)
        else:
            bwe = self.link.estimator
            if bwe.quiet_since() > self.last_probe_at or bwe.widened_at > self.last_probe_at:
                # The last probe was of the link before its latest narrowing or widening: news of none. A probe the
                # widening sent that fails unconfirmed is then retried soon (UNCONFIRMED_RETRY_S): with the step down's
                # failure still counted, the lab's stepped cap with shapes sent no probe for the 6 s after its first one
                # on the widened link arrived at 93 % of its rate (the estimate at 14-20 kbps of the 60).
                self.failures_in_a_row = 0
            self.failures_in_a_row += 1
            backoff = BACKOFF_FEEDBACK_S if confirmed else BACKOFF_S
            self.wait_s = min(backoff[1], backoff[0] * 2 ** (self.failures_in_a_row - 1))
            self.unconfirmed_in_a_row = self.unconfirmed_in_a_row + 1 if confirmed is False else 0
            if confirmed is False and self.unconfirmed_in_a_row <= UNCONFIRMED_RETRIES:
                self.failures_in_a_row -= 1  # not a failure the link showed
                self.wait_s = UNCONFIRMED_RETRY_S
            self.last_probe_at = now
        return outcome

    @staticmethod
    def _link_read(result: msg.ProbeResult | None) -> float | None:
        """kbps on the wire of everything that arrived after the cluster's first message and up to its last (None: fewer
        than two came, or a receiver that counts only the padding)."""
        if result is None or not result.counted or result.received < 2 or result.span_us <= 0:
            return None
        return (result.datagram_bytes + result.datagrams * UDP_IP_BYTES) * 8 / 1000 / (result.span_us / 1e6)

    def on_result(self, result: msg.ProbeResult) -> None:
        """The receiver's answer (control channel)."""
        if self._answer is not None and not self._answer.done() and result.cluster == self.cluster:
            self._answer.set_result(result)

    async def run(self, every_s: float = 0.25) -> None:
        """Probe whenever one is due, until cancelled."""
        while True:
            await self.sleep(every_s)
            if self.due(self.clock()):
                outcome = await self.probe()
                log.info("vsae send: probe to %.1f kbps: %s (padding %.1f kbps sent, %s at the receiver)",
                         outcome.planned_kbps, "ok" if outcome.ok else "failed", outcome.padding_kbps, outcome.measured_kbps)

    def summary(self, origin: float = 0.0) -> dict:
        """The probes made, each timed from `origin` (the sender's first frame, as its rate log)."""
        return {"probes": len(self.outcomes), "succeeded": sum(o.ok for o in self.outcomes),
                "outcomes": [{**vars(o), "at": round(o.at - origin, 2)} for o in self.outcomes[:200]]}
