"""Scores of attribution maps: blur, pixel orders, deletion and insertion curves, rank
correlation. Images are (N, C, H, W); a pixel is ranked by its score summed over channels and
changed in every channel at once."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Blurs images (N, C, H, W) with a separable Gaussian, replicate padding at the borders."""
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = x.shape[1]
    rows = kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)
    cols = kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    padded = nn.functional.pad(x, (radius, radius, radius, radius), mode="replicate")
    blurred = nn.functional.conv2d(padded, rows, groups=channels)
    return nn.functional.conv2d(blurred, cols, groups=channels)


def pixel_scores(attributions: Tensor) -> Tensor:
    """One score per pixel: the attribution summed over channels, (N, H * W)."""
    return attributions.sum(dim=1).flatten(1)


def tie_break_permutations(n: int, n_pixels: int, seed: int) -> Tensor:
    """One fixed random permutation of the pixels per example, shared by every method."""
    generator = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(n_pixels, generator=generator) for _ in range(n)])


def importance_order(scores: Tensor, tie_break: Tensor) -> Tensor:
    """Pixel indices (N, P), highest score first, ties in the order of ``tie_break``."""
    shuffled = scores.flatten(1).gather(1, tie_break)
    order = torch.sort(shuffled, dim=1, descending=True, stable=True).indices
    return tie_break.gather(1, order)


def importance_ranks(order: Tensor) -> Tensor:
    """Per pixel, its position in ``order`` reversed: P - 1 for the most important pixel."""
    n, p = order.shape
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(p - 1, -1, -1).expand(n, p).contiguous())
    return ranks


def class_probability(model: nn.Module, x: Tensor, target: Tensor, batch: int = 64) -> Tensor:
    """The softmax probability of ``target`` for every example, ``batch`` images at a time."""
    out = []
    with torch.no_grad():
        for start in range(0, len(x), batch):
            logits = model(x[start : start + batch])
            probabilities = torch.softmax(logits.float(), dim=1)
            out.append(probabilities.gather(1, target[start : start + batch, None]).squeeze(1))
    return torch.cat(out)


def perturbation_curves(
    model: nn.Module,
    x: Tensor,
    target: Tensor,
    order: Tensor,
    fill: Tensor,
    insert: bool,
    points: int | None = None,
) -> Tensor:
    """The class probability after changing the k most important pixels: (N, points).

    Deletion (``insert=False``) replaces those pixels of ``x`` (in every channel) with ``fill``;
    insertion (``insert=True``) puts them from ``x`` into ``fill``. ``order`` (N, H * W) lists
    the pixels, most important first. The curve has ``points`` points at k = round(j * P /
    (points - 1)), evenly spaced fractions of the P pixels; ``None`` takes every k = 0..P.
    """
    n, p = order.shape
    c = x.shape[1]
    points = p + 1 if points is None else points
    counts = torch.round(torch.linspace(0, p, points, dtype=torch.float64)).long()
    position = torch.empty_like(order)
    position.scatter_(1, order, torch.arange(p).expand(n, p).contiguous())
    curves = []
    for i in range(n):  # one example's curve at a time bounds the memory
        changed = (position[i] < counts.view(points, 1)).view(points, 1, p)  # (points, 1, P)
        image = x[i].reshape(1, c, p)
        other = fill[i if fill.shape[0] > 1 else 0].expand(x.shape[1:]).reshape(1, c, p)
        kept, removed = (image, other) if insert else (other, image)
        images = torch.where(changed, kept, removed).reshape(points, *x.shape[1:])
        curves.append(class_probability(model, images, target[i].repeat(points)))
    return torch.stack(curves)


def curve_auc(curves: Tensor) -> np.ndarray:
    """The area under each curve over the fraction of pixels changed, [0, 1]."""
    return torch.trapezoid(curves, dx=1.0 / (curves.shape[1] - 1), dim=1).double().numpy()


def spearman(a: Tensor, b: Tensor) -> np.ndarray:
    """Spearman's rank correlation of each row of ``a`` with the same row of ``b`` (flattened
    per example; ties get their average rank), shape (N,)."""
    from scipy.stats import rankdata

    a2, b2 = a.flatten(1).double().numpy(), b.flatten(1).double().numpy()
    ra, rb = rankdata(a2, axis=1), rankdata(b2, axis=1)
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    denominator = np.sqrt((ra**2).sum(axis=1) * (rb**2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (ra * rb).sum(axis=1) / denominator
