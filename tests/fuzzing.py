"""Long fuzz runs of the trust boundaries (`pytest -m slow`): many examples, bounded calls, counted outcomes.

The CI fuzzers in test_protocol.py and test_bundle.py run ~100-200 examples each. Their `-m slow`
twins run the same strategies for VSAE_FUZZ_EXAMPLES examples each (default 20,000) and check, for
every single call of the function under test:

- it returns or raises the one expected exception type (anything else fails the run, with the
  example Hypothesis shrank it to);
- it takes less than MAX_CALL_S seconds;
- the Python/NumPy memory it allocates at its peak (tracemalloc) stays under the tally's bound, and it
  raises the process's peak RSS (getrusage high-water mark) by less than MAX_CALL_RSS_MB.

Leaks: the process's RSS grows over a run with Hypothesis's own bookkeeping, so instead a sample of
REPLAY_SAMPLE inputs from the run is replayed REPLAY_PASSES times after one warm-up pass, and the RSS
must not grow by more than MAX_REPLAY_GROWTH_MB over those passes. The counts go to stdout (`pytest
-s`) and, with VSAE_FUZZ_REPORT=FILE, as one JSON line per run to FILE.
"""

from __future__ import annotations

import gc
import json
import os
import random
import re
import resource
import time
import tracemalloc
from collections import Counter
from typing import Callable

from hypothesis import HealthCheck, settings

from codec.memory import rss_mb

FUZZ_EXAMPLES = int(os.environ.get("VSAE_FUZZ_EXAMPLES", "20000"))
MAX_CALL_S = 2.0
MAX_CALL_RSS_MB = 256
REPLAY_SAMPLE = 500
REPLAY_PASSES = 10
MAX_REPLAY_GROWTH_MB = 8

# Every example is new (no example database, no replay of earlier failures); no deadline (the bound
# above is ours, checked per call, and generous for a machine shared with other work).
LONG = settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _label(exc: BaseException) -> str:
    """A refusal's kind: the ProtocolError code, or the message with numbers and quoted parts blanked."""
    code = getattr(exc, "code", None)
    if isinstance(code, str):
        return code
    text = re.sub(r"\(.*\)|'[^']*'|\[[^\]]*\]|\b\d+\b", "#", str(exc))
    return text.split(":")[-1].strip()[:70] or type(exc).__name__


class Tally:
    """Counts and bounds the calls of one long fuzz run."""

    def __init__(self, name: str, expected: type[BaseException], max_traced_mb: float):
        self.name, self.expected, self.max_traced_mb = name, expected, max_traced_mb
        self.outcomes: Counter[str] = Counter()
        self.calls = 0
        self.accepted = 0
        self.slowest_s = 0.0
        self.peak_traced_mb = 0.0
        self.began = time.perf_counter()
        self.rss_start = rss_mb()
        self.max_rss_start = _max_rss_mb()
        self.call_rss_peak = 0.0  # the most one call raised the process's peak RSS
        self.sample: list = []  # a uniform sample of the calls (fn, args), replayed for leaks
        self._random = random.Random(0)

    def call(self, fn: Callable, *args):
        """fn(*args): returns its result, or the expected exception (returned, not raised)."""
        max_rss = _max_rss_mb()
        tracemalloc.start()  # only around the call: tracing Hypothesis's generation too would triple its time
        # No cyclic GC inside the timed call: a full collection walks Hypothesis's whole (growing) heap
        # and once took 1.9 s of a 20,000-example run inside a sub-millisecond decode.
        gc.disable()
        start = time.perf_counter()
        try:
            result = fn(*args)
        except self.expected as exc:
            result = exc
        finally:
            elapsed = time.perf_counter() - start
            gc.enable()
        traced = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        raised = _max_rss_mb() - max_rss
        self.calls += 1
        if len(self.sample) < REPLAY_SAMPLE:
            self.sample.append((fn, args))
        elif (k := self._random.randrange(self.calls)) < REPLAY_SAMPLE:
            self.sample[k] = (fn, args)
        self.slowest_s = max(self.slowest_s, elapsed)
        self.peak_traced_mb = max(self.peak_traced_mb, traced)
        self.call_rss_peak = max(self.call_rss_peak, raised)
        if isinstance(result, self.expected):
            self.outcomes[_label(result)] += 1
        else:
            self.accepted += 1
            self.outcomes["accepted"] += 1
        assert elapsed < MAX_CALL_S, f"{self.name}: one call took {elapsed:.2f} s (bound {MAX_CALL_S} s)"
        assert traced < self.max_traced_mb, f"{self.name}: one call allocated {traced:.1f} MB (bound {self.max_traced_mb} MB)"
        assert raised < MAX_CALL_RSS_MB, f"{self.name}: one call raised the peak RSS by {raised:.0f} MB"
        return result

    def _replay(self) -> float:
        """RSS growth (MB) over REPLAY_PASSES replays of the sample, after a warm-up pass."""
        start = 0.0
        for k in range(REPLAY_PASSES + 1):
            if k == 1:
                start = rss_mb()
            for fn, args in self.sample:
                try:
                    fn(*args)
                except self.expected:
                    pass
        return rss_mb() - start

    def finish(self, min_calls: int) -> dict:
        """Check the run as a whole, print and record its counts."""
        replay_growth = self._replay()
        report = {
            "run": self.name, "examples_setting": FUZZ_EXAMPLES, "calls": self.calls, "accepted": self.accepted,
            "refused": self.calls - self.accepted, "unexpected_exceptions": 0,
            "slowest_call_s": round(self.slowest_s, 4), "peak_traced_mb": round(self.peak_traced_mb, 2),
            "call_peak_rss_raise_mb": round(self.call_rss_peak, 1),
            "replay_rss_growth_mb": round(replay_growth, 2), "replayed_calls": len(self.sample) * REPLAY_PASSES,
            "process_rss_growth_mb": round(rss_mb() - self.rss_start, 1),
            "process_peak_rss_growth_mb": round(_max_rss_mb() - self.max_rss_start, 1),
            "wall_s": round(time.perf_counter() - self.began, 1),
            "outcomes": dict(self.outcomes.most_common()),
        }
        print(f"\nfuzz {json.dumps(report)}")
        if os.environ.get("VSAE_FUZZ_REPORT"):
            with open(os.environ["VSAE_FUZZ_REPORT"], "a") as f:
                f.write(json.dumps(report) + "\n")
        assert replay_growth < MAX_REPLAY_GROWTH_MB, f"{self.name}: RSS grew {replay_growth:.1f} MB replaying {len(self.sample)} inputs"
        assert self.calls >= min_calls, f"{self.name}: only {self.calls} calls"
        return report
