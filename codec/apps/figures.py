"""PNG figures for `vsae explore` and `vsae edit` (matplotlib, headless Agg backend, imported lazily so
the codec itself never needs a display or matplotlib at import time)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

# Inches per image panel (height); panels keep the frames' aspect ratio.
PANEL_INCHES = 2.4
DPI = 120
# Frames shown as thumbnails on the 2D map.
MAP_THUMBNAILS = 6


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def to_image(frame: torch.Tensor) -> np.ndarray:
    """(3, H, W) float in [0, 1] -> (H, W, 3) uint8 for imshow."""
    return frame.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def image_grid(
    path: str | Path,
    rows: Sequence[Sequence[tuple[torch.Tensor, str]]],
    title: str | None = None,
    boxes: dict[tuple[int, int], tuple[int, int, int, int]] | None = None,
) -> Path:
    """A grid of labelled image panels: rows of (frame (3, H, W), caption). Panels in a row may differ in
    width (kept to scale by the widest panel of each column). `boxes` outlines (x, y, w, h) on panel (r, c)."""
    plt = _plt()
    ncols = max(len(r) for r in rows)
    widths = [max(r[c][0].shape[-1] for r in rows if c < len(r)) for c in range(ncols)]
    heights = [max(p[0].shape[-2] for p in r) for r in rows]
    scale = PANEL_INCHES / max(heights)
    fig_w = sum(widths) * scale + 0.3 * ncols
    fig_h = sum(heights) * scale + 0.45 * len(rows) + (0.4 if title else 0)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(fig_w, fig_h), squeeze=False, layout="constrained",
                             gridspec_kw={"width_ratios": widths, "height_ratios": heights})
    for r, row in enumerate(rows):
        for c in range(ncols):
            ax = axes[r][c]
            ax.axis("off")
            if c >= len(row):
                continue
            frame, caption = row[c]
            ax.imshow(to_image(frame))
            ax.set_title(caption, fontsize=8)
            if boxes and (r, c) in boxes:
                import matplotlib.patches as patches

                x, y, w, h = boxes[(r, c)]
                ax.add_patch(patches.Rectangle((x - 0.5, y - 0.5), w, h, fill=False, edgecolor="yellow", linewidth=1.2))
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def latent_map_figure(
    path: str | Path,
    coords: np.ndarray,
    explained: Sequence[float],
    frames: torch.Tensor | None = None,
    title: str = "",
    highlight: Sequence[int] | None = None,
    rect: tuple[float, float, float, float] | None = None,
) -> Path:
    """The paper's Figure 1: frames' latent codes on their first two principal components, coloured by
    frame index, with the temporal path drawn; a few frames shown as thumbnails at their points."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 6))
    n = len(coords)
    ax.plot(coords[:, 0], coords[:, 1], "-", color="0.6", linewidth=0.8, zorder=1, label="temporal path")
    points = ax.scatter(coords[:, 0], coords[:, 1], c=np.arange(n), cmap="viridis", s=22, zorder=2)
    fig.colorbar(points, ax=ax, label="frame index")
    ax.annotate("start", coords[0], textcoords="offset points", xytext=(6, 6), fontsize=8)
    ax.annotate("end", coords[-1], textcoords="offset points", xytext=(6, -10), fontsize=8)
    if highlight:
        ax.scatter(coords[highlight, 0], coords[highlight, 1], s=70, facecolors="none", edgecolors="red", zorder=3,
                   label=f"selected ({len(highlight)} frames)")
    if rect is not None:
        import matplotlib.patches as patches

        x0, y0, x1, y1 = rect
        ax.add_patch(patches.Rectangle((min(x0, x1), min(y0, y1)), abs(x1 - x0), abs(y1 - y0), fill=False,
                                       edgecolor="red", linestyle="--"))
    if frames is not None:
        from matplotlib.offsetbox import AnnotationBbox, OffsetImage

        zoom = 0.35 * 144 / frames.shape[-2]
        for i in np.linspace(0, n - 1, min(MAP_THUMBNAILS, n)).round().astype(int):
            box = AnnotationBbox(OffsetImage(to_image(frames[i]), zoom=zoom), coords[i], frameon=True, pad=0.15,
                                 xybox=(0, 38), boxcoords="offset points", arrowprops={"arrowstyle": "-", "color": "0.4"})
            ax.add_artist(box)
            ax.annotate(str(i), coords[i], textcoords="offset points", xytext=(-4, 4), fontsize=7, color="0.2")
    ax.set_xlabel(f"PC 1 ({100 * explained[0]:.1f}% of latent variance)")
    ax.set_ylabel(f"PC 2 ({100 * explained[1]:.1f}%)")
    ax.set_title(title or "latent codes, PCA map")
    ax.legend(loc="best", fontsize=8)
    ax.margins(0.15)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
