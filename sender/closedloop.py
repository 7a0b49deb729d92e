"""The sender's closed loop for a live call: the encoder contains the decoder.

The sender decodes its own encoded packets (the bytes the receiver gets), runs the receiver's exact rebuild
beside the plain baseline (`Reconstructor` and `BaselineReconstructor`, same model version and settings)
and, knowing the original frames, picks each frame's guard mode (codec.guard): so it knows, per frame, how
good the receiver's picture is, and the receiver is never shown a rebuild worse than the baseline.

With a refresh (RefreshOptions), a background thread keeps fine-tuning a copy of the model on the call's
latest keys (codec.refresh.Refresher: input the decoded low-res key upsampled, target the original), and
the loop makes compact updates under the model-stream budget, each naming the key from which both ends
switch (`Reconstructor.switch_model_at`). An update is made only while the guard's recent statistics say
the model is worth improving (its gain over the baseline below WORTH_UPDATING_DB).

All model work runs on this module's threads, never on the caller's event loop: `submit` queues a packet
and returns at once; decisions leave through the `on_modes` / `on_update` callbacks (called on the loop's
thread, so they must be thread-safe: the sender passes `loop.call_soon_threadsafe` wrappers).
"""

from __future__ import annotations

import collections
import copy
import math
import os
import threading
import time
from dataclasses import dataclass
from typing import Callable

import av
import numpy as np
import torch

from codec.guard import MAX_TILE_EXCEPTIONS, apply_modes, choose_modes, tile_grid
from codec.metrics import psnr_per_frame
from codec.ops import Codec, upsample
from codec.pipeline import BaselineReconstructor, OutputFrame, Reconstructor
from codec.refresh import GAIN_CHECK_KEYS, MIN_UPDATE_GAIN_DB, UPDATE_FORMS, Refresher, make_update, restamp, update_gain_db
from codec.video import to_tensor

from .encoder import DECODERS

# Keys the refresh trains on: the latest ones (the call's recent content), oldest dropped first.
REFRESH_WINDOW_KEYS = 30
# The trainer thread's CPU priority (Linux nice value, per thread): it takes only what the video, the closed
# loop and (on one machine) the receiver leave over, so a busy CPU delays updates, never frames.
TRAINER_NICE = 19
# Adam steps a training round takes while holding the model (an update waits at most one round).
TRAIN_ROUND_STEPS = 2
# Below this many bytes of saved budget an update carries too few weights to be worth its digests (64 B).
MIN_UPDATE_BYTES = 160
# The guard's recent statistics (the last WORTH_WINDOW_S of rebuilt frames): an update is made only while
# the vsae rebuild's PSNR gain over the baseline is below this. A model far ahead needs no bits.
WORTH_UPDATING_DB = 3.0
WORTH_WINDOW_S = 1.0
# Frames whose modes travel in one message (protocol.messages.MAX_MODES_BYTES: up to 13 bytes a frame).
MODES_PER_MESSAGE = 64
# Lag samples kept for the median (a call may run for hours).
LAG_SAMPLES = 10_000
# Model-version changes kept for the stats (as the receiver's worker keeps them: a long call's list stays small).
MAX_VERSION_RUNS = 1000
# Weights before each of the latest updates, kept to go back when the receiver refuses one.
KEEP_BEFORES = 4


@dataclass
class RefreshOptions:
    """A live refresh: the update form, the model stream's budget and the trainer's step budget."""

    form: str = "sparse-grad"
    model_kbps: float = 10.0
    # Adam steps per second of call at most (the deterministic budget); a CPU that cannot keep up does fewer,
    # counted in the stats. 50 at 176x144 takes ~2-5 s of 2 CPU cores per second of call.
    steps_per_s: float = 50.0
    # Seconds of call between update decisions (each spends what the budget saved since the last update).
    interval_s: float = 0.5
    # An update applies from the first key at least this far (seconds of call) after the key it was made
    # at: its bytes must reach the receiver before that key does (data channel vs video track).
    lead_s: float = 0.3

    def __post_init__(self) -> None:
        if self.form not in UPDATE_FORMS:
            raise ValueError(f"unknown update form {self.form!r}: use {', '.join(UPDATE_FORMS)}")
        if not (self.model_kbps > 0 and self.steps_per_s >= 0 and self.interval_s > 0 and self.lead_s >= 0):
            raise ValueError("model_kbps and interval_s must be positive, steps_per_s and lead_s not negative")


class PacketDecoder:
    """Decodes the sender's own encoded payloads as the receiver does (PyAV's FFmpeg, rgb24 out)."""

    def __init__(self, codec: str):
        self.context = av.CodecContext.create(DECODERS[codec], "r")

    def decode(self, payload: bytes) -> np.ndarray | None:
        frames = self.context.decode(av.Packet(payload))
        return frames[-1].to_ndarray(format="rgb24") if frames else None


class RefreshTrainer:
    """The background fine-tuning thread: trains the Refresher on the latest keys, at most `steps_per_s`
    Adam steps per second of call (call time advances as the closed loop processes keys). Between training
    rounds it runs the jobs it is given (making an update reads the weights it trains, and costs too much
    CPU time for the closed loop's thread, which must keep up with the video)."""

    def __init__(self, codec: Codec, options: RefreshOptions):
        self.options = options
        self.refresher = Refresher(codec.model, codec.normalization, options.form, seed=0)
        self._window: collections.deque = collections.deque(maxlen=REFRESH_WINDOW_KEYS)
        self._call_s = 0.0
        self._wake = threading.Condition()
        self._stop = False
        self._jobs: collections.deque = collections.deque()
        self.train_s = 0.0
        self._thread = threading.Thread(target=self._run, name="vsae-refresh", daemon=True)
        self._thread.start()

    def add_key(self, decoded_up: torch.Tensor, original: torch.Tensor, call_s: float) -> None:
        with self._wake:
            self._window.append((decoded_up, original))
            self._call_s = call_s
            self._wake.notify()

    @property
    def steps(self) -> int:
        return self.refresher.steps

    def latest(self, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The newest `count` (input, target) pairs of the window, stacked."""
        with self._wake:
            pairs = list(self._window)[-count:]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])

    def steps_due(self) -> int:
        return int(self.options.steps_per_s * self._call_s)

    def run_job(self, job: Callable[[], None]) -> None:
        with self._wake:
            self._jobs.append(job)
            self._wake.notify()

    def stop(self) -> None:
        with self._wake:
            self._stop = True
            self._wake.notify()
        self._thread.join()

    def _run(self) -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), TRAINER_NICE)
        except (AttributeError, OSError):  # not Linux, or not permitted: the trainer just competes as it is
            pass
        while True:
            with self._wake:
                while not self._stop and not self._jobs and (not self._window or self.refresher.steps >= self.steps_due()):
                    self._wake.wait(0.1)
                if self._stop:
                    return
                job = self._jobs.popleft() if self._jobs else None
                pairs = list(self._window)
                steps = min(TRAIN_ROUND_STEPS, self.steps_due() - self.refresher.steps)
            if job is not None:
                job()
                continue
            inputs = torch.stack([p[0] for p in pairs])
            targets = torch.stack([p[1] for p in pairs])
            began = time.perf_counter()
            self.refresher.train(inputs, targets, steps)
            self.train_s += time.perf_counter() - began


class ClosedLoop:
    """Mirror of the receiver for one live call (see the module docstring).

    `originals`: the source frames (N, H, W, 3) uint8; frame i of the stream is originals[i % N] (a looped
    stream). `on_modes(first, data)`: the guard bytes for frames first.. (codec.guard.FrameModes, one after
    another). `on_update(version, data)`: an update's wire bytes (codec.refresh).
    """

    def __init__(self, codec: Codec, originals: np.ndarray, temporal: int, fps: float, total: int, video_codec: str,
                 iterations: int, method: str, on_modes: Callable[[int, bytes], None],
                 on_update: Callable[[int, bytes], None] | None = None, refresh: RefreshOptions | None = None,
                 max_tiles: int = MAX_TILE_EXCEPTIONS):
        # The receiver's weights as the sender mirrors them (updates switch them at their key).
        self.codec = Codec(copy.deepcopy(codec.model), codec.normalization, meta=codec.meta)
        self.originals, self.temporal, self.fps, self.total = originals, temporal, fps, total
        self.size = tuple(originals.shape[1:3])
        self.tiles = math.prod(tile_grid(self.size))
        self.max_tiles = max_tiles
        self.reconstructor = Reconstructor(self.codec, self.size, temporal, iterations, method)
        self.baseline = BaselineReconstructor(self.size, temporal)
        self.decoder = PacketDecoder(video_codec)
        self.on_modes, self.on_update = on_modes, on_update
        self.refresh = refresh
        self.trainer = RefreshTrainer(codec, refresh) if refresh is not None else None
        self.version = 0  # the newest model version made (applied or scheduled)
        self.latest_submitted = -1  # the newest source index on the video track
        self._building = False  # an update is being made on the trainer's thread
        self._rec_lock = threading.Lock()  # the mirror's rebuild vs an update's switch, made on another thread
        self._befores: dict[int, dict] = {}  # version -> the weights before it, for a revert (the latest few)
        self._next_decision = refresh.interval_s if refresh else math.inf
        self._recent_gain: collections.deque = collections.deque(maxlen=max(1, round(WORTH_WINDOW_S * fps)))
        self._queue: collections.deque = collections.deque()
        self._wake = threading.Condition()
        self._finish_total: int | None = None
        self._closing = False
        self.error: BaseException | None = None
        # Statistics: what the receiver shows, per frame, as the sender knows it.
        self.frames = 0
        self.mode_bytes = 0
        self.psnr_sum = {"shown": 0.0, "vsae": 0.0, "baseline": 0.0}
        self.mode_counts = collections.Counter()
        self.tile_exceptions = 0
        self.version_runs: list[list[int]] = []  # [first frame index, model version] at each change
        self.updates: list[dict] = []
        self.updates_skipped_worth = 0
        self.updates_reverted = 0
        self.updates_dropped_slow = 0  # ready too late: the call ends before the key it would apply from
        self.updates_not_helping = 0  # made, but no better than the receiver's weights on the latest keys: not sent
        self.update_bytes = 0
        self.busy_s = 0.0
        self.lag_ms: collections.deque = collections.deque(maxlen=LAG_SAMPLES)  # packet submitted -> its modes out
        self.keys = 0
        self.worst_lag_ms = 0.0
        self._thread = threading.Thread(target=self._run, name="vsae-closed-loop", daemon=True)
        self._thread.start()

    # -- called from the event loop -----------------------------------------------------------------
    def submit(self, index: int, payload: bytes) -> None:
        """The encoded payload of source frame `index`, exactly as it goes on the video track."""
        with self._wake:
            self.latest_submitted = max(self.latest_submitted, index)
            self._queue.append(("packet", index, payload, time.perf_counter()))
            self._wake.notify()

    def update_refused(self, version: int) -> None:
        """The receiver refused update `version`: go back to the weights before it (both ends agree again
        from the next key on)."""
        with self._wake:
            self._queue.append(("refused", version, None, time.perf_counter()))
            self._wake.notify()

    def finish(self, total: int | None = None, timeout: float | None = None) -> None:
        """End of stream (blocking): process what is queued, decide the trailing frames up to `total`."""
        with self._wake:
            self._finish_total, self._closing = total, True
            self._wake.notify()
        self._thread.join(timeout)
        if self.trainer is not None:
            self.trainer.stop()

    # -- the thread ----------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                with self._wake:
                    while not self._queue and not self._closing:
                        self._wake.wait()
                    item = self._queue.popleft() if self._queue else None
                if item is None:
                    break
                kind, index, payload, submitted = item
                began = time.perf_counter()
                if kind == "refused":
                    self._revert(index)
                else:
                    self._key(index, payload)
                self.busy_s += time.perf_counter() - began
                if kind == "packet":
                    lag = (time.perf_counter() - submitted) * 1000
                    self.lag_ms.append(lag)
                    self.keys += 1
                    self.worst_lag_ms = max(self.worst_lag_ms, lag)
            self._decide(self.reconstructor.flush(self._finish_total), self.baseline.flush(self._finish_total))
        except BaseException as exc:  # reported by the session; the thread must not die silently
            self.error = exc

    def _key(self, index: int, payload: bytes) -> None:
        rgb = self.decoder.decode(payload)
        if rgb is None:
            return
        frame = to_tensor(rgb[None])[0]
        with self._rec_lock:
            outputs = self.reconstructor.push(index, frame)
        self._decide(outputs, self.baseline.push(index, frame))
        if self.trainer is not None:
            call_s = (index + 1) / self.fps
            original = self._original(index)
            self.trainer.add_key(upsample(frame[None].float(), self.size)[0], original, call_s)
            self._maybe_update(index, call_s)

    def _original(self, index: int) -> torch.Tensor:
        return to_tensor(self.originals[index % len(self.originals)][None])[0]

    def _decide(self, outputs: list[OutputFrame], baseline: list[OutputFrame]) -> None:
        for start in range(0, len(outputs), MODES_PER_MESSAGE):
            self._decide_some(outputs[start : start + MODES_PER_MESSAGE], baseline[start : start + MODES_PER_MESSAGE])

    def _decide_some(self, outputs: list[OutputFrame], baseline: list[OutputFrame]) -> None:
        data = bytearray()
        for out, base in zip(outputs, baseline):
            original = self._original(out.index)
            modes = choose_modes(out.frame, base.frame, original, self.max_tiles)
            data += modes.to_bytes(self.tiles)
            shown = apply_modes(out.frame, base.frame, modes)
            scores = psnr_per_frame(torch.stack([shown, out.frame, base.frame]), original[None].expand(3, -1, -1, -1)).tolist()
            for name, value in zip(("shown", "vsae", "baseline"), scores):
                self.psnr_sum[name] += value
            self._recent_gain.append(scores[1] - scores[2])
            self.mode_counts[modes.mode] += 1
            self.tile_exceptions += len(modes.tiles)
            self.frames += 1
            changed = not self.version_runs or self.version_runs[-1][1] != out.model_version
            if changed and len(self.version_runs) < MAX_VERSION_RUNS:
                self.version_runs.append([out.index, out.model_version])
        self.mode_bytes += len(data)
        self.on_modes(outputs[0].index, bytes(data))

    def _maybe_update(self, index: int, call_s: float) -> None:
        """Every `interval_s` of call, while the guard says the model is worth improving, ask the trainer's
        thread for an update that spends what the budget has saved."""
        options = self.refresh
        if self._building or self.reconstructor.switch_pending or call_s < self._next_decision or self.on_update is None:
            return
        self._next_decision = call_s + options.interval_s
        if self._recent_gain and sum(self._recent_gain) / len(self._recent_gain) >= WORTH_UPDATING_DB:
            self.updates_skipped_worth += 1
            return
        budget = int(options.model_kbps * 1000 / 8 * call_s) - self.update_bytes
        if budget < MIN_UPDATE_BYTES:
            return
        self._building = True
        mirror = copy.deepcopy(self.codec.model)  # the receiver's weights now (this thread alone changes them)
        version = self.version + 1
        self.trainer.run_job(lambda: self._make_update(mirror, budget, version, index))

    def _make_update(self, mirror, budget: int, version: int, made_at: int) -> None:
        """On the trainer's thread: the update, checked against the mirror on the latest keys, then stamped
        to apply from a key far enough ahead of the video track (making it takes a while: the key is fixed
        only once it is ready to go)."""
        try:
            refresher = self.trainer.refresher
            made = make_update(mirror, refresher.model, self.refresh.form, budget, version, 0, refresher.grad_magnitude)
            if made is None:
                return
            data, updated, info = made
            inputs, targets = self.trainer.latest(GAIN_CHECK_KEYS)
            gain = update_gain_db(mirror, updated, self.codec.normalization, inputs, targets)
            if gain < MIN_UPDATE_GAIN_DB:
                self.updates_not_helping += 1  # kept training; a later update may help
                return
            refresher.reset_grad_magnitude()
            target = self.codec.model
            with self._rec_lock:
                apply_from = self.latest_submitted + max(1, math.ceil(self.refresh.lead_s * self.fps))
                # A key at or after apply_from must still come (keys are at most `temporal` apart, and the last
                # one is within `temporal` of the end).
                if apply_from > self.total - 2 * self.temporal or self.version != version - 1:
                    self.updates_dropped_slow += 1  # the call ends before its key (or the mirror went back)
                    return
                data = restamp(data, apply_from)
                self._befores[version] = copy.deepcopy(mirror.state_dict())
                self._befores.pop(version - KEEP_BEFORES, None)
                self.reconstructor.switch_model_at(apply_from, lambda: target.load_state_dict(updated.state_dict()), version)
                self.version = version
                self.update_bytes += len(data)
                self.updates.append({"version": version, "apply_from": apply_from, "bytes": len(data),
                                     "weights": info.weights, "made_at": made_at, "refresh_steps": refresher.steps,
                                     "gain_db": round(gain, 3)})
            self.on_update(version, data)
        finally:
            self._building = False

    def _revert(self, version: int) -> None:
        """The receiver refused `version`: it keeps the weights before it, and so does the mirror from the
        next key on; the next update is made again as `version`, against them. (A refusal of an update made
        on top of one already refused needs nothing more: the mirror went back before both.)"""
        before = self._befores.get(version)
        if before is None or version > self.version:
            return
        mirror = self.codec.model
        with self._rec_lock:
            self.reconstructor.switch_model_at(self.reconstructor.next_index, lambda: mirror.load_state_dict(before), version - 1)
            self.version = version - 1
        self._befores = {v: w for v, w in self._befores.items() if v < version}
        self.updates_reverted += 1

    # -- results -------------------------------------------------------------------------------------
    def stats(self) -> dict:
        n = max(1, self.frames)
        seconds = self.total / self.fps
        lags = sorted(self.lag_ms)
        out = {
            "frames": self.frames,
            "psnr_shown": round(self.psnr_sum["shown"] / n, 3),
            "psnr_vsae": round(self.psnr_sum["vsae"] / n, 3),
            "psnr_bicubic": round(self.psnr_sum["baseline"] / n, 3),
            "guard_bytes": self.mode_bytes,
            "modes": {str(k): v for k, v in sorted(self.mode_counts.items())},
            "tile_exceptions": self.tile_exceptions,
            "model_versions": self.version_runs,
            "updates_sent": len(self.updates),
            "update_bytes": self.update_bytes,
            "model_kbps": round(self.update_bytes * 8 / seconds / 1000, 3),
            "updates": self.updates,
            "updates_skipped_worth": self.updates_skipped_worth,
            "updates_reverted": self.updates_reverted,
            "updates_dropped_slow": self.updates_dropped_slow,
            "updates_not_helping": self.updates_not_helping,
            "closed_loop_ms_per_key": round(self.busy_s * 1000 / max(1, self.keys), 1),
            "closed_loop_lag_ms_median": round(lags[len(lags) // 2], 1) if lags else None,
            "closed_loop_lag_ms_max": round(self.worst_lag_ms, 1),
        }
        if self.trainer is not None:
            out.update({"refresh_steps": self.trainer.steps, "refresh_steps_due": self.trainer.steps_due(),
                        "refresh_train_s": round(self.trainer.train_s, 2), "update_form": self.refresh.form,
                        "model_kbps_budget": self.refresh.model_kbps})
        return out
