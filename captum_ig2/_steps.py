"""Step rules: how each method moves its paths from one point to the next.

Each rule works on all P paths of a call at once, on their device, without host-device syncs.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from captum_ig2._common import flatten, unflatten


class CounterfactualGradientStep:
    """IG2's GradPath step (Zhuo & Ge, TPAMI 2024, Sec. 3.2, Eq. 6).

    Each step descends the distance between the representations of the current point and of the
    reference by a fixed L2 length along the normalised gradient, then clips to the input domain::

        x_k+1 = clip(x_k - eta * g / ||g||_2),   g = grad_x ||rep(x_k) - rep(reference)||^2

    The norm is taken per path over all input tensors together. A zero gradient (the point's
    representation already equals the reference's) leaves the point where it is.

    Args:
        step_size: eta, one value per path, shape (P,).
        clamp: one (low, high) pair per input tensor, or None for no clipping.
    """

    needs_distance_gradient = True

    def __init__(self, step_size: Tensor, clamp: tuple[tuple[Any, Any], ...] | None) -> None:
        self.step_size = step_size
        self.clamp = clamp

    def __call__(
        self,
        k: int,
        x: tuple[Tensor, ...],
        output_grad: tuple[Tensor, ...],
        distance_grad: tuple[Tensor, ...] | None,
    ) -> tuple[Tensor, ...]:
        assert distance_grad is not None
        squared = sum(g.reshape(g.shape[0], -1).pow(2).sum(dim=1) for g in distance_grad)
        norm = torch.sqrt(squared).clamp_min(torch.finfo(squared.dtype).tiny)
        scale = self.step_size / norm
        moved = []
        for i, (t, g) in enumerate(zip(x, distance_grad)):
            nxt = t - scale.view(-1, *([1] * (t.dim() - 1))) * g
            if self.clamp is not None:
                low, high = self.clamp[i]
                nxt = nxt.clamp(low, high)
            moved.append(nxt)
        return tuple(moved)


def default_step_size(
    start: tuple[Tensor, ...], references: tuple[Tensor, ...], n_steps: int
) -> Tensor:
    """eta per path: the L2 distance from input to reference divided by ``n_steps``.

    The GradPath is then as long as the straight line from the input to its reference, so the
    step scales with the data and the path can reach the reference's neighbourhood in
    ``n_steps`` steps; the authors' published settings (e.g. eta = 0.05 and 1001 steps on
    wafer maps in [0, 1]) give paths of the same order, about 1.5 times that distance.
    """
    diff = flatten(start) - flatten(references)
    return diff.norm(dim=1) / n_steps


class GuidedStep:
    """Guided IG's step (Kapishnikov et al., CVPR 2021, Algorithm 1, with PAIR's max_dist bound).

    At step k every feature must lie within ``max_dist`` (in units of the straight-line
    fraction alpha) of alpha = (k + 1) / T: features that fell behind are first moved to the lower
    bound. Then the features with the smallest |grad f| move to the upper bound, ``fraction`` of
    all features at a time, until the L1 distance to the input has dropped to (1 - alpha) of its
    initial value; the last chunk moves only part of the way. PAIR's implementation
    (``saliency.core.guided_ig.guided_ig_impl``) runs that as a loop that re-selects the lowest
    ``fraction`` (a "lower" quantile of |grad| over all features, excluded features counting as
    infinite) after each chunk. Since the gradient is fixed within a step, the chunks are runs of
    the features sorted once by |grad|, so one sort per step replaces the loop; ties at a chunk's
    threshold join that chunk, exactly as in PAIR.

    Args:
        baseline: x_0, one (P, ...) tensor per input.
        inputs: the explained inputs, one (P, ...) tensor per input.
        n_steps: T.
        fraction: the share of features selected per chunk, in (0, 1].
        max_dist: the largest allowed deviation from the straight line, in [0, 1].
    """

    needs_distance_gradient = False
    #: PAIR's tolerance for "the L1 target is met" (``math.isclose`` with this rel and abs tol).
    EPSILON = 1e-9

    def __init__(
        self,
        baseline: tuple[Tensor, ...],
        inputs: tuple[Tensor, ...],
        n_steps: int,
        fraction: float,
        max_dist: float,
    ) -> None:
        self.like = baseline
        self.baseline = flatten(baseline)
        self.input = flatten(inputs)
        self.diff = self.input - self.baseline
        self.moves = self.diff != 0
        self.l1_total = self.diff.abs().sum(dim=1)
        self.n_steps = n_steps
        self.max_dist = max_dist
        n_features = self.baseline.shape[1]
        # Index of the "lower" quantile of |grad| over all features, as numpy's.
        self.quantile_index = math.floor(fraction * (n_features - 1))
        # A chunk spans at least quantile_index + 1 sorted positions.
        self.max_chunks = math.ceil(n_features / (self.quantile_index + 1)) + 1

    def _chunk_ids(self, sorted_key: Tensor, n_finite: Tensor) -> Tensor:
        """Chunk number of every sorted position: PAIR's successive quantile selections."""
        rows, n_features = sorted_key.shape
        starts = torch.zeros(rows, 1, dtype=torch.long, device=sorted_key.device)
        marks = torch.zeros(rows, n_features + 1, dtype=torch.long, device=sorted_key.device)
        last_finite = (n_finite - 1).unsqueeze(1)
        for _ in range(self.max_chunks):
            threshold_at = starts + self.quantile_index
            threshold = sorted_key.gather(1, threshold_at.clamp(max=n_features - 1))
            # Every remaining feature with |grad| <= threshold is selected: ties join the chunk.
            tie_end = torch.searchsorted(sorted_key, threshold, right=True) - 1
            end = torch.where(threshold_at > last_finite, last_finite, tie_end)
            starts = torch.maximum(end + 1, starts + 1).clamp(max=n_features)
            marks.scatter_(1, starts, 1)
        return marks[:, :n_features].cumsum(dim=1)

    def __call__(
        self,
        k: int,
        x: tuple[Tensor, ...],
        output_grad: tuple[Tensor, ...],
        distance_grad: tuple[Tensor, ...] | None,
    ) -> tuple[Tensor, ...]:
        x_flat = flatten(x)
        grad = flatten(output_grad)
        alpha = (k + 1.0) / self.n_steps
        alpha_min = max(alpha - self.max_dist, 0.0)
        alpha_max = min(alpha + self.max_dist, 1.0)
        x_min = self.baseline + self.diff * alpha_min
        x_max = self.baseline + self.diff * alpha_max
        l1_target = self.l1_total * (1.0 - (k + 1.0) / self.n_steps)

        # Features behind alpha_min jump to the lower bound of the allowed band.
        x_alpha = torch.where(
            self.moves, (x_flat - self.baseline) / torch.where(self.moves, self.diff, 1.0), alpha_max
        )
        x_flat = torch.where(x_alpha < alpha_min, x_min, x_flat)
        l1_current = (x_flat - self.input).abs().sum(dim=1)
        gap = l1_current - l1_target
        done = gap.abs() <= self.EPSILON * torch.maximum(
            torch.maximum(l1_current.abs(), l1_target.abs()), torch.ones_like(l1_current)
        )
        gap = torch.where(done, torch.zeros_like(gap), gap.clamp_min(0.0))

        # Order features by |grad|; those already at the upper bound cannot move (key = inf).
        at_max = x_flat == x_max
        key = torch.where(at_max, torch.full_like(grad, math.inf), grad.abs())
        sorted_key, order = key.sort(dim=1)
        chunk = self._chunk_ids(sorted_key, (~at_max).sum(dim=1))
        x_sorted = x_flat.gather(1, order)
        max_sorted = x_max.gather(1, order)
        room = (max_sorted - x_sorted).abs()

        # L1 each chunk can remove, and what the chunks before it remove when saturated.
        chunk_l1 = torch.zeros(
            room.shape[0], self.max_chunks + 2, dtype=room.dtype, device=room.device
        ).scatter_add_(1, chunk, room)
        before_l1 = chunk_l1.cumsum(dim=1) - chunk_l1
        chunk_room = chunk_l1.gather(1, chunk)
        chunk_before = before_l1.gather(1, chunk)
        gap = gap.unsqueeze(1)
        # Chunks whose end stays short of the gap saturate; the first that reaches it moves by
        # gamma = (remaining gap) / (its L1); later chunks stay.
        saturate = chunk_before + chunk_room < gap
        partial = ~saturate & (chunk_before < gap)
        gamma = (gap - chunk_before) / torch.where(chunk_room > 0, chunk_room, 1.0)
        moved = torch.where(
            saturate,
            max_sorted,
            torch.where(partial, x_sorted + gamma * (max_sorted - x_sorted), x_sorted),
        )
        x_next = torch.empty_like(x_flat).scatter_(1, order, moved)
        return unflatten(x_next, self.like)
