"""Chat-UniVi's multi-scale DPC-KNN token clustering (per frame: 256 -> 64 -> 32 -> 16 tokens; videos: frames
grouped into events, each event's tokens re-clustered at the three scales).

Precision: clustering (distances, densities, merging) always runs in float32, whatever the model dtype.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ClusterSettings:
    spatial_rates: tuple[float, float, float] = (64, 32, 16)  # >1: absolute cluster counts
    spatial_k: tuple[int, int, int] = (5, 3, 3)
    temporal_rate: float = 1 / 16
    temporal_k: int = 5
    noise: float = 1e-6  # density tie-breaking noise, uniform in [0, noise)
    seed: int = 0  # seed of that noise, reset for every sample


def cluster_count(num_tokens: int, rate: float) -> int:
    """Rates above 1 are absolute counts; others are fractions of the token count."""
    count = math.ceil(rate) if rate > 1 else max(math.ceil(num_tokens * rate), 1)
    if count > num_tokens:
        raise ValueError(f"cannot make {count} clusters from {num_tokens} tokens")
    return count


def neighbour_count(k0: int, num_clusters: int) -> int:
    return min(3, max(num_clusters // 2, 1)) if k0 > num_clusters else k0


def dpc_knn(x: torch.Tensor, num_clusters: int, k: int, generator: torch.Generator | None = None, noise: float = 1e-6) -> torch.Tensor:
    """DPC-KNN labels of x [B, N, C] (float32): [B, N] int64 in 0..num_clusters-1.

    Label = rank of the cluster centre by descending score (density x separation)."""
    batch, num_tokens, channels = x.shape
    dist = torch.cdist(x, x) / math.sqrt(channels)
    nearest = torch.topk(dist, k=min(k, num_tokens), dim=-1, largest=False).values
    density = torch.exp(-(nearest**2).mean(dim=-1))
    if noise > 0:
        jitter = torch.rand(density.shape, generator=generator, dtype=density.dtype)
        density = density + jitter.to(density.device) * noise

    denser = density[:, None, :] > density[:, :, None]  # [b, i, j]: j is denser than i
    dist_max = dist.flatten(1).max(dim=-1).values[:, None, None]
    separation = torch.where(denser, dist, dist_max).min(dim=-1).values
    centres = torch.topk(separation * density, k=num_clusters, dim=-1).indices  # sorted, best first

    to_centres = torch.gather(dist, 1, centres[:, :, None].expand(-1, -1, num_tokens))  # [B, K, N]
    labels = to_centres.argmin(dim=1)  # ties: lowest label
    ranks = torch.arange(num_clusters, device=x.device).expand(batch, -1)
    return labels.scatter(1, centres, ranks)


def merge_clusters(x: torch.Tensor, labels: torch.Tensor, num_clusters: int) -> torch.Tensor:
    """Mean of each cluster's members: [B, N, C] -> [B, K, C], in label order."""
    batch, _, channels = x.shape
    sums = x.new_zeros(batch, num_clusters, channels).scatter_add_(1, labels[:, :, None].expand(-1, -1, channels), x)
    counts = x.new_zeros(batch, num_clusters).scatter_add_(1, labels, torch.ones_like(labels, dtype=x.dtype))
    return sums / (counts[:, :, None] + 1e-6)


def cluster_and_merge(x: torch.Tensor, rate: float, k0: int, generator: torch.Generator | None = None, noise: float = 1e-6, trace: list | None = None) -> torch.Tensor:
    """One clustering step (the paper's CTM): [B, N, C] -> [B, K, C] in float32."""
    x = x.float()
    num_clusters = cluster_count(x.shape[1], rate)
    labels = dpc_knn(x, num_clusters, neighbour_count(k0, num_clusters), generator, noise)
    if trace is not None:
        trace.append(labels)
    return merge_clusters(x, labels, num_clusters)


def spatial_pyramid(features: torch.Tensor, settings: ClusterSettings, generator=None, trace=None) -> list[torch.Tensor]:
    """Per-frame clustering at three scales: [T, N, C] -> [[T,64,C], [T,32,C], [T,16,C]]."""
    levels, current = [], features
    for rate, k0 in zip(settings.spatial_rates, settings.spatial_k):
        current = cluster_and_merge(current, rate, k0, generator, settings.noise, trace)
        levels.append(current)
    return levels


def temporal_events(frame_means: torch.Tensor, settings: ClusterSettings, generator=None, trace=None) -> list[list[int]]:
    """Group frames ([T, C] mean patch features) into events, ordered by their first frame."""
    x = frame_means.float()[None]
    num_clusters = cluster_count(x.shape[1], settings.temporal_rate)
    labels = dpc_knn(x, num_clusters, neighbour_count(settings.temporal_k, num_clusters), generator, settings.noise)
    if trace is not None:
        trace.append(labels)
    events: dict[int, list[int]] = {}
    for frame, label in enumerate(labels[0].tolist()):
        events.setdefault(label, []).append(frame)  # dict order = order of first appearance
    return list(events.values())


def cluster_image(features: torch.Tensor, settings: ClusterSettings, generator=None, trace=None) -> torch.Tensor:
    """Each frame of [t, N, C] on its own: [t * 112, C] (64 + 32 + 16 tokens per frame)."""
    return torch.cat(spatial_pyramid(features, settings, generator, trace), dim=1).flatten(0, 1)


def cluster_video(features: torch.Tensor, settings: ClusterSettings, generator=None, trace=None) -> tuple[torch.Tensor, list[list[int]]]:
    """Video [T, N, C] -> ([112 * n_events, C], events). Each event re-clusters the concatenated
    per-frame tokens of its frames at every scale."""
    events = temporal_events(features.float().mean(dim=1), settings, generator, trace)
    levels = spatial_pyramid(features, settings, generator, trace)
    merged = []
    for frames in events:
        for level, rate, k0 in zip(levels, settings.spatial_rates, settings.spatial_k):
            tokens = level[frames].flatten(0, 1)[None]  # frames in time order, concatenated
            merged.append(cluster_and_merge(tokens, rate, k0, generator, settings.noise, trace)[0])
    return torch.cat(merged, dim=0), events
