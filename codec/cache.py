"""A per-user cache of fitted models, so demos and benchmarks fit each (clip, frames, size, budget) once.

Entries live in $XDG_CACHE_HOME/vsae/models (default ~/.cache/vsae/models), named by the clip's name
and SHA-256, the frame selection, the size, the fit budget and the recipe: a fingerprint of the code that
decides what a fit produces (model, training, precision choice, frame reading) and of the torch version,
so a model cached before a training fix is never reused after it. A fit goes through `vsae fit` itself
and lands atomically, so an interrupted one never leaves a half-written entry.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import torch

from . import bundle
from .errors import VsaeError
from .model import DEFAULT_MODEL


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vsae" / "models"


# The modules whose code decides what `vsae fit` produces from a clip (and how it is stored): an edit to any of
# them is a new recipe.
RECIPE_MODULES = ("model.py", "train.py", "precision.py", "video.py", "bundle.py", "quant.py")


def recipe_fingerprint(source_dir: Path | None = None) -> str:
    """16 hex digits naming the fit recipe: the recipe modules' source and torch's major.minor version."""
    h = hashlib.sha256(".".join(torch.__version__.split(".")[:2]).encode())
    here = source_dir or Path(__file__).parent
    for name in RECIPE_MODULES:
        h.update(name.encode() + b"\0" + (here / name).read_bytes())
    return h.hexdigest()[:16]


def cached_fit(video: Path, frames: str, minutes: float, size: str | None = None, progress: bool = True) -> tuple[Path, bool]:
    """The model fitted on `frames` of `video` (optionally resized to `size` WxH), from the cache or
    fitted now; returns (path, fitted_now)."""
    from .cli import main as vsae_main  # the CLI imports this module's users, not the other way round

    digest = hashlib.sha256(Path(video).read_bytes()).hexdigest()[:16]
    tag = frames.replace(":", "_") + (f"-{size}" if size else "")
    path = cache_dir() / f"{Path(video).stem}-{digest}-{DEFAULT_MODEL}-{tag}-{minutes:g}min-r{recipe_fingerprint()}.vsae"
    if path.exists():
        try:
            bundle.load(path)
            return path, False
        except VsaeError as exc:
            print(f"vsae: cached model {path.name} unusable ({exc}); fitting again", file=sys.stderr)
    print(f"vsae: no cached model for {Path(video).name} ({frames} frames{', ' + size if size else ''}): fitting one "
          f"({minutes:g} min budget, once; cached in {path.parent})", file=sys.stderr)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    args = ["fit", str(video), "--frames", frames, "--minutes", f"{minutes:g}", "-o", str(partial)]
    if size:
        args += ["--size", size]
    if vsae_main(args if progress else [*args, "--quiet"]) != 0:
        raise VsaeError("fitting the model failed")
    partial.replace(path)
    print(f"vsae: cached the model as {path}", file=sys.stderr)
    return path, True
