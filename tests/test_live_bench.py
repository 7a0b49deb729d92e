"""`vsae bench live` end to end on a tiny model: the JSON the issue names, and the guard's floor."""

from __future__ import annotations

import json

from codec import bundle
from codec.cli import main as vsae


def test_bench_live_writes_every_method_and_the_guard_holds_the_floor(tiny_codec, tmp_path):
    model = tmp_path / "tiny.vsae"
    tiny_codec.meta["frame_size"] = [176, 144]
    bundle.save(tiny_codec, model)
    out = tmp_path / "live"
    code = vsae(["bench", "live", "carphone", "--prior", "0:8", "--call", "8:68", "--out", str(out), "--model", str(model),
                 "--model-kbps", "40", "--forms", "sparse-delta", "--refresh-steps", "4", "--update-interval", "0.25"])
    assert code == 0
    result = json.loads((out / "live.json").read_text())
    assert {"clip", "prior", "call", "fps", "scale", "temporal", "video_kbps", "methods"} <= set(result)
    methods = result["methods"]
    assert {"bicubic", "vsae", "guarded", "guarded-tiles", "refresh-sparse-delta-40"} <= set(methods)
    base = methods["bicubic"]["psnr_per_second"]
    for name in ("guarded", "guarded-tiles", "refresh-sparse-delta-40"):
        m = methods[name]
        assert {"psnr", "ssim", "psnr_per_second", "model_kbps", "total_kbps", "updates"} <= set(m)
        # Never below the baseline in any second (up to 8-bit rounding of the shown frames).
        assert all(g >= b - 0.05 for g, b in zip(m["psnr_per_second"], base)), name
    refresh = methods["refresh-sparse-delta-40"]
    assert refresh["updates"] >= 1 and refresh["updates_refused"] == 0
    # Every frame's model version: non-decreasing, and switches exactly at the frames the updates named.
    versions = refresh["model_versions"]
    assert len(versions) == 60 and versions == sorted(versions)
    starts = [versions.index(v) for v in range(1, max(versions) + 1)]
    assert [u["apply_from"] for u in refresh["update_log"]] == starts
    assert (out / "live.png").stat().st_size > 0 and "guarded" in (out / "live.md").read_text()
