"""The receiver's reconstruction thread: received low-res frames in, hi-res full-rate video out.

Runs the codec core's `Reconstructor` (the same code path as `vsae reconstruct`) off the event loop,
so inference never blocks WebRTC. It measures its own load and steps the rebuild down (and back up) a
fixed ladder before it falls behind (receiver/ladder.py). If it still falls behind by more than
MAX_BACKLOG frames, the oldest waiting frame is dropped and later concealed by interpolation across the
gap: a slow receiver loses quality, never the connection.

In a live call (guard on) the sender runs this same rebuild in its closed loop and sends, for every output
frame, the guard's mode (codec.guard): the worker computes the baseline beside the vsae rebuild and shows
what the modes say, waiting up to MODES_WAIT_S for a frame's modes (they travel on the reliable control
channel while the frame itself is rebuilt here); past that it shows MISSING_MODES and counts the frame.
Verified model updates (codec.refresh, checked by the session) switch the weights from the key they name.

A call that starts before the model has arrived (Config.early) starts the worker without a model: it shows
the bicubic rebuild (the baseline) until the session hands it the verified model (`set_model`), then
switches at the next key it rebuilds: frames before that key are the baseline's, that key and every frame
after it the model's, one output per source frame either way.

An adaptive stream (Config.shapes) changes shape at keyframes (sender/shapes.py): each new shape, announced by a
`shape` message naming its first key, sets the temporal factor of the gaps after that key and whether frames from
it on are the model's rebuild or the codec's own frames at full size, shown as decoded ("plain": the baseline
below, which runs beside the model for such a stream). A frame whose size is not the current shape's waits up to
SHAPE_WAIT_S for its message (the control channel may be behind the video); past that it is rebuilt as the shape
it has. Either way one frame is output per source frame.

Nothing here grows with the stream's length (a call may run for hours): quality metrics are running
sums, latencies a fixed-size reservoir, capture times a bounded map of frames not yet output.
"""

from __future__ import annotations

import collections
import random
import threading
import time
from dataclasses import dataclass

import numpy as np

from codec.guard import MODE_WEIGHTS, FrameModes, apply_modes
from codec.metrics import psnr_per_frame, ssim
from codec.ops import TEMPORAL_METHODS, Codec
from codec.pipeline import BaselineReconstructor, OutputFrame, Reconstructor
from codec.video import VideoWriter, to_tensor, to_uint8

from .ladder import RebuildController, build_ladder

MAX_BACKLOG = 8
# Capture times kept for frames not yet output (bounds memory if a peer floods frame meta).
MAX_PENDING_CAPTURES = 4096
# Latency median / p95 come from a uniform reservoir sample (Vitter's algorithm R) of this many output
# frames: exact for streams up to this long (~5 min at 30 fps), a fixed 80 kB however long the call.
LATENCY_RESERVOIR = 10_000
# A live call: how long an output frame may wait for its guard modes (the sender's closed loop rebuilds the
# same key at about the same time; modes later than this mean a slow or stalled sender).
MODES_WAIT_S = 0.5
# ... and what a frame without modes shows: the even blend of the two rebuilds (their errors differ, so the
# blend is rarely far from the better one; neither alone is safe without the sender's word).
MISSING_MODES = FrameModes(MODE_WEIGHTS.index(0.5))
# A key whose frames waited longer than this for their modes was held up by the sender, not by this CPU.
MODES_GATED_S = 0.005
# Modes kept for frames not yet output (bounds memory if a peer floods them).
MAX_PENDING_MODES = 4096
# Model-version changes listed in the stats (the count of updates goes on; a long call's list stays small).
MAX_VERSION_RUNS = 1000
# An adaptive stream: how long a key of a size the current shape does not have may wait for the `shape` message
# that announces its shape (sent on the control channel just before the key's RTP packets; a loss there costs an
# SCTP retransmission, about an RTT).
SHAPE_WAIT_S = 0.5
# Shape changes announced and not yet reached (bounds memory if a peer floods them; the session refuses more), also
# the recent runs kept to tell plain output frames from rebuilt ones (output trails the keys by a few frames), and
# the changes listed in the stats.
MAX_PENDING_SHAPES = 64
MAX_SHAPE_RUNS = 1000
# The shown PSNR second by second of the stream (by source frame index) is kept for this many seconds (a day: a
# few kB an hour in the stats), for the fault lab's per-second table and plot.
MAX_PSNR_SECONDS = 86_400


@dataclass
class StreamInfo:
    """What the worker needs to know about the stream (from the sender's config)."""

    size: tuple[int, int]  # output (H, W)
    fps: float
    temporal: int
    frames: int
    adaptive: bool = False  # the shape may change at keyframes (Config.shapes; `shape` messages)
    low_size: tuple[int, int] | None = None  # (h, w) of the first shape's frames on the track


class ReconstructWorker:
    def __init__(
        self,
        codec: Codec | None,
        info: StreamInfo,
        output: str,
        iterations: int,
        method: str,
        reference: np.ndarray | None = None,
        bicubic_output: str | None = None,
        reference_loop: bool = False,
        adapt: bool = True,
        guard: bool = False,
        on_output=None,
    ):
        self.info = info
        # on_output(index, shown, bicubic): every output frame as uint8 (H, W, 3), e.g. to the live view
        # (receiver/view.py); called on this thread, so it must not block.
        self.on_output = on_output
        self.codec = codec
        self.guard = guard
        if guard and codec is None:
            raise ValueError("a live call's guard needs the model from the first frame")
        self.iterations, self.method = iterations, method
        # None until the model arrives (an early start): the baseline is shown meanwhile.
        self.reconstructor = Reconstructor(codec, info.size, info.temporal, iterations, method) if codec is not None else None
        self._model_pending: Codec | None = None
        self.model_from: int | None = 0 if codec is not None else None  # first frame rebuilt with the model
        self.model_ready_time: float | None = None  # wall clock when set_model handed it over
        self.concealed_before_model = 0
        self.psnr_before_model, self.psnr_after_model = RunningMean(), RunningMean()
        self.ladder = RebuildController(build_ladder(method, iterations, TEMPORAL_METHODS), adapt=adapt)
        # An adaptive stream: the current shape (its temporal factor, plain or rebuilt by the model, its frame size),
        # shape changes announced and not yet reached, and the recent runs of plain and rebuilt frames by first index.
        self.temporal = info.temporal
        self.plain = False
        self.expected_size = info.low_size
        self._pending_shapes: collections.deque = collections.deque()  # (first, temporal, plain, (h, w))
        self._runs: collections.deque = collections.deque([(0, False)], maxlen=MAX_PENDING_SHAPES)
        self._temporal_after: tuple[int, int] | None = None  # (key, T): T governs the gaps after that key
        self._model_open = True  # the model's reconstructor holds the last key (False across a plain run)
        self.shape_runs: list[list] = [[0, info.temporal, False]] if info.adaptive else []
        self.shape_waits = 0  # keys that waited for their shape message
        self.shape_unannounced = 0  # keys of a new size whose message did not come within SHAPE_WAIT_S
        self.frames_plain = 0
        self.concealed_plain = 0
        needs_baseline = (guard or reference is not None or bicubic_output or codec is None or on_output is not None
                          or info.adaptive)
        self.baseline = BaselineReconstructor(info.size, info.temporal) if needs_baseline else None
        self.reference = reference
        self.reference_loop = reference_loop  # output frame i is scored against reference[i % len(reference)]
        self.writer = VideoWriter(output, info.size, info.fps)
        self.bicubic_writer = VideoWriter(bicubic_output, info.size, info.fps) if bicubic_output else None
        self._queue: collections.deque = collections.deque()
        self._wake = threading.Condition()
        self._total: int | None = None
        self._closing = False
        self.error: BaseException | None = None
        self.frames_received = 0
        self.frames_dropped = 0  # dropped from the backlog (receiver too slow)
        self.frames_out = 0
        self.modes: dict[int, FrameModes] = {}  # a live call: each output frame's guard modes, until output
        self.frames_unguarded = 0  # output without their modes (MISSING_MODES)
        self.modes_wait_s = 0.0  # time spent waiting for the sender's modes (not work: kept out of the load)
        self.updates_late = 0  # a verified update whose key had been rebuilt before it came: applied at a later key
        self.mode_counts: collections.Counter = collections.Counter()
        self._updates: collections.deque = collections.deque()  # (apply_from, state_dict, version), verified
        self.version_runs: list[list[int]] = []  # [first frame index, model version] at each change
        self.psnr_vsae = RunningMean()  # a live call: the vsae rebuild before the guard
        self.capture_times: dict[int, float] = {}
        self.stream_t0: float | None = None
        self.latencies = LatencyReservoir(LATENCY_RESERVOIR)
        self.psnr = RunningMean()
        self.psnr_seconds: dict[int, RunningMean] = {}  # second of the stream -> the shown PSNR's mean
        self.psnr_bicubic = RunningMean()
        self.ssim = RunningMean()
        self.reconstruct_s = 0.0
        self.busy_s = 0.0
        # Wall-clock (Unix) times of the first and last output frame: a throughput window that several
        # receivers on one machine share (bench.load).
        self.first_output_time: float | None = None
        self.last_output_time: float | None = None
        self._thread = threading.Thread(target=self._run, name="vsae-reconstruct", daemon=True)
        self._thread.start()

    # -- called from the event loop -----------------------------------------------------------------
    def submit(self, index: int, rgb: np.ndarray) -> None:
        """Queue a received low-res frame (h, w, 3) uint8 with its source index."""
        self.frames_received += 1
        with self._wake:
            if len(self._queue) >= MAX_BACKLOG:
                self._queue.popleft()
                self.frames_dropped += 1
            self._queue.append((index, rgb))
            self._wake.notify()

    def note_capture(self, index: int, capture_time: float) -> None:
        """The sender's capture time of a sent frame (frame meta): the latency reference. Frames never
        sent (in-betweens) were captured at the same clock, t0 + index / fps."""
        if len(self.capture_times) >= MAX_PENDING_CAPTURES:
            # Entries for frames already output (their meta came late) would otherwise stay for good and,
            # over a long call, fill the map: drop them. Output indices run 0, 1, 2, ...; the frame being
            # written right now (frames_out - 1 at most) may still need its entry. The thread pops
            # concurrently, hence the snapshot of the keys and pop with a default.
            done = self.frames_out - 1
            for stale in [i for i in list(self.capture_times) if i < done]:
                self.capture_times.pop(stale, None)
        if len(self.capture_times) < MAX_PENDING_CAPTURES:
            self.capture_times[index] = capture_time
        if self.stream_t0 is None:
            self.stream_t0 = capture_time - index / self.info.fps

    def note_modes(self, first: int, modes: list[FrameModes]) -> None:
        """The guard's modes for output frames first, first + 1, ... (a live call)."""
        with self._wake:
            for k, m in enumerate(modes):
                if len(self.modes) < MAX_PENDING_MODES and first + k >= self.frames_out:
                    self.modes[first + k] = m
            self._wake.notify_all()

    def schedule_update(self, apply_from: int, state: dict, version: int) -> None:
        """A verified model update: frames >= `apply_from` are rebuilt with `state` (model version `version`)."""
        with self._wake:
            self._updates.append((apply_from, state, version))

    def schedule_shape(self, first: int, temporal: int, plain: bool, size: tuple[int, int]) -> None:
        """An adaptive stream's next shape, from key `first` on (the session checked it)."""
        with self._wake:
            self._pending_shapes.append((first, temporal, plain, tuple(size)))
            self._wake.notify_all()

    @property
    def pending_shapes(self) -> int:
        return len(self._pending_shapes)

    def set_model(self, codec: Codec) -> None:
        """The verified model of an early-started call: rebuild with it from the next key on."""
        with self._wake:
            self._model_pending = codec
            self.model_ready_time = time.time()

    def finish(self, total: int | None = None, timeout: float | None = None) -> None:
        """End of stream: process what is queued, emit frames up to `total`, close the files (blocking)."""
        with self._wake:
            self._total, self._closing = total, True
            self._wake.notify_all()
        self._thread.join(timeout)

    # -- the thread ----------------------------------------------------------------------------------
    def _run(self) -> None:
        previous_index: int | None = None
        try:
            while True:
                with self._wake:
                    while not self._queue and not self._closing:
                        self._wake.wait()
                    item = self._queue.popleft() if self._queue else None
                if item is None:
                    break
                began = time.perf_counter()
                index, rgb = item
                frame = to_tensor(rgb[None])[0]
                if self.info.adaptive:
                    began += self._follow_shape(index, rgb.shape[:2])  # waiting for the sender is not work
                self._adopt_model(index)
                if self.reconstructor is not None:
                    self._next_update(index)
                outputs = self._rebuild(index, frame)
                self.reconstruct_s += time.perf_counter() - began
                baseline = self.baseline.push(index, frame) if self.baseline else []
                if self._temporal_after is not None and self._temporal_after[0] == index:
                    self._set_temporal(self._temporal_after[1])
                outputs = self._shown(outputs, baseline)
                waited = self.modes_wait_s
                self._emit(outputs, baseline)
                # Waiting for the sender's modes is not work, and frames queued meanwhile wait for the sender,
                # not for this CPU: the ladder must not step down for either.
                waited = self.modes_wait_s - waited
                busy = time.perf_counter() - began - waited
                self.busy_s += busy
                if previous_index is not None and index > previous_index and self.reconstructor is not None:
                    self._adapt(busy, (index - previous_index) / self.info.fps, index, gated=waited > MODES_GATED_S)
                previous_index = max(index, previous_index if previous_index is not None else index)
            began = time.perf_counter()
            # A stream that ends in a plain run: the model rests there and holds nothing (the baseline ends it).
            resting = self.reconstructor is None or not self._model_open
            outputs = self.reconstructor.flush(self._total) if not resting else []
            self.reconstruct_s += time.perf_counter() - began
            baseline = self.baseline.flush(self._total) if self.baseline else []
            self._emit(self._shown(outputs, baseline), baseline)
            self.busy_s += time.perf_counter() - began
        except BaseException as exc:  # reported by the session; the thread must not die silently
            self.error = exc
        finally:
            self.writer.close()
            if self.bicubic_writer:
                self.bicubic_writer.close()

    def _follow_shape(self, index: int, size: tuple[int, int]) -> float:
        """Before key `index` (of frame size `size`): take up the shapes announced up to it, waiting up to
        SHAPE_WAIT_S for the message when the size says the shape changed. Returns the seconds waited (not work)."""
        waited = 0.0
        with self._wake:
            announced = lambda: self._pending_shapes and self._pending_shapes[0][0] <= index  # noqa: E731
            if tuple(size) != self.expected_size and not announced():
                began = time.monotonic()
                deadline = began + SHAPE_WAIT_S
                while not announced() and not self._closing and time.monotonic() < deadline:
                    self._wake.wait(deadline - time.monotonic())
                waited = time.monotonic() - began
                self.shape_waits += 1
                if not announced():
                    self.shape_unannounced += 1
                    self.expected_size = tuple(size)  # rebuilt as the shape it has; counted once
            while announced():
                first, temporal, plain, expected = self._pending_shapes.popleft()
                self.plain, self.expected_size = plain, expected
                self._temporal_after = (index, temporal)  # the gap before this key is the old shape's
                self._runs.append((index, plain))
                if len(self.shape_runs) < MAX_SHAPE_RUNS:
                    self.shape_runs.append([index, temporal, plain])
        return waited

    def _set_temporal(self, temporal: int) -> None:
        self.temporal = temporal
        self._temporal_after = None
        for rebuild in (self.reconstructor, self.baseline):
            if rebuild is not None:
                rebuild.temporal = temporal

    def _rebuild(self, index: int, frame) -> list[OutputFrame]:
        """The model's frames from key `index`. Across a plain run it rests: the key that starts the run still
        closes the model's in-betweens before it, and the first key after the run starts it again from there."""
        if self.reconstructor is None:
            return []
        if self.plain:
            if not self._model_open:
                return []
            self._model_open = False
            return [o for o in self.reconstructor.push(index, frame) if o.index < index]
        if not self._model_open:
            self.reconstructor.restart_at(index)
            self._model_open = True
        return self.reconstructor.push(index, frame)

    def _plain_at(self, index: int) -> bool:
        """Whether output frame `index` is in a plain run (the runs start at their first key)."""
        plain = False
        for first, run_plain in self._runs:
            if first > index:
                break
            plain = run_plain
        return plain

    def _adopt_model(self, index: int) -> None:
        """An early start's model, once verified: the reconstructor starts at key `index` (nothing before it)."""
        if self.reconstructor is not None:
            return
        with self._wake:
            codec, self._model_pending = self._model_pending, None
        if codec is None:
            return
        self.codec = codec
        rung = self.ladder.rung
        self.reconstructor = Reconstructor(codec, self.info.size, self.temporal, rung.iterations, rung.method)
        self.reconstructor.next_index = index
        self.model_from = index
        self._model_open = not self.plain

    def _shown(self, outputs: list[OutputFrame], baseline: list[OutputFrame]) -> list[OutputFrame]:
        """The frames to show, aligned with `baseline`: the baseline's before the model's first frame."""
        if self.model_from is None:
            return list(baseline)
        if self.info.adaptive:  # by index: the model's frames where it rebuilt them, the baseline's in plain runs
            rebuilt = {o.index: o for o in outputs}
            return [rebuilt.get(b.index, b) if b.index >= self.model_from and not self._plain_at(b.index) else b
                    for b in baseline]
        return [b for b in baseline if b.index < self.model_from] + outputs if self.model_from > 0 else outputs

    def _next_update(self, index: int) -> None:
        """Before rebuilding key `index`: hand the next verified update to the reconstructor (one switch at a
        time, in order). One whose key has passed switches at this key instead: counted as late."""
        if self.reconstructor.switch_pending:
            return
        with self._wake:
            if not self._updates:
                return
            apply_from, state, version = self._updates.popleft()
        if apply_from < self.reconstructor.next_index:
            self.updates_late += 1
        model = self.codec.model
        self.reconstructor.switch_model_at(apply_from, lambda: model.load_state_dict(state), version)

    def _modes_for(self, index: int) -> FrameModes:
        """A live call: this frame's modes from the sender, waiting up to MODES_WAIT_S for them."""
        began = time.monotonic()
        deadline = began + MODES_WAIT_S
        with self._wake:
            while index not in self.modes and not self._closing and time.monotonic() < deadline:
                self._wake.wait(deadline - time.monotonic())
            modes = self.modes.pop(index, None)
        self.modes_wait_s += time.monotonic() - began
        if modes is None:
            self.frames_unguarded += 1
            return MISSING_MODES
        return modes

    def _adapt(self, busy_s: float, media_s: float, index: int, gated: bool = False) -> None:
        with self._wake:
            backlog = 0 if gated else len(self._queue)
        rung = self.ladder.observe(busy_s, media_s, backlog, index)
        if rung is not None:
            self.reconstructor.set_mode(rung.method, rung.iterations)

    def _emit(self, outputs: list[OutputFrame], baseline: list[OutputFrame]) -> None:
        now = time.time()
        for j, out in enumerate(outputs):
            frame = out.frame.cpu()  # a no-op on CPU; the model may run on CUDA
            base = baseline[j].frame if j < len(baseline) else None
            rebuilt = frame
            if self.guard and base is not None:
                modes = self._modes_for(out.index)
                self.mode_counts[modes.mode] += 1
                frame = apply_modes(frame, base, modes)
                now = time.time()
            if (not self.version_runs or self.version_runs[-1][1] != out.model_version) and len(self.version_runs) < MAX_VERSION_RUNS:
                self.version_runs.append([out.index, out.model_version])
            before_model = self.model_from is None or out.index < self.model_from
            if before_model and out.concealed:
                self.concealed_before_model += 1
            elif self.info.adaptive and self._plain_at(out.index):
                self.frames_plain += 1
                self.concealed_plain += out.concealed
            image = to_uint8(frame[None])[0]
            self.writer.write(image)
            self.frames_out += 1
            self.first_output_time = self.first_output_time or now
            self.last_output_time = now
            capture = self.capture_times.pop(out.index, None)
            if capture is None and self.stream_t0 is not None:
                capture = self.stream_t0 + out.index / self.info.fps
            if capture is not None:
                self.latencies.add((now - capture) * 1000)
            base_image = to_uint8(base[None])[0] if base is not None and (self.bicubic_writer or self.on_output) else None
            if self.bicubic_writer is not None and base_image is not None:
                self.bicubic_writer.write(base_image)
            if self.on_output is not None:
                self.on_output(out.index, image, base_image)
            ref_index = out.index % len(self.reference) if self.reference is not None and self.reference_loop else out.index
            if self.reference is not None and ref_index < len(self.reference):
                # Metrics quantize to 8 bits first: they score what the viewer sees.
                ref = to_tensor(self.reference[ref_index][None])
                shown_psnr = float(psnr_per_frame(frame[None], ref)[0])
                self.psnr.add(shown_psnr)
                second = int(out.index // self.info.fps)
                if second < MAX_PSNR_SECONDS:
                    self.psnr_seconds.setdefault(second, RunningMean()).add(shown_psnr)
                (self.psnr_before_model if before_model else self.psnr_after_model).add(shown_psnr)
                self.ssim.add(ssim(frame[None], ref))
                if self.guard:
                    self.psnr_vsae.add(float(psnr_per_frame(rebuilt[None], ref)[0]))
                if base is not None:
                    self.psnr_bicubic.add(float(psnr_per_frame(base[None], ref)[0]))

    # -- results -------------------------------------------------------------------------------------
    @property
    def frames_concealed(self) -> int:
        """Concealed so far: before an early start's model arrived, and by the reconstructor since."""
        return ((self.reconstructor.concealed if self.reconstructor is not None else 0) + self.concealed_before_model
                + self.concealed_plain)

    def stats(self) -> dict:
        def mean(values: RunningMean, digits: int = 3) -> float | None:
            return round(values.mean, digits) if values.count else None

        latency = self.latencies.values()
        return {
            "frames_received": self.frames_received,
            "frames_out": self.frames_out,
            "frames_concealed": self.frames_concealed,
            "frames_dropped_backlog": self.frames_dropped,
            "fps_reconstruct": round(self.frames_out / self.reconstruct_s, 2) if self.reconstruct_s else None,
            "fps_pipeline": round(self.frames_out / self.busy_s, 2) if self.busy_s else None,
            "latency_ms": round(float(np.median(latency)), 1) if len(latency) else None,
            "latency_ms_p95": round(float(np.percentile(latency, 95)), 1) if len(latency) else None,
            "psnr": mean(self.psnr),
            "psnr_bicubic": mean(self.psnr_bicubic),
            "ssim": mean(self.ssim, 4),
            "psnr_frames": self.psnr.count,
            # Second k: the source frames from k x fps on (None: none of them scored).
            "psnr_per_second": [mean(self.psnr_seconds[k], 2) if k in self.psnr_seconds else None
                                for k in range(max(self.psnr_seconds, default=-1) + 1)],
            "ladder": self.ladder.stats(),
            "model_versions": self.version_runs,
            "model_from_frame": self.model_from,
            "frames_before_model": self.model_from if self.model_from is not None else self.frames_out,
            "model_ready_time": self.model_ready_time,
            "psnr_before_model": mean(self.psnr_before_model),
            "psnr_after_model": mean(self.psnr_after_model),
            "first_output_time": self.first_output_time,
            "last_output_time": self.last_output_time,
            **({"shape_runs": self.shape_runs, "frames_plain": self.frames_plain, "shape_waits": self.shape_waits,
                "shape_unannounced": self.shape_unannounced} if self.info.adaptive else {}),
            **({"psnr_vsae": mean(self.psnr_vsae), "frames_unguarded": self.frames_unguarded, "updates_late": self.updates_late,
                "modes_wait_s": round(self.modes_wait_s, 3),
                "modes": {str(k): v for k, v in sorted(self.mode_counts.items())}} if self.guard else {}),
        }


class RunningMean:
    """Mean of a stream of values in constant memory."""

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else float("nan")


class LatencyReservoir:
    """A uniform random sample of at most `size` values from a stream (algorithm R), preallocated so that
    its memory never changes; holds every value while fewer than `size` have come. Seeded: runs repeat."""

    def __init__(self, size: int, seed: int = 0) -> None:
        self._values = np.empty(size, np.float64)
        self.seen = 0
        self._rng = random.Random(seed)

    def add(self, value: float) -> None:
        if self.seen < len(self._values):
            self._values[self.seen] = value
        else:
            slot = self._rng.randrange(self.seen + 1)  # keep the new value with probability size / (seen + 1)
            if slot < len(self._values):
                self._values[slot] = value
        self.seen += 1

    def values(self) -> np.ndarray:
        return self._values[: min(self.seen, len(self._values))]

