"""The sender's video target follows its bandwidth estimate: keyframe-request storms and lossy or queueing
receiver reports lower it (a new encoder from a keyframe, at a frame boundary), small moves are ignored,
and it climbs back to the requested rate, never above."""

from __future__ import annotations

import numpy as np
import pytest

from sender.session import MIN_KBPS_SHARE, RETARGET_UP_S, STORM_WINDOW_S, LowResTrack


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def track():
    clock = Clock()
    low = np.zeros((4, 36, 44, 3), np.uint8)
    t = LowResTrack(low, [0, 2, 4, 6], 15.0, 6000, "vp8", 20.0, 2, clock=clock)
    t.clock = clock
    return t


def storm(track) -> None:
    track.request_keyframe()
    track.clock.now += STORM_WINDOW_S / 4
    track.request_keyframe()
    track.follow_estimate()


def test_one_request_asks_for_a_keyframe_only(track):
    encoder = track.encoder
    track.keyframe_wanted = False
    track.request_keyframe()
    track.follow_estimate()
    assert track.keyframe_wanted and track.kbps == 20.0 and track.encoder is encoder


def test_a_storm_lowers_the_target_with_a_new_encoder_from_a_keyframe(track):
    encoder = track.encoder
    track.request_keyframe()
    track.clock.now += STORM_WINDOW_S / 2
    track.request_keyframe()
    assert track.encoder is encoder  # the move waits for the next frame boundary
    track.follow_estimate()
    assert track.kbps < 20.0 * 0.9
    assert track.encoder is not encoder and track.encoder.context.bit_rate == int(track.kbps * 1000)
    assert track.keyframe_wanted and len(track.rate_changes) == 1
    assert "keyframe requests" in track.rate_log[0]["reason"]


def test_requests_far_apart_are_no_storm(track):
    track.request_keyframe()
    track.clock.now += STORM_WINDOW_S + 0.1
    track.request_keyframe()
    track.follow_estimate()
    assert track.kbps == 20.0


def test_storms_cut_down_to_the_floor_and_no_further(track):
    for _ in range(40):
        track.clock.now += 1.0
        storm(track)
    assert track.kbps == pytest.approx(20.0 * MIN_KBPS_SHARE)


def test_heavy_reported_loss_lowers_the_target_and_small_moves_are_ignored(track):
    track.on_receiver_report(0.30, None)  # 70 % of the 20 kbps sent got through: 14
    track.follow_estimate()
    assert track.kbps == pytest.approx(14.0 - 0.5)
    changes = len(track.rate_changes)
    track.clock.now += 5.0
    track.on_remb(13.0)  # a REMB 4 % under the target: not worth a keyframe
    track.follow_estimate()
    assert len(track.rate_changes) == changes


def test_the_target_climbs_back_when_reports_are_clean_never_above_the_request(track):
    track.on_receiver_report(0.5, None)
    track.follow_estimate()
    low = track.kbps
    assert low < 16
    track.clock.now += 0.5
    for _ in range(3):  # clean reports: the estimate rises, but the first step up waits RETARGET_UP_S
        track.on_receiver_report(0.0, None)
    track.follow_estimate()
    assert track.kbps == low
    ups = []
    for _ in range(60):
        track.clock.now += 1.0
        track.on_receiver_report(0.0, None)
        changes = len(track.rate_changes)
        track.follow_estimate()
        if len(track.rate_changes) > changes:
            ups.append(track.clock.now)
    assert track.kbps == 20.0 and len(ups) >= 2
    assert all(b - a >= RETARGET_UP_S for a, b in zip(ups, ups[1:]))


def test_a_building_queue_lowers_the_target_before_any_loss(track):
    for rtt in (0.05, 0.05, 0.06):
        track.clock.now += 1.0
        track.on_receiver_report(0.0, rtt)
    track.follow_estimate()
    assert track.kbps == 20.0
    for rtt in (0.35, 0.40):
        track.clock.now += 1.0
        track.on_receiver_report(0.0, rtt)
    track.follow_estimate()
    assert track.kbps < 20.0 * 0.9 and "queue" in track.rate_log[-1]["reason"]
