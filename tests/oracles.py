"""Independent reference implementations the package is compared against.

``ig2_reference`` is a deliberately plain transcription of the published IG2 procedure, one
explicand at a time, as the authors' ``IG2.GetMask``: search the whole GradPath first, then
integrate the explained output's gradient along it in a second pass (left Riemann sum), average
over references. ``pair_guided_ig`` runs PAIR's ``guided_ig_impl`` one example at a time.
"""

from __future__ import annotations

import itertools
import types
from collections.abc import Callable

import numpy as np
import torch
from torch import nn


def ig2_reference(
    model: nn.Module,
    x: torch.Tensor,
    references: torch.Tensor,
    target: int,
    n_steps: int,
    step_size: float,
    clamp: tuple[float, float],
    representation: Callable[[torch.Tensor], torch.Tensor] | None = None,
    adaptive: bool = False,
    n_walks: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """IG2 of one explicand ``x`` (F) against ``references`` (R, *F); returns (attr, GradCFs),
    the GradCFs of shape (R * n_walks, *F), walk w of reference r in row r * n_walks + w.

    ``adaptive``: the step halves after a reversal (consecutive unit directions with a negative
    inner product) and otherwise grows by 1.5, up to ``step_size``. ``n_walks``: every walk
    starts at x; walk w >= 1 takes its first direction at x + 2e-6 * rms(x - reference) *
    (standard normal noise seeded with w), clipped."""
    rep = representation if representation is not None else model
    attributions = []
    ends = []
    for ref in references:
        with torch.no_grad():
            ref_rep = rep(ref.unsqueeze(0))
        for w in range(n_walks):
            probe = x.clone()  # where the first direction is taken
            if w > 0:
                rms = (x - ref).norm() / x.numel() ** 0.5
                noise = torch.randn(
                    x.shape, generator=torch.Generator().manual_seed(w), dtype=torch.float64
                )
                probe = torch.clamp(x + 2e-6 * rms * noise.to(x.dtype), clamp[0], clamp[1])
            # 1. GradPath search: steps down the representation distance, clipped.
            path = [x.clone()]
            point = x.clone()
            length, previous = step_size, None
            for k in range(n_steps):
                at = probe if k == 0 else point.detach()
                at = at.detach().requires_grad_(True)
                distance = ((rep(at.unsqueeze(0)) - ref_rep) ** 2).mean()
                (grad,) = torch.autograd.grad(distance, at)
                norm = grad.norm()
                move = grad / norm if norm > 0 else torch.zeros_like(grad)
                if adaptive and previous is not None:
                    reversed_ = float((move * previous).sum()) < 0
                    length = length / 2 if reversed_ else min(length * 1.5, step_size)
                previous = move
                point = torch.clamp(point.detach() - length * move, clamp[0], clamp[1])
                path.append(point)
            # 2. Integrate the output's gradient along the path: sum (x_k - x_k+1) grad f(x_k).
            attribution = torch.zeros_like(x)
            for before, after in itertools.pairwise(path):
                before = before.detach().requires_grad_(True)
                (grad,) = torch.autograd.grad(model(before.unsqueeze(0))[0, target], before)
                attribution += (before.detach() - after) * grad
            attributions.append(attribution)
            ends.append(path[-1])
    return torch.stack(attributions).mean(dim=0), torch.stack(ends)


class _NumpyWithOldQuantile(types.ModuleType):
    """NumPy as saliency 0.2.1 expects it: ``np.quantile(..., interpolation=...)``, removed in
    NumPy 2, is passed on as ``method=``; everything else is NumPy itself."""

    def __init__(self) -> None:
        super().__init__("numpy_with_old_quantile")

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(np, name)

    @staticmethod
    def quantile(a, q, interpolation="linear", **kwargs):  # type: ignore[no-untyped-def]
        return np.quantile(a, q, method=interpolation, **kwargs)


def pair_guided_ig(
    model: nn.Module,
    x: torch.Tensor,
    baseline: torch.Tensor,
    target: int,
    steps: int,
    fraction: float,
    max_dist: float,
) -> torch.Tensor:
    """PAIR's Guided IG of each example of ``x`` (float64 NumPy, one example at a time)."""
    from saliency.core import guided_ig

    guided_ig.np = _NumpyWithOldQuantile()  # adapts the one removed call, not the algorithm
    try:
        results = []
        for xi, bi in zip(x, baseline):

            def grad_func(point: np.ndarray) -> np.ndarray:
                p = torch.tensor(point, dtype=torch.float64).unsqueeze(0).requires_grad_(True)
                (g,) = torch.autograd.grad(model(p)[0, target], p)
                return g[0].numpy()

            attr = guided_ig.guided_ig_impl(
                xi.numpy(), bi.numpy(), grad_func, steps=steps, fraction=fraction,
                max_dist=max_dist,
            )  # fmt: skip
            results.append(torch.from_numpy(np.asarray(attr)))
        return torch.stack(results)
    finally:
        guided_ig.np = np


# Textbook nodes and weights on [0, 1] of the rules with n nodes, written out independently of
# the package: left, right and middle Riemann sums, the trapezoid rule on n points, and the
# 2- and 3-point Gauss-Legendre rules.
def rule_table(method: str, n: int) -> tuple[list[float], list[float]]:
    if method == "riemann_left":
        return [j / n for j in range(n)], [1 / n] * n
    if method == "riemann_right":
        return [(j + 1) / n for j in range(n)], [1 / n] * n
    if method == "riemann_middle":
        return [(j + 0.5) / n for j in range(n)], [1 / n] * n
    if method == "riemann_trapezoid":
        weights = [1 / (n - 1)] * n
        weights[0] = weights[-1] = 0.5 / (n - 1)
        return [j / (n - 1) for j in range(n)], weights
    if method == "gausslegendre" and n == 2:
        h = 0.5 / np.sqrt(3.0)
        return [0.5 - h, 0.5 + h], [0.5, 0.5]
    if method == "gausslegendre" and n == 3:
        h = 0.5 * np.sqrt(0.6)
        return [0.5 - h, 0.5, 0.5 + h], [5 / 18, 8 / 18, 5 / 18]
    raise ValueError(f"no table for {method} with {n} nodes")


def output_gradient(f: Callable[[torch.Tensor], torch.Tensor], point: torch.Tensor):  # type: ignore[no-untyped-def]
    """f and grad f at one point (no batch dimension)."""
    p = point.detach().clone().requires_grad_(True)
    value = f(p.unsqueeze(0)).reshape(())
    (grad,) = torch.autograd.grad(value, p)
    return value.detach(), grad


def polyline_quadrature(
    f: Callable[[torch.Tensor], torch.Tensor],
    points: torch.Tensor,
    alphas: list[float],
    weights: list[float],
) -> torch.Tensor:
    """The rule applied to every segment of a polyline ``points`` (T + 1, *F), one node at a
    time: sum_k (x_k+1 - x_k) * sum_j w_j grad f(x_k + alpha_j (x_k+1 - x_k))."""
    total = torch.zeros_like(points[0])
    for a, b in itertools.pairwise(points):
        for alpha, w in zip(alphas, weights):
            _, grad = output_gradient(f, a + alpha * (b - a))
            total += w * (b - a) * grad
    return total


def idgi_reference(f: Callable[[torch.Tensor], torch.Tensor], points: torch.Tensor) -> torch.Tensor:
    """IDGI (Yang, Wang & Bilgic, CVPR 2023, Algorithm 1) along the points of a path (T + 1, *F):
    sum_k (f(x_k+1) - f(x_k)) * g_k^2 / sum(g_k^2), g_k = grad f(x_k)."""
    total = torch.zeros_like(points[0])
    for a, b in itertools.pairwise(points):
        fa, grad = output_gradient(f, a)
        fb, _ = output_gradient(f, b)
        total += (fb - fa) * grad**2 / (grad**2).sum()
    return total
