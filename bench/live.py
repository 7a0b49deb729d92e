"""The live setting: a call made of frames the model never saw.

The model is fitted on a clip's prior frames only (`--prior A:B`); the call (`--call C:D`) is sent as the
sender would send it — every T-th frame, ÷S, through the real encoder at `--kbps` — and rebuilt causally,
in order, from the decoded packets (the sender's closed loop: the same bytes and the same `Reconstructor`
the receiver runs). Methods, on the same decoded stream:
  * `bicubic`: the baseline receiver (bicubic keys, blended in-betweens);
  * `vsae`: the static model, no guard;
  * `guarded` / `guarded-tiles`: the never-worse guard (codec/guard.py) per frame / plus tile exceptions,
    its bytes counted;
  * `refresh-<form>-<K>`: guard + live refresh (codec/refresh.py): a copy of the model fine-tuned on the
    call's frames seen so far, `--refresh-steps` Adam steps per second of call (a deterministic compute
    budget), updates of that form under K kbps, each applied from a key both ends agree on;
  * `upper-full` (with `--upper-bound`): non-causal: the same number of steps on all call frames, full
    float weights from the first frame, no guard — what no real update could beat.
Writes OUT/live.json, OUT/live.md and OUT/live.png (PSNR per second of call, one line per method).
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from codec import bundle
from codec.cache import cached_fit
from codec.guard import MAX_TILE_EXCEPTIONS, apply_modes, choose_modes, tile_grid
from codec.metrics import psnr_per_frame, ssim
from codec.model import DEFAULT_MODEL, model_config
from codec.ops import DEFAULT_ITERATIONS, DEFAULT_TEMPORAL_METHOD, Codec, upsample
from codec.pipeline import BaselineReconstructor, Reconstructor
from codec.refresh import GAIN_CHECK_KEYS, MIN_UPDATE_GAIN_DB, UPDATE_FORMS, Refresher, make_update, read_update, update_gain_db
from codec.train import FitOptions, fit
from codec.video import parse_size, read_video, select_frames, to_tensor
from sender.closedloop import MIN_UPDATE_BYTES, REFRESH_WINDOW_KEYS, RefreshOptions
from sender.session import prepare_low_res

from .codecs import transcode
from .results import write_results

DEFAULT_MODEL_KBPS = (5.0, 10.0, 20.0)
DEFAULT_FORMS = ("sparse-grad", "sparse-delta", "affine")
# Adam steps of the refresh per second of call: the deterministic compute budget (batch 4 at 176x144:
# ~2-5 s of 2 CPU cores per second of call; a sender with a GPU affords far more).
DEFAULT_REFRESH_STEPS = 50
# Seconds of call between update decisions (each one spends what the budget has saved since the last).
UPDATE_INTERVAL_S = 0.5
# An update applies from the first key this long after it is made, as in the WebRTC sender.
UPDATE_LEAD_S = RefreshOptions().lead_s
# Plot: per-frame PSNR smoothed over this many seconds.
PLOT_SMOOTH_S = 0.25
# Codec-in-the-loop fit: prior frames through the call's encoder at this many rates in [kbps/2, 2·kbps].
CODEC_POOL_RATES = 4


def codec_pool(frames: np.ndarray, scale: int, temporal: int, codec: str, kbps: float, fps: float, seed: int = 0) -> torch.Tensor:
    """(P, N, 3, H, W): the prior frames as a receiver of this call would get them (encoded ÷scale at
    random rates around `kbps`, decoded, bilinearly upsampled) — the codec-in-the-loop training inputs."""
    rng = np.random.default_rng(seed)
    _, low = prepare_low_res(frames, scale, 1)
    size = frames.shape[1:3]
    versions = []
    for rate in rng.uniform(kbps / 2, kbps * 2, CODEC_POOL_RATES):
        decoded = transcode(low, codec, float(rate), fps, [i * temporal for i in range(len(low))]).frames
        versions.append(upsample(to_tensor(decoded), size))
    return torch.stack(versions)


def fit_prior(video: Path, frames: np.ndarray, prior_spec: str, args: argparse.Namespace, fps: float, recipe: str) -> Codec:
    """The call's model from the prior frames, as the receiver holds it (through the f16 bundle)."""
    if args.model:
        return bundle.load(args.model)
    if args.fit_epochs is None and recipe == "clean":  # the default recipe by minutes: fitted once, cached
        path, _ = cached_fit(video, prior_spec, args.fit_minutes, args.size, progress=False)
        return bundle.load(path)
    prior = frames[select_frames(len(frames), prior_spec)]
    pool = codec_pool(prior, args.scale, args.temporal, args.codec, args.kbps, fps) if recipe == "codec" else None
    opts = FitOptions(epochs=args.fit_epochs, minutes=None if args.fit_epochs else args.fit_minutes, seed=0,
                      progress=False, degraded_pool=pool)
    result = fit(to_tensor(prior), model_config(DEFAULT_MODEL), opts)
    codec = Codec(result.model, result.normalization, meta={"frame_size": [frames.shape[2], frames.shape[1]]})
    return bundle.loads(bundle.dumps(codec))


def per_second(values: Sequence[float], fps: float) -> list[float]:
    per = max(1, round(fps))
    return [round(statistics.fmean(values[i : i + per]), 3) for i in range(0, len(values), per)]


def score(frames: list[torch.Tensor], reference: torch.Tensor, fps: float) -> dict:
    out = torch.stack(frames)
    psnr = psnr_per_frame(out, reference).tolist()
    return {"psnr": round(statistics.fmean(psnr), 3), "ssim": round(ssim(out, reference), 4), "psnr_per_second": per_second(psnr, fps),
            "psnr_per_frame": [round(v, 3) for v in psnr]}


def rebuild(codec: Codec, received: list[tuple[int, torch.Tensor]], total: int, size, args) -> list[torch.Tensor]:
    rec = Reconstructor(codec, size, args.temporal, args.iterations, args.method)
    out = [f.frame for i, x in received for f in rec.push(i, x)] + [f.frame for f in rec.flush(total)]
    return out


def guard_frames(vsae: list[torch.Tensor], base: list[torch.Tensor], reference: torch.Tensor, max_tiles: int) -> tuple[list, int]:
    """The guarded pictures and the guard's bytes over the call."""
    tiles = math.prod(tile_grid(tuple(reference.shape[-2:])))
    shown, nbytes = [], 0
    for v, b, ref in zip(vsae, base, reference):
        modes = choose_modes(v, b, ref, max_tiles)
        nbytes += len(modes.to_bytes(tiles))
        shown.append(apply_modes(v, b, modes))
    return shown, nbytes


def refresh_call(base_codec: Codec, received, decoded_up: dict[int, torch.Tensor], reference: torch.Tensor,
                 baseline: list[torch.Tensor], total: int, size, fps: float, form: str, model_kbps: float, args) -> dict:
    """One causal call with guard + refresh. The receiver's side is simulated by the same code the receiver
    runs: every update is verified by `read_update` against the receiver's weights before it is applied."""
    receiver_model = copy.deepcopy(base_codec.model)
    rx = Codec(receiver_model, base_codec.normalization)
    refresher = Refresher(base_codec.model, base_codec.normalization, form, seed=0)
    rec = Reconstructor(rx, size, args.temporal, args.iterations, args.method)
    keys = [i for i, _ in received]
    window: list[int] = []
    outputs, versions = [], []
    sent_bytes, version, in_flight = 0, 0, None
    updates, refused, steps_done, next_decision, not_helping = [], 0, 0, args.update_interval, 0
    began = time.perf_counter()
    for i, x in received:
        t = (i + 1) / fps  # call time once frame i has been captured
        # The receiver: an update whose last byte is there applies from the key it names.
        if in_flight is not None and in_flight["apply_from"] <= i:
            try:
                updated, info = read_update(in_flight["data"], receiver_model, version)
            except Exception:  # counted: a refused update leaves the old model in place
                refused += 1
            else:
                rec.switch_model_at(i, lambda u=updated: receiver_model.load_state_dict(u.state_dict()))
                version = info.version
                updates.append({"version": info.version, "apply_from": i, "bytes": info.bytes, "weights": info.weights})
            in_flight = None
        for f in rec.push(i, x):
            outputs.append(f.frame)
            versions.append(f.model_version)
        # The sender: train on what it has sent so far, within the step budget.
        window = (window + [i])[-REFRESH_WINDOW_KEYS:]
        due = int(args.refresh_steps * t) - steps_done
        if due > 0:
            idx = torch.tensor(window)
            inputs = torch.stack([decoded_up[k] for k in window])
            refresher.train(inputs, reference[idx], due)
            steps_done += due
        # An update decision every UPDATE_INTERVAL_S, spending what the model budget saved since the last.
        if t >= next_decision and in_flight is None:
            next_decision = t + args.update_interval
            budget = int(model_kbps * 1000 / 8 * t) - sent_bytes
            # As the WebRTC sender does (sender/closedloop.py): the model stream is a token bucket, an update
            # spends what the budget has saved and goes at once; it applies from the first key UPDATE_LEAD_S
            # later (the index travels inside the update).
            apply_from = next((k for k in keys if k / fps >= t + UPDATE_LEAD_S), None)
            made = None
            if budget >= MIN_UPDATE_BYTES and apply_from is not None:
                made = make_update(receiver_model, refresher.model, form, budget, version + 1, apply_from, refresher.grad_magnitude)
            if made is not None:
                recent = torch.tensor(window[-GAIN_CHECK_KEYS:])
                gain = update_gain_db(receiver_model, made[1], base_codec.normalization,
                                      torch.stack([decoded_up[int(k)] for k in recent]), reference[recent])
                if gain < MIN_UPDATE_GAIN_DB:
                    not_helping += 1
                    made = None
            if made is not None:
                in_flight = {"data": made[0], "apply_from": apply_from}
                sent_bytes += len(made[0])
                refresher.reset_grad_magnitude()
    for f in rec.flush(total):
        outputs.append(f.frame)
        versions.append(f.model_version)
    shown, guard_bytes = guard_frames(outputs, baseline, reference, MAX_TILE_EXCEPTIONS)
    result = score(shown, reference, fps)
    seconds = total / fps
    result.update({"model_kbps": round(sent_bytes * 8 / seconds / 1000, 3), "guard_kbps": round(guard_bytes * 8 / seconds / 1000, 3),
                   "updates": len(updates), "updates_refused": refused, "update_log": updates, "refresh_steps": steps_done,
                   "updates_not_helping": not_helping,
                   "model_versions": versions, "wall_s": round(time.perf_counter() - began, 1),
                   "psnr_unguarded": round(float(psnr_per_frame(torch.stack(outputs), reference).mean()), 3)})
    return result


def run_clip(video: str, args: argparse.Namespace) -> dict:
    size_wh = parse_size(args.size)
    frames, fps = read_video(video, None, size_wh)
    prior_spec, call_idx = args.prior, select_frames(len(frames), args.call)
    call = frames[call_idx]
    reference = to_tensor(call)
    size = tuple(reference.shape[-2:])
    indices, low = prepare_low_res(call, args.scale, args.temporal)
    stream = transcode(low, args.codec, args.kbps, fps, indices)
    seconds = len(call) / fps
    video_kbps = stream.bytes * 8 / seconds / 1000
    received = [(i, to_tensor(f[None])[0]) for i, f in zip(indices, stream.frames)]
    decoded_up = {i: upsample(x[None], size)[0] for i, x in received}
    total = len(call)
    row = {"clip": Path(str(video)).stem, "prior": prior_spec, "call": args.call, "fps": round(fps, 3), "scale": args.scale,
           "temporal": args.temporal, "codec": args.codec, "video_kbps": round(video_kbps, 3), "size": [size[1], size[0]],
           "refresh_steps_per_s": args.refresh_steps,
           "update_interval_s": args.update_interval, "fit": {"epochs": args.fit_epochs, "minutes": None if args.fit_epochs else args.fit_minutes,
                                                              "recipes": list(args.fit_recipes)}, "methods": {}}
    base_rec = BaselineReconstructor(size, args.temporal)
    baseline = [f.frame for i, x in received for f in base_rec.push(i, x)] + [f.frame for f in base_rec.flush(total)]
    row["methods"]["bicubic"] = {**score(baseline, reference, fps), "model_kbps": 0.0, "updates": 0}
    tiles = math.prod(tile_grid(size))
    # A given --model is one model: the recipe comparison needs fits.
    for recipe in args.fit_recipes[:1] if args.model else args.fit_recipes:
        began = time.perf_counter()
        codec = fit_prior(Path(str(video)), frames, prior_spec, args, fps, recipe)
        suffix = "" if recipe == args.fit_recipes[0] else f"@{recipe}"
        print(f"live {row['clip']}: model ({recipe} recipe) ready in {time.perf_counter() - began:.0f} s", file=sys.stderr)
        static = rebuild(codec, received, total, size, args)
        row["methods"][f"vsae{suffix}"] = {**score(static, reference, fps), "model_kbps": 0.0, "updates": 0}
        for name, max_tiles in ((f"guarded{suffix}", 0), (f"guarded-tiles{suffix}", MAX_TILE_EXCEPTIONS)):
            shown, nbytes = guard_frames(static, baseline, reference, max_tiles)
            row["methods"][name] = {**score(shown, reference, fps), "model_kbps": 0.0, "updates": 0,
                                    "guard_kbps": round(nbytes * 8 / seconds / 1000, 3), "tiles": tiles}
        if suffix:
            continue  # refresh runs on the first recipe's model only (CPU time)
        for form in args.forms:
            for kbps in args.model_kbps:
                name = f"refresh-{form}-{kbps:g}"
                row["methods"][name] = refresh_call(codec, received, decoded_up, reference, baseline, total, size, fps, form, kbps, args)
                m = row["methods"][name]
                print(f"live {row['clip']}: {name}: {m['psnr']:.2f} dB, {m['updates']} updates, {m['model_kbps']:.1f} kbps "
                      f"({m['wall_s']:.0f} s)", file=sys.stderr)
        if args.upper_bound:
            steps = int(args.refresh_steps * seconds)
            refresher = Refresher(codec.model, codec.normalization, "full", seed=0)
            keys = torch.tensor([i for i, _ in received])
            refresher.train(torch.stack([decoded_up[int(k)] for k in keys]), reference[keys], steps)
            upper = Codec(refresher.model, codec.normalization)
            row["methods"]["upper-full"] = {**score(rebuild(upper, received, total, size, args), reference, fps),
                                            "model_kbps": None, "updates": 1, "refresh_steps": steps,
                                            "note": "non-causal: trained on every call frame, full float weights from frame 0"}
    for m in row["methods"].values():
        m["total_kbps"] = round(video_kbps + (m.get("model_kbps") or 0) + m.get("guard_kbps", 0), 3)
    return row


def markdown(rows: list[dict]) -> str:
    lines = []
    for row in rows:
        base = row["methods"]["bicubic"]
        lines += [f"### {row['clip']} {row['size'][0]}x{row['size'][1]}: prior {row['prior']}, call {row['call']} "
                  f"(÷{row['scale']}, T={row['temporal']}, {row['codec']} {row['video_kbps']:.1f} kbps, "
                  f"refresh {row['refresh_steps_per_s']} steps/s)", "",
                  "| method | PSNR dB | vs bicubic | worst second vs bicubic | SSIM | model kbps | guard kbps | total kbps | updates |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name, m in row["methods"].items():
            worst = min(a - b for a, b in zip(m["psnr_per_second"], base["psnr_per_second"]))
            lines.append(f"| {name} | {m['psnr']:.2f} | {m['psnr'] - base['psnr']:+.2f} | {worst:+.2f} | {m['ssim']:.4f} | "
                         f"{m.get('model_kbps') if m.get('model_kbps') is not None else 'n/a'} | {m.get('guard_kbps', 0)} | "
                         f"{m['total_kbps']} | {m.get('updates', 0)} |")
        lines.append("")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """PSNR over the call, per method: per-frame values smoothed over PLOT_SMOOTH_S (a short call has only
    a few whole seconds), with each whole second's mean as a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows), figsize=(7.5 * len(rows), 4.8), squeeze=False)
    colors = plt.get_cmap("tab20").colors
    for ax, row in zip(axes[0], rows):
        fps = row["fps"]
        window = max(1, round(PLOT_SMOOTH_S * fps))
        for k, (name, m) in enumerate(row["methods"].items()):
            values = np.array(m["psnr_per_frame"])
            smooth = np.convolve(values, np.ones(window) / window, mode="valid")
            t = (np.arange(len(smooth)) + window / 2) / fps
            style = "--" if name in ("bicubic", "upper-full") else "-"
            ax.plot(t, smooth, style, color=colors[k % len(colors)], lw=1.4, label=name)
            seconds = np.arange(len(m["psnr_per_second"])) + 0.5
            ax.plot(seconds, m["psnr_per_second"], "o", color=colors[k % len(colors)], ms=4)
        ax.set_title(f"{row['clip']}: call {row['call']}, {row['video_kbps']:.0f} kbps video (dots: per-second means)")
        ax.set_xlabel("seconds into the call")
        ax.set_ylabel("PSNR (dB)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_forms(rows: list[dict], path: Path) -> None:
    """Gain over bicubic against the model stream's measured kbps, one line per update form (its budgets K in
    order), beside the guard alone (no model stream) and the non-causal full update (the bound)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows), figsize=(6.5 * len(rows), 4.5), squeeze=False)
    for ax, row in zip(axes[0], rows):
        methods, base = row["methods"], row["methods"]["bicubic"]["psnr"]
        forms: dict[str, list[tuple[float, float, str]]] = {}
        for name, m in methods.items():
            if name.startswith("refresh-"):
                form, budget = name[len("refresh-"):].rsplit("-", 1)
                forms.setdefault(form, []).append((m["model_kbps"], m["psnr"] - base, budget))
        for form, points in forms.items():
            points.sort(key=lambda p: float(p[2]))
            ax.plot([p[0] for p in points], [p[1] for p in points], "o-", label=f"guard + refresh, {form}")
            for x, y, budget in points:
                ax.annotate(f"K={budget}", (x, y), textcoords="offset points", xytext=(3, 4), fontsize=7)
        for name, style in (("guarded-tiles", ":"), ("upper-full", "--")):
            if name in methods:
                label = "guard alone (no model stream)" if name == "guarded-tiles" else "full update, non-causal (bound)"
                ax.axhline(methods[name]["psnr"] - base, ls=style, color="gray" if name == "guarded-tiles" else "black", label=label)
        ax.axhline(methods["vsae"]["psnr"] - base, ls="-.", color="tab:red", lw=1, label="static vsae, no guard")
        ax.set_title(f"{row['clip']}: gain over bicubic vs model stream ({row['video_kbps']:.0f} kbps video)")
        ax.set_xlabel("model stream, kbps (measured bytes over the call)")
        ax.set_ylabel("PSNR gain over bicubic (dB)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 5,10,20, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


def _forms(text: str) -> tuple[str, ...]:
    forms = tuple(text.split(","))
    bad = [f for f in forms if f not in UPDATE_FORMS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown update form(s) {', '.join(bad)}: use {', '.join(UPDATE_FORMS)}")
    return forms


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("videos", nargs="+", metavar="VIDEO")
    p.add_argument("--prior", required=True, help="frames the model is fitted on, A:B")
    p.add_argument("--call", required=True, help="frames of the call, C:D (rebuilt causally)")
    p.add_argument("--out", required=True)
    p.add_argument("--size", default=None, help="resize frames to WxH")
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--temporal", type=int, default=2)
    p.add_argument("--kbps", type=float, default=20.0, help="video bitrate (default 20)")
    p.add_argument("--codec", default="vp8", choices=("vp8", "h264"))
    p.add_argument("--model-kbps", type=_floats, default=DEFAULT_MODEL_KBPS, help="model-stream budgets K (default 5,10,20)")
    p.add_argument("--forms", type=_forms, default=DEFAULT_FORMS, help=f"update forms (default {','.join(DEFAULT_FORMS)})")
    p.add_argument("--refresh-steps", type=int, default=DEFAULT_REFRESH_STEPS, help="refresh Adam steps per second of call")
    p.add_argument("--update-interval", type=float, default=UPDATE_INTERVAL_S,
                   help=f"seconds of call between update decisions (default {UPDATE_INTERVAL_S:g})")
    p.add_argument("--fit-minutes", type=float, default=4.0, help="prior fit budget (cached; default 4)")
    p.add_argument("--fit-epochs", type=int, default=None, help="prior fit by epochs instead (deterministic, not cached)")
    p.add_argument("--fit-recipes", type=lambda t: tuple(t.split(",")), default=("clean",),
                   help="clean (area-downscaled inputs) and/or codec (codec-in-the-loop inputs), e.g. clean,codec")
    p.add_argument("--model", default=None, help="use this bundle as the prior model")
    p.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS)
    p.add_argument("--method", default=DEFAULT_TEMPORAL_METHOD)
    p.add_argument("--upper-bound", action="store_true", help="also the non-causal full fine-tune")


def run(args: argparse.Namespace) -> int:
    rows = [run_clip(v, args) for v in args.videos]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot(rows, out / "live.png")
    if any(name.startswith("refresh-") for row in rows for name in row["methods"]):
        plot_forms(rows, out / "live-forms.png")
    env = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    write_results(out, "live", rows[0] if len(rows) == 1 else {"clips": rows, "environment": env}, markdown(rows), out / "live.png")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench live", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return run(p.parse_args(argv))
