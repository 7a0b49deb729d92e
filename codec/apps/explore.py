"""Seeing a video through its autoencoder (paper section 4, appendices A and D): a 2D map of the frames'
latent codes, averages, clusters and summaries of any set of frames.

Everything works on the codec's own model: frames are encoded once (`latent_codes`), and any set of
latents is summarized by decoding its mean (the paper's eq. 7), optionally pulled back onto the
video's manifold by iterative reprojection.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import VsaeError
from ..metrics import psnr_per_frame, ssim
from ..ops import Codec

# Reprojections applied to a decoded mean latent (the paper's "latent code average + iterative").
AVERAGE_ITERATIONS = 5
# Automatic cluster count: the k in 2..MAX_CLUSTERS with the best silhouette score.
MAX_CLUSTERS = 8
# k-means restarts (scikit-learn's n_init): more restarts, steadier clusters on small videos.
KMEANS_RESTARTS = 10


@dataclass
class LatentCodes:
    """The latent code of every frame, as the decoder takes it (grid) and as a flat vector per frame."""

    grid: torch.Tensor  # (N, C, h, w) on the codec's device
    size: tuple[int, int]  # frame size (H, W) the codes decode to

    @property
    def flat(self) -> np.ndarray:
        """(N, C*h*w) float64 on the CPU, for PCA and k-means."""
        return self.grid.flatten(1).double().cpu().numpy()

    def __len__(self) -> int:
        return self.grid.shape[0]


def latent_codes(codec: Codec, frames: torch.Tensor) -> LatentCodes:
    """f(x) of every frame (N, 3, H, W) in [0, 1]."""
    _check_frames(frames)
    grid, size = codec.encode(frames)
    return LatentCodes(grid, size)


# -- 2D map -----------------------------------------------------------------------------------------
@dataclass
class LatentMap:
    """PCA of the flattened latent codes: 2D coordinates per frame and how much variance they keep."""

    coords: np.ndarray  # (N, 2)
    explained: list[float]  # fraction of the latents' variance along each axis

    def to_json(self) -> dict:
        return {
            "explained_variance_ratio": [round(v, 5) for v in self.explained],
            "points": [{"frame": i, "x": round(float(x), 5), "y": round(float(y), 5)} for i, (x, y) in enumerate(self.coords)],
        }


def latent_map(codes: LatentCodes) -> LatentMap:
    """The paper's Figure 1 map: the first two principal components of the frames' latent codes."""
    from sklearn.decomposition import PCA

    if len(codes) < 3:
        raise VsaeError(f"a 2D map needs at least 3 frames, got {len(codes)}")
    pca = PCA(n_components=2, random_state=0)
    coords = pca.fit_transform(codes.flat)
    return LatentMap(coords, [float(v) for v in pca.explained_variance_ratio_])


def frames_in_rect(coords: np.ndarray, rect: tuple[float, float, float, float]) -> list[int]:
    """Frames whose map point lies in the rectangle (x0, y0, x1, y1), corners in either order."""
    x0, y0, x1, y1 = rect
    (x0, x1), (y0, y1) = sorted((x0, x1)), sorted((y0, y1))
    inside = (coords[:, 0] >= x0) & (coords[:, 0] <= x1) & (coords[:, 1] >= y0) & (coords[:, 1] <= y1)
    return [int(i) for i in np.flatnonzero(inside)]


# -- averages and summaries -------------------------------------------------------------------------
def decode_mean(codec: Codec, codes: LatentCodes, indices: list[int] | None = None, iterations: int = 0) -> torch.Tensor:
    """g(mean of the chosen frames' latents) (eq. 7), then `iterations` reprojections; (3, H, W)."""
    grid = codes.grid if indices is None else codes.grid[_check_indices(indices, len(codes))]
    image = codec.decode(grid.mean(0, keepdim=True), codes.size)
    if iterations > 0:
        image = codec.project(image, iterations).frames
    return image[0]


def sharpness(images: torch.Tensor) -> torch.Tensor:
    """Gradient energy per image (N, 3, H, W) or (3, H, W): mean squared finite difference of luma,
    on the 0..255 scale. Blur lowers it; it is the sharpness number the averages are compared by."""
    x = images if images.ndim == 4 else images[None]
    luma = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]) * 255
    dx = luma[:, :, 1:] - luma[:, :, :-1]
    dy = luma[:, 1:, :] - luma[:, :-1, :]
    return dx.pow(2).flatten(1).mean(1) + dy.pow(2).flatten(1).mean(1)


def similarity_to_frames(image: torch.Tensor, frames: torch.Tensor) -> dict:
    """How an average (3, H, W) relates to the frames it summarizes: mean PSNR and SSIM to all of them,
    and PSNR to the closest one (how much it looks like a real frame)."""
    image = image.cpu()
    repeated = image[None].expand_as(frames)
    per_frame = psnr_per_frame(repeated, frames)
    return {
        "psnr_mean": round(float(per_frame.mean()), 3),
        "ssim_mean": round(ssim(repeated, frames), 4),
        "psnr_best_frame": round(float(per_frame.max()), 3),
        "best_frame": int(per_frame.argmax()),
    }


@dataclass
class VideoAverages:
    """Three averages of a video (paper Fig. 4, Table 1) and numbers to compare them by."""

    images: dict[str, torch.Tensor]  # name -> (3, H, W): pixel, latent, latent_reprojected
    stats: dict[str, dict]  # name -> sharpness and similarity to the frames
    frames_sharpness: float  # mean gradient energy of the frames themselves, for scale


def video_average(codec: Codec, frames: torch.Tensor, codes: LatentCodes | None = None, iterations: int = AVERAGE_ITERATIONS) -> VideoAverages:
    """Per-pixel mean of the frames vs decoded mean latent vs decoded mean latent reprojected `iterations` times."""
    _check_frames(frames)
    codes = codes or latent_codes(codec, frames)
    frames = frames.cpu()
    latent = decode_mean(codec, codes)
    images = {
        "pixel": frames.mean(0),
        "latent": latent.cpu(),
        # Reproject the decoded mean already made, rather than decoding the mean latent a second time.
        "latent_reprojected": codec.project(latent[None], iterations).frames[0].cpu(),
    }
    stats = {
        name: {"sharpness": round(float(sharpness(image)), 2), **similarity_to_frames(image, frames)}
        for name, image in images.items()
    }
    stats["latent_reprojected"]["iterations"] = iterations
    return VideoAverages(images, stats, round(float(sharpness(frames).mean()), 2))


@dataclass
class Summary:
    """A set of frames summarized: the decoded centroid of their latents and their medoid frame."""

    frames: list[int]
    centroid: torch.Tensor  # (3, H, W)
    medoid: int  # frame index: the member with the least total latent distance to the others

    def to_json(self) -> dict:
        return {"frames": self.frames, "medoid": self.medoid, "size": len(self.frames)}


def summarize(codec: Codec, codes: LatentCodes, indices: list[int], iterations: int = AVERAGE_ITERATIONS) -> Summary:
    """The paper's Fig. 5 interaction: centroid and medoid of any set of frames (e.g. a map region)."""
    indices = sorted(set(_check_indices(indices, len(codes))))
    flat = torch.from_numpy(codes.flat[indices])
    medoid = indices[int(torch.cdist(flat, flat).sum(1).argmin())]
    return Summary(indices, decode_mean(codec, codes, indices, iterations).cpu(), medoid)


# -- clusters ---------------------------------------------------------------------------------------
@dataclass
class Clustering:
    clusters: list[Summary]  # ordered by first frame
    labels: list[int]  # cluster of each frame, numbered as `clusters`
    silhouette: dict[int, float]  # score of each k tried (one entry when k was given)

    def to_json(self) -> dict:
        return {
            "k": len(self.clusters),
            "silhouette": {str(k): round(v, 4) for k, v in self.silhouette.items()},
            "labels": self.labels,
            "clusters": [{"cluster": i, **c.to_json()} for i, c in enumerate(self.clusters)],
        }


def cluster_frames(
    codec: Codec, codes: LatentCodes, k: int | None = None, iterations: int = AVERAGE_ITERATIONS, seed: int = 0
) -> Clustering:
    """k-means on the latent codes; k=None picks k in 2..MAX_CLUSTERS by silhouette score."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    n = len(codes)
    if k is not None and not 1 <= k <= n:
        raise VsaeError(f"cannot make {k} clusters from {n} frames")
    if k is None and n < 3:
        raise VsaeError(f"choosing the cluster count needs at least 3 frames, got {n}")
    flat = codes.flat
    candidates = [k] if k is not None else list(range(2, min(MAX_CLUSTERS, n - 1) + 1))
    best, scores = None, {}
    for kk in candidates:
        labels = KMeans(n_clusters=kk, n_init=KMEANS_RESTARTS, random_state=seed).fit_predict(flat)
        distinct = len(set(labels.tolist()))
        scores[kk] = float(silhouette_score(flat, labels)) if 1 < distinct < n else 0.0
        if best is None or scores[kk] > scores[best[0]]:
            best = (kk, labels)
    _, labels = best
    # Number clusters by their first frame so the output reads in video order.
    order = sorted(set(labels.tolist()), key=lambda c: int(np.flatnonzero(labels == c)[0]))
    renumber = {old: new for new, old in enumerate(order)}
    labels = [renumber[int(c)] for c in labels]
    clusters = [summarize(codec, codes, [i for i, c in enumerate(labels) if c == j], iterations) for j in range(len(order))]
    return Clustering(clusters, labels, scores)


# -- checks -----------------------------------------------------------------------------------------
def _check_frames(frames: torch.Tensor) -> None:
    if frames.ndim != 4 or frames.shape[1] != 3 or frames.shape[0] == 0:
        raise VsaeError(f"expected frames (N, 3, H, W) with N >= 1, got shape {tuple(frames.shape)}")


def _check_indices(indices: list[int], count: int) -> list[int]:
    if not indices:
        raise VsaeError("no frames selected")
    bad = [i for i in indices if not 0 <= i < count]
    if bad:
        raise VsaeError(f"frame index {bad[0]} outside 0..{count - 1}")
    return list(indices)
