"""Bandwidth probes (sender/probe.py, receiver/probes.py): when one is due, what its answer means, and a probed call."""

from __future__ import annotations

import asyncio
import math

import pytest

from protocol import messages as msg
from receiver.probes import CLUSTER_WAIT_S, MAX_OPEN_CLUSTERS, ProbeTimer
from sender import probe as probe_module
from sender.bwe import PROBE_TRIAL_S, RESTORE_SHARE, BandwidthEstimator
from sender.probe import (ACCEPT_SHARE, AFTER_SUCCESS_S, BACKOFF_FEEDBACK_S, BACKOFF_S, FAILED_RAISE, FULL_READ_OFFER,
                          PROBE_GAIN, PROBE_MESSAGES, PROBE_S, QUIET_S, RAISE_MIN_PAYLOAD, SUCCESS_LINK_SHARE,
                          UNCONFIRMED_RETRY_S, Prober)
from sender.pacer import UDP_IP_BYTES
from sender.session import DATA_HEADROOM_KBPS


class Link:
    """The track's side of a probe: an estimator, what is sent, the request."""

    def __init__(self, estimate: float = 14.0, request: float = 66.0):
        self.estimator = BandwidthEstimator(start_kbps=estimate, min_kbps=5.0, max_kbps=request)
        self.estimator.capacity_kbps = estimate  # past the slow start: a narrow spell happened
        self.estimator.loss_cut_at = -100.0
        self.sending = estimate
        self.request = request
        self.background = None
        self.successes: list[float] = []

    def sent_kbps(self) -> float:
        return self.sending

    def request_wire_kbps(self) -> float:
        return self.request

    def on_probe_success(self, kbps: float) -> None:
        self.successes.append(kbps)
        self.estimator.on_probe(0.0, kbps)


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    async def sleep(self, s: float) -> None:
        self.t += s
        await asyncio.sleep(0)


def hearing_feedback(link: Link, reading: float) -> Clock:
    """A clock at 50 s for a probe whose sender hears transport feedback: the link read empty a second before, and
    each sleep (the probe's gaps, its wait for the feedback on the video's packets sent beside the padding) ends with
    a feedback reading `reading` s of queue."""
    clock = Clock()
    clock.t = 50.0
    link.estimator.on_feedback(49.0, 0.02, None, sending_kbps=14.0)
    sleep = clock.sleep

    async def sleep_and_hear(s: float) -> None:
        await sleep(s)
        link.estimator.on_feedback(clock.t, reading, None, sending_kbps=14.0)

    clock.sleep = sleep_and_hear
    return clock


def run_probe(link: Link, link_kbps: float, lost: int = 0, clock: Clock | None = None,
              late: float = 0.0, padding_kbps: float | None = None, video_kbps: float | None = None,
              counted: bool = True) -> tuple[Prober, list[bytes]]:
    """One probe through a link carrying `link_kbps` in all (the video's part of it first): the receiver sees the
    padding spread at what is left of the link when that is less than it was sent at, and counts the video's packets
    that arrived meanwhile, at what is sent. `late`: the sender's loop sleeps this much past each gap (the cluster
    leaves, and arrives, that much slower). `padding_kbps` / `video_kbps`: the rates the two arrived at instead (a
    cluster's timing is noisy). `counted`: the receiver counts what else arrived (a receiver that predates the counts
    does not)."""
    clock = clock or Clock()
    if late:
        on_time = clock.sleep

        async def late_sleep(s: float) -> None:
            await on_time(s + late)

        clock.sleep = late_sleep
    sent: list[bytes] = []
    prober = Prober(link, sent.append, clock=clock, sleep=clock.sleep)

    async def go():
        task = asyncio.ensure_future(prober.probe())
        while len(sent) < PROBE_MESSAGES:
            await asyncio.sleep(0)
        message_wire = probe_module.wire_bytes(len(sent[0]))
        gap = prober.plan(clock())[3] + late
        sent_kbps = message_wire * 8 / 1000 / gap
        room = max(0.1, link_kbps - link.sending)
        arrived = padding_kbps if padding_kbps is not None else min(sent_kbps, room)
        span = gap * (PROBE_MESSAGES - 1) * sent_kbps / arrived
        received = PROBE_MESSAGES - lost
        span = span * (received - 1) / (PROBE_MESSAGES - 1)
        # Every datagram after the first message and up to the last: the later messages, the video's packets.
        wire = message_wire * (received - 1) + (link.sending if video_kbps is None else video_kbps) * 125 * span
        datagrams = received - 1 + max(1, round(span * 7.5))
        prober.on_result(msg.ProbeResult(cluster=prober.cluster, received=received, span_us=round(span * 1e6),
                                         counted=counted, datagrams=datagrams if counted else 0,
                                         datagram_bytes=round(wire - datagrams * UDP_IP_BYTES) if counted else 0))
        return await task

    asyncio.run(go())
    return prober, sent


def test_a_probe_over_a_wide_link_lifts_the_estimate_to_what_got_through():
    link = Link(estimate=14.0)
    prober, sent = run_probe(link, link_kbps=60.0)
    assert len(sent) == PROBE_MESSAGES and all(msg.decode(d).cluster == 1 for d in sent)
    outcome = prober.outcomes[-1]
    assert outcome.ok and outcome.planned_kbps == pytest.approx(PROBE_GAIN * 14.0)
    assert link.successes and link.successes[0] == pytest.approx(SUCCESS_LINK_SHARE * PROBE_GAIN * 14.0, rel=0.15)
    assert link.estimator.estimate(0.0) == pytest.approx(link.successes[0])
    assert prober.wait_s == AFTER_SUCCESS_S  # the next probe goes higher soon
    link.sending = link.successes[0]
    assert prober.plan(prober.last_probe_at + AFTER_SUCCESS_S)[0] == pytest.approx(PROBE_GAIN * link.successes[0])


def test_a_probe_a_little_over_the_link_lifts_the_estimate_only_to_what_got_through():
    link = Link(estimate=14.0)
    prober, _ = run_probe(link, link_kbps=27.5)  # 28 planned: every message arrives, at 13.5/14 of the padding's rate
    outcome = prober.outcomes[-1]
    assert outcome.ok and outcome.measured_kbps < outcome.padding_kbps
    # Not 0.95 x (video + all the padding) = 26.6: 0.95 x (the video as sent + the padding as it arrived), the link.
    assert link.successes[0] == pytest.approx(SUCCESS_LINK_SHARE * 27.5, rel=0.02)


def test_a_success_that_read_the_widened_link_a_little_low_still_climbs_back():
    """Stop 36's whole table, the stepped cap with shapes: the chain's second probe, to 62.6 kbps from a 31.3 kbps
    estimate, came through whole, the padding at its full rate, and its span read 56.1 kbps of the 60 kbps link (the
    video sent less than its target). 0.9 of that is 50.5 kbps, under the 51 (85 % of 60) that count as climbed back,
    and the next probe failed with a queue and backed off 15 s."""
    link = Link(estimate=31.28, request=80.0)
    link.sending = 24.85
    prober, _ = run_probe(link, link_kbps=60.0, padding_kbps=37.7, video_kbps=18.4)
    outcome = prober.outcomes[-1]
    assert outcome.ok and outcome.planned_kbps == pytest.approx(62.56)
    assert outcome.link_kbps == pytest.approx(56.1, abs=0.6) and ACCEPT_SHARE * outcome.link_kbps < 51.0
    assert link.estimator.estimate(0.0) == pytest.approx(SUCCESS_LINK_SHARE * outcome.link_kbps, rel=0.01)
    assert link.estimator.estimate(0.0) >= 51.0


def test_a_probe_over_a_narrow_link_fails_and_backs_off():
    link = Link(estimate=14.0)
    prober, _ = run_probe(link, link_kbps=15.0)
    assert not prober.outcomes[-1].ok and not link.successes
    assert link.estimator.estimate(0.0) == pytest.approx(14.0)
    assert prober.wait_s == BACKOFF_S[0]
    run_probe(link, link_kbps=15.0)  # a fresh prober: the backoff is its own
    prober.failures_in_a_row = 3
    prober.wait_s = 0
    asyncio.run(_fail_once(prober, link))
    assert prober.wait_s == min(BACKOFF_S[1], BACKOFF_S[0] * 2 ** 3)
    # The link narrowed since that probe (a cut): the failures were of another link, and the backoff starts again.
    link.estimator.on_fast_loss(prober.last_probe_at + 1.0, 8, 10, sending_kbps=14.0)
    asyncio.run(_fail_once(prober, link))
    assert prober.failures_in_a_row == 1 and prober.wait_s == BACKOFF_S[0]


async def _fail_once(prober: Prober, link: Link) -> None:
    task = asyncio.ensure_future(prober.probe())
    await asyncio.sleep(0)
    prober.on_result(msg.ProbeResult(cluster=prober.cluster, received=2, span_us=400_000))
    await task


def test_a_widened_links_probe_that_fails_unconfirmed_is_retried_soon_whatever_failed_before():
    """The lab's stepped cap with shapes: a probe failed (confirmed) at the step down; 8 s later the link widened, its
    first probe arrived at 93 % of its rate with no queue in the feedback (the cluster's noise), and no probe followed:
    the old failure still counted, and blind probes wait QUIET_FEEDBACK_S after the cut at the step down."""
    clock = Clock()
    clock.t = 17.5
    link = Link(estimate=14.0)
    bwe = link.estimator
    bwe.overflow_at = 9.3  # the cut at the step down
    prober = Prober(link, lambda data: None, clock=clock, sleep=clock.sleep)
    prober.failures_in_a_row, prober.last_probe_at, prober.wait_s = 1, 9.45, BACKOFF_FEEDBACK_S[0]
    bwe.on_feedback(17.0, 0.002, None, sending_kbps=14.0)  # feedback comes, reading no queue
    bwe.widened_at = 17.2
    asyncio.run(_fail_once(prober, link))
    assert prober.outcomes[-1].confirmed is False
    assert prober.failures_in_a_row == 0 and prober.wait_s == UNCONFIRMED_RETRY_S
    assert prober.due(prober.last_probe_at + UNCONFIRMED_RETRY_S)
    # Without a widening since, the old failure counts: the backoff, and no blind probe so soon after the cut.
    old = Prober(Link(estimate=14.0), lambda data: None, clock=clock, sleep=clock.sleep)
    old.link.estimator.overflow_at = 9.3
    old.failures_in_a_row, old.last_probe_at = 1, 9.45
    old.link.estimator.on_feedback(clock.t, 0.002, None, sending_kbps=14.0)
    asyncio.run(_fail_once(old, old.link))
    assert old.failures_in_a_row == 1 and not old.due(old.last_probe_at + UNCONFIRMED_RETRY_S)


def test_a_lost_padding_message_is_a_failed_probe():
    link = Link()
    prober, _ = run_probe(link, link_kbps=200.0, lost=1)
    assert not prober.outcomes[-1].ok and not link.successes


def test_no_answer_is_a_failed_probe(monkeypatch):
    monkeypatch.setattr(probe_module, "RESULT_TIMEOUT_S", 0.01)
    link = Link()
    clock = Clock()
    prober = Prober(link, lambda data: None, clock=clock, sleep=clock.sleep)
    outcome = asyncio.run(prober.probe())
    assert not outcome.ok and outcome.received == 0


def test_probes_wait_for_a_quiet_link_below_the_request_without_a_background_flow():
    link = Link(estimate=14.0)
    prober = Prober(link, lambda data: None)
    assert prober.due(10.0)
    link.estimator.capacity_kbps = None
    assert not prober.due(10.0)  # the slow start probes by itself
    link.estimator.capacity_kbps = 14.0
    link.estimator.on_fast_loss(9.0, 8, 10, sending_kbps=14.0)  # a loss cut a second ago
    assert not prober.due(10.0) and prober.due(9.0 + QUIET_S)
    link.estimator.lowered_at = 9.5  # a believed REMB, say
    assert not prober.due(9.0 + QUIET_S) and prober.due(9.5 + QUIET_S)
    link.estimator.on_report(9.4 + QUIET_S, 0.0, rtt_s=0.01, sending_kbps=5.4)
    link.estimator.loss_kbps = 5.4  # near the floor (5 kbps)
    link.estimator.on_report(9.5 + QUIET_S, 0.0, rtt_s=0.5, sending_kbps=5.4)  # a queue in the RTT: a delay cut ...
    assert link.estimator.estimate(10.0 + QUIET_S) == 5.0 and "queue" in link.estimator.reason
    assert prober.due(10.0 + QUIET_S)  # ... held up by the floor to a few %: no news of the link
    link.estimator.loss_kbps, link.estimator.delay_kbps = 14.0, None
    link.background = object()
    assert not prober.due(20.0)
    link.background = None
    link.estimator.loss_kbps = 0.96 * link.request
    assert not prober.due(20.0)  # near the request: nothing to find
    link.estimator.loss_kbps = 14.0
    prober.last_probe_at, prober.wait_s = 19.0, 4.0
    assert not prober.due(20.0) and prober.due(23.0)


def test_the_probe_is_capped_near_the_request():
    link = Link(estimate=40.0, request=60.0)
    total, padding, payload, gap = Prober(link, lambda data: None).plan(0.0)
    assert total == pytest.approx(66.0) and padding == pytest.approx(26.0)
    assert 0 < payload <= msg.MAX_PROBE_BYTES and gap == pytest.approx(PROBE_S / (PROBE_MESSAGES - 1))


def test_a_small_probe_spreads_its_messages_instead_of_overshooting():
    """At a few kbps of padding even an empty message is more than a gap of PROBE_S / 3 allows: the gaps grow."""
    link = Link(estimate=8.0)
    prober = Prober(link, lambda data: None)
    total, padding, payload, gap = prober.plan(0.0)
    assert payload == 0 and gap > PROBE_S / (PROBE_MESSAGES - 1)
    wire = probe_module.wire_bytes(len(prober._message(0, b"")))
    assert wire * 8 / 1000 / gap == pytest.approx(padding)


def test_the_receiver_answers_each_cluster_once():
    timer = ProbeTimer()
    for seq in range(3):
        assert timer.on_probe(msg.Probe(cluster=1, seq=seq, count=4, data=b""), 10.0 + 0.1 * seq) == []
    assert timer.on_probe(msg.Probe(cluster=1, seq=1, count=4, data=b""), 10.25) == []  # a duplicate counts once
    (result,) = timer.on_probe(msg.Probe(cluster=1, seq=3, count=4, data=b""), 10.3)
    assert (result.cluster, result.received) == (1, 4) and result.span_us == pytest.approx(300_000, abs=1)
    assert timer.on_probe(msg.Probe(cluster=1, seq=2, count=4, data=b""), 10.4) == []  # a straggler: answered already


def test_the_receiver_answers_an_incomplete_cluster_after_its_wait_and_bounds_what_it_holds():
    timer = ProbeTimer()
    timer.on_probe(msg.Probe(cluster=5, seq=0, count=5, data=b""), 1.0)
    timer.on_probe(msg.Probe(cluster=5, seq=2, count=5, data=b""), 1.2)
    assert timer.expire(1.0 + CLUSTER_WAIT_S / 2) == []
    (result,) = timer.expire(1.0 + CLUSTER_WAIT_S)
    assert result.received == 2 and result.span_us == pytest.approx(200_000, abs=1)
    answers = []
    for cluster in range(100, 100 + 10 * MAX_OPEN_CLUSTERS):
        answers += timer.on_probe(msg.Probe(cluster=cluster, seq=0, count=5, data=b""), 2.0 + cluster)
    assert len(timer.open) <= MAX_OPEN_CLUSTERS and len(answers) == 10 * MAX_OPEN_CLUSTERS - MAX_OPEN_CLUSTERS
    assert len(timer.answered) <= 65


def test_the_estimator_jumps_on_a_probe_and_forgets_an_older_lower_remb():
    bwe = BandwidthEstimator(start_kbps=14.0, min_kbps=5.0, max_kbps=66.0)
    bwe.remb_kbps, bwe.remb_at = 15.0, 0.0
    assert bwe.on_probe(1.0, 21.0) == 21.0
    assert bwe.history[-1].reason.startswith("probe")
    assert bwe.on_probe(1.5, 18.0) == 21.0  # a probe never lowers it
    assert bwe.on_probe(2.0, 500.0) == 66.0  # within the call's range
    assert not math.isinf(bwe.estimate(3.0))


def test_a_probed_loopback_call_climbs_by_its_probes(model_bytes, tmp_path, monkeypatch):
    """A call held far under its request after a narrow spell (here: started at 6 of 60 kbps with the slow start
    over, the capacity noted there), on loopback, probing on: the receiver answers each cluster, the probes get
    through, and the estimate jumps on them instead of climbing report by report."""
    from codec.video import read_video
    from receiver.session import Receiver, ReceiveOptions
    from sender.session import SendOptions, send

    start = BandwidthEstimator.__post_init__

    def after_a_narrow_spell(self):
        start(self)
        self.capacity_kbps = self.start_kbps

    monkeypatch.setattr(BandwidthEstimator, "__post_init__", after_a_narrow_spell)

    frames, _ = read_video("carphone", frames="0:12")

    async def run():
        receiver = Receiver(ReceiveOptions(port=0, output=str(tmp_path / "out.mp4")))
        port = await receiver.start()
        try:
            result = await send(frames, 8.0, model_bytes, SendOptions(port=port, kbps=60.0, start_kbps=6.0, fps=8.0, loop=4,
                                                                      model_pace="off", early_start=False, probe="on"))
            return await receiver.wait(30), result
        finally:
            await receiver.stop()

    stats, result = asyncio.run(run())
    probes = result.extra["probes"]
    assert probes["probes"] >= 1 and probes["succeeded"] >= 1, probes
    assert stats["probe_results"] == probes["probes"]
    assert any(e["reason"].startswith("probe") for e in result.extra["estimate_log"])
    # The receiver counted the video's packets that arrived in the clusters' spans: the link read from all of it.
    assert any(o["link_kbps"] > 1.05 * o["measured_kbps"] for o in probes["outcomes"] if o["link_kbps"] is not None), probes
    assert stats["frames_out"] == 48


def test_a_remb_that_trims_the_estimate_above_what_is_sent_leaves_the_link_quiet():
    """After a probe the estimate runs ahead of the video; a believed REMB above what is sent, or a little under it, is
    no news of the link (it would stop the next probe), one well under it is."""
    bwe = BandwidthEstimator(start_kbps=14.0, min_kbps=5.0, max_kbps=66.0)
    bwe.capacity_kbps = 14.0
    bwe.on_probe(1.0, 30.0)
    bwe.on_nack(1.5)  # evidence: the REMB is believed (and the probe's jump was on trial: back to 14)
    assert bwe.estimate(1.5) == 14.0
    bwe.on_probe(5.0, 30.0)
    bwe.on_nack(PROBE_TRIAL_S + 5.5)  # evidence, after the trial
    bwe.on_remb(PROBE_TRIAL_S + 6.0, 25.0, sending_kbps=15.0)
    assert bwe.estimate(PROBE_TRIAL_S + 6.0) == 25.0 and bwe.quiet_since() < 5.0
    bwe.on_remb(PROBE_TRIAL_S + 6.5, 14.0, sending_kbps=15.0)  # under what is sent, but by a few %: no news either
    assert bwe.estimate(PROBE_TRIAL_S + 6.5) == 14.0 and bwe.quiet_since() < 5.0
    bwe.on_remb(PROBE_TRIAL_S + 7.0, 12.0, sending_kbps=15.0)
    assert bwe.estimate(PROBE_TRIAL_S + 7.0) == 12.0 and bwe.quiet_since() == PROBE_TRIAL_S + 7.0


def test_a_probe_is_planned_from_what_is_sent_not_from_the_target():
    """An encoder under its target leaves room a probe planned from the target would not fill: the padding makes up
    the difference, so the total is PROBE_GAIN x the estimate on the link."""
    link = Link(estimate=14.0)
    link.sending = 9.0  # the video spends a third less than its 14 kbps
    total, padding, _, _ = Prober(link, lambda data: None).plan(0.0)
    assert total == pytest.approx(PROBE_GAIN * 14.0) and padding == pytest.approx(total - 9.0)


def test_a_packet_lost_right_after_a_probes_jump_takes_the_estimate_back():
    bwe = BandwidthEstimator(start_kbps=12.0, min_kbps=5.0, max_kbps=66.0)
    bwe.capacity_kbps = 12.0
    bwe.on_probe(10.0, 21.9)  # through a 15 kbps link, by a cluster's noisy timing
    assert bwe.estimate(10.0) == 21.9
    bwe.on_nack(10.0 + PROBE_TRIAL_S / 2)
    assert bwe.estimate(11.0) == 12.0 and "probe" in bwe.reason and bwe.quiet_since() == 10.0 + PROBE_TRIAL_S / 2
    stacked = BandwidthEstimator(start_kbps=12.0, min_kbps=5.0, max_kbps=66.0)
    stacked.capacity_kbps = 12.0
    stacked.on_probe(10.0, 18.8)
    stacked.on_probe(10.8, 26.9)  # a second jump while the first is on trial
    stacked.on_nack(11.0)
    assert stacked.estimate(11.0) == 12.0  # both taken back
    kept = BandwidthEstimator(start_kbps=12.0, min_kbps=5.0, max_kbps=66.0)
    kept.capacity_kbps = 12.0
    kept.on_probe(10.0, 21.9)
    kept.on_nack(10.0 + PROBE_TRIAL_S + 0.1)  # after the trial: loss as any other, for the reports to judge
    assert kept.estimate(13.0) == 21.9


def test_a_jump_taken_back_goes_no_lower_than_what_the_link_delivered_meanwhile():
    def chain(delivered: list[float]) -> BandwidthEstimator:
        bwe = BandwidthEstimator(start_kbps=14.3, min_kbps=5.0, max_kbps=70.0, data_kbps=DATA_HEADROOM_KBPS)
        bwe.capacity_kbps = 14.3  # the lab's stepped cap with shapes, 1.7 s after the step up to 60 kbps
        for t, kbps in ((17.7, 25.6), (18.2, 49.0), (18.8, 64.1)):  # three jumps, each on the last one's trial
            bwe.on_probe_sent(t - 0.2)
            bwe.on_probe(t, kbps)
        for k, kbps in enumerate(delivered):  # the queue over the cap, and what it let through
            bwe.on_feedback(19.0 + 0.2 * k, 0.25, kbps, sending_kbps=64.1)
        bwe.on_nack(20.0)
        return bwe

    wide = chain([56.1, 41.4, 45.0, 54.2, 59.6])
    link = 54.2 - DATA_HEADROOM_KBPS  # the median read, less the data channels' share the sender adds to it
    assert wide.estimate(20.0) == pytest.approx(RESTORE_SHARE * link) and wide.capacity_kbps == wide.estimate(20.0)
    assert f"back to {RESTORE_SHARE * link:.1f} kbps" in wide.reason
    # Without a measure, back to where the chain started; over a 15 kbps cap (~18 read with the data channels'
    # share), RESTORE_SHARE of the link's rate is under the chain's start, which holds.
    assert chain([]).estimate(20.0) == pytest.approx(14.3)
    assert chain([17.9, 18.0, 17.8]).estimate(20.0) == pytest.approx(14.3)


def test_a_failed_probe_that_still_timed_a_wider_link_raises_the_estimate():
    link = Link(estimate=40.0, request=100.0)
    prober, _ = run_probe(link, link_kbps=75.0)  # 80 planned: the padding arrives at 35/40 of its rate
    outcome = prober.outcomes[-1]
    assert not outcome.ok and outcome.raised and outcome.link_kbps == pytest.approx(75.0, rel=0.02)
    assert link.successes[0] == pytest.approx(ACCEPT_SHARE * 75.0, rel=0.02)  # everything that arrived in the span
    assert link.successes[0] >= FAILED_RAISE * 40.0
    # It offered the link little more than it read: the link may be wider still, and the next probe follows soon.
    assert not outcome.read_full and prober.wait_s == AFTER_SUCCESS_S
    near = Link(estimate=40.0, request=100.0)
    prober, _ = run_probe(near, link_kbps=46.0)  # 6/40 arrives: 0.9 of the link is about what the estimate says
    assert not prober.outcomes[-1].raised and not near.successes and prober.wait_s == BACKOFF_S[0]



@pytest.mark.parametrize("feedback", [False, True])
def test_a_failure_that_read_the_link_full_raises_without_a_follow_up(feedback):
    """The lab's stepped cap after its step up: from an estimate of 46 kbps a probe offered 73.7 kbps to the 60 kbps
    link and its span read 60. The link is what it read: the estimate goes to ACCEPT_SHARE of it, and the next probe
    waits as after a failure. Followed up at once, 64 of 79 such probes failed (42 with a queue the feedback read), and
    aiortc's REMB cut the estimate under the 51 kbps that count as climbed back about 3 s later."""
    link = Link(estimate=46.0, request=67.0)
    link.sending = 35.0
    clock = hearing_feedback(link, 0.01) if feedback else None
    prober, _ = run_probe(link, link_kbps=60.0, clock=clock)
    outcome = prober.outcomes[-1]
    assert prober.plan(clock() if clock else 0.0)[0] >= FULL_READ_OFFER * 60.0
    assert not outcome.ok and outcome.raised and outcome.read_full
    assert link.successes == [pytest.approx(ACCEPT_SHARE * 60.0, rel=0.02)]
    assert prober.wait_s == (BACKOFF_FEEDBACK_S if feedback else BACKOFF_S)[0]
    assert not prober.due((clock() if clock else 0.0) + 1.0)

@pytest.mark.parametrize("reading,raised", [(None, False), (0.01, True), (0.25, False)])
def test_a_narrow_links_failed_probe_raises_only_where_the_feedback_read_no_queue(reading, raised):
    """The stepped cap's first probe on the widened link: messages of hardly more than headers, whose padding arrived
    at 83-94 % of its rate while the span read 1.7-2.6x the estimate, and no queue in the feedback: the link took it
    all. Over a narrow link the same probe builds a queue, and there the span's reading is only the timing's.
    Without feedback such a failure raises nothing."""
    link = Link(estimate=14.0)
    assert Prober(link, lambda data: None).plan(0.0)[2] < RAISE_MIN_PAYLOAD  # bytes of padding a message
    clock = Clock() if reading is None else hearing_feedback(link, reading)
    prober, _ = run_probe(link, link_kbps=24.0, clock=clock, padding_kbps=11.6)  # the padding at 83 % of its rate
    outcome = prober.outcomes[-1]
    assert not outcome.ok and outcome.raised is raised and outcome.link_kbps > 1.7 * 14.0
    assert outcome.confirmed is (None if reading is None else not raised)
    if raised:  # to what the span read
        assert link.successes == [pytest.approx(ACCEPT_SHARE * outcome.link_kbps, rel=0.01)]
        assert prober.wait_s == AFTER_SUCCESS_S
    else:
        assert not link.successes


def test_a_failed_probe_reads_the_link_from_everything_that_arrived_in_its_span():
    """The lab's stepped cap: on the 60 kbps link the video sent ~35 kbps of a 46 kbps estimate, and the chain's last
    probe, to 73.7 kbps, failed. Its padding's own timing, two gaps between three messages, read 41-81 kbps of the link
    with the video as sent: under FAILED_RAISE x the estimate (it stayed at 46, short of the 51 that count as climbed
    back) or over the link (the estimate went there and the queue overflowed). The receiver counts the video's packets
    that arrived in the cluster's span too: through a full link all of it came at the link's rate."""
    def probe(padding_kbps: float, video_kbps: float | None, counted: bool = True) -> tuple[Prober, Link]:
        link = Link(estimate=46.0, request=67.0)
        link.sending = 35.0
        prober, _ = run_probe(link, link_kbps=60.0, padding_kbps=padding_kbps, video_kbps=video_kbps, counted=counted)
        return prober, link

    for padding in (21.0, 25.0, 31.0, 36.0):  # the cluster's noise: the padding's share of a full link's span
        prober, link = probe(padding, 60.0 - padding)
        outcome = prober.outcomes[-1]
        assert prober.plan(0.0)[0] == pytest.approx(1.1 * 67.0) and not outcome.ok and outcome.raised
        assert outcome.link_kbps == pytest.approx(60.0, rel=0.02)
        assert link.estimator.estimate(0.0) == pytest.approx(ACCEPT_SHARE * 60.0, rel=0.02)
    # A receiver that counts nothing beside the padding (it predates the counts): the padding alone is no measure of
    # the link, and the estimate stays (the old reading, the video as sent plus the padding, put it at 63.9 kbps).
    prober, link = probe(36.0, 0.0, counted=False)
    assert prober.outcomes[-1].link_kbps is None and not prober.outcomes[-1].raised
    assert link.estimator.estimate(0.0) == pytest.approx(46.0)
    # Never more than was sent: a cluster whose span the receiver's loop squeezed reads more than the link.
    prober, link = probe(36.0, 80.0)
    assert link.estimator.estimate(0.0) == pytest.approx(ACCEPT_SHARE * (35.0 + prober.outcomes[-1].padding_kbps), rel=0.01)
    # A success over the full link: the padding came at its full rate while the queue held the video's frames back, and
    # the span read the link; the video as sent and the padding as it arrived (0.95 x 73.7 = 70.0 kbps) would overflow
    # it. A success takes more of the link than a failure (above), which built a queue the video must leave room to
    # drain.
    prober, link = probe(38.7, 21.3)
    assert prober.outcomes[-1].ok and prober.outcomes[-1].link_kbps == pytest.approx(60.0, rel=0.02)
    assert link.estimator.estimate(0.0) == pytest.approx(SUCCESS_LINK_SHARE * 60.0, rel=0.02)


def test_the_receiver_counts_the_datagrams_between_a_clusters_first_and_last_message():
    counts = [0, 0]

    def arrive(size: int) -> None:  # a datagram the connection took in (a padding message's own too)
        counts[0] += 1
        counts[1] += size

    timer = ProbeTimer(datagrams=lambda: tuple(counts))

    def probe(seq: int, now: float, cluster: int = 1) -> list[msg.ProbeResult]:
        arrive(300)
        return timer.on_probe(msg.Probe(cluster=cluster, seq=seq, count=3, data=b""), now)

    arrive(500)  # before the cluster: not in its span
    assert probe(0, 0.0) == []
    arrive(500)
    arrive(120)  # an RTCP sender report, an SCTP acknowledgement: counted as well
    assert probe(1, 0.1) == []
    arrive(200)
    (result,) = probe(2, 0.2)
    assert (result.received, result.span_us, result.counted) == (3, 200_000, True)
    assert (result.datagrams, result.datagram_bytes) == (5, 500 + 120 + 200 + 2 * 300)
    arrive(900)  # after it
    # An incomplete cluster counts up to its last message that came, not to its answer.
    probe(0, 1.0, cluster=2)
    arrive(100)
    probe(1, 1.1, cluster=2)
    arrive(700)
    (late,) = timer.expire(1.0 + CLUSTER_WAIT_S)
    assert (late.received, late.datagrams, late.datagram_bytes) == (2, 2, 100 + 300)
    assert msg.decode(msg.encode(late)) == late
    # Without a counter the answer says it counted nothing, and the sender reads the padding alone.
    bare = ProbeTimer()
    bare.on_probe(msg.Probe(cluster=1, seq=0, count=2, data=b""), 0.0)
    (result,) = bare.on_probe(msg.Probe(cluster=1, seq=1, count=2, data=b""), 0.1)
    assert not result.counted and msg.decode(msg.encode(result)) == result


def test_the_datagram_counter_reads_aiortcs_transport_counts_and_fails_loudly_without_them():
    from protocol.peer import new_peer_connection
    from receiver.transport import COUNTERS, DatagramCounter

    async def run() -> None:
        pc = new_peer_connection()  # no ICE servers, loopback host candidates only
        try:
            transport = pc.addTransceiver("video", direction="recvonly").receiver.transport
            assert DatagramCounter(pc)() == (0, 0)
            setattr(transport, COUNTERS[0], 3)
            setattr(transport, COUNTERS[1], 1200)
            assert DatagramCounter(pc)() == (3, 1200)
            delattr(transport, COUNTERS[1])
            with pytest.raises(RuntimeError, match="receiver.transport"):
                DatagramCounter(pc)
        finally:
            await pc.close()

    asyncio.run(run())
