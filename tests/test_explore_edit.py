"""Explore and edit (codec/apps/explore.py, codec/apps/edit.py, `vsae explore`, `vsae edit`) on the suite's real fit."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from codec.cli import main as vsae
from codec.apps.edit import (
    Loop,
    border_discontinuity,
    extrapolate,
    loop_candidates,
    remove_object,
    resample,
    seam_discontinuity,
    stitch,
    stretch,
    video_texture,
)
from codec.errors import VsaeError
from codec.apps.explore import (
    cluster_frames,
    decode_mean,
    frames_in_rect,
    latent_codes,
    latent_map,
    sharpness,
    summarize,
    video_average,
)
from codec.metrics import psnr_per_frame
from codec.video import read_video, to_tensor

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def fitted(real_fit):
    return real_fit.codec


@pytest.fixture(scope="module")
def clip(real_fit) -> torch.Tensor:
    """24 carphone frames the model was fitted on (even frames 0..46)."""
    return real_fit.train


@pytest.fixture(scope="module")
def codes(fitted, clip):
    return latent_codes(fitted, clip)


# -- explore ----------------------------------------------------------------------------------------
def test_latent_map_keeps_time_order_local(codes):
    lmap = latent_map(codes)
    assert lmap.coords.shape == (len(codes), 2)
    assert 0 < lmap.explained[1] <= lmap.explained[0] < 1
    steps = np.linalg.norm(np.diff(lmap.coords, axis=0), axis=1)
    far = np.linalg.norm(lmap.coords[:, None] - lmap.coords[None], axis=2)
    # Consecutive frames sit much closer on the map than frames picked at random (a smooth path).
    assert steps.mean() < 0.5 * far[np.triu_indices(len(codes), 1)].mean()
    json.dumps(lmap.to_json())


def test_frames_in_rect_any_corner_order():
    coords = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, -1.0], [5.0, 5.0]])
    assert frames_in_rect(coords, (-0.5, -0.5, 1.5, 1.5)) == [0, 1]
    assert frames_in_rect(coords, (2.5, 1.5, -0.5, -1.5)) == [0, 1, 2]
    assert frames_in_rect(coords, (10, 10, 11, 11)) == []


def test_decode_mean_of_one_frame_is_its_reconstruction(fitted, clip, codes):
    one = decode_mean(fitted, codes, [3])
    assert torch.allclose(one, fitted.project(clip[3:4]).frames[0], atol=1e-5)
    with pytest.raises(VsaeError, match="outside"):
        decode_mean(fitted, codes, [len(clip)])
    with pytest.raises(VsaeError, match="no frames"):
        decode_mean(fitted, codes, [])


def test_sharpness_orders_blur_and_flat(clip):
    frame = clip[0]
    blurred = torch.nn.functional.avg_pool2d(frame[None], 5, 1, 2, count_include_pad=False)[0]
    assert float(sharpness(frame)) > 2 * float(sharpness(blurred))
    assert float(sharpness(torch.full_like(frame, 0.4))) == 0.0


def test_video_average_three_ways(fitted, clip, codes):
    avg = video_average(fitted, clip, codes, iterations=2)
    assert set(avg.images) == {"pixel", "latent", "latent_reprojected"}
    assert torch.allclose(avg.images["pixel"], clip.mean(0))
    for image in avg.images.values():
        assert image.shape == clip.shape[1:] and 0 <= float(image.min()) and float(image.max()) <= 1
    stats = avg.stats
    # The per-pixel mean minimizes squared error to the frames: no other image scores a higher mean PSNR.
    assert stats["pixel"]["psnr_mean"] >= max(stats["latent"]["psnr_mean"], stats["latent_reprojected"]["psnr_mean"]) - 0.05
    for name, image in avg.images.items():
        assert stats[name]["sharpness"] == pytest.approx(float(sharpness(image)), abs=0.01)
        assert stats[name]["psnr_best_frame"] >= stats[name]["psnr_mean"]
    assert stats["latent_reprojected"]["iterations"] == 2


def test_summarize_medoid_is_the_most_central_member(fitted, codes):
    chosen = [2, 5, 6, 7, 20]
    summary = summarize(fitted, codes, chosen, iterations=1)
    flat = codes.flat[chosen]
    totals = np.linalg.norm(flat[:, None] - flat[None], axis=2).sum(1)
    assert summary.medoid == chosen[int(totals.argmin())]
    assert summary.frames == chosen and summary.centroid.shape == codes.grid.new_zeros(3, *codes.size).shape
    assert summarize(fitted, codes, [9, 9]).medoid == 9


def test_clusters_split_two_shots(fitted, clip):
    """Two shots cut together (carphone, then bikes): automatic k-means finds exactly the cut."""
    bikes, _ = read_video("bikes", frames="0:12", size=(clip.shape[-1], clip.shape[-2]))
    video = torch.cat([clip[:12], to_tensor(bikes)])
    clustering = cluster_frames(fitted, latent_codes(fitted, video), iterations=1)
    assert len(clustering.clusters) == 2
    assert clustering.labels == [0] * 12 + [1] * 12
    assert clustering.silhouette[2] == max(clustering.silhouette.values())
    assert [c.medoid for c in clustering.clusters][0] < 12 <= clustering.clusters[1].medoid


def test_clusters_given_k_and_bad_k(fitted, codes):
    clustering = cluster_frames(fitted, codes, k=3, iterations=1)
    assert len(clustering.clusters) == 3 and sorted(set(clustering.labels)) == [0, 1, 2]
    assert sum(len(c.frames) for c in clustering.clusters) == len(codes)
    assert clustering.labels[0] == 0  # numbered in video order
    with pytest.raises(VsaeError, match="clusters"):
        cluster_frames(fitted, codes, k=len(codes) + 1)


# -- edit: time -------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["latent", "motion", "flow"])
def test_resample_keeps_source_frames_and_fills_between(fitted, clip, method):
    frames = clip[:4]
    slow = resample(fitted, frames, 2, method)
    assert slow.shape == (7, *frames.shape[1:])
    assert torch.equal(slow[::2], frames)
    # An in-between frame lies between its neighbours: closer to their blend than either one is to the other.
    blend = (frames[:-1] + frames[1:]) / 2
    assert (psnr_per_frame(slow[1::2], blend) > psnr_per_frame(frames[:-1], frames[1:])).all()


def test_resample_factors(fitted, clip):
    frames = clip[:5]
    assert resample(fitted, frames, 2.5, "latent").shape[0] == 11
    fast = resample(fitted, frames, 0.5, "latent")
    assert torch.equal(fast, frames[::2])
    latent = resample(fitted, frames[:2], 4, "latent")
    z, size = fitted.encode(frames[:2])
    expected = fitted.interpolate(z[:1], z[1:], torch.tensor([0.25, 0.5, 0.75]), size)
    assert torch.allclose(latent[1:4], expected, atol=1e-5)
    with pytest.raises(VsaeError, match="factor"):
        resample(fitted, frames, 100)
    with pytest.raises(VsaeError, match="method"):
        resample(fitted, frames, 2, "warp")


def test_loop_candidates_find_a_repeat(fitted, clip):
    # Frames 0..11 played twice: frame i and frame i + 12 are the same, a perfect loop of 13 frames.
    video = torch.cat([clip[:12], clip[:12]])
    loops = loop_candidates(latent_codes(fitted, video), min_length=10, top=3)
    assert loops[0].end - loops[0].start == 12 and loops[0].similarity == pytest.approx(1.0, abs=1e-5)
    assert all(lp.end - lp.start + 1 >= 10 for lp in loops)
    assert [lp.similarity for lp in loops] == sorted((lp.similarity for lp in loops), reverse=True)


def test_video_texture_loops_and_bridges(fitted, clip):
    loop = Loop(2, 12, 0.0)
    tex = video_texture(fitted, clip, loop, length=40, bridge=3, method="motion")
    assert tex.frames.shape == (40, *clip.shape[1:])
    cycle = 11 + 3
    assert torch.equal(tex.frames[:11], clip[2:13])
    assert torch.equal(tex.frames[cycle : cycle + 11], clip[2:13])
    t = tex.transition
    assert t["direct"]["psnr"] == pytest.approx(float(psnr_per_frame(clip[12:13], clip[2:3])), abs=1e-3)
    # Bridging beats jumping: the halfway frame is nearer the loop start than the loop end is,
    # and every bridged step is smaller than the direct jump.
    assert t["interpolated"]["psnr"] > t["direct"]["psnr"]
    assert t["worst_step_psnr"] > t["direct"]["psnr"]
    with pytest.raises(VsaeError, match="outside"):
        video_texture(fitted, clip, Loop(5, 99, 0.0), 10)


# -- edit: space ------------------------------------------------------------------------------------
def test_stitch_closes_seams(fitted, clip):
    result = stitch(fitted, clip[[0, 12, 23]], iterations=3)
    h, w = clip.shape[-2:]
    assert result.naive.shape == (3, h, 3 * w) and len(result.steps) == 3
    assert result.output.shape == result.naive.shape
    seams = [w, 2 * w]
    assert seam_discontinuity(result.output, seams) < seam_discontinuity(result.naive, seams)
    with pytest.raises(VsaeError, match="at least 2"):
        stitch(fitted, clip[:1])


def test_stretch_and_extrapolate_shapes_and_padding(fitted, clip):
    frame = clip[5]
    h, w = frame.shape[-2:]
    wide = stretch(fitted, frame, 2.0, iterations=1)
    assert wide.output.shape == (3, h, 2 * w)
    big = extrapolate(fitted, frame, (h + 40, w + 64), "reflect", iterations=2)
    assert big.output.shape == (3, h + 40, w + 64) and len(big.steps) == 2
    assert torch.equal(big.naive[:, 20 : 20 + h, 32 : 32 + w], frame)
    # Mirror padding: the row above the frame mirrors the frame's second row.
    assert torch.equal(big.naive[:, 19, 32 : 32 + w], frame[:, 1])
    huge = extrapolate(fitted, frame, (3 * h, 3 * w), "reflect", iterations=1)  # pads beyond one reflection
    assert torch.equal(huge.naive[:, h : 2 * h, w : 2 * w], frame)
    zeros = extrapolate(fitted, frame, (h + 40, w + 64), "zeros", iterations=1)
    assert float(zeros.naive[:, :20].abs().sum()) == 0.0
    with pytest.raises(VsaeError, match="smaller"):
        extrapolate(fitted, frame, (h - 2, w), "reflect")
    with pytest.raises(VsaeError, match="reflect or zeros"):
        extrapolate(fitted, frame, (h, w), "wrap")


def test_remove_object_fills_from_a_clear_patch(fitted, clip):
    frame = clip[7]
    box = (60, 50, 32, 24)
    result = remove_object(fitted, frame, box, iterations=2)
    x, y, w, h = box
    sx, sy = result.source
    assert sx + w <= x or x + w <= sx or sy + h <= y or y + h <= sy  # the patch does not overlap the object
    assert torch.equal(result.edit.naive[:, y : y + h, x : x + w], frame[:, sy : sy + h, sx : sx + w])
    outside = torch.ones(frame.shape[-2:], dtype=torch.bool)
    outside[y - 4 : y + h + 4, x - 4 : x + w + 4] = False
    assert torch.equal(result.composite[:, outside], frame[:, outside])
    assert result.seam["naive"] == pytest.approx(border_discontinuity(result.edit.naive, box), abs=1e-3)
    # Reprojection smooths the pasted patch's seams.
    assert result.seam["composite"] < result.seam["naive"]
    with pytest.raises(VsaeError, match="does not fit"):
        remove_object(fitted, frame, (170, 0, 20, 20))


# -- commands ---------------------------------------------------------------------------------------
def _png(path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 5000, path


def test_explore_command_writes_figures_and_numbers(fitted_bundle, tmp_path, capsys):
    out = tmp_path / "explore"
    rc = vsae(["explore", fitted_bundle, "carphone", "--frames", "0:16", "--out", str(out),
               "--clusters", "2", "--region-frames", "3:9", "--iterations", "1"])
    assert rc == 0
    for name in ("map.png", "average.png", "clusters.png", "region.png", "region_map.png"):
        _png(out / name)
    points = json.loads((out / "map.json").read_text())["points"]
    assert [p["frame"] for p in points] == list(range(16))
    clusters = json.loads((out / "clusters.json").read_text())
    assert clusters["k"] == 2 and sorted(sum((c["frames"] for c in clusters["clusters"]), [])) == list(range(16))
    region = json.loads((out / "region.json").read_text())
    assert region["frames"] == [3, 4, 5, 6, 7, 8] and 3 <= region["medoid"] <= 8
    averages = json.loads((out / "average.json").read_text())["averages"]
    assert set(averages) == {"pixel", "latent", "latent_reprojected"}
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["clusters"] == 2 and summary["region"]["frames"] == 6


def test_edit_all_command_writes_every_output(fitted_bundle, tmp_path):
    out = tmp_path / "edit"
    rc = vsae(["edit", "all", fitted_bundle, "carphone", "--frames", "0:24", "--out", str(out), "--iterations", "1",
               "--factor", "2", "--seconds", "1", "--min-loop", "8", "--box", "60,50,32,24"])
    assert rc == 0
    for name in ("slowmo", "texture", "stitch", "stretch", "extrapolate", "remove", "propagate"):
        _png(out / name / f"{name}.png")
        json.loads((out / name / f"{name}.json").read_text())
    for video, frames in (("slowmo/slowmo.mp4", 47), ("texture/texture.mp4", 30), ("propagate/propagate.mp4", 24)):
        decoded, _ = read_video(out / video)
        assert len(decoded) == frames, video
    numbers = json.loads((out / "edits.json").read_text())
    assert numbers["slowmo"]["frames_out"] == 47 and numbers["remove"]["box"] == [60, 50, 32, 24]


@pytest.mark.parametrize("argv, message", [
    (["edit", "remove", "{model}", "carphone", "--box", "1,2,3", "--out", "{out}"], "box"),
    (["edit", "remove", "{model}", "carphone", "--box", "170,0,20,20", "--out", "{out}"], "does not fit"),
    (["edit", "stitch", "{model}", "carphone", "--stitch-frames", "0,999", "--out", "{out}"], "outside"),
    (["explore", "{model}", "carphone", "--region-rect", "1e9,1e9,2e9,2e9", "--out", "{out}"], "rectangle"),
    (["explore", "{junk}", "carphone", "--out", "{out}"], "junk"),
    (["explore", "{model}", "{missing}", "--out", "{out}"], "missing"),
])
def test_commands_fail_with_one_clear_line(fitted_bundle, tmp_path, capsys, argv, message):
    junk = tmp_path / "junk.vsae"
    junk.write_bytes(b"not a model")
    fill = {"model": fitted_bundle, "out": str(tmp_path / "o"), "junk": str(junk), "missing": str(tmp_path / "missing.mp4")}
    rc = vsae([a.format(**fill) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and err[0].startswith("vsae: error:") and message in err[0]
