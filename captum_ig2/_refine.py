"""Globally adaptive refinement of the complete trapezoid, after the walk.

The walk gives every path point's output and output gradient, so the complete trapezoid
(``_quadrature.complete_piece``) integrates every segment as one piece at no extra cost. This
module then refines where the map's error is, across all segments of all paths at once, as
QUADPACK's ``qag`` bisects the subinterval of largest error estimate across the whole integral
(Piessens et al., *QUADPACK*, Springer 1983, ch. 2) rather than giving every segment a fixed share:

1. every piece has an estimated error vector e (per feature, in the integral's units); every
   example has its estimated squared map error E^2, the sum of ||e||^2 over the pieces of its M
   paths (each counted once for every path of the example that runs along the same segment),
   over M^2;
2. while E exceeds tol times the norm of the example's map, the pieces of largest ||e|| whose
   squared errors cover 4/3 of the excess (a bisected piece keeps an eighth to a quarter of its
   squared error), but at most half of E^2, are bisected, all examples in one batched
   evaluation of the pieces' middles, in chunks (the half: where the error sits in a few pieces,
   IG2's first steps, those are bisected first and the next round sees what they left);
3. until every example is within its tolerance, or its pieces have reached ``limit`` per segment,
   or those that have hold more error than the tolerance allows (the call then warns).

Walks that coincide share. IG2's walks of one reference start together at the input and go
apart over a few steps (their first segments ended up to 2.5 % of a step apart on
EfficientNet-Lite0), so their first segments carry one error W times, which adds up in the map
and which refinement walk by walk would pay for W times (at 224 px, half of the refinement's
gradients went to the first segment). A path whose segment starts where an earlier path's of
its example does, and whose estimated difference of errors from it (the estimate below applied
to the difference of the two integrands) is small against its own error, shares that path's
refinement: every change bisection makes to the leader's integral (it sums to zero, so both
stay complete) is made to its own, the leader's error counts for both, and the difference
stays as it is, as long as such differences use at most SHARE_GOAL of the example's squared
tolerance (``Quadrature._sharing``, ``GlobalRefinement._share``).

Memory. A piece can be bisected only while the path points at its segment's ends and the
gradients at its ends are kept: two input-sized rows per path point and path (0.6 MB each at
224 x 224 x 3 in float32). They are kept on the CPU, within a budget (``set_refinement_memory``,
4 GiB by default): where the rows would exceed it, during the walk or before a round, the
pieces of least error relative to their example's tolerance are frozen, as they are, and the
rows no open piece needs are freed, down to half the budget (during the walk) or to what the
round needs. A frozen piece keeps its error: the other pieces are refined to the tolerance
less that error (at least to a quarter of the tolerance), and the call warns where the sum
stays above it. The rows of the paths' last point are always kept (the next segment starts
there).

The estimate. A piece [a, b] of a segment with direction d has the error vector e = |u| / 2,
u = (b - a) (g(b) - g(a)) * d the right minus the left Riemann sum: the two bracket the
integral, feature by feature, where g * d is monotone along the piece, so e bounds the
trapezoid's error there. It is of first order: right where the gradient jumps (ReLU networks:
on EfficientNet-Lite0 it was 1.0-1.4x the map's real error), pessimistic where the gradient is
smooth, which refinement then pays for in gradients, not in a false warning. A second-order
estimate from the change of the trapezoid by a bisection, D = (u_1 - u_2) / 2 for the halves'
u_1 and u_2, was tried and is not used: where the gradient steps several times in one direction
along a piece (ReLUs switching on one after the other), D nearly vanishes while each half keeps a
first-order error, and it understated a deep ReLU network's real error 3-4x.
"""

from __future__ import annotations

import math
import numbers
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from captum_ig2._quadrature import Evaluate, Point

#: A bisected piece keeps about a quarter of its squared error (a half of its error where the
#: gradient jumps, far less where it is smooth): the pieces bisected in a round cover this many
#: times an example's excess over its tolerance.
COVER = 4.0 / 3.0
#: and at most this share of its squared error, so that a round takes the pieces of largest
#: error, as ``qag`` takes one, and the next round sees what they left.
ROUND = 0.5
#: Where the pieces frozen for the budget hold most of an example's tolerance, the others are
#: still refined to this share of it.
FROZEN_GOAL = 0.25
#: Paths may share the refinement of a coinciding path (see Quadrature._sharing) where the
#: errors of sharing of an example add up to at most this share of its squared tolerance.
SHARE_GOAL = 0.25
#: The default budget of the rows kept for refinement, in bytes (see the module docstring).
REFINEMENT_MEMORY = 4 * 2**30
_refinement_memory: int | None = REFINEMENT_MEMORY
_setting = threading.Lock()


def set_refinement_memory(nbytes: int | None) -> int | None:
    """Sets the most bytes of path points and gradients the complete trapezoid keeps for its
    refinement after the walk (on the CPU; 4 GiB by default), and returns the previous setting.

    The complete trapezoid (IG2's default rule) refines the pieces of largest error across all
    segments once the walk has ended, and a piece can be refined only while the path points at
    its ends and the output's gradients there are kept: two input-sized tensors per path point
    and path, 0.6 MB each for a 224 x 224 RGB image in float32, so a call on 16 images with 8
    walks of 50 steps would keep 8 GB. Where they would exceed the budget, the pieces of least
    error relative to their example's tolerance are left as they are and what they keep is
    freed; the other pieces are refined further to make up for them, or the call warns with
    :class:`~captum_ig2.ConvergenceWarning`, naming the budget where it stopped the refinement
    (``path(...).map_error`` tells by how much). A larger budget costs memory, a smaller one
    accuracy.

    Args:
        nbytes (int, float or None): The budget in bytes (at least 0; a float is rounded
                    down), a setting of the process: it holds for every call that starts after
                    this one, in any thread (a call keeps the budget it started with); None:
                    unbounded, everything is kept until the walk ends.

    Returns:
        int or None: The previous budget.

    Examples::

        >>> import captum_ig2
        >>> previous = captum_ig2.set_refinement_memory(16 * 2**30)  # a large host
        >>> attributions = ig2.attribute(images, references, target=labels)
        >>> captum_ig2.set_refinement_memory(previous)
    """
    global _refinement_memory
    if nbytes is not None:
        if isinstance(nbytes, bool) or not isinstance(nbytes, numbers.Real):
            raise TypeError(
                "`nbytes` must be a number of bytes (e.g. 4 * 2**30 or 4e9) or None "
                f"(unbounded), got {type(nbytes).__name__} {nbytes!r}."
            )
        if not (math.isfinite(nbytes) and nbytes >= 0):
            raise ValueError(
                "`nbytes` must be a finite number of bytes >= 0, or None (unbounded), got "
                f"{nbytes!r}."
            )
        nbytes = int(nbytes)
    with _setting:
        previous, _refinement_memory = _refinement_memory, nbytes
    return previous


def refinement_memory() -> int | None:
    """The budget of ``set_refinement_memory``, in bytes (None: unbounded)."""
    return _refinement_memory


def broadcast_rows(values: Tensor, like: Tensor) -> Tensor:
    """``values`` (B,) broadcast against ``like`` (B, ...)."""
    return values.to(device=like.device, dtype=like.dtype).view(-1, *([1] * (like.dim() - 1)))


def per_row_sum(x: tuple[Tensor, ...]) -> Tensor:
    """The sum of every row of the tensors ``x`` over all their features, shape (B,)."""
    return sum(t.reshape(t.shape[0], -1).sum(dim=1) for t in x)  # type: ignore[return-value]


def complete_piece(
    g_lo: tuple[Tensor, ...],
    g_hi: tuple[Tensor, ...],
    f_lo: Tensor,
    f_hi: Tensor,
    width: Tensor,
    direction: tuple[Tensor, ...],
    local: bool,
) -> tuple[tuple[Tensor, ...], Tensor, tuple[Tensor, ...]]:
    """The complete trapezoid on B pieces [a, b] of relative length ``width`` = b - a (B,) of
    segments with directions ``direction``, given the gradient and f at both ends.

    Returns every piece's integral per feature: the trapezoid, plus its residual
    f(b) - f(a) - sum(trapezoid) split over the features in proportion to |u|, where
    u = (b - a) (g(b) - g(a)) * d is the right minus the left Riemann sum; the residual left
    unsplit (where u = 0, or where the residual is within the outputs' rounding: bfloat16 rounds
    an output of 1 to 2^-8); and the piece's error vector in the integral's units, u (``local``:
    (b - a) (g(b) - g(a)), the integral being that of the gradient alone), half of which
    estimates the trapezoid's error.
    """
    change = tuple((hi - lo) * broadcast_rows(width, hi) for hi, lo in zip(g_hi, g_lo))
    weighted = tuple((hi + lo) * broadcast_rows(width / 2.0, hi) for hi, lo in zip(g_hi, g_lo))
    estimate = tuple(w * d for w, d in zip(weighted, direction))
    r = f_hi - f_lo - per_row_sum(estimate)
    u = tuple(c * d for c, d in zip(change, direction))
    magnitude = tuple(t.abs() for t in u)
    total = per_row_sum(magnitude)
    eps = torch.finfo(u[0].dtype).eps if u[0].is_floating_point() else 0.0
    noise = 4.0 * eps * (f_hi.abs() + f_lo.abs())
    total = torch.where(r.abs() > noise.to(r.dtype), total, torch.zeros_like(total))
    spread = torch.where(total > 0, r / torch.where(total > 0, total, 1.0), 0.0)
    correction = tuple(m * broadcast_rows(spread, m) for m in magnitude)
    if local:  # a change of the integral of the gradient, feature i, times d_i
        correction = tuple(
            torch.where(d != 0, c / torch.where(d != 0, d, 1.0), 0.0)
            for c, d in zip(correction, direction)
        )
    integral = tuple(a + c for a, c in zip(weighted if local else estimate, correction))
    left = torch.where(total > 0, torch.zeros_like(r), r)
    return integral, left, change if local else u


def map_norm(integral: tuple[Tensor, ...], group: int) -> Tensor:
    """The size of every example's map, shape (P / M,), float64, CPU: the norm of the mean of
    its M paths' integrals or, where they cancel in the mean, the norm their mean would have if
    they were independent, sqrt(sum of their squared norms) / M. An error below the latter is
    below what the choice of references (and walks) already moves the map by."""
    n = integral[0].shape[0] // group
    paths = torch.cat([t.detach().reshape(n, group, -1).double().cpu() for t in integral], dim=2)
    return torch.maximum(paths.mean(dim=1).norm(dim=1), paths.norm(dim=(1, 2)) / group)


class _Rows:
    """Rows of tensors appended block by block (where they are kept: ``device``), gathered by
    their ids, 0, 1, ... in the order they were added, and freed row by row (``keep``)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._blocks: list[tuple[Tensor, ...] | None] = []
        self._block = torch.empty(0, dtype=torch.long)  # every id's block (-1: freed)
        self._local = torch.empty(0, dtype=torch.long)  # and its row there
        self.nbytes = 0

    @property
    def row_bytes(self) -> int:
        """The bytes of one row (0 while none is kept)."""
        alive = int((self._block >= 0).sum())
        return self.nbytes // alive if alive else 0

    def add(self, rows: tuple[Tensor, ...]) -> Tensor:
        first, n = self._block.numel(), rows[0].shape[0]
        block = tuple(t.detach().to(self.device) for t in rows)
        self._blocks.append(block)
        self._block = torch.cat([self._block, torch.full((n,), len(self._blocks) - 1)])
        self._local = torch.cat([self._local, torch.arange(n)])
        self.nbytes += sum(t.nbytes for t in block)
        return torch.arange(first, first + n)

    def get(self, ids: Tensor, device: torch.device) -> tuple[Tensor, ...]:
        block = self._block[ids]
        assert bool((block >= 0).all()), "a freed row was asked for"
        like = next(b for b in self._blocks if b is not None)
        out = tuple(
            torch.empty((ids.numel(), *t.shape[1:]), dtype=t.dtype, device=device) for t in like
        )
        for b in block.unique().tolist():
            where = torch.nonzero(block == b).flatten()
            rows = self._local[ids[where]]
            source = self._blocks[b]
            assert source is not None
            for o, t in zip(out, source):
                o[where.to(device)] = t[rows.to(t.device)].to(device)
        return out

    def keep(self, ids: Tensor) -> None:
        """Frees every row but ``ids``."""
        alive = torch.zeros(self._block.numel(), dtype=torch.bool)
        alive[ids] = True
        for b, source in enumerate(self._blocks):
            if source is None:
                continue
            members = torch.nonzero(self._block == b).flatten()
            kept = members[alive[members]]
            if kept.numel() == members.numel():
                continue
            self._block[members[~alive[members]]] = -1
            if kept.numel() == 0:
                self._blocks[b] = None
                continue
            rows = self._local[kept].to(source[0].device)
            self._blocks[b] = tuple(t[rows] for t in source)  # a copy: the block is freed
            self._local[kept] = torch.arange(kept.numel())
        self.nbytes = sum(sum(t.nbytes for t in b) for b in self._blocks if b is not None)


class GlobalRefinement:
    """Records the segments of every path as the walk makes them, then refines the complete
    trapezoid across all of them (see the module docstring).

    Args:
        tolerance: the tolerance of every example's estimated relative map error.
        n_paths: P, the number of paths.
        group: M, the consecutive paths whose mean is one example's map.
        limit: the most pieces a segment is split into.
        chunk_size: at most this many points are evaluated at once (None: P).
        local: the integral of the gradient alone (Captum's ``multiply_by_inputs=False``).
        store: where the path points and the gradients at them are kept until the walk ends:
            None: the CPU, so that the accelerator's memory stays that of the walk.
        budget: the most bytes of rows kept (see the module docstring); None: unbounded.
    """

    def __init__(
        self,
        tolerance: float,
        n_paths: int,
        group: int,
        limit: int,
        chunk_size: int | None,
        local: bool,
        store: torch.device | None = None,
        budget: int | None = None,
    ) -> None:
        self.tolerance = tolerance
        self.n_paths = n_paths
        self.group = group
        self.limit = limit
        self.chunk_size = n_paths if chunk_size is None else max(chunk_size, 1)
        self.local = local
        self.budget = budget
        store = torch.device("cpu") if store is None else store
        self._x = _Rows(store)  # the path points, P rows per point
        self._g = _Rows(store)  # the output's gradient at path points and at pieces' middles
        self._ids_start: Tensor | None = None  # the rows of the last recorded segment's end
        # the open pieces, one row each (CPU): path, segment, the rows of the gradients at
        # their ends, f there, the squared norm of the error estimate e, how many paths of its
        # example coincide along its segment, and whether it is frozen (its rows freed)
        self._path: list[Tensor] = []
        self._segment: list[Tensor] = []
        self._g_lo: list[Tensor] = []
        self._g_hi: list[Tensor] = []
        self._f_lo: list[Tensor] = []
        self._f_hi: list[Tensor] = []
        self._error2: list[Tensor] = []
        self._coinciding: list[Tensor] = []
        self._frozen: list[Tensor] = []
        self._n_segments = 0
        # every segment's leader of every path (whose refinement it may share, see
        # Quadrature._sharing) and the squared error of sharing it
        self._leader: list[Tensor] = []
        self._shared2: list[Tensor] = []

    @property
    def nbytes(self) -> int:
        """The bytes of the rows kept."""
        return self._x.nbytes + self._g.nbytes

    def record(
        self,
        start: Point,
        end: Point,
        error2: Tensor,
        coinciding: Tensor,
        total: Callable[[], tuple[Tensor, ...]],
        leader: Tensor | None = None,
        shared2: Tensor | None = None,
    ) -> None:
        """Keeps segment k (the next one) of every path, with its pieces' squared error
        estimates ``error2`` (P,) and ``coinciding`` (P,), both float64 on the CPU, and, where
        paths may share the refinement of a leader, every path's ``leader`` (P,; None: itself)
        and squared error of sharing ``shared2`` (P,); within the budget, freezes the pieces
        of least error relative to the maps so far, ``total()`` (called only then)."""
        assert start.grad is not None and end.grad is not None
        if self._ids_start is None:
            self._x.add(start.x)
            self._ids_start = self._g.add(start.grad)
        self._x.add(end.x)
        ids_end = self._g.add(end.grad)
        self._path.append(torch.arange(self.n_paths))
        self._segment.append(torch.full((self.n_paths,), self._n_segments))
        self._g_lo.append(self._ids_start)
        self._g_hi.append(ids_end)
        self._f_lo.append(start.value.detach().double().cpu())
        self._f_hi.append(end.value.detach().double().cpu())
        self._error2.append(error2)
        self._coinciding.append(coinciding)
        self._frozen.append(torch.zeros(self.n_paths, dtype=torch.bool))
        self._leader.append(torch.arange(self.n_paths) if leader is None else leader)
        self._shared2.append(
            torch.zeros(self.n_paths, dtype=torch.float64) if shared2 is None else shared2
        )
        self._ids_start = ids_end
        self._n_segments += 1
        if self.budget is not None and self.nbytes > self.budget:
            lists = (
                self._path, self._segment, self._g_lo, self._g_hi, self._f_lo, self._f_hi,
                self._error2, self._coinciding, self._frozen,
            )  # fmt: skip
            for rows in lists:
                rows[:] = [torch.cat(rows)]
            path, segment, g_lo, g_hi = (rows[0] for rows in lists[:4])
            weight = (self._error2[0] * self._coinciding[0]).numpy()
            importance = _importance(weight, (path // self.group).numpy(), self._target(total()))
            last = torch.arange(self.n_paths) + self._n_segments * self.n_paths
            frozen, _ = self._fit(
                path, segment, g_lo, g_hi, self._frozen[0].numpy(), importance,
                np.zeros(path.numel(), dtype=bool), self.budget // 2, (last, ids_end),
            )  # fmt: skip
            self._frozen[0] = torch.from_numpy(frozen)

    def _target(self, total: tuple[Tensor, ...]) -> np.ndarray:
        """Every example's squared tolerance of the sum of its M paths' squared errors, given
        the paths' integrals ``total``."""
        return ((self.tolerance * map_norm(total, self.group) * self.group) ** 2).numpy()

    def _fit(
        self,
        path: Tensor,
        segment: Tensor,
        g_lo: Tensor,
        g_hi: Tensor,
        frozen: np.ndarray,
        importance: np.ndarray,
        chosen: np.ndarray,
        room: int,
        kept: tuple[Tensor, Tensor] | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Freezes the open pieces of least ``importance`` (the ``chosen`` ones, about to be
        bisected, last) until the rows the others need, the rows ``kept`` (of the path points
        and of the gradients) and a gradient row per chosen piece fit in ``room`` bytes; frees
        the rest. Returns the pieces frozen and those still chosen."""
        x_bytes, g_bytes = self._x.row_bytes, self._g.row_bytes
        open_ = np.nonzero(~frozen)[0]
        order = open_[np.lexsort((-importance[open_], ~chosen[open_]))]
        n = self.n_paths
        p, k = path.numpy()[order], segment.numpy()[order]
        shift = self._x._block.numel()  # gradient rows after the path points' ids
        ids = np.stack([k * n + p, (k + 1) * n + p, g_lo.numpy()[order] + shift,
                        g_hi.numpy()[order] + shift], axis=1)  # fmt: skip
        fixed = 0
        first = np.zeros(ids.shape, dtype=bool)
        _, index = np.unique(ids.ravel(), return_index=True)
        first.ravel()[index] = True
        if kept is not None:  # always kept, paid for first
            x_kept, g_kept = kept[0].numpy(), kept[1].numpy() + shift
            first &= ~np.isin(ids, np.concatenate([x_kept, g_kept]))
            fixed = x_kept.size * x_bytes + g_kept.size * g_bytes
        cost = first[:, :2].sum(axis=1) * x_bytes + first[:, 2:].sum(axis=1) * g_bytes
        cost = cost + np.where(chosen[order], g_bytes, 0)
        fits = fixed + np.cumsum(cost) <= room
        frozen = frozen.copy()
        frozen[order[~fits]] = True
        chosen = chosen & ~frozen
        alive = ids[fits]
        x_ids, g_ids = alive[:, :2].ravel(), alive[:, 2:].ravel() - shift
        if kept is not None:
            x_ids = np.concatenate([x_ids, kept[0].numpy()])
            g_ids = np.concatenate([g_ids, kept[1].numpy()])
        self._x.keep(torch.from_numpy(x_ids))
        self._g.keep(torch.from_numpy(g_ids))
        return frozen, chosen

    def refine(
        self, total: tuple[Tensor, ...], evaluate: Evaluate, progress: Callable[[], None] | None
    ) -> tuple[tuple[Tensor, ...], Tensor, Tensor, Tensor]:
        """Refines the paths whose integrals so far are ``total`` (P rows, the level-0 complete
        trapezoid of every segment): the change of every path's integral, the gradient
        evaluations it took per path (P,), every path's estimated squared error (P,), each
        piece's counted once for every path that coincides with its own, and the part of it in
        pieces frozen for the budget (P,)."""
        path, segment = torch.cat(self._path), torch.cat(self._segment)
        lo = torch.zeros(path.numel(), dtype=torch.float64)
        hi = torch.ones(path.numel(), dtype=torch.float64)
        g_lo, g_hi = torch.cat(self._g_lo), torch.cat(self._g_hi)
        f_lo, f_hi = torch.cat(self._f_lo), torch.cat(self._f_hi)
        error2, coinciding = torch.cat(self._error2), torch.cat(self._coinciding)
        frozen = torch.cat(self._frozen).numpy()
        depth = torch.zeros(path.numel(), dtype=torch.long)  # bisections above every piece
        max_depth = int(np.floor(np.log2(max(self.limit, 1))))
        change = tuple(torch.zeros_like(t) for t in total)
        evaluations = torch.zeros(self.n_paths, dtype=torch.long)
        n_examples = self.n_paths // self.group
        leaders, shared2, error2, coinciding = self._share(
            path, segment, error2, coinciding, self._target(total)
        )
        of_path = (torch.arange(self.n_paths) // self.group).numpy()
        shared = np.bincount(of_path, shared2.numpy(), minlength=n_examples)
        while True:
            target = self._target(tuple(a + b for a, b in zip(total, change)))
            weight = (error2 * coinciding).numpy()
            example = (path // self.group).numpy()
            estimate = np.bincount(example, weight, minlength=n_examples)
            at_limit = (depth >= max_depth).numpy()
            room = ~at_limit & ~frozen
            # The pieces frozen for the budget keep their error: the others are refined to
            # the tolerance less that error, but at least to a quarter of the tolerance (which
            # bounds the cost; the call then warns).
            held = np.bincount(example, np.where(frozen, weight, 0.0), minlength=n_examples)
            goal = np.maximum(target - held - shared, FROZEN_GOAL * target)
            excess = estimate - held - goal
            # where the pieces at ``limit`` hold the goal's worth already, no bisection can
            # meet it: the call warns, and spends nothing more there
            stuck = np.bincount(
                example, np.where(at_limit & ~frozen, weight, 0.0), minlength=n_examples
            )
            excess = np.where(stuck >= goal, 0.0, excess)
            cover = np.minimum(COVER * excess, ROUND * estimate)
            chosen = _largest(np.where(room, weight, 0.0), example, cover)
            if not chosen.any():
                break
            extra = int(chosen.sum()) * self._g.row_bytes
            if self.budget is not None and self.nbytes + extra > self.budget:
                importance = _importance(weight, example, target)
                frozen, chosen = self._fit(
                    path, segment, g_lo, g_hi, frozen, importance, chosen, self.budget, None
                )
                if not chosen.any():
                    continue  # the frozen pieces now tell where bisection cannot help
            parent = torch.from_numpy(np.nonzero(chosen)[0])
            children = self._bisect(
                parent, path, segment, lo, hi, g_lo, g_hi, f_lo, f_hi, change, evaluate, leaders
            )
            g_mid, f_mid, e1, e2 = children
            evaluations.index_add_(0, path[parent], torch.ones_like(parent))
            mid = (lo[parent] + hi[parent]) / 2.0
            # the first half replaces its parent, the second is appended
            path = torch.cat([path, path[parent]])
            segment = torch.cat([segment, segment[parent]])
            lo = torch.cat([lo, mid])
            hi_parent = hi[parent]
            hi[parent] = mid
            hi = torch.cat([hi, hi_parent])
            g_lo = torch.cat([g_lo, g_mid])
            g_hi_parent = g_hi[parent]
            g_hi[parent] = g_mid
            g_hi = torch.cat([g_hi, g_hi_parent])
            f_lo = torch.cat([f_lo, f_mid])
            f_hi_parent = f_hi[parent]
            f_hi[parent] = f_mid
            f_hi = torch.cat([f_hi, f_hi_parent])
            error2[parent] = e1
            error2 = torch.cat([error2, e2])
            coinciding = torch.cat([coinciding, coinciding[parent]])
            frozen = np.concatenate([frozen, frozen[parent.numpy()]])
            depth[parent] += 1
            depth = torch.cat([depth, depth[parent]])
            if progress is not None:
                progress()
        per_path = shared2
        per_path.index_add_(0, path, error2 * coinciding)
        held = torch.zeros(self.n_paths, dtype=torch.float64)
        held.index_add_(0, path, error2 * coinciding * torch.from_numpy(frozen))
        return change, evaluations, per_path, held

    def _share(
        self, path: Tensor, segment: Tensor, error2: Tensor, coinciding: Tensor, target: np.ndarray
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Decides which paths share their leader's refinement (see Quadrature._sharing): per
        example, those of least error of sharing, as long as those errors add up to at most
        SHARE_GOAL of its squared tolerance ``target``, for they stay. Returns every segment's
        leader of every path (K, P), every path's squared error of sharing (P,), and the open
        pieces' ``error2`` and ``coinciding`` with the shares made: a shared piece has no
        error of its own (its leader's counts for it), a leader's counts once more for each
        path that shares it."""
        leaders, shared2 = torch.stack(self._leader), torch.stack(self._shared2)  # (K, P)
        n = self.n_paths
        candidate = (leaders != torch.arange(n)).flatten()
        example = (torch.arange(n) // self.group).repeat(leaders.shape[0])
        weight = np.where(candidate.numpy(), shared2.flatten().numpy(), np.inf)
        shares = torch.from_numpy(
            _smallest(weight, example.numpy(), SHARE_GOAL * target) & candidate.numpy()
        )
        leaders = torch.where(shares.view_as(leaders), leaders, torch.arange(n)).clone()
        per_path = torch.where(shares.view_as(shared2), shared2, 0.0).sum(dim=0)
        # the open pieces are the level-0 ones, row k * P + p for segment k of path p
        assert torch.equal(segment * n + path, torch.arange(path.numel()))
        flat = leaders.flatten() + segment * n
        sharers = torch.bincount(flat, minlength=path.numel()).double()
        error2 = torch.where(shares, 0.0, error2)
        coinciding = torch.where(shares, coinciding, coinciding * sharers)
        return leaders, per_path, error2, coinciding

    def _bisect(
        self,
        parent: Tensor,
        path: Tensor,
        segment: Tensor,
        lo: Tensor,
        hi: Tensor,
        g_lo: Tensor,
        g_hi: Tensor,
        f_lo: Tensor,
        f_hi: Tensor,
        change: tuple[Tensor, ...],
        evaluate: Evaluate,
        leaders: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Bisects pieces ``parent``, chunk by chunk: adds the change of their integrals to
        ``change``, in the row of every path that shares the piece's (``leaders`` (K, P):
        every segment's leader of every path; None: each its own); returns the rows of the
        gradients at their middles, f there, and the squared error estimates of their first and
        second halves."""
        device = change[0].device
        rows_mid: list[Tensor] = []
        values: list[Tensor] = []
        first: list[Tensor] = []
        second: list[Tensor] = []
        for a in range(0, parent.numel(), self.chunk_size):
            piece = parent[a : a + self.chunk_size]
            p, k = path[piece], segment[piece]
            x_k = self._x.get(k * self.n_paths + p, device)
            x_next = self._x.get((k + 1) * self.n_paths + p, device)
            direction = tuple(b - s for s, b in zip(x_k, x_next))
            width = hi[piece] - lo[piece]
            mid = (lo[piece] + hi[piece]) / 2.0
            points = tuple(s + broadcast_rows(mid, s) * d for s, d in zip(x_k, direction))
            f_mid, g_mid = evaluate(points, p)
            rows_mid.append(self._g.add(g_mid))
            values.append(f_mid.detach().double().cpu())
            ga, gb = self._g.get(g_lo[piece], device), self._g.get(g_hi[piece], device)
            dtype = f_mid.dtype
            fa, fb = (f[piece].to(device, dtype) for f in (f_lo, f_hi))
            fm = f_mid.detach()
            half = width / 2.0
            whole, _, _ = complete_piece(ga, gb, fa, fb, width, direction, self.local)
            left, _, u1 = complete_piece(ga, g_mid, fa, fm, half, direction, self.local)
            right, _, u2 = complete_piece(g_mid, gb, fm, fb, half, direction, self.local)
            if leaders is None:
                row, into = torch.arange(p.numel()), p
            else:  # the piece's path and every path that shares its refinement
                row, into = torch.nonzero(leaders[k] == p[:, None], as_tuple=True)
            row, into = row.to(device), into.to(device)
            for acc, w, a1, a2 in zip(change, whole, left, right):
                acc.index_add_(0, into, (a1 + a2 - w)[row].to(acc.dtype))
            first.append(_squared_half(u1))
            second.append(_squared_half(u2))
        return torch.cat(rows_mid), torch.cat(values), torch.cat(first), torch.cat(second)


def _importance(weight: np.ndarray, example: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Every piece's squared error ``weight`` over its example's squared tolerance."""
    return weight / np.maximum(target[example], np.finfo(float).tiny)


def _squared_half(u: tuple[Tensor, ...]) -> Tensor:
    """||u / 2||^2 of every row, float64, CPU: a piece's squared error estimate."""
    return per_row_sum(tuple((t.double() / 2.0) ** 2 for t in u)).detach().cpu()


def _smallest(weight: np.ndarray, example: np.ndarray, room: np.ndarray) -> np.ndarray:
    """Per example, the pieces of smallest finite ``weight`` whose weights add up to at most
    its ``room``."""
    order = np.lexsort((weight, example))
    sorted_example, sorted_weight = example[order], weight[order]
    finite = np.where(np.isfinite(sorted_weight), sorted_weight, 0.0)
    cumulative = np.cumsum(finite)
    first = np.searchsorted(sorted_example, sorted_example, side="left")
    within = cumulative - np.where(first > 0, cumulative[first - 1], 0.0)
    chosen = np.zeros(len(weight), dtype=bool)
    chosen[order] = np.isfinite(sorted_weight) & (within <= room[sorted_example])
    return chosen


def _largest(weight: np.ndarray, example: np.ndarray, excess: np.ndarray) -> np.ndarray:
    """Per example (``example`` holds the example of each piece), the fewest pieces of largest
    ``weight`` whose weights add up to its ``excess`` (none where the excess is not positive)."""
    order = np.lexsort((-weight, example))
    sorted_example, sorted_weight = example[order], weight[order]
    cumulative = np.cumsum(sorted_weight)
    first = np.searchsorted(sorted_example, sorted_example, side="left")
    before = cumulative - sorted_weight - np.where(first > 0, cumulative[first - 1], 0.0)
    chosen = np.zeros(len(weight), dtype=bool)
    chosen[order] = (sorted_weight > 0) & (before < excess[sorted_example])
    return chosen
