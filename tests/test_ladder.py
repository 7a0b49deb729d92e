"""The receiver's rebuild ladder (receiver/ladder.py) and the worker that walks it."""

from __future__ import annotations

import time

import numpy as np
import pytest

from codec.ops import TEMPORAL_METHODS
from receiver.ladder import HOLD_KEYS, STEP_DOWN_BACKLOG, RebuildController, Rung, build_ladder
from receiver.worker import ReconstructWorker, StreamInfo


def test_ladder_order_cheaper_in_between_then_fewer_reprojections_then_blend():
    rungs = build_ladder("motion", 3, TEMPORAL_METHODS)
    assert rungs[0] == Rung("motion", 3) and rungs[-1] == Rung("blend", 1)
    methods = [r.method for r in rungs]
    assert methods.index("residual") < [r.iterations for r in rungs].index(1) < methods.index("blend")
    assert build_ladder("blend", 1, TEMPORAL_METHODS) == [Rung("blend", 1)]
    assert build_ladder("latent", 1, TEMPORAL_METHODS) == [Rung("latent", 1), Rung("flow", 1), Rung("blend", 1)]
    assert build_ladder("flow", 2, TEMPORAL_METHODS) == [Rung("flow", 2), Rung("flow", 1), Rung("blend", 1)]


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def run_keys(controller, clock, load, keys, backlog=0, start=0):
    moves = []
    for k in range(keys):
        clock.t += 0.066
        rung = controller.observe(load * 0.066, 0.066, backlog, start + k)
        if rung is not None:
            moves.append(rung)
    return moves


def test_steps_down_when_loaded_and_back_up_with_headroom():
    clock = FakeClock()
    c = RebuildController(build_ladder("motion", 2, TEMPORAL_METHODS), clock=clock)
    assert run_keys(c, clock, 0.5, 30) == []  # headroom at the top: nothing to do
    moves = run_keys(c, clock, 1.5, 3 * (HOLD_KEYS + 2), start=30)
    assert len(moves) >= 2 and all(m.method != "motion" for m in moves)
    assert [c.rungs.index(m) for m in moves] == list(range(1, len(moves) + 1))  # one rung at a time, in order
    down = c.position
    # A light load on the bottom rung earns the way back up, one rung at a time, never past a rung whose
    # load was measured too high.
    run_keys(c, clock, 0.2, 4 * (HOLD_KEYS + 2), start=200)
    assert c.position < down
    s = c.stats()
    assert s["steps_down"] >= 1 and s["steps_up"] >= 1 and s["lowest_rung"] == down
    assert s["steps"][0]["reason"].startswith("load") and s["rungs"][0] == "motion n=2"
    assert sum(s["seconds_at_rung"].values()) == pytest.approx(clock.t, abs=0.05)


def test_backlog_steps_down_before_the_load_estimate_does():
    clock = FakeClock()
    c = RebuildController(build_ladder("motion", 1, TEMPORAL_METHODS), clock=clock)
    run_keys(c, clock, 0.3, HOLD_KEYS + 1)
    assert run_keys(c, clock, 0.3, 1, backlog=STEP_DOWN_BACKLOG, start=50) == [c.rungs[1]]
    assert "backlog" in c.stats()["steps"][0]["reason"]


def test_no_adapt_keeps_the_rung():
    clock = FakeClock()
    c = RebuildController(build_ladder("motion", 2, TEMPORAL_METHODS), adapt=False, clock=clock)
    assert run_keys(c, clock, 5.0, 50, backlog=8) == [] and c.position == 0 and c.load > 4


def test_a_worker_too_slow_for_its_stream_steps_down_instead_of_dropping(tiny_codec, tmp_path):
    """Frames pushed at 500 fps (faster than this CPU rebuilds `motion` at 176x144): the worker climbs down
    the ladder, and the stats and sampler counters say where it is."""
    from receiver.sampler import worker_counters

    fps = 500.0
    worker = ReconstructWorker(tiny_codec, StreamInfo((144, 176), fps, 2, 80), str(tmp_path / "o.mp4"), 2, "motion")
    low = (np.random.default_rng(0).random((36, 44, 3)) * 255).astype(np.uint8)
    for i in range(0, 80, 2):
        worker.submit(i, low)
        time.sleep(2 / fps)
    worker.finish(80, timeout=120)
    assert worker.error is None
    stats = worker.stats()
    assert stats["frames_out"] == 80
    assert stats["ladder"]["steps_down"] >= 1 and stats["ladder"]["rung"] > 0
    assert worker_counters(worker)()["ladder_rung"] == stats["ladder"]["rung"]
    assert worker.reconstructor.method == stats["ladder"]["rung_name"].split()[0]
