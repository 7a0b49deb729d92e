"""Stream shapes and the rate–quality table that picks one for the bandwidth the estimate leaves the video.

A shape is what the video track carries: every T-th source frame ÷S, rebuilt by the model at the receiver, or
the codec's own frames at full size ("plain": scale 1, every frame, shown as decoded), in one codec. A table read
for several codecs (the call's first, `vsae send --switch-codecs`) holds each codec's shapes, and the call switches
codec with the shape (sender/payload.py): plain VP8 cannot hold under ~30 kbps at 176x144 and 30 frames/s, where
plain H.264 can. Which is best depends on the rate: at a few kbps a small, sparse stream rebuilt by the model wins;
as the rate grows, more keys and more pixels pay; at high rates the plain codec beats anything the model's manifold
can show (the RD bench's envelope switches configurations, `vsae bench rd`).

The table is a `vsae bench rd` result (its results.json) measured on the sender's prior footage, in the setting a
call is in: frames after those the model was fitted on (`--setting heldout --split half`; UNSEEN below). A table
measured at another frame rate than the call's is scaled to it by bits per frame (kbps x call fps / table fps):
exact for the same frames played at another rate (the fault lab plays carphone's 30 frames/s at 15), approximate
for footage captured at another rate (its frames differ more or less from one to the next). Each shape's curve is
its measured (kbps, PSNR) points; a shape is a candidate at a rate only from its lowest measured rate on (below it
the encoder cannot hold the rate: VP8 overshoots a small target by 2-3x), and above its highest it stays at its
best PSNR (the encoder has nothing more to spend bits on).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Collection, Sequence

from codec.errors import VsaeError

# A new shape costs a keyframe and a few frames of the new encoder settling, and the table's differences under
# ~0.3 dB are within what the same shape scores across clips: switch only for a predicted gain of this much.
SWITCH_GAIN_DB = 0.3
# ... unless the current shape is saturated: its rate is above the highest the table measured, where its encoder has
# nothing more to spend bits on and leaves the rest of the link unused (VP8 at s4t2 spends 31-47 kbps of a 60 kbps
# target on carphone, and the lab's stepped cap with shapes held s4t2 at ~40 kbps of its 60 after the step up, where
# s4t1 at 35 kbps was predicted 0.09 dB better and spends ~43 on the wire). Then a smaller predicted gain switches.
SATURATED_GAIN_DB = 0.05
# A table measured at a frame rate this far from the call's is scaled to it (below).
FPS_TOLERANCE = 0.01
# A call is made of frames its model never saw. A table measured on the frames the model was fitted on (`vsae bench
# rd --setting insample`) predicts the model's shapes 8-10 dB too high there (carphone, a model of frames 0-59, a
# call of 60-119: 31-34 dB predicted, 23 measured), and so picks them where the plain codec shows 30 dB. The half
# split (fit the first half of the footage, measure the second) measures frames after the model's, and predicted
# that call within 0.7 dB. The even split measures frames between the model's (the paper's setting, where vsae wins
# most): closer to in-sample than to a call, not measured against one. Of the results in one results.json, the
# table is read from the first of these settings present, in this order.
UNSEEN = "heldout-half"
GIVEN_MODEL = "heldout-given-model"
SETTING_PREFERENCE = (UNSEEN, "heldout-even", "insample")


class ShapeTableError(VsaeError):
    """A shape table that cannot be read or has nothing for the call's codec."""


@dataclass(frozen=True)
class Shape:
    scale: int
    temporal: int
    plain: bool = False
    codec: str = "vp8"  # the video encoder's (sender/encoder.py CODECS); a table of several lets the call switch codec

    @property
    def name(self) -> str:
        return "plain" if self.plain else f"s{self.scale}t{self.temporal}"

    @property
    def label(self) -> str:
        """The name with its codec, for logs where the call may switch codec."""
        return f"{self.name} {self.codec}"


@dataclass(frozen=True)
class ShapeCurve:
    shape: Shape
    points: tuple[tuple[float, float], ...]  # (measured kbps, PSNR dB), increasing kbps, PSNR non-decreasing

    def psnr_at(self, kbps: float) -> float | None:
        """The PSNR this shape gives at `kbps` of video (linear in log rate between measured points), None below
        its lowest measured rate."""
        rates = [r for r, _ in self.points]
        if kbps < rates[0] or kbps <= 0:
            return None
        if kbps >= rates[-1]:
            return self.points[-1][1]
        for (r0, p0), (r1, p1) in zip(self.points, self.points[1:]):
            if r0 <= kbps <= r1:
                share = 0.0 if r1 == r0 else (math.log(kbps) - math.log(r0)) / (math.log(r1) - math.log(r0))
                return p0 + share * (p1 - p0)
        return self.points[-1][1]


@dataclass(frozen=True)
class ShapeTable:
    codecs: tuple[str, ...]  # the call's codec first, then those it may switch to
    fps: float
    curves: tuple[ShapeCurve, ...]  # rates at `fps`
    source: str = ""
    measured_fps: float = 0.0  # the frame rate the table was measured at (its rates scaled to `fps`)
    setting: str = ""  # how its model's shapes were measured (`setting_text`): UNSEEN, or frames the model saw

    @property
    def codec(self) -> str:
        """The call's own codec (the one negotiated first)."""
        return self.codecs[0]

    @property
    def unseen(self) -> bool:
        """Whether the model's shapes were measured on frames after those its model was fitted on, as a call's are."""
        return self.setting == UNSEEN

    def predict(self, shape: Shape, kbps: float) -> float | None:
        curve = next((c for c in self.curves if c.shape == shape), None)
        return curve.psnr_at(kbps) if curve is not None else None

    def best(self, video_kbps_for: Callable[[Shape], float],
             among: Collection[Shape] | None = None) -> tuple[Shape, float | None]:
        """The shape with the highest predicted PSNR at the video rate `video_kbps_for(shape)` leaves it (the rate
        depends on the shape: fewer frames carry fewer packet headers). When no shape can hold its rate, the one
        whose lowest measured rate is the smallest. `among`: only these shapes (those the call can send)."""
        curves = [c for c in self.curves if among is None or c.shape in among]
        scored = [(c.psnr_at(video_kbps_for(c.shape)), c) for c in curves]
        held = [(p, c) for p, c in scored if p is not None]
        if not held:
            cheapest = min(curves, key=lambda c: c.points[0][0])
            return cheapest.shape, None
        psnr, curve = max(held, key=lambda pc: pc[0])
        return curve.shape, psnr

    def saturated(self, shape: Shape, kbps: float) -> bool:
        """Whether `kbps` is above the highest rate the table measured for `shape` (SATURATED_GAIN_DB)."""
        curve = next((c for c in self.curves if c.shape == shape), None)
        return curve is not None and kbps > curve.points[-1][0]

    def choose(self, current: Shape, video_kbps_for: Callable[[Shape], float],
               among: Collection[Shape] | None = None) -> tuple[Shape, float | None, float | None]:
        """(shape, its predicted PSNR, the current shape's): the best shape (`among` these), unless the current one
        is within SWITCH_GAIN_DB of it (SATURATED_GAIN_DB where the current one is saturated) and can hold its rate."""
        best, best_psnr = self.best(video_kbps_for, among)
        rate = video_kbps_for(current)
        now = self.predict(current, rate)
        margin = SATURATED_GAIN_DB if self.saturated(current, rate) else SWITCH_GAIN_DB
        if best == current or (now is not None and best_psnr is not None and best_psnr - now < margin):
            return current, now, now
        return best, best_psnr, now


def load_table(path: str | Path, codecs: str | Sequence[str], fps: float | None = None,
               plain_codec: bool = True) -> ShapeTable:
    """The shapes `vsae bench rd` measured for `codecs` (results.json: one clip's result or a list of them, the
    first clip used): one codec, or the call's codec first and those it may switch to. `fps`: the call's frame
    rate, the rates scaled to it. `plain_codec`: include each codec's own full-size stream."""
    codecs = (codecs,) if isinstance(codecs, str) else tuple(dict.fromkeys(codecs))
    if not codecs:
        raise ShapeTableError("a shape table needs at least one codec")
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ShapeTableError(f"{path}: no such shape table") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ShapeTableError(f"{path}: not a shape table (a `vsae bench rd` results.json): {exc}") from None
    result = _preferred(data if isinstance(data, list) else [data])
    if not isinstance(result, dict) or not isinstance(result.get("methods"), list):
        raise ShapeTableError(f"{path}: not a shape table (a `vsae bench rd` results.json with `methods`)")
    table_fps = result.get("fps")
    if not isinstance(table_fps, (int, float)) or not table_fps > 0:
        raise ShapeTableError(f"{path}: the table names no frame rate")
    rate_scale = 1.0
    if fps is not None and abs(table_fps - fps) > FPS_TOLERANCE * fps:
        rate_scale = fps / table_fps  # the same bits per frame at the call's rate
    curves = []
    by_name = {_table_codec(codec): codec for codec in codecs}
    for method in result["methods"]:
        codec = by_name.get(method.get("codec")) if isinstance(method, dict) else None
        if codec is None:
            continue
        name, scale, temporal = method.get("name", ""), method.get("scale"), method.get("temporal")
        if not (isinstance(scale, int) and isinstance(temporal, int) and scale >= 1 and temporal >= 1):
            continue  # the envelopes and the bicubic baselines
        plain = not str(name).startswith("vsae-")
        if plain and (not plain_codec or (scale, temporal) != (1, 1)):
            continue
        points = tuple((kbps * rate_scale, psnr) for kbps, psnr in _points(method.get("points"), path, name))
        if points:
            curves.append(ShapeCurve(Shape(scale, temporal, plain, codec), points))
    for codec in codecs:
        if not any(c.shape.codec == codec for c in curves):
            raise ShapeTableError(f"{path}: no shape measured with {codec} (run `vsae bench rd --codecs {codec}`)")
    return ShapeTable(codecs, float(fps or table_fps), tuple(curves), str(path), float(table_fps), _setting(result))


def _setting(result: dict) -> str:
    """A result's setting as SETTING_PREFERENCE names it ("" when it says none; GIVEN_MODEL where `vsae bench rd --model`
    measured a model whose fit frames it does not know, which may be the ones measured)."""
    setting = result.get("setting")
    if setting == "heldout":
        return GIVEN_MODEL if result.get("fit_frames") == "given" else f"heldout-{result.get('split') or 'even'}"
    return setting if isinstance(setting, str) else ""


def _preferred(results: list) -> object:
    """The first clip's result in the most call-like setting present (SETTING_PREFERENCE); the first result else."""
    if not results:
        return None
    first = results[0]
    clip = first.get("clip") if isinstance(first, dict) else None
    same = [r for r in results if isinstance(r, dict) and r.get("clip") == clip]
    rank = {name: i for i, name in enumerate(SETTING_PREFERENCE)}
    return min(same, key=lambda r: rank.get(_setting(r), len(rank)), default=first)


def setting_text(table: ShapeTable) -> str:
    """How the table's model shapes were measured, for the sender's log."""
    return {UNSEEN: "measured on frames after its model's", "heldout-even": "measured on frames between its model's",
            "insample": "measured on its model's own frames",
            GIVEN_MODEL: "measured with a given model, perhaps on its own frames"}.get(table.setting, "measured in an unnamed setting")


def _table_codec(codec: str) -> str:
    """The name `vsae bench rd` gives the call's codec."""
    return {"h264": "x264"}.get(codec, codec)


def _points(raw: object, path: Path, name: str) -> tuple[tuple[float, float], ...]:
    """A method's measured points, by rate, made non-decreasing in PSNR: a higher rate is never predicted worse
    (the measured points wobble where the encoder saturates)."""
    if not isinstance(raw, list):
        raise ShapeTableError(f"{path}: method {name!r} has no points")
    pairs = []
    for p in raw:
        kbps, psnr = (p.get("kbps"), p.get("psnr")) if isinstance(p, dict) else (None, None)
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (kbps, psnr)) or kbps <= 0:
            raise ShapeTableError(f"{path}: method {name!r} has a point without a positive kbps and a PSNR")
        pairs.append((float(kbps), float(psnr)))
    out: list[tuple[float, float]] = []
    for kbps, psnr in sorted(pairs):
        if out and kbps == out[-1][0]:
            out[-1] = (kbps, max(psnr, out[-1][1]))
        else:
            out.append((kbps, max(psnr, out[-1][1]) if out else psnr))
    return tuple(out)
