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
) -> tuple[torch.Tensor, torch.Tensor]:
    """IG2 of one explicand ``x`` (F) against ``references`` (R, *F); returns (attr, GradCFs)."""
    rep = representation if representation is not None else model
    attributions = []
    ends = []
    for ref in references:
        with torch.no_grad():
            ref_rep = rep(ref.unsqueeze(0))
        # 1. GradPath search: fixed-length steps down the representation distance, clipped.
        path = [x.clone()]
        point = x.clone()
        for _ in range(n_steps):
            point = point.detach().requires_grad_(True)
            distance = ((rep(point.unsqueeze(0)) - ref_rep) ** 2).mean()
            (grad,) = torch.autograd.grad(distance, point)
            norm = grad.norm()
            move = grad / norm if norm > 0 else torch.zeros_like(grad)
            point = torch.clamp(point.detach() - step_size * move, clamp[0], clamp[1])
            path.append(point)
        # 2. Integrate the output's gradient along the path: sum (x_k - x_k+1) * grad f(x_k).
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
