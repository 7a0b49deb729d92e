"""`vsae explore` and `vsae edit`: the explore/edit applications as commands that write files a person
looks at (PNG figures, MP4 videos) plus the numbers behind them as JSON."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from .. import bundle
from ..argtypes import positive, positive_float
from ..errors import VsaeError
from ..ops import TEMPORAL_METHODS, Codec
from ..train import pick_device
from ..video import parse_size, read_video, select_frames, to_tensor, to_uint8, write_video
from .edit import (
    BRIDGE_FRAMES,
    EDIT_ITERATIONS,
    EDIT_TEMPORAL_METHOD,
    MIN_LOOP_FRAMES,
    Loop,
    extrapolate,
    loop_candidates,
    remove_object,
    resample,
    seam_discontinuity,
    stitch,
    stretch,
    video_texture,
)
from .explore import (
    AVERAGE_ITERATIONS,
    cluster_frames,
    frames_in_rect,
    latent_codes,
    latent_map,
    summarize,
    video_average,
)
from .figures import image_grid, latent_map_figure

# Defaults of `--factor`: slow motion x4, stretch to twice the width.
SLOWMO_FACTOR = 4.0
STRETCH_FACTOR = 2.0
# `vsae mask-check`: the synthetic clip's length and its model's fit budget.
MASK_CHECK_FRAMES = 48
MASK_CHECK_MINUTES = 1.0
EDITS = ("slowmo", "texture", "stitch", "stretch", "extrapolate", "remove", "propagate")


# -- shared -----------------------------------------------------------------------------------------
def _load(args: argparse.Namespace) -> tuple[Codec, torch.Tensor, float]:
    codec = bundle.load(args.model, pick_device(args.device))
    size = parse_size(args.size)
    if size is None and isinstance(codec.meta.get("frame_size"), list):
        size = tuple(codec.meta["frame_size"])
    frames, fps = read_video(args.video, args.frames, size)
    return codec, to_tensor(frames), fps


def _write_json(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def _report(out: Path, written: list[Path], numbers: dict | None = None) -> None:
    for path in written:
        print(f"wrote {path}")
    if numbers:
        print(json.dumps(numbers))


def _indices(text: str, count: int) -> list[int]:
    """Frame indices from 'a,b,c' and/or slices 'A:B[:step]' joined by commas."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if ":" in part:
            out += select_frames(count, part)
        else:
            try:
                out.append(int(part))
            except ValueError:
                raise VsaeError(f"bad frame list {text!r}: use indices like 0,60,119 or slices like 10:40") from None
    bad = [i for i in out if not 0 <= i < count]
    if bad or not out:
        raise VsaeError(f"frame list {text!r} selects no frames or frame {bad[0] if bad else '?'} outside 0..{count - 1}")
    return out


def _frame(frames: torch.Tensor, index: int | None) -> tuple[int, torch.Tensor]:
    index = frames.shape[0] // 2 if index is None else index
    if not 0 <= index < frames.shape[0]:
        raise VsaeError(f"frame {index} outside 0..{frames.shape[0] - 1}")
    return index, frames[index]


def _numbers(text: str, count: int, what: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise VsaeError(f"bad {what} {text!r}: expected {count} comma-separated numbers") from None
    if len(values) != count:
        raise VsaeError(f"bad {what} {text!r}: expected {count} comma-separated numbers")
    return values


def _box(text: str | None, frames: torch.Tensor) -> tuple[int, int, int, int]:
    """x,y,w,h in pixels; default a box of a quarter of the frame's width and height at its centre."""
    h, w = frames.shape[-2:]
    if text is None:
        return (w * 3 // 8, h * 3 // 8, w // 4, h // 4)
    return tuple(int(v) for v in _numbers(text, 4, "box (x,y,w,h)"))


# -- explore ----------------------------------------------------------------------------------------
def cmd_explore(args: argparse.Namespace) -> int:
    codec, frames, _ = _load(args)
    out = Path(args.out)
    name = Path(args.video).stem
    codes = latent_codes(codec, frames)
    written: list[Path] = []

    lmap = latent_map(codes)
    region = None  # checked before the slow steps, so a bad selection fails at once
    if args.region_frames or args.region_rect:
        rect = _numbers(args.region_rect, 4, "rectangle (x0,y0,x1,y1)") if args.region_rect else None
        indices = frames_in_rect(lmap.coords, rect) if rect else _indices(args.region_frames, len(frames))
        if not indices:
            raise VsaeError(f"no frame's map point lies in the rectangle {args.region_rect} (see map.json for coordinates)")
        region = (indices, rect)
    written.append(_write_json(out / "map.json", lmap.to_json()))
    written.append(latent_map_figure(out / "map.png", lmap.coords, lmap.explained, frames, f"{name}: latent codes, PCA"))

    avg = video_average(codec, frames, codes, args.iterations)
    labels = {"pixel": "per-pixel mean of frames", "latent": "decoded mean latent",
              "latent_reprojected": f"decoded mean latent + {args.iterations} reprojections"}
    panels = [(avg.images[k], f"{labels[k]}\nsharpness {avg.stats[k]['sharpness']:.0f}, PSNR to frames "
               f"{avg.stats[k]['psnr_mean']:.2f} dB") for k in labels]
    written.append(image_grid(out / "average.png", [panels], f"{name}: video averages ({len(frames)} frames; "
                              f"frames' own sharpness {avg.frames_sharpness:.0f})"))
    written.append(_write_json(out / "average.json", {"frames": len(frames), "frames_sharpness": avg.frames_sharpness,
                                                     "averages": avg.stats}))

    clustering = cluster_frames(codec, codes, args.clusters, args.iterations)
    rows = [[(c.centroid, f"cluster {i}: centroid\n{len(c.frames)} frames, {c.frames[0]}..{c.frames[-1]}")
             for i, c in enumerate(clustering.clusters)],
            [(frames[c.medoid], f"cluster {i}: medoid\nframe {c.medoid}") for i, c in enumerate(clustering.clusters)]]
    how = "given" if args.clusters else "chosen by silhouette"
    written.append(image_grid(out / "clusters.png", rows, f"{name}: k-means on latents, k={len(clustering.clusters)} ({how})"))
    written.append(_write_json(out / "clusters.json", clustering.to_json()))

    numbers = {"explained_variance_ratio": lmap.to_json()["explained_variance_ratio"], "averages": avg.stats,
               "frames_sharpness": avg.frames_sharpness, "clusters": len(clustering.clusters)}
    if region is not None:
        indices, rect = region
        summary = summarize(codec, codes, indices, args.iterations)
        latent_map_figure(out / "region_map.png", lmap.coords, lmap.explained, None, f"{name}: selected region",
                          highlight=summary.frames, rect=rect)
        written.append(out / "region_map.png")
        written.append(image_grid(out / "region.png", [[(summary.centroid, f"centroid of {len(summary.frames)} frames"),
                                                       (frames[summary.medoid], f"medoid: frame {summary.medoid}")]],
                                  f"{name}: region summary"))
        written.append(_write_json(out / "region.json", {**summary.to_json(), "rect": rect}))
        numbers["region"] = {"frames": len(summary.frames), "medoid": summary.medoid}
    _report(out, written, numbers)
    return 0


# -- edits ------------------------------------------------------------------------------------------
def edit_slowmo(args, codec: Codec, frames: torch.Tensor, fps: float, out: Path) -> tuple[list[Path], dict]:
    factor = args.factor or SLOWMO_FACTOR
    slow = resample(codec, frames, factor, args.method)
    write_video(out / "slowmo.mp4", to_uint8(slow), fps)
    # One source interval from the middle, as the output shows it.
    mid = frames.shape[0] // 2
    first = int(-(-mid * factor // 1))
    shown = list(range(first, min(len(slow), first + int(factor) + 1)))[:8]
    row = [(slow[j], f"output {j}\nsource t={j / factor:.2f}") for j in shown]
    png = image_grid(out / "slowmo.png", [row], f"slow motion x{factor:g} ({args.method} interpolation)")
    info = {"factor": factor, "method": args.method, "frames_in": len(frames), "frames_out": len(slow), "fps": fps}
    return [out / "slowmo.mp4", png, _write_json(out / "slowmo.json", info)], info


def edit_texture(args, codec: Codec, frames: torch.Tensor, fps: float, out: Path) -> tuple[list[Path], dict]:
    codes = latent_codes(codec, frames)
    candidates = loop_candidates(codes, min(args.min_loop, len(frames)))
    if args.loop:
        start, end = (int(v) for v in _numbers(args.loop.replace(":", ","), 2, "loop (START:END)"))
        flat = torch.nn.functional.normalize(codes.grid.flatten(1).float(), dim=1)
        loop = Loop(start, end, float(flat[start] @ flat[end]))
    else:
        loop = candidates[0]
    tex = video_texture(codec, frames, loop, round(args.seconds * fps), args.bridge, args.method)
    write_video(out / "texture.mp4", to_uint8(tex.frames), fps)
    cycle = loop.end - loop.start + 1
    path = [(frames[loop.end], f"frame {loop.end} (loop end)")]
    path += [(tex.frames[cycle + i], f"bridge {i + 1}/{tex.bridge}") for i in range(tex.bridge)]
    path += [(frames[loop.start], f"frame {loop.start} (loop start)")]
    t = tex.transition
    title = (f"loop {loop.start}..{loop.end}: direct jump PSNR {t['direct']['psnr']:.2f} dB; interpolated "
             f"{t['interpolated']['psnr']:.2f} dB; worst bridged step {t['worst_step_psnr']:.2f} dB")
    png = image_grid(out / "texture.png", [path], title)
    info = {"loop": loop.to_json(), "bridge": tex.bridge, "frames_out": len(tex.frames), "seconds": args.seconds,
            "transition": t, "candidates": [c.to_json() for c in candidates]}
    return [out / "texture.mp4", png, _write_json(out / "texture.json", info)], info


def edit_stitch(args, codec: Codec, frames: torch.Tensor, fps: float, out: Path) -> tuple[list[Path], dict]:
    n = frames.shape[0]
    chosen = _indices(args.stitch_frames, n) if args.stitch_frames else [0, n // 2, n - 1]
    result = stitch(codec, frames[chosen], args.iterations)
    w = frames.shape[-1]
    seams = [w * i for i in range(1, len(chosen))]
    interior = [w * i + w // 2 for i in range(len(chosen))]
    numbers = {
        "frames": chosen,
        "seam_step": {"naive": round(seam_discontinuity(result.naive, seams), 2),
                      "reprojected": [round(seam_discontinuity(s, seams), 2) for s in result.steps]},
        "interior_step": {"naive": round(seam_discontinuity(result.naive, interior), 2),
                          "reprojected": round(seam_discontinuity(result.output, interior), 2)},
    }
    rows = [[(result.naive, f"frames {', '.join(map(str, chosen))} side by side (seam step {numbers['seam_step']['naive']:.1f})")],
            [(result.output, f"after {args.iterations} reprojections (seam step {numbers['seam_step']['reprojected'][-1]:.1f})")]]
    png = image_grid(out / "stitch.png", rows, "stitching far-apart frames")
    return [png, _write_json(out / "stitch.json", numbers)], numbers


def edit_stretch(args, codec: Codec, frames: torch.Tensor, fps: float, out: Path) -> tuple[list[Path], dict]:
    index, frame = _frame(frames, args.frame)
    factor = args.factor or STRETCH_FACTOR
    result = stretch(codec, frame, factor, args.iterations)
    rows = [[(frame, f"frame {index}")], [(result.naive, f"stretched x{factor:g} (bilinear)")]]
    rows += [[(result.steps[i], f"after {i + 1} reprojection{'s' if i else ''}")] for i in sorted({0, args.iterations - 1})]
    png = image_grid(out / "stretch.png", rows, "stretching a frame")
    info = {"frame": index, "factor": factor, "iterations": args.iterations,
            "size": [result.output.shape[-1], result.output.shape[-2]]}
    return [png, _write_json(out / "stretch.json", info)], info


def edit_extrapolate(args, codec: Codec, frames: torch.Tensor, fps: float, out: Path) -> tuple[list[Path], dict]:
    index, frame = _frame(frames, args.frame)
    h, w = frame.shape[-2:]
    size_wh = parse_size(args.canvas) or (2 * w, 2 * h)
    rows, info = [], {"frame": index, "size": list(size_wh), "iterations": args.iterations}
    for mode in ("reflect", "zeros"):
        result = extrapolate(codec, frame, (size_wh[1], size_wh[0]), mode, args.iterations)
        shown = sorted({0, 1, args.iterations - 1} & set(range(args.iterations)))
        rows.append([(result.naive, f"{mode}-padded input")] +
                    [(result.steps[i], f"{mode}: {i + 1} reprojection{'s' if i else ''}") for i in shown])
    png = image_grid(out / "extrapolate.png", rows, f"spatial extrapolation of frame {index} to {size_wh[0]}x{size_wh[1]}")
    return [png, _write_json(out / "extrapolate.json", info)], info


def edit_remove(args, codec: Codec, frames: torch.Tensor, fps: float, out: Path) -> tuple[list[Path], dict]:
    index, frame = _frame(frames, args.frame)
    box = _box(args.box, frames)
    result = remove_object(codec, frame, box, args.iterations)
    x, y, w, h = box
    sx, sy = result.source
    row = [(frame, f"frame {index}, object box"), (result.edit.naive, "box filled with a patch from elsewhere"),
           (result.edit.output, f"{args.iterations} reprojections"), (result.composite, "composite (box from output)")]
    boxes = {(0, 0): box, (0, 1): (sx, sy, w, h)}
    png = image_grid(out / "remove.png", [row], f"object removal (seam step: naive {result.seam['naive']:.1f}, "
                     f"composite {result.seam['composite']:.1f}, original {result.seam['original']:.1f})", boxes)
    info = {"frame": index, "box": list(box), "source": list(result.source), "seam_step": result.seam}
    return [png, _write_json(out / "remove.json", info)], info


def edit_propagate(args, codec: Codec, frames: torch.Tensor, fps: float, out: Path) -> tuple[list[Path], dict]:
    from .pixelcodes import mask_overlay, propagate_mask

    if args.mask:
        import numpy as np
        from PIL import Image

        try:
            image = np.asarray(Image.open(args.mask).convert("L"))
        except OSError as exc:
            raise VsaeError(f"cannot read mask {args.mask}: {exc}") from None
        mask = torch.from_numpy((image > 127).astype("int64"))
    else:
        x, y, w, h = _box(args.box, frames)
        mask = torch.zeros(frames.shape[-2:], dtype=torch.int64)
        mask[y : y + h, x : x + w] = 1
    masks = propagate_mask(codec, frames, mask, progress=True)
    overlay = torch.stack([mask_overlay(f, m) for f, m in zip(frames, masks)])
    write_video(out / "propagate.mp4", to_uint8(overlay), fps)
    shown = torch.linspace(0, len(frames) - 1, 5).round().long().tolist()
    png = image_grid(out / "propagate.png", [[(overlay[i], f"frame {i}" + (" (given)" if i == 0 else "")) for i in shown]],
                     "mask propagation by pixel codes")
    area = masks.flatten(1).gt(0).float().mean(1)
    info = {"frames": len(frames), "mask_area_fraction": {"first": round(float(area[0]), 4),
                                                          "min": round(float(area.min()), 4), "max": round(float(area.max()), 4)}}
    return [out / "propagate.mp4", png, _write_json(out / "propagate.json", info)], info


EDIT_FUNCTIONS = {
    "slowmo": edit_slowmo, "texture": edit_texture, "stitch": edit_stitch, "stretch": edit_stretch,
    "extrapolate": edit_extrapolate, "remove": edit_remove, "propagate": edit_propagate,
}


def cmd_edit(args: argparse.Namespace) -> int:
    codec, frames, fps = _load(args)
    out = Path(args.out)
    if args.edit == "all":
        numbers = {}
        for name in EDITS:
            print(f"vsae edit: {name}", file=sys.stderr)
            written, numbers[name] = EDIT_FUNCTIONS[name](args, codec, frames, fps, out / name)
            _report(out, written)
        _write_json(out / "edits.json", numbers)
        print(f"wrote {out / 'edits.json'}")
        return 0
    written, numbers = EDIT_FUNCTIONS[args.edit](args, codec, frames, fps, out)
    _report(out, written, numbers)
    return 0


# -- known-answer check for mask propagation ------------------------------------------------------------
def cmd_mask_check(args: argparse.Namespace) -> int:
    """Mask propagation scored where the answer is known: a synthetic moving shape, its own fitted model."""
    from ..model import model_config
    from ..train import FitOptions, fit
    from .pixelcodes import mask_overlay, mean_iou, moving_shape_video, propagate_mask

    out = Path(args.out)
    video, truth = moving_shape_video(frames=args.frames, seed=args.seed, drift=args.drift)
    print(f"vsae mask-check: fitting a model on the {len(video)}-frame synthetic clip ({args.minutes:g} min)", file=sys.stderr)
    result = fit(video, model_config(), FitOptions(minutes=args.minutes, seed=args.seed, device=args.device, progress=not args.quiet))
    codec = Codec(result.model, result.normalization, pick_device(args.device))
    masks = propagate_mask(codec, video, truth[0], progress=not args.quiet)
    copied = truth[:1].expand_as(truth)
    numbers = {"frames": len(video), "size": [video.shape[-1], video.shape[-2]], "drift": args.drift, "fit_minutes": args.minutes,
               "fit_psnr": round(result.final_psnr, 2), "mean_iou": round(mean_iou(masks, truth), 4),
               "mean_iou_copy_first_mask": round(mean_iou(copied, truth), 4),
               "iou_last_frame": round(mean_iou(masks[-1:], truth[-1:], skip_first=False), 4)}
    overlay = torch.stack([mask_overlay(f, m) for f, m in zip(video, masks)])
    write_video(out / "mask_check.mp4", to_uint8(overlay), 15)
    shown = torch.linspace(0, len(video) - 1, 5).round().long().tolist()
    rows = [[(mask_overlay(video[i], truth[i]), f"truth, frame {i}") for i in shown],
            [(overlay[i], f"propagated, frame {i}") for i in shown]]
    written = [out / "mask_check.mp4",
               image_grid(out / "mask_check.png", rows, f"mask propagation on a known case: mean IoU {numbers['mean_iou']:.3f} "
                          f"(copying frame 0's mask: {numbers['mean_iou_copy_first_mask']:.3f})"),
               _write_json(out / "mask_check.json", numbers)]
    _report(out, written, numbers)
    return 0


# -- parser -----------------------------------------------------------------------------------------
def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model bundle (.vsae) fitted on this video")
    p.add_argument("video", help="video file, or a bundled clip name (carphone, bikes, bigbuckbunny)")
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--frames", default=None, help="frame selection: all, even, odd or A:B[:step] (default all)")
    p.add_argument("--size", default=None, help="resize frames to WxH (default: the model's frame size)")
    p.add_argument("--iterations", type=positive, default=None, help="reprojections applied (default per command)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explore", help="see a video through its autoencoder: PCA map, averages, clusters, region summary")
    _common(p)
    p.add_argument("--clusters", type=positive, default=None, help="k-means cluster count (default: chosen by silhouette)")
    p.add_argument("--region-frames", default=None, help="summarize these frames, e.g. 10:40 or 3,7,20")
    p.add_argument("--region-rect", default=None, help="summarize frames whose map point lies in x0,y0,x1,y1 (map.json coordinates)")
    p.set_defaults(func=cmd_explore, iterations=AVERAGE_ITERATIONS)

    p = sub.add_parser("edit", help="edit a video through its autoencoder (slow motion, loops, stitching, removal, ...)")
    p.add_argument("edit", choices=(*EDITS, "all"), help="which edit; `all` makes every one with defaults")
    _common(p)
    p.add_argument("--factor", type=positive_float, default=None, help="slowmo: time factor (default 4); stretch: width factor (default 2)")
    p.add_argument("--method", choices=TEMPORAL_METHODS, default=EDIT_TEMPORAL_METHOD, help="temporal interpolation (slowmo, texture)")
    p.add_argument("--seconds", type=positive_float, default=10.0, help="texture: length of the looping video (default 10)")
    p.add_argument("--loop", default=None, help="texture: START:END frames to loop (default: most similar pair)")
    p.add_argument("--min-loop", type=positive, default=MIN_LOOP_FRAMES, help=f"texture: shortest loop (default {MIN_LOOP_FRAMES})")
    p.add_argument("--bridge", type=int, default=BRIDGE_FRAMES, help=f"texture: interpolated frames closing the loop (default {BRIDGE_FRAMES})")
    p.add_argument("--stitch-frames", default=None, help="stitch: frames to put side by side (default first, middle, last)")
    p.add_argument("--frame", type=int, default=None, help="stretch/extrapolate/remove: which frame (default the middle one)")
    p.add_argument("--canvas", default=None, help="extrapolate: canvas WxH (default twice the frame)")
    p.add_argument("--box", default=None, help="remove/propagate: x,y,w,h box (default the centre quarter)")
    p.add_argument("--mask", default=None, help="propagate: first frame's mask as an image (white = object)")
    p.set_defaults(func=cmd_edit, iterations=EDIT_ITERATIONS)

    p = sub.add_parser("mask-check", help="score mask propagation on a synthetic moving shape (known answer)")
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--frames", type=positive, default=MASK_CHECK_FRAMES, help=f"clip length (default {MASK_CHECK_FRAMES})")
    p.add_argument("--minutes", type=positive_float, default=MASK_CHECK_MINUTES, help=f"fit budget (default {MASK_CHECK_MINUTES})")
    p.add_argument("--drift", type=float, default=0.0, help="0..1: how far the shape's colour and texture change over the clip")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_mask_check)
