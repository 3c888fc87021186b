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
    reference along the normalised gradient, then clips to the input domain::

        x_k+1 = clip(x_k - h_k * g / ||g||_2),   g = grad_x ||rep(x_k) - rep(reference)||^2

    The paper's walk (``walk="fixed"``) takes h_k = eta at every step. On a real network the
    distance's gradient turns within a fraction of eta (shattered gradients): the fixed walk
    overshoots the valleys of the distance, zig-zags across them (consecutive steps point
    against each other) and turns a rounding difference into another walk. The adaptive walk
    (``walk="adaptive"``) keeps the descent and shortens the step where it overshot: after a
    reversal, two consecutive unit directions with a negative inner product, h_k+1 = h_k / 2;
    otherwise h_k+1 = min(1.5 h_k, eta). It is the step-size control of Rprop (Riedmiller &
    Braun, ICNN 1993), which halves a weight's step when its gradient changes sign, applied to the
    whole direction of the walk.

    The norm and the inner product are taken per path over all input tensors together. A zero
    gradient (the point's representation already equals the reference's) leaves the point where
    it is.

    Args:
        step_size: eta, the largest step, one value per path, shape (P,).
        clamp: one (low, high) pair per input tensor, or None for no clipping.
        walk: ``"adaptive"`` or ``"fixed"`` (see above).
        first_offset: the first direction is taken at x_0 + first_offset (see
            :func:`walk_offsets`), or at x_0 where None.
    """

    needs_output_gradient = False
    needs_distance_gradient = True
    #: The adaptive walk's factors after a reversal and after a step that went on.
    SHRINK = 0.5
    GROW = 1.5

    def __init__(
        self,
        step_size: Tensor,
        clamp: tuple[tuple[Any, Any], ...] | None,
        walk: str = "adaptive",
        first_offset: tuple[Tensor, ...] | None = None,
    ) -> None:
        self.step_size = step_size
        self.clamp = clamp
        self.first_offset = first_offset
        self.adaptive = walk == "adaptive"
        self.length = step_size  # h_k, per path
        self._previous: tuple[Tensor, ...] | None = None  # the last unit direction

    def __call__(
        self,
        k: int,
        x: tuple[Tensor, ...],
        output_grad: tuple[Tensor, ...] | None,
        distance_grad: tuple[Tensor, ...] | None,
    ) -> tuple[Tensor, ...]:
        assert distance_grad is not None
        direction = unit_direction(distance_grad)
        if self.adaptive:
            if self._previous is not None:
                turn = sum(
                    (a * b).reshape(a.shape[0], -1).sum(dim=1)
                    for a, b in zip(direction, self._previous)
                )
                self.length = torch.where(
                    turn < 0,
                    self.length * self.SHRINK,
                    torch.minimum(self.length * self.GROW, self.step_size),
                )
            self._previous = direction
        moved = []
        for i, (t, g) in enumerate(zip(x, direction)):
            nxt = t - self.length.view(-1, *([1] * (t.dim() - 1))) * g
            if self.clamp is not None:
                low, high = self.clamp[i]
                nxt = nxt.clamp(low, high)
            moved.append(nxt)
        return tuple(moved)


def unit_direction(grad: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """``grad / ||grad||_2`` per path (the norm over all input tensors together), and zero where
    the gradient is zero. The gradient is first divided by its largest magnitude, so that neither
    squaring huge gradients overflows nor squaring tiny ones underflows to a zero norm."""
    peaks = [g.reshape(g.shape[0], -1).abs().amax(dim=1) for g in grad if g[0].numel() > 0]
    if not peaks:  # no features at all: nothing to move
        return grad
    peak = torch.stack(peaks).amax(dim=0)
    moving = peak > 0
    safe_peak = torch.where(moving, peak, torch.ones_like(peak))
    scaled = tuple(g / safe_peak.view(-1, *([1] * (g.dim() - 1))) for g in grad)
    norm = torch.sqrt(sum(s.reshape(s.shape[0], -1).pow(2).sum(dim=1) for s in scaled))  # >= 1
    factor = torch.where(moving, 1.0 / torch.where(moving, norm, 1.0), 0.0)
    return tuple(s * factor.view(-1, *([1] * (s.dim() - 1))) for s in scaled)


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

    needs_output_gradient = True
    needs_distance_gradient = False
    first_offset = None
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
        # Features with input == baseline never move; dividing them by 1 keeps their alpha at 0,
        # and snapping them to x_min (= baseline = x) changes no value.
        self.safe_diff = torch.where(self.diff != 0, self.diff, 1.0)
        self.largest = torch.finfo(self.diff.dtype).max
        # L1 distances are summed in float64: a float32 sum of many large differences (a
        # baseline near the dtype's largest value) would overflow to inf.
        self.l1_total = _l1(self.diff)
        self.n_steps = n_steps
        self.max_dist = max_dist
        self.n_features = n_features = self.baseline.shape[1]
        # Index of the "lower" quantile of |grad| over all features, as numpy's.
        self.quantile_index = max(math.floor(fraction * (n_features - 1)), 0)
        # A chunk holds at least quantile_index + 1 features, so this many chunks cover them all.
        self.max_chunks = math.ceil(n_features / (self.quantile_index + 1)) + 1

    def __call__(
        self,
        k: int,
        x: tuple[Tensor, ...],
        output_grad: tuple[Tensor, ...] | None,
        distance_grad: tuple[Tensor, ...] | None,
    ) -> tuple[Tensor, ...]:
        assert output_grad is not None
        if self.n_features == 0:
            return x  # nothing to move
        x_flat = flatten(x)
        grad = flatten(output_grad)
        alpha = (k + 1.0) / self.n_steps
        alpha_min = max(alpha - self.max_dist, 0.0)
        alpha_max = min(alpha + self.max_dist, 1.0)
        x_min = self.baseline + self.diff * alpha_min
        x_max = self.baseline + self.diff * alpha_max
        l1_target = self.l1_total * (1.0 - alpha)

        # Features behind alpha_min jump to the lower bound of the allowed band.
        x_alpha = (x_flat - self.baseline) / self.safe_diff
        x_flat = torch.where(x_alpha < alpha_min, x_min, x_flat)
        l1_current = _l1(x_flat - self.input)

        # Features at the upper bound cannot move: they count as infinitely important.
        key = torch.where(x_flat == x_max, math.inf, grad.abs())
        room = (x_max - x_flat).abs()
        removed = torch.zeros_like(l1_current)  # L1 removed by the chunks saturated so far
        active = torch.ones_like(l1_current, dtype=torch.bool)
        for _ in range(self.max_chunks):
            # PAIR's check that the L1 target is met (math.isclose with rel = abs = EPSILON).
            remaining = l1_current - removed
            met = (remaining - l1_target).abs() <= self.EPSILON * torch.maximum(
                torch.maximum(remaining.abs(), l1_target.abs()), torch.ones_like(remaining)
            )
            active = active & ~met
            # The lowest `fraction` of |grad| among all features ("lower" quantile).
            threshold = key.kthvalue(self.quantile_index + 1, dim=1).values
            # Features at their bound (key = inf) are never selected, nor any of a finished path.
            threshold = torch.where(active, threshold.clamp(max=self.largest), -1.0)
            selected = key <= threshold.unsqueeze(1)
            chunk_room = _l1(room * selected)
            gamma = (remaining - l1_target) / chunk_room
            saturate = gamma > 1.0  # also where the chunk has no room (gamma = inf)
            move = torch.where(saturate, 1.0, gamma).to(x_flat.dtype).unsqueeze(1)
            x_flat = torch.where(selected, x_flat + move * (x_max - x_flat), x_flat)
            x_flat = torch.where(selected & saturate.unsqueeze(1), x_max, x_flat)
            removed = removed + chunk_room
            key = torch.where(selected, math.inf, key)
            active = active & saturate
            if x_flat.device.type == "cpu" and not bool(active.any()):
                break  # no device to sync with on the CPU: stop as soon as every path is done
        return unflatten(x_flat, self.like)


def _l1(t: Tensor) -> Tensor:
    """The L1 norm of every row of ``t`` (P, D), summed in float64."""
    return t.abs().sum(dim=1, dtype=torch.float64)


#: The relative size of the offsets that start IG2's walks apart (see :func:`walk_starts`).
WALK_OFFSET = 2e-6


def walk_offsets(
    start: tuple[Tensor, ...],
    references: tuple[Tensor, ...],
    n_walks: int,
    clamp: tuple[tuple[Any, Any], ...] | None,
) -> tuple[Tensor, ...] | None:
    """Where the W walks of every path take their first direction, as offsets from the start:
    P = M x W rows, walk w = p % W of path p // W; None for one walk.

    Every walk starts at the input. Walk 0 takes its first direction there; walk w >= 1 at the
    input moved by a fixed pseudo-random offset of RMS ``WALK_OFFSET`` (at least 16 rounding
    units of the dtype) times the RMS of input - reference, clipped to the domain: a difference
    of the size that rounding, a batch of another composition or another GPU kernel makes, which
    the GradPath turns into another walk. Offset w of input tensor i is drawn from a generator
    seeded with w + 7919 i, in float64, and is the same for every example, so that a walk does
    not depend on the batch, the device or the dtype.
    """
    if n_walks == 1:
        return None
    walk = torch.arange(start[0].shape[0], device=start[0].device) % n_walks
    diff = flatten(start) - flatten(references)
    n_features = max(diff.shape[1], 1)
    relative = max(WALK_OFFSET, 16 * torch.finfo(start[0].dtype).eps)
    scale = diff.norm(dim=1) / math.sqrt(n_features) * relative  # (P,)
    offsets = []
    for i, t in enumerate(start):
        noise = torch.stack(
            [torch.zeros(t.shape[1:], dtype=torch.float64)]
            + [
                torch.randn(
                    t.shape[1:],
                    generator=torch.Generator().manual_seed(w + 7919 * i),
                    dtype=torch.float64,
                )
                for w in range(1, n_walks)
            ]
        ).to(device=t.device, dtype=t.dtype)
        probe = t + scale.view(-1, *([1] * (t.dim() - 1))) * noise[walk]
        if clamp is not None:
            probe = probe.clamp(*clamp[i])
        offsets.append(probe - t)
    return tuple(offsets)
