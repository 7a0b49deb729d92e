"""The sender's answer to keyframe-request storms: a lower video target, climbing back when they stop."""

from __future__ import annotations

import numpy as np
import pytest

from sender.session import (MIN_KBPS_SHARE, RATE_DECREASE, RATE_INCREASE, RATE_PROBE_S, STORM_WINDOW_S,
                            LowResTrack)


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


def test_one_request_asks_for_a_keyframe_only(track):
    encoder = track.encoder
    track.keyframe_wanted = False
    track.request_keyframe()
    assert track.keyframe_wanted and track.kbps == 20.0 and track.encoder is encoder


def test_a_storm_lowers_the_target_with_a_new_encoder_from_a_keyframe(track):
    encoder = track.encoder
    track.request_keyframe()
    track.clock.now += STORM_WINDOW_S / 2
    track.request_keyframe()
    assert track.kbps == pytest.approx(20.0 * RATE_DECREASE)
    assert track.encoder is not encoder and track.encoder.context.bit_rate == int(20.0 * RATE_DECREASE * 1000)
    assert track.keyframe_wanted and len(track.rate_changes) == 1


def test_requests_far_apart_are_no_storm(track):
    track.request_keyframe()
    track.clock.now += STORM_WINDOW_S + 0.1
    track.request_keyframe()
    assert track.kbps == 20.0


def test_each_cut_needs_a_storm_of_its_own_and_the_floor_holds(track):
    track.request_keyframe()
    track.request_keyframe()
    first = track.kbps
    track.clock.now += 0.1
    track.request_keyframe()  # one more, caused by the old rate's losses or the new keyframe: no second cut yet
    assert track.kbps == first
    for _ in range(40):
        track.clock.now += 0.5
        track.request_keyframe()
    assert track.kbps == pytest.approx(20.0 * MIN_KBPS_SHARE)


def test_the_target_climbs_back_after_a_quiet_spell(track):
    track.request_keyframe()
    track.request_keyframe()
    low = track.kbps
    track.clock.now += RATE_PROBE_S - 0.1
    track._probe()
    assert track.kbps == low
    track.clock.now += 0.2
    track._probe()
    assert track.kbps == pytest.approx(low * RATE_INCREASE)
    for _ in range(20):
        track.clock.now += RATE_PROBE_S
        track._probe()
    assert track.kbps == 20.0  # never above the requested target
    assert [k for _, k in track.rate_changes][-1] == 20.0
