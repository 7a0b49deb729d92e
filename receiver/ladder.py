"""The receiver's rebuild ladder: step the rebuild down before the CPU falls behind, and back up with headroom.

The worker reports, per received key, how long it took to rebuild (the key, its in-betweens, writing them)
and how much media time that covered. Their ratio is the load: above 1 the receiver falls behind and the
backlog grows until frames are dropped. The controller keeps the load under STEP_DOWN_LOAD by walking a
fixed ladder, one rung per step, in this order:
  1. a cheaper in-between (IN_BETWEEN_COST_ORDER, from the configured method on),
  2. fewer reprojections (n -> 1),
  3. a plain pixel blend for in-betweens.
It climbs back one rung when the current load times the rung above's relative cost leaves headroom. The
relative cost of two adjacent rungs is measured at each step between them (settled load before / after),
so it holds when the whole machine gets slower or faster; never measured, it is assumed UNKNOWN_RUNG_COST. Each step is logged with its reason and kept for the stats.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

log = logging.getLogger("vsae.receiver")

# Cheapest last, as measured (`vsae bench temporal --speed`, one thread, 176x144..640x360): `motion`
# searches motion per pixel (34-615 ms per in-between); `residual` and `latent` are one decode per
# in-between (7-72 ms); `flow` (DIS, no decode) 2-50 ms; `blend` no model work at all (always the last
# rung, see below).
IN_BETWEEN_COST_ORDER = ("motion", "residual", "latent", "flow")
# Step down when the smoothed load passes this: under 1 so the step comes before the backlog grows.
STEP_DOWN_LOAD = 0.9
# ... or when this many received frames wait: the load estimate lags a sudden slowdown.
STEP_DOWN_BACKLOG = 3
# Step up only if the rung above is expected to run under this load (hysteresis against flapping).
STEP_UP_LOAD = 0.7
# Two rungs never compared: assume the upper costs this many times the lower (a step up must be earned).
UNKNOWN_RUNG_COST = 1.6
# Keys to wait after any step before judging again: the new rung's load must be measured first.
HOLD_KEYS = 6
# Steps kept for the stats (the counts go on): a flapping receiver must not grow memory over a long call.
MAX_STEPS_KEPT = 100
# Smoothing of the per-key load (exponential moving average weight of the newest key).
LOAD_SMOOTHING = 0.25


@dataclass(frozen=True)
class Rung:
    method: str  # temporal method for in-betweens
    iterations: int  # reprojections per key

    @property
    def name(self) -> str:
        return f"{self.method} n={self.iterations}"


def build_ladder(method: str, iterations: int, available: tuple[str, ...]) -> list[Rung]:
    """The fixed ladder from the configured rebuild down to the cheapest (see the module docstring)."""
    rungs = [Rung(method, iterations)]
    if method in IN_BETWEEN_COST_ORDER:
        for cheaper in IN_BETWEEN_COST_ORDER[IN_BETWEEN_COST_ORDER.index(method) + 1 :]:
            if cheaper in available:
                rungs.append(Rung(cheaper, iterations))
    if iterations > 1:
        rungs.append(Rung(rungs[-1].method, 1))
    if method != "blend" and "blend" in available:
        rungs.append(Rung("blend", 1))
    return rungs


@dataclass
class LadderStep:
    time_s: float  # seconds since the controller started
    source_index: int
    from_rung: int
    to_rung: int
    reason: str


@dataclass
class RebuildController:
    """Chooses the rung per received key from the measured load. Not thread-safe: one worker thread calls it."""

    rungs: list[Rung]
    adapt: bool = True
    clock: Callable[[], float] = time.monotonic
    position: int = 0
    load: float | None = None
    steps: list[LadderStep] = field(default_factory=list)  # the first MAX_STEPS_KEPT (a call may run for hours)
    steps_down: int = 0
    steps_up: int = 0
    # cost(rung i) / cost(rung i + 1), measured when the controller stepped between them
    cost_ratio: dict[int, float] = field(default_factory=dict)
    time_at_rung: dict[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.started = self.last_change = self.clock()
        self.hold = HOLD_KEYS
        self.left: tuple[int, float] | None = None  # (rung, settled load) just left: compared once the new one settles

    @property
    def rung(self) -> Rung:
        return self.rungs[self.position]

    def observe(self, busy_s: float, media_s: float, backlog: int, source_index: int) -> Rung | None:
        """One received key rebuilt in `busy_s` covering `media_s` of video, `backlog` frames still waiting.
        Returns the new rung when the controller steps, else None."""
        if media_s <= 0:
            return None
        sample = busy_s / media_s
        self.load = sample if self.load is None else (1 - LOAD_SMOOTHING) * self.load + LOAD_SMOOTHING * sample
        if not self.adapt:
            return None
        if self.hold > 0:
            self.hold -= 1
            if self.hold == 0 and self.left is not None:
                rung, load = self.left
                upper, lower = (rung, load), (self.position, self.load)
                if rung > self.position:
                    upper, lower = lower, upper
                self.cost_ratio[upper[0]] = upper[1] / max(lower[1], 1e-9)
                self.left = None
            if backlog < 2 * STEP_DOWN_BACKLOG:  # a runaway backlog does not wait out the hold
                return None
        if (self.load > STEP_DOWN_LOAD or backlog >= STEP_DOWN_BACKLOG) and self.position + 1 < len(self.rungs):
            why = f"load {self.load:.2f} > {STEP_DOWN_LOAD}" if self.load > STEP_DOWN_LOAD else f"backlog {backlog} frames"
            return self._move(self.position + 1, source_index, why)
        if self.position > 0 and backlog == 0:
            above = self.position - 1
            expected = self.load * self.cost_ratio.get(above, UNKNOWN_RUNG_COST)
            if expected < STEP_UP_LOAD:
                return self._move(above, source_index, f"headroom: load {self.load:.2f}, expected {expected:.2f} above")
        return None

    def _move(self, to: int, source_index: int, reason: str) -> Rung:
        now = self.clock()
        self.time_at_rung[self.position] = self.time_at_rung.get(self.position, 0.0) + now - self.last_change
        if len(self.steps) < MAX_STEPS_KEPT:
            self.steps.append(LadderStep(round(now - self.started, 3), source_index, self.position, to, reason))
        self.steps_down += to > self.position
        self.steps_up += to < self.position
        log.info("rebuild ladder: %s -> %s at frame %d (%s)", self.rung.name, self.rungs[to].name, source_index, reason)
        self.left = (self.position, self.load) if self.load is not None else None
        self.position, self.last_change, self.hold = to, now, HOLD_KEYS
        self.load = None  # measure the new rung afresh
        return self.rung

    def stats(self) -> dict:
        now = self.clock()
        at = dict(self.time_at_rung)
        at[self.position] = at.get(self.position, 0.0) + now - self.last_change
        return {
            "adapt": self.adapt,
            "rungs": [r.name for r in self.rungs],
            "rung": self.position,
            "rung_name": self.rung.name,
            "load": round(self.load, 3) if self.load is not None else None,
            "cost_ratio": {self.rungs[i].name: round(r, 2) for i, r in sorted(self.cost_ratio.items())},
            "steps_down": self.steps_down,
            "steps_up": self.steps_up,
            "lowest_rung": max(at),
            "seconds_at_rung": {self.rungs[i].name: round(t, 2) for i, t in sorted(at.items())},
            "steps": [vars(s) for s in self.steps],
        }
