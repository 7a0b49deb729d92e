"""The sender's bandwidth estimate, in the style of Google Congestion Control (draft-ietf-rmcat-gcc-02).

Rates are of the link (wire kbps: what the video's packets, headers and all, and the data channels put on
it; sender/session.py converts). Two controllers; the lower one is the estimate, clamped to the call's range:

- **Loss-based** (the draft's section 6), on the receiver reports' loss pooled over LOSS_MIN_PACKETS:
  p > LOSS_HIGH: A <- A * (1 - 0.5 p), or down to what got through when p > QUEUE_LOSS, when a delay signal
  says the loss is a queue's (else only above SEVERE_LOSS); p < LOSS_LOW: A climbs, FAST_INCREASE below the
  last congestion point (the slow start before any), LOSS_INCREASE from near it on; moderate loss without a
  delay signal (a lossy link) climbs too, up to near that point. Severe loss seen in first NACKs (NackLoss)
  cuts before the next report; a keyframe-request storm counts as heavy loss while packets are being lost.
- **Delay-based**: the receiver's REMB (aiortc's receiver runs the draft's arrival-time filter, overuse
  detector and AIMD over abs-send-time, and reports the result): a lower one is believed only while packets
  are being lost, and any one bounds a climb and ends the slow start when under what is sent. And the RTT
  trend of the receiver reports: an RTT well above the lowest seen means a queue is building at the
  bottleneck before anything is lost, so the delay estimate backs off to DELAY_BACKOFF of what is sent.
- **Transport feedback** (receiver/feedback.py, when the receiver sends it): every ~0.2 s the queue the video's
  packets waited in and the rate they arrived at. A standing queue (FEEDBACK_QUEUE_S) cuts to under the rate the
  link delivered, deep enough to drain it, seconds before a receiver report would show the loss; a small one
  holds the climb, so the estimate does not creep past a link it already fills, and one that stands trims the
  estimate to just under the rate the link delivers (FULL_SHARE) and tells the probes the link is full.
- **Probes** (sender/probe.py): a probe that got through lifts the estimate at once; the lift is on trial for
  PROBE_TRIAL_S (a first NACK takes it back), and a lower REMB within PROBE_ECHO_S of a probe, or climbing back after
  it, is its echo.

Pure logic, no network and no aiortc: sender/rtcp.py feeds it what the RTCP says, tests feed it synthetic
report sequences. Times are seconds of a monotonic clock.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from statistics import median

# The draft's loss thresholds and increase factor (section 6).
LOSS_HIGH = 0.10
LOSS_LOW = 0.02
LOSS_INCREASE = 1.05
# Fast increase. Each congestion signal (loss cut, queue, storm, a lower REMB believed) notes the rate it came
# at: the link's capacity, as far as anyone knows. A clean report raises the loss-based estimate by
# FAST_INCREASE (and it may run that far ahead of what is sent) while the estimate is well away from that
# capacity, and by LOSS_INCREASE close to it (within CAPACITY_NEAR), as GCC increases multiplicatively far from
# its link-capacity estimate and slowly near it. Before any signal this is the slow start (sender/session.py
# starts the video below its request): three clean reports take it from half the request to all of it; after
# a narrow spell it is how the estimate climbs back when the link widens again. Below the capacity the fast
# climb stops at its lower edge.
FAST_INCREASE = 1.3
CAPACITY_NEAR = (0.9, 1.1)
# How far the loss-based estimate may run ahead of what the sender sends: enough for a move the sender makes
# (it retargets only on changes above 10 %, sender/session.py), not more.
PROBE_AHEAD = 1.25
# Loss is judged over at least this many packets. At 7.5 packets a second a receiver report covers about
# eight, and one random loss among them reads as 12 % (the fault lab's 2 % random-loss row showed reports of
# 14-16 %, each a cut, and its 10 % row cut to the floor). Reports since the last cut are pooled, the oldest
# dropped while the rest still cover this many; a report that gives no packet count is judged alone. A cut
# also needs a delay signal behind the loss (see `on_report`) unless the loss is above SEVERE_LOSS: random
# loss of 5-10 % still reads 20 % or more over 20 packets now and then.
LOSS_MIN_PACKETS = 20
SEVERE_LOSS = 0.35
# Reported loss above this is taken for a queue overflowing at a bottleneck rather than random loss (the
# fault lab's random-loss rows report up to ~12 %, its 15 kbps cap 30-66 %).
QUEUE_LOSS = 0.20
# What a full queue lets through is the link's rate: a receiver report says how many packets arrived since the last
# one (sender/rtcp.py sizes them from the packets sent), and while its loss is heavy the bottleneck was overflowing the
# whole time, so that rate is the link's, whatever was sent. A loss cut goes at least to this share of it (the draft's
# beta on the incoming rate: under the link, so the queue drains), and notes it as the capacity. Cutting
# to a share of what was sent left the lab's 60 -> 15 kbps step at 28 kbps after the first cut, and the drops went on
# 1.6 s until the next. Inside the hold after a cut (DECREASE_HOLD_S) a report whose own loss is still heavy, over at
# least DELIVERED_MIN_PACKETS, moves the estimate to it too: a measurement, not one more multiplicative step.
DELIVERED_SHARE = 0.85
DELIVERED_MIN_PACKETS = 5
# A storm of keyframe requests: the receiver gave up on packets that NACK did not bring back, a sign as strong
# as 30 % reported loss (the multiplier is then 1 - 0.5 * 0.3 = 0.85) when loss or a queue was seen within
# REMB_EVIDENCE_S; alone it is random loss hitting a keyframe (the fault lab's 5 % loss row: a storm in the
# first second, then a whole call held near the floor).
STORM_LOSS = 0.3
# After a loss-based cut, further loss cuts wait this long: the next receiver report (~1 s in aiortc) still
# counts losses from before the cut took effect (and the new encoder's keyframe), so cutting again at once
# cascades (measured in the fault lab's 15 kbps cap: 20 -> 5 kbps in 3 s, a keyframe at each step). libwebrtc
# waits 300 ms plus an RTT between decreases for the same reason; its reports come every 100 ms or so.
DECREASE_HOLD_S = 1.5
# The RTT signal: a queue this much longer than the shortest RTT seen (the fault lab's 15 kbps cap holds up to
# 0.3 s; a clean loopback RTT is ~1 ms, the lab's 100 +- 30 ms delay scenario moves it by at most 60 ms).
RTT_QUEUE_S = 0.2
# Back off to this share of the current target when the RTT says a queue is building (the draft's beta).
DELAY_BACKOFF = 0.85
# After a delay back-off, wait this long before the next one: the previous cut needs about an RTT plus a
# report interval (~1 s in aiortc) to show in the RTT.
DELAY_HOLD_S = 1.5
# RTT samples are smoothed (the reports come ~1 s apart; one late report is not a queue).
RTT_ALPHA = 0.5
# The lowest RTT forgets itself slowly (a route change): it may rise by this much per second.
BASE_RTT_DRIFT = 0.002
# The estimate's history keeps at most this many changes (a long call reports every second).
MAX_HISTORY = 2000
# REMB older than this no longer caps the estimate (the receiver stopped sending it).
REMB_STALE_S = 5.0
# A REMB below the estimate is believed only while packets are being lost: a receiver report with loss of
# at least LOSS_LOW, a first NACK, or an RTT at least REMB_QUEUE_S above its low, at most REMB_EVIDENCE_S
# ago. aiortc's receiver reads each keyframe's packets (sent back to back, spread out by a narrow link) as
# overuse and cuts to 0.85 of the rate it measures coming in, so on a sender that sends less than the link
# carries its REMB ratchets down to the floor (measured in the fault lab's 15 kbps cap: REMB 2.7 kbps at 0 %
# loss). A REMB not believed as a cut still bounds how far a clean report may raise the estimate, and one
# under what is sent ends the slow start: in the 15 kbps cap it read 12-17 kbps on the wire, about right,
# while the reports still showed no loss.
REMB_QUEUE_S = 0.1
REMB_EVIDENCE_S = 2.0
# A decrease of the estimate is news of the link (the probes wait QUIET_S after it, sender/probe.py) when it takes
# the estimate more than this share under both what it was and what is sent: the sender retargets only on changes above 10 %
# (sender/session.py), and a delay cut of 0.4 % at the estimate's floor held off the probes for 3 s, as did REMBs
# trimming it by a few % each (the lab's stepped cap: 12.7-14.5 kbps with 13-15 kbps sent, until 5 s after the link
# widened again). Such a REMB still trims the estimate: over the lab's 15 kbps cap that is what keeps it under.
LOWERED_SHARE = 0.1
# A bandwidth probe's own queue (sender/probe.py): aiortc's receiver reads the padding's queue in the video's
# arrival times as overuse and cuts its REMB, and a failed probe's drops are loss evidence for it (the fault lab's
# 15 kbps cap: after a failed probe a believed REMB took the estimate from 14.9 to 11.0 kbps for the rest of the
# call). A lower REMB this soon after a probe is the probe's echo, not news of the link: the loss the probe caused
# is reported up to a report interval (~1 s) later and counts as evidence REMB_EVIDENCE_S after that.
PROBE_ECHO_S = 3.0
# ... and past that while the REMB climbs back, nothing lost since: aiortc's rate control climbs ~8 % a second from the
# 0.85x cut the probe's queue caused, so the echo outlasts PROBE_ECHO_S (the lab's stepped cap with shapes: REMBs of
# 37 -> 43 kbps a second each, 2.8-3.3 s after a probe over the 60 kbps link, believed on the probe's own queue as
# evidence, took the estimate from 54 to 42 kbps). A REMB lower than the one before it is news again.
# A probe's jump is on trial this long: at a narrow link's rates a cluster's timing can pass a probe well over the
# link (the lab's 15 kbps cap: one at 21.9 kbps arrived at 104 % of its rate), and the loss that follows shows in a
# receiver report seconds later (3.5 s over the cap, 37 frames concealed). A packet NACKed in that time takes the
# estimate back to where it was before the jump, at once.
PROBE_TRIAL_S = 2.0

# Transport feedback (receiver/feedback.py). A queue this long under the video's packets (the least of a feedback's
# packets above the least seen) is a bottleneck the video overfills: the estimate goes to under the rate the link
# delivered meanwhile (the receiver's clock times it, and while a queue stands that is the link's rate), by
# DELIVERED_SHARE less the queue over DRAIN_S (a full 0.3 s queue, as in the fault lab, drains within about a second
# at 0.65 of the link), no lower than FEEDBACK_MIN_SHARE of it. The reading counts each packet's own time on the
# link: at 15 kbps a 300-byte frame takes 0.16 s, and the lab's stepped cap read 30-250 ms there with nothing lost,
# 20-130 ms at 60 kbps; right after its step to 15 kbps, 500-700 ms (the delay row adds 100 +- 30 ms per packet,
# and the least of a feedback's packets stays near its low).
FEEDBACK_QUEUE_S = 0.35
DRAIN_S = 1.5
FEEDBACK_MIN_SHARE = 0.5
# The feedback's delivered rate counts the data channels' usual share (sender/session.py adds it: `data_kbps` here)
# though over a few tenths of a second the video may have had the link to itself: the lab's 15 kbps cap read 17.9-18.0,
# its 60 kbps cap 62-63. The over-read is that share, the same at any rate, not a share of the rate: the link's own
# rate is the reading less `data_kbps` (`link_kbps`), where its capacity is noted, and once a cut's queue has drained
# the estimate goes back to RESTORE_SHARE of it (the lab's 15 kbps cap: 13.4 kbps, where its slow start ends; at
# DELIVERED_SHARE of the reading, 15.2, over the link: 19 frames concealed). As a share of the reading (0.75 of it) the
# same restore left the 60 kbps cap at 46-47 kbps, under the 51 that count as climbed back.
RESTORE_SHARE = 0.9
# ... and a queue read inside the slow start goes back to the step's base (`on_feedback`) only where the link
# delivered at least this share of that base. The lab's stepped cap narrowed from 60 to 15 kbps while the start still
# climbed: its queue read 16-18 kbps delivered against a base of 40-46, and the base put the estimate back over the
# narrowed link once the queue drained (29 of the 57 drain restores in the stepped rows, over the lab runs kept on the
# 2-core machine). Only the REMB held it under, until the REMB climbed past the cap: 30 % lost 3.6 s after the step,
# settled 1 s late. The 15 kbps cap, where the rule comes from, read 14.8 kbps delivered under a base of 13.5.
START_BASE_DELIVERED = 0.8
# A queue this long holds the climb (GCC's hold state): the link is full, a clean report there is no room to take.
# Reports within FEEDBACK_HOLD_CLIMB_S of such a feedback do not raise the estimate, nor does a probe go out
# (sender/probe.py): its padding would queue behind the video and overflow. The reading less the feedback's mean
# packet's own time at the estimate: at 15 kbps a 300-byte packet takes 0.16 s by itself, and holding on the raw
# reading held the lab's 15 kbps cap wherever the slow start had ended (11.6-12.4 kbps: 28.8-29.1 dB, against
# 13.5-14.9 kbps and 29.5-30.1 dB where it climbed).
FEEDBACK_HOLD_QUEUE_S = 0.15
FEEDBACK_HOLD_CLIMB_S = 1.0
# After a feedback cut (or trim) the packets sent at the new rate arrive behind the queue the cut saw: no second cut
# until that queue has passed plus this long (two feedbacks), nor, within DECREASE_HOLD_S, while the queue is shorter
# than at the cut (it is draining).
FEEDBACK_HOLD_S = 0.4
# A link that widened shows in the feedback before any probe: each packet's time on the link shrinks with it. The
# feedback reads the least delay of its packets over the least seen, so a narrow link's small packets read their own
# transmission time (the lab's stepped cap, at the floor: 30-50 ms at 15 kbps, against 0-7 ms once it is 60 kbps
# again). When the last WIDENED_FEEDBACKS readings are all under WIDENED_QUEUE_S and the median of those in the
# WIDENED_HISTORY_S before them was at least twice that, a probe may go at once (sender/probe.py), its backoff
# notwithstanding: with a backoff of 3-6 s the stepped cap's first probe after the step up came 3-6 s late. Only
# readings under FEEDBACK_HOLD_QUEUE_S count before, at least WIDENED_MIN_READINGS of them: a queue draining is not a
# link widening (the lab's 15 kbps cap: after a failed probe's 120-210 ms, 8 and 14 ms sent a probe into the cap).
# Judged instead against the readings before the drain's run of low ones (stop 36: the stepped cap's fixed row at stop
# 35 read 8, 0, 21, then 2, 7, 11, 4 ms after 29-60 ms, a median of 29 before, and sent no probe), the widening read
# the link no sooner after a step up in 72 stepped rows, and under the 15 kbps cap it fired where this rule does not in
# 2 of 18 calls' readings (a keyframe's 141 ms queue, then 0, 9, 6, 0, 7 ms).
# On a link narrow from the start the low is its own, and its small packets read 0-25 ms: no signal. Two or three such
# readings in a row come, though, when the picture stills and its packets shrink (the lab's 15 kbps cap: 0-15 ms for
# ~100-byte packets at 6-7 s, a probe into the cap, the clip's loop on top of its queue and a cut to the floor); the
# link that widens reads 0-5 ms from the step on: four in a row.
WIDENED_QUEUE_S = 0.015
WIDENED_FEEDBACKS = 4
WIDENED_HISTORY_S = 3.0
WIDENED_MIN_READINGS = 4
# ... or from the packets' sizes (stop 37). A feedback of one packet reads that packet's own time on the link above the
# least packet's, plus any queue: against its size, the readings lie on a line whose slope is the link's time per byte
# (pathchar's way of timing a link). At a narrow link's rates most feedbacks are one packet. With the stepped cap's
# narrow spell at s4t4 (one 150-400 byte frame every 4th source frame), the widened 60 kbps link read 0-35 ms, never
# four in a row under WIDENED_QUEUE_S, and no probe went for the 8 s at 60 (3 of 48 stepped rows in stop 37's runs,
# each after s4t4). The slope of the last SIZE_READINGS one-packet readings within SIZE_HISTORY_S (Theil-Sen, robust
# to one outlier), spanning at least SIZE_SPREAD_BYTES of sizes, all under FEEDBACK_HOLD_QUEUE_S (a queue draining
# while sizes vary tilts the line), read as a rate SIZE_RATE_RATIO x the estimate or more, says the link widened.
# Replayed over the feedback logs of stop 37's A/B runs and the earlier ones still on the machine: it read the three
# s4t4 misses 1.0-1.8 s after the step up, and fired in none of 78 calls under the 15 kbps cap nor in any of 156
# stepped rows' narrow spells (without the hold, twice there, as a 150-280 ms queue drained).
SIZE_READINGS = 5
SIZE_HISTORY_S = 2.0
SIZE_SPREAD_BYTES = 80
SIZE_RATE_RATIO = 2.5
# The signal holds this long for the probes (sender/probe.py): a probe's gates (another just answered, a queue read
# under a second ago) may hold it for a moment, and the readings climb again as soon as the estimate does.
WIDENED_FRESH_S = 1.0
# A probe at twice the estimate needs a link at least that fast. The feedback's readings are mostly each packet's own
# time on the link when nothing stands queued, so a reading far under the mean packet's time at the estimate says the
# link is much faster than the estimate: a blind probe (sender/probe.py) goes only when the median of that ratio over
# the last ROOM_HISTORY_S (at least ROOM_READINGS of them) is at most ROOM_RATIO. The lab's 15 kbps cap read 0.5-1.2
# of it after its start ended at 13.5 kbps; its uncapped rows 0-0.3. Without the gate a blind probe there 3 s after
# the start's end overflowed the cap's queue (17 concealed); with blind probes off, a start ended by a REMB on an
# uncapped link stayed low the whole call (the delay row: 12.0 of 20 kbps).
ROOM_RATIO = 0.5
ROOM_HISTORY_S = 2.0
ROOM_READINGS = 3
# A smaller queue that stands (FULL_QUEUE_S over the packets' own time, for FULL_STANDING_S of busy feedbacks that
# measure the link's rate) says the video fills the link, perhaps a little over it. No probe goes over it for a while
# (sender/probe.py: the lab's stepped cap sent four to 78 kbps in the 6 s after the step up, its queue at 140-230 ms),
# and the estimate goes to FULL_SHARE of the median rate the link delivered, without a drain: the lab's stepped cap
# came back to 60 kbps where the video needs 51 kbps of it in every second to count as climbed back, and its 0.3 s
# queue stood at 230-320 ms for 3 s at 58-63 kbps delivered until it overflowed (a cut to 30 kbps on NACKs). The
# median, not the last reading: over a quarter of a second the rate read 55-63 kbps on that link.
FULL_QUEUE_S = 0.1
FULL_STANDING_S = 0.5
FULL_SHARE = 0.95
# Inside a feedback cut's hold, a cut again when the rate the link now delivers leaves less than this share of the
# estimate the cut set: the first cut's delivered rate counted arrivals from before the link narrowed (the lab's
# stepped cap with shapes: 39.9 kbps read at the step to 15 kbps, the cut to 23.6, and the queue overflowed for
# 1.4 s more until the next).
REMEASURED_SHARE = 0.7
# A failed probe the feedback confirms (sender/probe.py): the video's packets beside the padding read a queue this much
# longer than the median of the readings in the PROBE_BEFORE_S before it went out (at 60 kbps a full link's queue
# under the video reads 100-140 ms against 20-60 before, short of FULL_QUEUE_S over the packets' own time).
PROBE_RISE_S = 0.04
PROBE_BEFORE_S = 1.0
# Transport feedback this recent stands in for the RTT's queue signal (it reads the same queue, better).
FEEDBACK_FRESH_S = 2.0
# A bandwidth probe (sender/probe.py) queues its own padding ahead of the video: a queue this soon after a probe
# went out is the probe's (its result says whether the link had room), not a reason to cut.
FEEDBACK_PROBE_S = 0.8

# Fast loss from NACKs. aiortc's receiver reports come about once a second, and a report that straddles the
# moment a link narrowed understates the loss; the receiver NACKs each lost packet within about an RTT. The
# share of the packets sent in the last NACK_WINDOW_S (shifted back by the RTT) that were NACKed for the first
# time since counts as a report's fraction lost when it is severe (above FAST_LOSS, at least NACK_MIN_PACKETS
# packets): a link that narrowed to a fraction of the rate (60 -> 15 kbps: 75 % lost), seconds sooner. Random
# loss must not get there: at 7.5 packets a second, 10 % random loss puts 5 of 8 in one second about once in
# 2,300 (the fault lab's 10 % row cut to the floor on 4 of 7 with a laxer rule).
NACK_WINDOW_S = 1.0
NACK_MIN_PACKETS = 5
FAST_LOSS = 0.5
# An outage is not congestion: when no receiver report came for this long (aiortc sends one every 0.5-1.5 s),
# the link was down both ways, and the loss the next report and the NACKs after it show is the outage's, not
# the rate's (the fault lab's 3 s outage: cut to the floor by its own NACKs, then 5 s to climb back). The
# report that ends the silence restarts the pool, and for OUTAGE_GRACE_S after it loss does not cut.
OUTAGE_S = 2.5
OUTAGE_GRACE_S = 1.5
# Sequence numbers remembered to tell a first NACK from a repeat.
NACK_REMEMBERED = 512


class NackLoss:
    """Counts packets sent and packets NACKed for the first time, over a sliding window."""

    def __init__(self) -> None:
        self.sent: deque[tuple[float, int]] = deque()
        self.nacked: deque[float] = deque()
        self.recent: deque[int] = deque(maxlen=NACK_REMEMBERED)

    def on_sent(self, now: float, packets: int) -> None:
        self.sent.append((now, packets))

    def on_nack(self, now: float, seq: int) -> bool:
        """A NACKed sequence number; True if it is the first NACK for it."""
        if seq in self.recent:
            return False
        self.recent.append(seq)
        self.nacked.append(now)
        return True

    def was_nacked(self, seq: int) -> bool:
        """Whether `seq` is among the recently NACKed sequence numbers."""
        return seq in self.recent

    def window(self, now: float, lag_s: float) -> tuple[int, int]:
        """(packets NACKed in the last NACK_WINDOW_S, packets sent in the window `lag_s` before that)."""
        while self.nacked and self.nacked[0] < now - NACK_WINDOW_S:
            self.nacked.popleft()
        while self.sent and self.sent[0][0] < now - NACK_WINDOW_S - lag_s:
            self.sent.popleft()
        return len(self.nacked), sum(n for t, n in self.sent if t <= now - lag_s)


# The rate actually sent is measured over this long (several frames at the lab's 7.5 frames/s): a target is what
# the encoder aims at, and at a few kbps VP8 spends a third less; a probe planned from the target over the lab's
# 15 kbps cap was mostly absorbed by the queue it was to find (padding measured at 101 % of its rate).
SENT_WINDOW_S = 1.0


class SentRate:
    """Wire bytes put on the link over the last SENT_WINDOW_S."""

    def __init__(self) -> None:
        self.sent: deque[tuple[float, int]] = deque()

    def on_sent(self, now: float, wire_bytes: int) -> None:
        self.sent.append((now, wire_bytes))
        self._forget(now)

    def kbps(self, now: float) -> float:
        self._forget(now)
        return sum(n for _, n in self.sent) * 8 / 1000 / SENT_WINDOW_S

    def _forget(self, now: float) -> None:
        while self.sent and self.sent[0][0] < now - SENT_WINDOW_S:
            self.sent.popleft()


@dataclass
class Change:
    """One step of the estimate: when (s), the new kbps and why."""

    time: float
    kbps: float
    reason: str


def theil_sen_slope(xs: list[float], ys: list[float]) -> float | None:
    """The median of the slopes between every two points of different x (Theil-Sen: one outlier does not tilt it), or
    None where all x are equal. scipy.stats.theilslopes gives the same; importing it cost each sender process 0.75 s
    on the 2-core EPYC (sender.session 1.63 -> 2.64 s), for five points."""
    slopes = [(ys[j] - ys[i]) / (xs[j] - xs[i])
              for i in range(len(xs)) for j in range(i + 1, len(xs)) if xs[j] != xs[i]]
    return median(slopes) if slopes else None


@dataclass
class BandwidthEstimator:
    """The estimate starts at `start_kbps`, within `min_kbps`..`max_kbps` (default: the start); below the top
    it starts in slow start."""

    start_kbps: float
    min_kbps: float
    max_kbps: float | None = None
    data_kbps: float = 0.0  # the data channels' share each delivered rate counts, used or not (`link_kbps`)
    loss_kbps: float = field(init=False)
    remb_kbps: float | None = field(default=None, init=False)
    remb_at: float = field(default=-math.inf, init=False)
    rtt_s: float | None = field(default=None, init=False)
    base_rtt_s: float | None = field(default=None, init=False)
    base_rtt_at: float = field(default=0.0, init=False)
    delay_kbps: float | None = field(default=None, init=False)
    delay_cut_at: float = field(default=-math.inf, init=False)
    loss_cut_at: float = field(default=-math.inf, init=False)
    overflow_at: float = field(default=-math.inf, init=False)  # the last loss cut for a full queue (not a jump taken back)
    reason: str = field(default="start", init=False)
    reports: int = field(default=0, init=False)
    rembs: int = field(default=0, init=False)
    rembs_ignored: int = field(default=0, init=False)
    start_rembs_overruled: int = field(default=0, init=False)  # REMBs under what is sent the start went on past
    remb_heard_kbps: float | None = field(default=None, init=False)  # the latest REMB, believed or not
    remb_heard_at: float = field(default=-math.inf, init=False)
    capacity_kbps: float | None = field(default=None, init=False)  # where the last congestion signal came
    evidence_at: float = field(default=-math.inf, init=False)  # the last report with loss or a queue in it
    lost_at: float = field(default=-math.inf, init=False)  # the last sign of a packet lost (a report's loss, a NACK)
    queue_at: float = field(default=-math.inf, init=False)  # the last report whose RTT showed a queue
    pooled: deque = field(default_factory=deque, init=False)  # (lost, expected) of the reports since the last cut
    report_at: float | None = field(default=None, init=False)  # the last receiver report
    outage_ended_at: float = field(default=-math.inf, init=False)  # the report that ended a silence
    history: list[Change] = field(default_factory=list, init=False)
    probed_at: float = field(default=-math.inf, init=False)  # the last probe's cluster went out
    remb_fell_at: float = field(default=-math.inf, init=False)  # the last REMB lower than the one before it
    trial_until: float = field(default=-math.inf, init=False)  # a probe's jump is on trial until then ...
    trial_back_kbps: float = field(default=0.0, init=False)  # ... from this estimate
    start_steps: int = field(default=0, init=False)  # the slow start's steps up so far
    lowered_at: float = field(default=-math.inf, init=False)  # the last time the estimate went down (to under what is sent)
    feedbacks: int = field(default=0, init=False)
    feedback_at: float = field(default=-math.inf, init=False)  # the last transport feedback
    feedback_full_at: float = field(default=-math.inf, init=False)  # the last feedback with a queue that holds the climb
    feedback_cut_queue_s: float = field(default=0.0, init=False)  # the queue the last feedback cut saw
    feedback_cut_at: float = field(default=-math.inf, init=False)
    restore_kbps: float | None = field(default=None, init=False)  # where the estimate goes once the queue drained
    restored_at: float = field(default=-math.inf, init=False)  # ... and when it last went there
    start_ended_at: float = field(default=-math.inf, init=False)  # a REMB ended the slow start (taking back its step) ...
    start_end_queue_s: float = field(default=0.0, init=False)  # ... with the feedback's last reading this
    readings: deque = field(default_factory=deque, init=False)  # (time, queue s) of the recent feedbacks
    sized: deque = field(default_factory=deque, init=False)  # (time, bytes, queue s) of the recent one-packet feedbacks
    delivered_log: deque = field(default_factory=deque, init=False)  # (time, kbps) the recent feedbacks measured delivered
    widened_at: float = field(default=-math.inf, init=False)  # the last feedback that said the link widened
    room: deque = field(default_factory=deque, init=False)  # (time, reading over the mean packet's time at the estimate)
    trimmed_kbps: float = field(default=0.0, init=False)  # where the last trim for a full link left the estimate
    trimmed_at: float = field(default=-math.inf, init=False)
    trimmed_queue_s: float = field(default=0.0, init=False)
    full_seen_at: float = field(default=-math.inf, init=False)  # the last feedback that read a full link (FULL_QUEUE_S)
    standing: deque = field(default_factory=deque, init=False)  # (time, delivered kbps) of the last second's, in a row
    standing_since: float = field(default=math.inf, init=False)  # since when they have read one, in a row
    wanted_kbps: float | None = field(default=None, init=False)  # the last cut's target under the floor ...
    wanted_at: float = field(default=-math.inf, init=False)  # ... and when

    def __post_init__(self) -> None:
        if self.max_kbps is None:
            self.max_kbps = self.start_kbps
        if not 0 < self.min_kbps <= self.max_kbps:
            raise ValueError(f"need 0 < min_kbps <= max_kbps, got {self.min_kbps}, {self.max_kbps}")
        self.loss_kbps = self._clamp(self.start_kbps)

    # -- inputs --------------------------------------------------------------------------------------------
    def on_report(self, now: float, fraction_lost: float, rtt_s: float | None = None,
                  sending_kbps: float | None = None, expected: int | None = None,
                  delivered_kbps: float | None = None) -> float:
        """A receiver report: fraction lost since the last one (0..1), the packets it expected in that time
        (None: unknown, judged alone) and, when it could be measured, the RTT. `sending_kbps`: the target the
        sender holds now (the basis of a heavy-loss or delay cut, and the ceiling of a probe). `delivered_kbps`: the
        rate (wire) at which what arrived since the last report arrived, when known."""
        self.reports += 1
        before = self.estimate(now)
        if self.report_at is not None and now - self.report_at > OUTAGE_S:
            self.outage_ended_at = now
            self.pooled.clear()
        self.report_at = now
        if self._in_outage(now):
            # The outage's loss: the RTT still counts, the loss does not.
            delay_why = self._on_rtt(now, rtt_s, sending_kbps) if rtt_s is not None and rtt_s >= 0 else None
            return self._note(now, before, delay_why or "after an outage: its loss is not the rate's")
        if expected is None:
            loss, judged, clean = fraction_lost, True, fraction_lost < LOSS_LOW
        else:
            self.pooled.append((fraction_lost * expected, expected))
            while len(self.pooled) > 1 and sum(e for _, e in self.pooled) - self.pooled[0][1] >= LOSS_MIN_PACKETS:
                self.pooled.popleft()
            lost, total = sum(x for x, _ in self.pooled), sum(e for _, e in self.pooled)
            loss, judged = (lost / total if total else 0.0), total >= LOSS_MIN_PACKETS
            clean = loss < LOSS_LOW if judged else lost < 0.5  # too few packets yet: clean only without any loss
        if fraction_lost >= LOSS_LOW:
            self.evidence_at = self.lost_at = now  # this report's own loss (the pool may hold older reports')
        span = "" if expected is None else f" of {sum(e for _, e in self.pooled)}"
        delay_why = self._on_rtt(now, rtt_s, sending_kbps) if rtt_s is not None and rtt_s >= 0 else None
        # Congestion, as far as delay tells: a queue in the RTT, or the receiver's delay estimate (REMB, believed
        # or not) under what is sent. Without either, moderate loss is a lossy link, not a full queue.
        remb_under = (sending_kbps is not None and self.remb_heard_kbps is not None
                      and now - self.remb_heard_at <= REMB_STALE_S and self.remb_heard_kbps < sending_kbps)
        queued = now - self.queue_at <= REMB_EVIDENCE_S or remb_under
        if judged and not queued and LOSS_LOW <= loss <= LOSS_HIGH and (
                self.capacity_kbps is None or self.loss_kbps < CAPACITY_NEAR[0] * self.capacity_kbps):
            # A lossy link without a queue: climb through it (the draft would hold), up to near the capacity. From
            # there the draft's hold: at a cap the loss is a few % for seconds before a queue shows in an RTT that
            # the receiver's busy CPU makes noisy (the lab's 15 kbps cap: 4-5 % lost, climbing to 16.4 kbps, 21
            # concealed); a link that is merely lossy is found wider by probes.
            clean = True
        if judged and loss > LOSS_HIGH and (queued or loss > SEVERE_LOSS):
            why = f"{loss:.0%} lost{span}"
            # The draft's gentle cut suits random loss; heavy loss is a bottleneck queue overflowing, which lets
            # through only (1 - p) of what was sent: cutting to that is the quicker way under the cap.
            heavy = sending_kbps is not None and loss > QUEUE_LOSS
            through = sending_kbps * (1 - loss) if heavy else None
            # This report's own loss says the queue overflowed while it counted (a creep past the link shows 10-20 %).
            measured = delivered_kbps is not None and fraction_lost > LOSS_HIGH
            if measured:
                # The link's own measure, not the lost share of what is sent now: the pooled loss may be of a higher
                # rate before the last cut (the lab's stepped cap: 69 % of a 13.6 kbps target read as 4.2 kbps).
                through = DELIVERED_SHARE * delivered_kbps
                why += f", {delivered_kbps:.1f} kbps delivered"
            if not self._cut_loss(now, 1 - 0.5 * loss, through, at_kbps=sending_kbps,
                                  capacity_kbps=delivered_kbps if measured else None):
                why = self._queue_output(now, fraction_lost, expected, delivered_kbps) or why + ": holding after the last cut"
        elif output := self._queue_output(now, fraction_lost, expected, delivered_kbps):
            why = output
        elif judged and loss > LOSS_HIGH:
            # Moderate loss with a flat RTT and a REMB above what is sent is a lossy link, not a full queue:
            # cutting would not save a packet.
            why = f"{loss:.0%} lost{span}, no queue: holding"
        elif clean and self.starting and not judged:
            # The slow start steps ×1.3 only on a report that covers LOSS_MIN_PACKETS: a report of a few packets says
            # little, and at the start the bottleneck's queue absorbs an overshoot for a second or two before it
            # drops anything (the fault lab's 15 kbps cap: its second step, on a report of 2-10 packets, went to
            # 22.8 kbps; where the REMB that ends the start came 1-2 s after it, 17-36 frames were concealed).
            why = f"{loss:.0%} lost{span}: starting, too few packets to step up"
        elif clean and now - self.feedback_full_at < FEEDBACK_HOLD_CLIMB_S:
            why = f"{loss:.0%} lost{span}, a queue in the feedback: holding"
        elif clean:
            # Never far above what is being sent: an application-limited sender learns nothing about the link
            # by raising a number it does not use.
            low, high = (math.inf, math.inf) if self.capacity_kbps is None else (
                CAPACITY_NEAR[0] * self.capacity_kbps, CAPACITY_NEAR[1] * self.capacity_kbps)
            # Past the capacity only slowly: a link that widened is found by probes (sender/probe.py), and a fast
            # climb out of a band noted at the start's base took the lab's 15 kbps cap estimate to 19.3 kbps (42
            # frames concealed).
            fast = self.loss_kbps < low
            factor, ahead = (FAST_INCREASE, FAST_INCREASE) if fast else (LOSS_INCREASE, PROBE_AHEAD)
            ceiling = math.inf if sending_kbps is None else max(self.loss_kbps, sending_kbps * ahead)
            if self.loss_kbps < low:
                ceiling = min(ceiling, max(self.loss_kbps, low))  # the fast climb stops at the capacity's edge
            if self.remb_heard_kbps is not None and now - self.remb_heard_at <= REMB_STALE_S:
                ceiling = min(ceiling, max(self.loss_kbps, self.remb_heard_kbps))
            self.loss_kbps = self._clamp(min(self.loss_kbps * factor, ceiling))
            self.start_steps += self.starting
            why = f"{loss:.0%} lost{span}: " + (
                "starting up" if self.capacity_kbps is None else "climbing back" if fast else "probing up")
        else:
            why = f"{loss:.0%} lost{span}: holding"
        return self._note(now, before, delay_why or why)

    def on_feedback(self, now: float, queue_s: float, delivered_kbps: float | None,
                    sending_kbps: float | None = None, packet_bits: float = 0.0,
                    packet_bytes: int | None = None) -> float:
        """Transport feedback (receiver/feedback.py): the queue the video's latest packets waited in (s) and the rate
        (wire kbps) the link delivered them at while it stood, when measured. `sending_kbps`: what is sent now.
        `packet_bits`: the feedback's mean packet on the wire; its own time on the link at the estimate is no queue
        to hold the climb for. `packet_bytes`: the packet's size where the feedback counted one (SIZE_READINGS).

        Once the queue a cut drained is gone (a reading under FEEDBACK_HOLD_QUEUE_S, FEEDBACK_HOLD_S or more after the
        cut) and nothing else cut since, the estimate goes back to RESTORE_SHARE of that delivered rate at once, as
        BBR cruises after its drain: the drain's depth is for the queue, not the link. Climbing back report by report
        took the lab's 15 kbps cap 3.3 s from the floor after a cut at the start (28.70 dB, against 29.4-29.8 in the
        runs without one)."""
        self.feedbacks += 1
        self.feedback_at = now
        before = self.estimate(now)
        own_s = packet_bits / 1000 / max(before, 1.0)  # the mean packet's own time on the link at the estimate
        if queue_s - own_s >= FEEDBACK_HOLD_QUEUE_S:
            self.feedback_full_at = now
        self.readings.append((now, queue_s))
        while self.readings and self.readings[0][0] < now - WIDENED_HISTORY_S:
            self.readings.popleft()
        if packet_bytes is not None:
            self.sized.append((now, packet_bytes, queue_s))
            while len(self.sized) > SIZE_READINGS or self.sized[0][0] < now - SIZE_HISTORY_S:
                self.sized.popleft()
        if delivered_kbps is not None:
            self.delivered_log.append((now, delivered_kbps))
        while self.delivered_log and self.delivered_log[0][0] < now - PROBE_TRIAL_S:
            self.delivered_log.popleft()
        if self.link_widened(now):
            self.widened_at = now
        if packet_bits > 0:
            self.room.append((now, queue_s / max(1e-3, own_s)))
            while self.room and self.room[0][0] < now - ROOM_HISTORY_S:
                self.room.popleft()
        if queue_s >= FEEDBACK_QUEUE_S:
            # A queue, as an RTT over its low says: a lower REMB is believed, moderate loss is a queue's. Not from
            # REMB_QUEUE_S: at 15 kbps each packet's own time on the link reads 0.1-0.25 s, and every trimming REMB
            # was believed (the lab's 15 kbps cap: the video held at 4-6 kbps, 28.3 dB).
            self.evidence_at = self.queue_at = now
        if self.restore_kbps is not None and self.loss_cut_at != self.feedback_cut_at:
            self.restore_kbps = None  # another cut came since: its own rules hold
        if (self.restore_kbps is not None and queue_s < FEEDBACK_HOLD_QUEUE_S
                and now - self.feedback_cut_at >= FEEDBACK_HOLD_S):
            restore, self.restore_kbps = self.restore_kbps, None
            if restore > self.loss_kbps:
                self.loss_kbps, self.restored_at = restore, now
                return self._note(now, before, f"the queue drained: back to {restore:.1f} kbps")
        full = delivered_kbps is not None and queue_s - own_s >= FULL_QUEUE_S
        if full:
            self.full_seen_at = now
        if full and now - self.probed_at >= FEEDBACK_PROBE_S:
            if not self.standing:
                self.standing_since = now
            self.standing.append((now, delivered_kbps))
            while self.standing[0][0] < now - 2 * FULL_STANDING_S:
                self.standing.popleft()  # the rate of the last second: the estimate may have moved since
        else:  # none yet, or a probe's own queue: its padding took a share of the link (the lab's 15 kbps cap: 9.8 read)
            self.standing.clear()
        if delivered_kbps is None or now - self.probed_at < FEEDBACK_PROBE_S or self._in_outage(now):
            return before
        if queue_s < FEEDBACK_QUEUE_S:
            return self._trim_to_link(now, before, queue_s, sending_kbps)
        # The slow start's end takes back the step that built the queue: that queue drains behind it as a cut's does
        # (the lab's 15 kbps cap: a 357-410 ms queue read 0.4-0.5 s after the end cut again, to the floor, 4 kbps of
        # video for 2-4 s: 28.5-29.4 dB, against 29.4-30.4 in the runs the REMB alone ended the start).
        held = (self._draining(now, queue_s, self.feedback_cut_at, self.feedback_cut_queue_s)
                or self._draining(now, queue_s, self.start_ended_at, self.start_end_queue_s))
        start_step = self.starting and self.start_steps > 0
        share = max(FEEDBACK_MIN_SHARE, DELIVERED_SHARE - queue_s / DRAIN_S)
        basis = min(self.loss_kbps, sending_kbps) if sending_kbps else self.loss_kbps
        target = self._decrease_to(now, min(basis, share * delivered_kbps))
        if target >= before or (held and target >= REMEASURED_SHARE * before):
            return before
        self.pooled.clear()  # the loss after a cut is the new rate's
        self.capacity_kbps = min(basis, self.link_kbps(delivered_kbps))
        self.loss_kbps = target
        self.trial_until = -math.inf  # a probe's jump is over: the link answered it
        self.loss_cut_at = self.overflow_at = self.feedback_cut_at = now
        self.feedback_cut_queue_s = queue_s
        restore = self._clamp(min(basis, RESTORE_SHARE * self.link_kbps(delivered_kbps)))
        base = sending_kbps / FAST_INCREASE if start_step and sending_kbps else None
        if base is not None and START_BASE_DELIVERED * base <= delivered_kbps:
            # The slow start's queue is its last step's overshoot: once it has drained, back to that step's base, as a
            # REMB ending the start goes. The lab's 15 kbps cap read 14.8 kbps delivered there: RESTORE_SHARE of its link
            # is the floor's neighbourhood (10.6 kbps), and the call climbed from it for 4-8 s (27.7-28.6 dB, against
            # 29.3-30.0 where the REMB ended the start at the base, 13.5). Not where the link delivers much less than
            # that base: it narrowed under the start (START_BASE_DELIVERED).
            restore = max(restore, self._clamp(min(basis, base)))
        self.restore_kbps = restore if restore > target else None
        return self._note(now, before, f"a {queue_s * 1000:.0f} ms queue, {delivered_kbps:.1f} kbps delivered", sending_kbps)

    def _draining(self, now: float, queue_s: float, cut_at: float, cut_queue_s: float) -> bool:
        """Whether a queue read `queue_s` now is still the one a cut at `cut_at` saw (`cut_queue_s`) draining: the packets
        sent at the new rate arrive behind it, so no second cut until it has passed plus FEEDBACK_HOLD_S, nor within
        DECREASE_HOLD_S while the queue is shorter than at the cut."""
        since = now - cut_at
        return since < cut_queue_s + FEEDBACK_HOLD_S or (since < DECREASE_HOLD_S and queue_s < cut_queue_s)

    def _trim_to_link(self, now: float, before: float, queue_s: float, sending_kbps: float | None) -> float:
        """A queue that has stood for FULL_STANDING_S (FULL_QUEUE_S over the mean packet's own time, `standing`)
        while the link's rate is measured: the video fills the link, perhaps a little over it. The estimate goes to
        FULL_SHARE of the median rate the link delivered in the last second of it, never under where the last trim
        left it (so once per climb), and not while the queue the last trim saw drains (the lab's 15 kbps cap: a
        second trim on the start's draining queue, at 11.4 kbps delivered, held the call at 11-13 kbps: 28.5 dB).
        Not in the slow start: its overshoot ends on the REMB or a cut, back to the last step's base (the lab's
        15 kbps cap: a trim there, to 0.94 of a delivered rate that counts the data channels' share, ended the start
        at 16.8 kbps, over the cap, with packets lost each second for 4 s)."""
        if (not self.standing or now - self.standing_since < FULL_STANDING_S or self.starting
                or self._draining(now, queue_s, self.trimmed_at, self.trimmed_queue_s)):
            return before
        rates = sorted(kbps for _, kbps in self.standing)
        delivered_kbps = rates[len(rates) // 2]
        # Never under where the last trim left it: a competing flow's queue stands whatever the video sends, and trim after
        # trim would hand it the link a step at a time (loss and the longer queue's cut still take the estimate lower).
        # Of the reading, not of the link's share of it (`link_kbps`): while the queue stands the data channels' packets may
        # be among the video's, and the lab's 15 kbps cap read 14.3 kbps so, the trim to 0.95 of the 11.3 left held the
        # call at the floor for 8 s (27.9 dB).
        target = self._clamp(max(FULL_SHARE * delivered_kbps, self.trimmed_kbps))
        if target >= before:
            return before
        self.loss_kbps = min(self.loss_kbps, target)
        self.remb_kbps = None if self.remb_kbps is None else min(self.remb_kbps, target)
        self.delay_kbps = None if self.delay_kbps is None else min(self.delay_kbps, target)
        self.capacity_kbps = min(self.capacity_kbps or math.inf, self.link_kbps(delivered_kbps))
        self.trial_until = -math.inf  # a probe's jump is over: the link answered it
        self.trimmed_kbps, self.trimmed_at, self.trimmed_queue_s = target, now, queue_s
        self.standing_since = now  # what stands from here stands at the new rate
        self.lowered_at = now  # news of the link: no probe follows a success up into it (sender/probe.py)
        return self._note(now, before, f"a {queue_s * 1000:.0f} ms queue standing at {delivered_kbps:.1f} kbps delivered: "
                                       "the link is full", sending_kbps)

    def on_remb(self, now: float, kbps: float, sending_kbps: float | None = None) -> float:
        """The receiver's estimated maximum bitrate. `sending_kbps`: what the sender sends now."""
        self.rembs += 1
        if self.remb_heard_kbps is not None and kbps < self.remb_heard_kbps:
            self.remb_fell_at = now
        self.remb_heard_kbps, self.remb_heard_at = max(0.0, kbps), now
        echo_ends = self.probed_at + PROBE_ECHO_S
        echo = now < echo_ends or (self.remb_fell_at < echo_ends and self.lost_at < echo_ends)
        before = self.estimate(now)
        if self.starting and sending_kbps is not None and kbps < sending_kbps and self.reads_room(now):
            # Not where the transport feedback reads the link much faster than what is sent (`reads_room`): there
            # the REMB is aiortc's rate control climbing behind the start's steps (the lab's clean row: 17.4, 18.4,
            # 19.4 kbps a REMB apart against 17.5 sent, the feedback reading no queue), not news of the link. Ending
            # the start there took the video to the step's base for 3 s (13.5 kbps of a 20 kbps request, 4 kbps of
            # video at 15). The REMB still bounds the climb, as every REMB heard does, and below it is judged as any
            # REMB (believed with loss as evidence: it then caps the estimate, a trim rather than the step taken back).
            self.start_rembs_overruled += 1
        elif self.starting and sending_kbps is not None and kbps < sending_kbps:
            # In the slow start a REMB under what is sent, believed or not, ends the fast climb and takes back its
            # last step: a step too far costs a queue overflow a second or two later (the fault lab's 15 kbps
            # cap under a 20 kbps request: the second step of the start is 17 % over it), a step too few only a
            # slower climb, near the rate the REMB came at.
            # Once it has stepped, back to the step's base whatever the REMB says: aiortc's REMB follows what
            # arrives, a burst included, and read 15.6-17.0 kbps over the lab's 15 kbps cap (the estimate stayed
            # over the cap until 12 % loss and a keyframe storm: 36 concealed). Before any step, to the REMB, no
            # lower than a step down. The capacity is noted at the base too, so the climb from there is the slow
            # one near it.
            back = sending_kbps / FAST_INCREASE
            self.capacity_kbps = back if self.start_steps else sending_kbps
            self.start_ended_at = now
            self.start_end_queue_s = self.readings[-1][1] if self.readings else 0.0
            self.loss_kbps = self._clamp(min(self.loss_kbps, back if self.start_steps else max(kbps, back)))
            return self._note(now, before, f"REMB {kbps:.1f} kbps under the {sending_kbps:.1f} sent: end of the start")
        if kbps < before and now - self.loss_cut_at < DECREASE_HOLD_S:
            # Right after a loss cut the receiver still measures the old rate's queue and the new encoder's
            # keyframe: a REMB lower than the estimate then says nothing new.
            return before
        if kbps < before and (now - self.evidence_at > REMB_EVIDENCE_S or echo
                              or (now - self.lost_at > REMB_EVIDENCE_S and self.reads_room(now))):
            # Nor where nothing was lost and the transport feedback reads the link much faster than the estimate
            # (`reads_room`), whatever the RTT says: the RTT's queue is then the busy receiver's (the lab's stepped cap
            # with shapes, s4t1 at 15 frames/s on a 60 kbps link: RTT 125 ms over a low of 50, the feedback reading
            # 0-29 ms with nothing dropped, and REMBs believed as evidence took the estimate from 57 to 36 kbps).
            self.rembs_ignored += 1
            return before
        if kbps < before:
            self.capacity_kbps = before
        self.remb_kbps, self.remb_at = max(0.0, kbps), now
        return self._note(now, before, f"REMB {kbps:.1f} kbps", sending_kbps)

    def on_nack(self, now: float) -> float:
        """A packet was NACKed for the first time: loss is happening (evidence for a lower REMB, and the end of a
        probe's jump on trial)."""
        self.evidence_at = self.lost_at = now
        before = self.estimate(now)
        if now < self.trial_until and self.loss_kbps > self.trial_back_kbps:
            # No lower than RESTORE_SHARE of what the link delivered since the jump (the feedback's median, while a queue
            # stood, less the data channels' share: `link_kbps`): a chain of jumps goes back to where the first started,
            # and the lab's stepped cap with shapes went from 64.1 back to 14.3 kbps on the cap's 60 (the feedback read
            # 41-60 kbps delivered meanwhile), s8t2 for the call's last 4 s at 26-31 dB. Over the 15 kbps cap, where the
            # chain rule comes from, RESTORE_SHARE of the ~15 the ~18 read leaves is under the chain's start, 13.5-14.
            jumped_at = self.trial_until - PROBE_TRIAL_S
            rates = sorted(kbps for t, kbps in self.delivered_log if t >= jumped_at)
            back = self.trial_back_kbps
            if rates:
                back = min(self.loss_kbps, max(back, self._clamp(RESTORE_SHARE * self.link_kbps(rates[len(rates) // 2]))))
            self.trial_until = -math.inf
            self.loss_kbps = self.capacity_kbps = back
            self.loss_cut_at = now
            return self._note(now, before, f"a packet lost right after a probe's jump: back to {back:.1f} kbps")
        return before

    def on_fast_loss(self, now: float, nacked: int, sent: int, sending_kbps: float) -> float:
        """`nacked` of the `sent` packets of a recent window were NACKed (NackLoss): a severe share is a link
        that narrowed, cut as a receiver report's heavy loss would."""
        before = self.estimate(now)
        fraction = min(1.0, nacked / max(1, sent))
        # Both counts must be big enough to mean something: at the call's start the window holds only the
        # sync frames (uncounted), and 5 NACKs of 0 packets sent read as 100 % (the fault lab's TCP row).
        if min(nacked, sent) < NACK_MIN_PACKETS or fraction <= FAST_LOSS or self._in_outage(now):
            return before
        self.evidence_at = self.lost_at = now
        why = f"{nacked} of {sent} packets NACKed in {NACK_WINDOW_S:g} s"
        self._cut_loss(now, 1 - 0.5 * fraction, sending_kbps * (1 - fraction), at_kbps=sending_kbps)
        return self._note(now, before, why)

    def on_probe(self, now: float, kbps: float) -> float:
        """A bandwidth probe got through at `kbps` (the video and the padding together, sender/probe.py): the link
        carries that much now, whatever the reports' slow climb and an older, lower REMB said."""
        before = self.estimate(now)
        if kbps <= before:
            return before
        # A jump on top of one still on trial is taken back with it: to where the first started (the lab's 15 kbps cap:
        # a second probe's jump, taken back to the first's 18.8 kbps, left the estimate over the cap: 44 concealed).
        back = min(before, self.trial_back_kbps) if now < self.trial_until else before
        self.trial_until, self.trial_back_kbps = now + PROBE_TRIAL_S, back
        self.loss_kbps = self._clamp(max(self.loss_kbps, kbps))
        self.remb_kbps = None  # older news than the probe
        self.delay_kbps = None  # no queue held it back
        return self._note(now, before, f"probe: {kbps:.1f} kbps got through")

    def on_probe_sent(self, now: float) -> None:
        """A bandwidth probe's cluster has just gone out (its echo in the REMB is ignored for PROBE_ECHO_S)."""
        self.probed_at = now

    def on_keyframe_storm(self, now: float, requests: int) -> float:
        """The receiver gave up on lost packets `requests` times in a short while."""
        before = self.estimate(now)
        if now - self.evidence_at > REMB_EVIDENCE_S:
            return before
        self._cut_loss(now, 1 - 0.5 * STORM_LOSS, at_kbps=before)
        return self._note(now, before, f"{requests} keyframe requests")

    # -- output --------------------------------------------------------------------------------------------
    def estimate(self, now: float) -> float:
        """The rate the link carries now, as far as the reports tell (kbps)."""
        kbps = self.loss_kbps
        if self.remb_kbps is not None and now - self.remb_at <= REMB_STALE_S:
            kbps = min(kbps, self.remb_kbps)
        if self.delay_kbps is not None:
            kbps = min(kbps, self.delay_kbps)
        return self._clamp(kbps)

    def summary(self, now: float) -> dict:
        """What the estimate heard and where it stands (for the sender's report)."""
        return {"estimate_kbps": round(self.estimate(now), 2), "reports": self.reports, "rembs": self.rembs,
                "rembs_ignored": self.rembs_ignored, "start_rembs_overruled": self.start_rembs_overruled,
                "last_remb_kbps": None if self.remb_kbps is None else round(self.remb_kbps, 2),
                "rtt_ms": None if self.rtt_s is None else round(self.rtt_s * 1000, 1), "feedbacks": self.feedbacks,
                "base_rtt_ms": None if self.base_rtt_s is None else round(self.base_rtt_s * 1000, 1)}

    # -- internals -----------------------------------------------------------------------------------------
    def _on_rtt(self, now: float, rtt_s: float, sending_kbps: float | None) -> str | None:
        self.rtt_s = rtt_s if self.rtt_s is None else RTT_ALPHA * self.rtt_s + (1 - RTT_ALPHA) * rtt_s
        if self.base_rtt_s is None or rtt_s < self.base_rtt_s:
            self.base_rtt_s, self.base_rtt_at = rtt_s, now
        else:  # forget a minimum slowly, so a longer route does not read as a queue forever
            self.base_rtt_s = min(rtt_s, self.base_rtt_s + BASE_RTT_DRIFT * (now - self.base_rtt_at))
            self.base_rtt_at = now
        queue = self.rtt_s - self.base_rtt_s
        if queue >= REMB_QUEUE_S:
            self.evidence_at = self.queue_at = now
        # While transport feedback comes it reads the same queue one way, several times a second, free of the return
        # path and of both event loops, and cuts for it; the RTT's queue stays evidence for the loss rule and the REMB
        # (a small queue overflows at a few %: the lab's 15 kbps cap lost 5-10 % with 0.25-0.3 s read). The RTT's cut at
        # 15 kbps counts each packet's time on the link besides (there: 201 ms over its low held the video at 4 kbps
        # for the rest of the call).
        if queue > RTT_QUEUE_S and now - self.feedback_at > FEEDBACK_FRESH_S:
            if now - self.delay_cut_at >= DELAY_HOLD_S:
                basis = min(sending_kbps or math.inf, self.estimate(now))
                self.delay_kbps, self.delay_cut_at = self._clamp(basis * DELAY_BACKOFF), now
                self.capacity_kbps = basis
                return f"RTT {self.rtt_s * 1000:.0f} ms, {queue * 1000:.0f} ms above its low: a queue"
            return None
        if self.delay_kbps is not None and queue < REMB_QUEUE_S:
            # The queue drained: the delay controller lets go, and the loss controller climbs from there (fast
            # away from the capacity the queue was noted at, slowly near it).
            self.loss_kbps = min(self.loss_kbps, self.delay_kbps)
            self.delay_kbps = None
        return None

    def link_widened(self, now: float) -> bool:
        """Whether the feedback says the link just got faster (WIDENED_QUEUE_S, or SIZE_READINGS): worth a probe now."""
        recent = list(self.readings)
        if len(recent) <= WIDENED_FEEDBACKS or now - recent[-1][0] > WIDENED_FRESH_S:
            return False
        last = recent[-WIDENED_FEEDBACKS:]
        before = sorted(q for _, q in recent[:-WIDENED_FEEDBACKS] if q < FEEDBACK_HOLD_QUEUE_S)
        if (len(before) >= WIDENED_MIN_READINGS and all(q < WIDENED_QUEUE_S for _, q in last)
                and before[len(before) // 2] >= 2 * WIDENED_QUEUE_S):
            return True
        sized_kbps = self.sized_rate_kbps(now)
        return sized_kbps is not None and sized_kbps >= SIZE_RATE_RATIO * self.estimate(now)

    def sized_rate_kbps(self, now: float) -> float | None:
        """The link's rate from the one-packet readings' slope against their sizes (SIZE_READINGS; kbps of the sizes
        the receiver counts), or None where they are too few, too alike in size, or read a queue."""
        sized = [x for x in self.sized if x[0] >= now - SIZE_HISTORY_S]
        if len(sized) < SIZE_READINGS:
            return None
        sizes = [b for _, b, _ in sized]
        queues = [q for _, _, q in sized]
        if max(sizes) - min(sizes) < SIZE_SPREAD_BYTES or max(queues) >= FEEDBACK_HOLD_QUEUE_S:
            return None
        seconds_per_byte = theil_sen_slope(sizes, queues)
        return 8 / seconds_per_byte / 1000 if seconds_per_byte is not None and seconds_per_byte > 0 else None

    def _in_outage(self, now: float) -> bool:
        """A silence of receiver reports is under way, or just ended (OUTAGE_S, OUTAGE_GRACE_S)."""
        silent = self.report_at is not None and now - self.report_at > OUTAGE_S
        return silent or now - self.outage_ended_at <= OUTAGE_GRACE_S

    def congested_at(self) -> float:
        """When the last congestion signal came: a loss or delay cut, or a queue in the RTT."""
        return max(self.loss_cut_at, self.delay_cut_at, self.queue_at)

    def queue_rose(self, since: float) -> bool:
        """Whether a feedback since `since` read a queue PROBE_RISE_S over the median of those in the PROBE_BEFORE_S before."""
        before = sorted(q for t, q in self.readings if since - PROBE_BEFORE_S <= t < since)
        after = [q for t, q in self.readings if t >= since]
        return bool(before and after) and max(after) - before[len(before) // 2] >= PROBE_RISE_S

    def link_kbps(self, delivered_kbps: float) -> float:
        """The link's own rate from a delivered rate that counts the data channels' share (`data_kbps`, RESTORE_SHARE)."""
        return max(0.0, delivered_kbps - self.data_kbps)

    def reads_room(self, now: float) -> bool:
        """Whether the feedback says the link is much faster than the estimate (ROOM_RATIO): room for a blind probe."""
        ratios = sorted(r for t, r in self.room if t >= now - ROOM_HISTORY_S)
        return len(ratios) >= ROOM_READINGS and ratios[len(ratios) // 2] <= ROOM_RATIO

    def full_at(self) -> float:
        """When the link last showed itself full: a cut for a standing queue (the transport feedback) or for a queue's
        loss (a receiver report, NACKs), each of which sets `overflow_at`, or a queue standing at the link's measured rate
        (FULL_QUEUE_S). Not a REMB's trim, nor a probe's jump taken back."""
        return max(self.overflow_at, self.full_seen_at)

    def quiet_since(self) -> float:
        """When the estimate last went down to under what is sent, by more than LOWERED_SHARE (a believed REMB, the end
        of the start, a cut): a link quiet since then is worth probing (sender/probe.py). Not an RTT a little over its
        low without a cut: on a 2-core machine the busy receiver and relay hold RTCP long enough for that (the lab's
        stepped cap: 0.1-0.2 s over the low with 8 kbps on a 60 kbps link, and no probe for the 8 s after the link
        widened)."""
        return self.lowered_at

    @property
    def starting(self) -> bool:
        """In the slow start: no congestion signal yet."""
        return self.capacity_kbps is None

    def _queue_output(self, now: float, fraction_lost: float, expected: int | None,
                      delivered_kbps: float | None) -> str | None:
        """Inside the hold after a cut for a full queue (not a probe's jump taken back: random loss does that too, and
        the lab's 10 % loss row then read 29 % of 7 packets as a queue's output), a report whose own loss is still
        heavy: the estimate goes to DELIVERED_SHARE of the rate the link delivered (when lower). The reason if it did."""
        if (delivered_kbps is None or expected is None or expected < DELIVERED_MIN_PACKETS
                or fraction_lost <= QUEUE_LOSS or not now - self.overflow_at < DECREASE_HOLD_S):
            return None
        target = self._decrease_to(now, DELIVERED_SHARE * delivered_kbps)
        if target >= self.loss_kbps:
            return None
        self.loss_kbps = target
        self.capacity_kbps = min(self.capacity_kbps or math.inf, delivered_kbps)
        self.overflow_at = now
        return f"{fraction_lost:.0%} lost, {delivered_kbps:.1f} kbps delivered: the queue still overflows"

    def _cut_loss(self, now: float, factor: float, through_kbps: float | None = None, at_kbps: float | None = None,
                  capacity_kbps: float | None = None) -> bool:
        """The loss controller's decrease (to `factor` of itself, or to what got through if that is lower),
        unless the last one is too recent to have shown in the reports. `at_kbps`: the rate the loss came at;
        `capacity_kbps`: the link's rate, when measured (else taken to be that rate)."""
        if now - self.loss_cut_at < DECREASE_HOLD_S:
            return False
        self.pooled.clear()  # the loss after a cut is the new rate's
        # From what was sent, when the estimate had run ahead of it: a cut never raises the sender's rate.
        basis = min(self.loss_kbps, at_kbps) if at_kbps else self.loss_kbps
        self.capacity_kbps = min(basis, capacity_kbps) if capacity_kbps else basis
        self.loss_kbps = self._decrease_to(now, min(basis * factor, math.inf if through_kbps is None else through_kbps))
        self.loss_cut_at = self.overflow_at = now
        return True

    def _decrease_to(self, now: float, kbps: float) -> float:
        """A cut's target, clamped; one under the floor is remembered (`move_floor`)."""
        if kbps < self.min_kbps:
            self.wanted_kbps, self.wanted_at = kbps, now
        return self._clamp(kbps)

    def move_floor(self, now: float, min_kbps: float) -> None:
        """The floor moves (sender/session.py: a sparser stream shape pays fewer packet headers for the same video floor).
        A cut within DECREASE_HOLD_S that wanted to go under the old floor goes as far as the new one lets it: the lab's
        stepped cap with shapes cut at its step to 15 kbps from s4t1, whose floor is 16.9 kbps on the wire, and stayed
        there over the link until the next cut 1.3-2.3 s later, the shape already s8t2 (floor 13.0)."""
        before = self.estimate(now)
        self.min_kbps = min_kbps
        if self.wanted_kbps is not None and now - self.wanted_at < DECREASE_HOLD_S and self.loss_kbps > min_kbps:
            self.loss_kbps = max(min_kbps, self.wanted_kbps)
            self._note(now, before, f"the floor moved to {min_kbps:.1f} kbps: the last cut goes on")

    def _clamp(self, kbps: float) -> float:
        return min(self.max_kbps, max(self.min_kbps, kbps))

    def _note(self, now: float, before: float, why: str, sending_kbps: float | None = None) -> float:
        """Log a change of the estimate. A decrease to more than LOWERED_SHARE under both what it was and what is sent
        (`sending_kbps`, when known) is news of the link (`lowered_at`); one that stays above what is sent or close to
        it (a REMB trimming an estimate that ran ahead: a probe's echo) is not."""
        after = self.estimate(now)
        if after < (1 - LOWERED_SHARE) * min(before, math.inf if sending_kbps is None else sending_kbps):
            self.lowered_at = now
        if after != before:
            self.reason = why
            if len(self.history) < MAX_HISTORY:
                self.history.append(Change(now, round(after, 2), why))
        return after
