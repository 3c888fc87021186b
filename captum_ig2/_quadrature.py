"""Quadrature along the segments of a path: the rules, adaptive refinement, and IDGI.

A path is a polyline x_0 -> x_1 -> ... -> x_T. The attribution of segment k is the line integral

    A_k = (x_k+1 - x_k) * integral_0^1 grad f(x_k + t (x_k+1 - x_k)) dt           (per feature)

whose sum over the features is exactly f(x_k+1) - f(x_k) (the gradient theorem). A rule
approximates the integral with nodes t_j and weights w_j on [0, 1]. The engine evaluates f at
every path point anyway, so the error of the rule's sum, the **residual**

    r_k = f(x_k+1) - f(x_k) - sum_i (A_k)_i,

is known exactly, and the completeness error of the whole path is -sum_k r_k. Where a segment's
residual exceeds its share of the tolerance, the segment is bisected and the rule applied to each
half (f at the split point comes with the evaluation there), recursively, as SciPy's ``quad``
refines its subintervals, until every piece meets its share or the segment holds ``limit``
pieces. All paths of a call are refined together: every level of refinement is one batched
evaluation of all the nodes it needs.

The **complete trapezoid** (``"complete_trapezoid"``) refines by the map rather than by the
residual, and after the walk rather than segment by segment. On a piece [a, b] of a segment with
direction d, the trapezoid is the mean of the left and right Riemann rules, whose difference
u = (b - a) (g(b) - g(a)) * d brackets the error of each feature. The residual of every piece,
known exactly, is distributed over its features in proportion to |u|, where the rule's error is:
the path is complete by construction. Every segment starts as one piece whose end nodes are the
path points (their gradients come with the walk); once the walk has ended, the pieces of
largest estimated error ||u / 2|| are bisected across all segments of all paths until every
example's estimated relative map error is within its tolerance (``_refine``, after QUADPACK's
``qag``). The estimate, the root sum of the squared errors of all pieces, is returned and
warned on; it is of first order, tight where the gradient jumps (ReLU networks) and pessimistic
where it is smooth, which costs gradients there, not accuracy. Paths of one example whose
segments coincide (IG2's walks leave the input together) share one refinement of it, with the
estimated difference of their errors counted (``_sharing``).

IDGI (Yang, Wang & Bilgic, CVPR 2023) is a rule of another kind: it splits the exact output change
of each piece over the features in proportion to g_i^2 / ||g||^2, g the gradient at the piece's
left node, so it is complete by construction and needs no refinement.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from captum_ig2._refine import (
    GlobalRefinement,
    broadcast_rows,
    complete_piece,
    per_row_sum,
    refinement_memory,
)

#: Captum's integral approximation methods, here applied per path segment, and IDGI.
METHODS = (
    "gausslegendre",
    "riemann_left",
    "riemann_right",
    "riemann_middle",
    "riemann_trapezoid",
    "idgi",
    "complete_trapezoid",
)

#: The number of nodes per segment that each method takes by default.
DEFAULT_NODES = {
    "gausslegendre": 5,
    "riemann_left": 1,
    "riemann_right": 1,
    "riemann_middle": 1,
    "riemann_trapezoid": 2,
    "idgi": 1,
    "complete_trapezoid": 2,
}

#: The most pieces a segment is cut into, by rule. The complete trapezoid bisects the pieces of
#: largest error across all segments, so a deep budget costs gradients only where the error is
#: (IG2's first steps take most of them); 8 cut its maps' cosine to 32 on EfficientNet-Lite0.
DEFAULT_LIMIT = {method: 32 if method == "complete_trapezoid" else 8 for method in DEFAULT_NODES}

#: Paths of one example whose segments start within COINCIDENT times the segment's length of
#: each other run along the same segment, and their errors are one error (see _coinciding).
COINCIDENT = 0.01
#: A path shares the refinement of a coinciding path of its example (see _sharing) where the
#: estimated squared difference of their trapezoid errors is at most this share of its own.
SHARED = 0.25

# evaluate(points, paths) -> (f, grad): f (B,) and the gradient of f at B points, row b of which
# lies on path paths[b]; B is at most the chunk size the quadrature was given.
Evaluate = Callable[[tuple[Tensor, ...], Tensor], tuple[Tensor, tuple[Tensor, ...]]]
# observer(start, direction, node_paths, node_t, node_weights): the nodes (with their weights,
# interval lengths included) of every accepted piece, t measured along the segment from start.
NodeObserver = Callable[[tuple[Tensor, ...], tuple[Tensor, ...], Tensor, Tensor, Tensor], None]


@dataclass(frozen=True)
class Rule:
    """Nodes ``alphas`` in [0, 1] and ``weights`` (summing to 1) of a rule on one interval."""

    method: str
    alphas: tuple[float, ...]
    weights: tuple[float, ...]

    @property
    def uses_start(self) -> bool:
        """The rule has a node at the start of the interval (its gradient is reused)."""
        return self.alphas[0] == 0.0

    @property
    def uses_end(self) -> bool:
        """The rule has a node at the end of the interval (its gradient is reused)."""
        return self.alphas[-1] == 1.0

    @property
    def nodes(self) -> int:
        return len(self.alphas)


def make_rule(method: str, nodes: int) -> Rule:
    """The rule ``method`` with ``nodes`` nodes on [0, 1], in float64.

    The Riemann rules place their nodes as Captum's do (left: j/n, right: (j+1)/n, middle:
    (j+1/2)/n, trapezoid: n points j/(n-1) from 0 to 1), with weights that sum to 1; Gauss-Legendre
    takes NumPy's ``leggauss``. IDGI takes the left nodes j/n, each starting a piece of length 1/n.
    """
    n = nodes
    if method == "gausslegendre":
        points, weights = np.polynomial.legendre.leggauss(n)
        return Rule(method, tuple((points + 1.0) / 2.0), tuple(weights / 2.0))
    if method in ("riemann_trapezoid", "complete_trapezoid"):
        alphas = tuple(j / (n - 1) for j in range(n))
        weights = tuple((0.5 if j in (0, n - 1) else 1.0) / (n - 1) for j in range(n))
        return Rule(method, alphas, weights)
    offset = {"riemann_left": 0.0, "idgi": 0.0, "riemann_middle": 0.5, "riemann_right": 1.0}
    alphas = tuple((j + offset[method]) / n for j in range(n))
    return Rule(method, alphas, (1.0 / n,) * n)


@dataclass
class Point:
    """A path point of every path: its coordinates, f there, and grad f where it was taken."""

    x: tuple[Tensor, ...]
    value: Tensor
    grad: tuple[Tensor, ...] | None


@dataclass
class SegmentIntegral:
    """The quadrature of one segment for every path."""

    integral: tuple[Tensor, ...]  # per feature, (P, ...) per input tensor
    residual: Tensor  # (P,): f(end) - f(start) - sum(integral), summed over accepted pieces
    evaluations: Tensor  # (P,) int64 on the CPU: gradient evaluations at nodes
    # (P,): the complete trapezoid's estimated squared error, each piece's counted once for
    # every path of its example that runs along the same segment (see Quadrature._coinciding)
    error2: Tensor | None = None


def _rows(x: tuple[Tensor, ...], index: Tensor) -> tuple[Tensor, ...]:
    return tuple(t[index.to(t.device)] for t in x)


@dataclass
class _Pieces:
    """The open pieces [lo, hi] of the segments of all paths (``paths``: the path of each):
    f at both ends, and the gradients there for rules with nodes at the ends."""

    paths: Tensor  # (B,) int64, CPU
    lo: Tensor  # (B,) float64, CPU
    hi: Tensor
    f_lo: Tensor  # (B,), on the paths' device
    f_hi: Tensor
    g_lo: tuple[Tensor, ...] | None
    g_hi: tuple[Tensor, ...] | None

    def bisect(self, parent: Tensor, f_mid: Tensor, g_mid: tuple[Tensor, ...] | None) -> _Pieces:
        """The halves (lo, mid) and (mid, hi) of pieces ``parent``, in this order, given f and
        the gradient at their middles."""

        def pairs(first: Tensor, second: Tensor) -> Tensor:
            return torch.stack([first, second], dim=1).flatten(0, 1)

        def grads(outer: tuple[Tensor, ...] | None, left: bool) -> tuple[Tensor, ...] | None:
            if outer is None:
                return None
            assert g_mid is not None
            ends = _rows(outer, parent)
            return tuple(pairs(e, m) if left else pairs(m, e) for e, m in zip(ends, g_mid))

        mid = (self.lo[parent] + self.hi[parent]) / 2.0
        on = parent.to(self.f_lo.device)
        return _Pieces(
            paths=self.paths[parent].repeat_interleave(2),
            lo=pairs(self.lo[parent], mid),
            hi=pairs(mid, self.hi[parent]),
            f_lo=pairs(self.f_lo[on], f_mid),
            f_hi=pairs(f_mid, self.f_hi[on]),
            g_lo=grads(self.g_lo, left=True),
            g_hi=grads(self.g_hi, left=False),
        )


class Quadrature:
    """Integrates the explained output's gradient along one segment of every path, segment after
    segment, refining where the residuals ask for it.

    With a tolerance tol (per path), two conditions decide which pieces are bisected:

    1. every segment keeps a residual of at most c * tol / sqrt(T), and a piece of relative
       length h at most c * h * tol / sqrt(T). On a real network the residuals of the segments
       are mostly the noise of sampling a gradient that changes at every step (shattered
       gradients): they differ in sign and add up like a random walk, so T of them add up to
       about c * tol. This condition bounds each piece's error, and with it the error of the
       map, feature by feature; c (``share``) is 1 for IG2 and 8 for Guided IG, whose maps
       measured as accurate with it (cosine >= 0.995 to 12 Gauss-Legendre nodes per segment on
       EfficientNet-Lite0 photo crops) for a third to a half of the gradients, while c = 8 let
       IG2's maps drop to a cosine of 0.87 (docs/benchmarks.md, "The cost of 2 %").
    2. the running completeness error after segment k, the sum of the residuals so far, stays
       within half the same random walk's envelope, tol * sqrt((k + 1) / T) / 2 (half, to
       leave the final check a margin). Where the residuals do not cancel (a smooth model, whose
       rule errors share a sign), this refines the pieces that push the running error out of
       its envelope, largest first.

    Both only ever add refinement; the call checks the path's real error at the end.

    Where an example's attribution is the mean of M paths (IG2's walks and references), its
    completeness error is the mean of their residuals, and the tolerance holds for that mean:
    the M paths of an example share one envelope (condition 2, on their mean running error).
    Condition 1 stays per path: IG2's walks of one reference run close to each other, so
    their residuals are alike rather than of random sign, and a share grown by sqrt(M) let
    examples miss the tolerance.

    Args:
        rule: the rule applied to every piece of a segment.
        tolerance: tol, the completeness tolerance of every path, shape (P,); None: no
            refinement.
        n_steps: T, the number of segments of the paths.
        limit: the most pieces a segment is split into.
        chunk_size: at most this many points are evaluated at once (None: all at once).
        local: integrate the gradient alone, without the segment's direction (Captum's
            ``multiply_by_inputs=False``); residuals still measure the integral's error.
        group: M, the consecutive paths whose mean is one example's attribution.
        share: c, the factor of condition 1: a piece of relative length h may keep a residual
            of c * h * tol / sqrt(T).
        group_tolerance: the tolerance of every example's mean, shape (P / M,); None: the mean
            of its paths' tolerances.
        map_tolerance: for the complete trapezoid, the tolerance of every example's estimated
            relative map error, held by the refinement after the walk (see ``_refine``); None:
            no refinement.
    """

    def __init__(
        self,
        rule: Rule,
        tolerance: Tensor | None,
        n_steps: int,
        limit: int,
        chunk_size: int | None,
        local: bool = False,
        group: int = 1,
        share: float = 1.0,
        group_tolerance: Tensor | None = None,
        map_tolerance: float | None = None,
    ) -> None:
        self.rule = rule
        self.complete = rule.method == "complete_trapezoid"
        self.map_tolerance = map_tolerance
        # the complete trapezoid's globally adaptive refinement, made at the first segment
        self._refinement: GlobalRefinement | None = None
        self.local = local
        self.group = group
        self.share = share
        self.tolerance = None if tolerance is None else tolerance.double().cpu().numpy()
        # The tolerance of an example, that of the mean of its paths (default: their mean).
        if group_tolerance is not None:
            self._group_tolerance = group_tolerance.double().cpu().numpy()
        elif self.tolerance is not None:
            self._group_tolerance = self.tolerance.reshape(-1, group).mean(axis=1)
        else:
            self._group_tolerance = None
        self.n_steps = n_steps
        self.limit = limit
        self.chunk_size = chunk_size
        self._segment = 0  # the index k of the segment integrated next
        self._running: np.ndarray | None = None  # the sum of the residuals so far, per path
        interior = [j for j, a in enumerate(rule.alphas) if 0.0 < a < 1.0]
        self._interior_alphas = torch.tensor(
            [rule.alphas[j] for j in interior], dtype=torch.float64
        )
        self._interior_weights = torch.tensor(
            [rule.weights[j] for j in interior], dtype=torch.float64
        )
        # A node at the middle of a piece gives f (and the gradient) at the point a bisection
        # needs, so no extra evaluation is spent there.
        self._half = next((i for i, j in enumerate(interior) if rule.alphas[j] == 0.5), None)

    def integrate(
        self,
        start: Point,
        end: Point,
        evaluate: Evaluate,
        observer: NodeObserver | None = None,
        total: tuple[Tensor, ...] | None = None,
    ) -> SegmentIntegral:
        """The integral of the next segment, from ``start`` to ``end``, of every path;
        ``total``: the paths' integrals before it (the complete trapezoid's memory budget
        weighs its pieces by the maps so far; None: zero)."""
        if self.rule.method == "idgi":
            segment = self._idgi(start, end, evaluate)
        elif self.complete:
            segment = self._trapezoid(start, end, total)
        else:
            segment = self._adaptive(start, end, evaluate, observer)
        if self.tolerance is not None:
            residual = segment.residual.detach().double().cpu().numpy()
            self._running = residual if self._running is None else self._running + residual
        self._segment += 1
        return segment

    def refine(
        self, total: tuple[Tensor, ...], evaluate: Evaluate, progress: Callable[[], None] | None
    ) -> tuple[tuple[Tensor, ...], Tensor, Tensor, Tensor] | None:
        """After the last segment: the complete trapezoid's globally adaptive refinement of
        the paths whose integrals are ``total`` (see ``_refine``), as the change of every path's
        integral, the evaluations it took, every path's estimated squared error and the part
        of it the memory budget kept from refinement; None for the other rules, and without
        a tolerance."""
        if self._refinement is None:
            return None
        refinement, self._refinement = self._refinement, None  # what it keeps is freed after
        return refinement.refine(total, evaluate, progress)

    # -- the complete trapezoid --------------------------------------------------------------
    def _trapezoid(
        self, start: Point, end: Point, total: tuple[Tensor, ...] | None
    ) -> SegmentIntegral:
        """The complete trapezoid on every path's segment, one piece each, from the gradients
        at the path points; kept for the refinement after the walk where there is a tolerance."""
        assert start.grad is not None and end.grad is not None
        n_paths = start.value.shape[0]
        direction = tuple(b - a for a, b in zip(start.x, end.x))
        width = torch.ones(n_paths, dtype=torch.float64)
        integral, left, error = complete_piece(
            start.grad, end.grad, start.value, end.value, width, direction, self.local
        )
        error2 = per_row_sum(tuple(e * e for e in error)).detach().double().cpu() / 4.0
        near = self._near(start.x, direction)
        coinciding = self._coinciding(near, n_paths)
        if self.map_tolerance is not None:
            # only paths that coincide may share (after a few steps, none do: no work)
            alike = near if bool((coinciding > 1).any()) else None
            leader, shared2 = self._sharing(alike, error, error2)
            if self._refinement is None:
                self._refinement = GlobalRefinement(
                    self.map_tolerance, n_paths, self.group, self.limit, self.chunk_size,
                    self.local, budget=refinement_memory(),
                )  # fmt: skip
            def so_far() -> tuple[Tensor, ...]:  # the maps with this segment
                if total is None:
                    return integral
                return tuple(a + b.detach() for a, b in zip(total, integral))

            self._refinement.record(start, end, error2, coinciding, so_far, leader, shared2)
        evaluations = torch.zeros(n_paths, dtype=torch.long)
        return SegmentIntegral(integral, left, evaluations, error2 * coinciding)

    # -- evaluation of a table of points along the segment ---------------------------------------
    def _evaluate_table(
        self,
        start: tuple[Tensor, ...],
        direction: tuple[Tensor, ...],
        paths: Tensor,
        t: Tensor,
        evaluate: Evaluate,
        visit: Callable[[slice, Tensor, tuple[Tensor, ...]], None],
    ) -> None:
        """Evaluates f and its gradient at start[paths] + t * direction[paths], chunk by chunk;
        ``visit(rows, f, grad)`` consumes each chunk, so memory holds one chunk at a time."""
        n = paths.numel()
        size = n if self.chunk_size is None else self.chunk_size
        for a in range(0, n, max(size, 1)):
            rows = slice(a, min(a + size, n))
            p = paths[rows]
            points = tuple(
                s + broadcast_rows(t[rows], s) * dv
                for s, dv in zip(_rows(start, p), _rows(direction, p))
            )
            value, grad = evaluate(points, p)
            visit(rows, value, grad)

    # -- rules with adaptive bisection ------------------------------------------------------------
    def _adaptive(
        self, start: Point, end: Point, evaluate: Evaluate, observer: NodeObserver | None
    ) -> SegmentIntegral:
        n_paths = start.value.shape[0]
        direction = tuple(b - a for a, b in zip(start.x, end.x))
        total = tuple(torch.zeros_like(t) for t in start.x)
        residual = torch.zeros_like(start.value)
        evaluations = torch.zeros(n_paths, dtype=torch.long)
        count = torch.ones(n_paths, dtype=torch.long)  # pieces of every path's segment
        kept = np.zeros(n_paths)  # the residuals of this segment's accepted pieces, per path
        pieces = _Pieces(
            paths=torch.arange(n_paths),
            lo=torch.zeros(n_paths, dtype=torch.float64),
            hi=torch.ones(n_paths, dtype=torch.float64),
            f_lo=start.value,
            f_hi=end.value,
            g_lo=start.grad if self.rule.uses_start else None,
            g_hi=end.grad if self.rule.uses_end else None,
        )
        while True:
            weighted, estimate, half = self._estimate(
                pieces, start.x, direction, evaluate, evaluations
            )
            r = pieces.f_hi - pieces.f_lo - per_row_sum(estimate)
            contribution = weighted if self.local else estimate
            split = self._to_split(r, pieces, count, kept)
            accepted = torch.nonzero(~split).flatten()
            into = pieces.paths[accepted].to(residual.device)
            for acc, e in zip(total, contribution):
                acc.index_add_(0, into, e[accepted.to(e.device)])
            residual.index_add_(0, into, r[accepted.to(r.device)])
            if observer is not None and accepted.numel():
                self._observe(observer, start.x, direction, pieces, accepted)
            if not bool(split.any()):
                return SegmentIntegral(total, residual, evaluations)
            parent = torch.nonzero(split).flatten()
            count.index_add_(0, pieces.paths[parent], torch.ones_like(parent))
            if half is None:  # f (and the gradient) at the split points are still unknown
                half = self._evaluate_points(pieces, parent, start.x, direction, evaluate)
                evaluations.index_add_(0, pieces.paths[parent], torch.ones_like(parent))
            else:
                half = (half[0][parent.to(half[0].device)],
                        None if half[1] is None else _rows(half[1], parent))  # fmt: skip
            pieces = pieces.bisect(parent, *half)

    def _near(self, start: tuple[Tensor, ...], direction: tuple[Tensor, ...]) -> Tensor | None:
        """Which paths of every example start this segment within COINCIDENT times its
        length of each other: (P / M, M, M), [e, p, q] for path q from path p's start, on the
        paths' device; None for one path per example."""
        if self.group == 1:
            return None
        n, m = start[0].shape[0], self.group
        points = torch.cat([t.detach().reshape(n, -1) for t in start], dim=1).double()
        length = torch.cat([t.detach().reshape(n, -1) for t in direction], dim=1).double()
        length = length.norm(dim=1)
        grouped = points.reshape(n // m, m, points.shape[1])
        distance = torch.cdist(grouped, grouped, compute_mode="donot_use_mm_for_euclid_dist")
        return distance <= COINCIDENT * length.view(n // m, m, 1)

    def _coinciding(self, near: Tensor | None, n_paths: int) -> Tensor:
        """For every path, how many paths of its example (itself included) start this segment
        within COINCIDENT times the segment's length of its start (``near``, see _near), shape
        (P,), float64, CPU.

        The errors of paths that coincide are the same error, and add up in their example's
        mean; those of paths that went apart (other references, walks that diverged) are taken
        as independent. Counting each piece's squared error that many times makes the root sum
        of squares over the paths, divided by M, the error of their mean in both cases."""
        if near is None:
            return torch.ones(n_paths, dtype=torch.float64)
        return near.sum(dim=2).flatten().double().cpu()

    def _sharing(
        self, near: Tensor | None, u: tuple[Tensor, ...], error2: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Which paths may share the refinement of this segment (the complete trapezoid):
        every path's leader (P,; itself where it has none) and the estimated squared error of
        sharing its leader's refinement (P,), on the CPU; the refinement decides which share
        (``GlobalRefinement._share``).

        IG2's walks of one reference all start at the input and go apart only over a few
        steps, so that their first segments nearly coincide, and so do their errors, which add
        up in the map: refining them walk by walk would pay W gradients for one point's worth
        of accuracy. A path p shares the refinement of an earlier path q of its example (a
        leader) that starts within COINCIDENT times p's segment's length of p's start, where
        the first-order estimate of the difference of their trapezoid errors, ||(u_p - u_q) /
        2||^2 (the estimate of ``complete_piece`` applied to the difference of their
        integrands, whose ends' difference is u_p - u_q), is at most SHARED times p's own
        ||u_p / 2||^2; of several such leaders, the one of least difference. Where p shares,
        every change the refinement makes to q's integral is made to p's (it sums to zero: p
        stays complete), and p's error is q's plus that difference, which stays as it is."""
        n = error2.numel()
        leader = torch.arange(n)
        shared2 = torch.zeros(n, dtype=torch.float64)
        m = self.group
        if near is None or n == 0:
            return leader, shared2
        e = n // m
        rows = torch.cat([t.detach().reshape(n, -1) for t in u], dim=1).double().reshape(e, m, -1)
        diff2 = (torch.cdist(rows, rows, compute_mode="donot_use_mm_for_euclid_dist") / 2).square()
        alike = diff2 <= SHARED * error2.to(diff2.device).double().reshape(e, m, 1)
        lead = torch.arange(m, device=diff2.device).repeat(e, 1)
        shared2 = torch.zeros(e, m, dtype=torch.float64, device=diff2.device)
        is_leader = torch.ones(e, m, dtype=torch.bool, device=diff2.device)
        for j in range(1, m):
            ok = is_leader[:, :j] & near[:, j, :j] & alike[:, j, :j]
            score = torch.where(ok, diff2[:, j, :j], torch.inf)
            best = score.argmin(dim=1)
            shares = ok.any(dim=1)
            lead[:, j] = torch.where(shares, best, j)
            shared2[:, j] = torch.where(shares, score.gather(1, best[:, None])[:, 0], 0.0)
            is_leader[:, j] = ~shares
        leader = (lead + torch.arange(e, device=lead.device)[:, None] * m).flatten().cpu()
        return leader, shared2.flatten().cpu()

    def _estimate(
        self,
        pieces: _Pieces,
        start: tuple[Tensor, ...],
        direction: tuple[Tensor, ...],
        evaluate: Evaluate,
        evaluations: Tensor,
    ) -> tuple[
        tuple[Tensor, ...], tuple[Tensor, ...], tuple[Tensor, tuple[Tensor, ...] | None] | None
    ]:
        """The rule's weighted sum of the gradient over every piece and its estimate of the
        piece's integral (that sum times the segment's direction), per feature, with one
        evaluation of all interior nodes; also f (and the gradient, for rules with end nodes) at
        the pieces' middles when the rule has a node there."""
        rule = self.rule
        n_open, n_interior = pieces.paths.numel(), self._interior_alphas.numel()
        width = pieces.hi - pieces.lo
        node_piece = torch.arange(n_open).repeat_interleave(n_interior)
        node_t = pieces.lo[node_piece] + self._interior_alphas.repeat(n_open) * width[node_piece]
        node_w = self._interior_weights.repeat(n_open) * width[node_piece]
        weighted = tuple(
            torch.zeros((n_open, *t.shape[1:]), dtype=t.dtype, device=t.device) for t in start
        )
        values: list[Tensor] = []
        half_grads: list[tuple[Tensor, ...]] = []
        keep_half_grad = self._half is not None and (rule.uses_start or rule.uses_end)

        def visit(rows: slice, value: Tensor, grad: tuple[Tensor, ...]) -> None:
            piece = node_piece[rows]
            for acc, g in zip(weighted, grad):
                acc.index_add_(0, piece.to(g.device), g * broadcast_rows(node_w[rows], g))
            values.append(value)
            if keep_half_grad:
                at_half = torch.arange(rows.start, rows.stop) % n_interior == self._half
                half_grads.append(_rows(grad, torch.nonzero(at_half).flatten()))

        self._evaluate_table(start, direction, pieces.paths[node_piece], node_t, evaluate, visit)
        evaluations.index_add_(0, pieces.paths[node_piece], torch.ones_like(node_piece))
        if pieces.g_lo is not None:
            for acc, g in zip(weighted, pieces.g_lo):
                acc.add_(g * broadcast_rows(width * rule.weights[0], g))
        if pieces.g_hi is not None:
            for acc, g in zip(weighted, pieces.g_hi):
                acc.add_(g * broadcast_rows(width * rule.weights[-1], g))
        estimate = tuple(acc * d for acc, d in zip(weighted, _rows(direction, pieces.paths)))
        half = None
        if self._half is not None:
            f_half = torch.cat(values).view(n_open, n_interior)[:, self._half]
            g_half = (
                tuple(torch.cat(parts) for parts in zip(*half_grads)) if keep_half_grad else None
            )
            half = (f_half, g_half)
        return weighted, estimate, half

    def _evaluate_points(
        self,
        pieces: _Pieces,
        parent: Tensor,
        start: tuple[Tensor, ...],
        direction: tuple[Tensor, ...],
        evaluate: Evaluate,
    ) -> tuple[Tensor, tuple[Tensor, ...] | None]:
        """f (and the gradient, for rules with end nodes) at the middles of pieces ``parent``."""
        values: list[Tensor] = []
        grads: list[tuple[Tensor, ...]] = []

        def visit(rows: slice, value: Tensor, grad: tuple[Tensor, ...]) -> None:
            values.append(value)
            grads.append(grad)

        mid = (pieces.lo[parent] + pieces.hi[parent]) / 2.0
        self._evaluate_table(start, direction, pieces.paths[parent], mid, evaluate, visit)
        keep_grad = self.rule.uses_start or self.rule.uses_end
        return torch.cat(values), (
            tuple(torch.cat(parts) for parts in zip(*grads)) if keep_grad else None
        )

    def _to_split(self, r: Tensor, pieces: _Pieces, count: Tensor, kept: np.ndarray) -> Tensor:
        """Which pieces are bisected (a bool CPU tensor), by the two conditions of the class
        docstring, per path the worst first, while the segment holds fewer than ``limit``
        pieces. Adds the residuals of the pieces it accepts to ``kept``."""
        n_open = pieces.paths.numel()
        if self.tolerance is None:
            return torch.zeros(n_open, dtype=torch.bool)
        paths = pieces.paths.numpy()
        # the one sync per level: which pieces to bisect
        residual = r.detach().double().cpu().numpy()
        tol = self.tolerance[paths]
        # 1. Each piece's share of the segment's tolerance.
        share = self.share / math.sqrt(self.n_steps)
        allowed = tol * (pieces.hi - pieces.lo).numpy() * share
        with np.errstate(divide="ignore", invalid="ignore"):  # a zero tolerance
            ratio = np.abs(residual) / allowed
        over = ~(ratio <= 1.0)  # NaN counts as over
        # 2. The envelope of every example's running error (the mean over its paths).
        assert self._group_tolerance is not None
        groups = paths // self.group
        n_groups = len(self._group_tolerance)
        running = np.zeros(len(kept)) if self._running is None else self._running
        so_far = running + kept
        total = (
            so_far.reshape(n_groups, self.group).sum(axis=1)
            + np.bincount(groups, residual, minlength=n_groups)
        ) / self.group
        envelope = 0.5 * self._group_tolerance * math.sqrt((self._segment + 1) / self.n_steps)
        excess = np.abs(total) - envelope
        if (excess > 0).any():
            over |= self._offenders(
                residual / self.group, groups, np.sign(total), np.maximum(excess, 0.0)
            )
        split = self._within_budget(over, ratio, paths, count.numpy())
        np.add.at(kept, paths[~split], residual[~split])
        return torch.from_numpy(split)

    @staticmethod
    def _offenders(
        residual: np.ndarray, paths: np.ndarray, sign: np.ndarray, excess: np.ndarray
    ) -> np.ndarray:
        """Per example (``paths`` holds the example of each piece), the fewest pieces whose
        residuals, of the sign of the running error and largest first, add up to its excess
        over the envelope."""
        pushing = np.sign(residual) == sign[paths]
        size = np.where(pushing, np.abs(residual), 0.0)
        order = np.lexsort((-size, paths))
        sorted_paths, sorted_size = paths[order], size[order]
        cumulative = np.cumsum(sorted_size)
        first = np.searchsorted(sorted_paths, sorted_paths, side="left")
        before = cumulative - sorted_size - np.where(first > 0, cumulative[first - 1], 0.0)
        chosen = np.zeros(len(residual), dtype=bool)
        chosen[order] = (sorted_size > 0) & (before < excess[sorted_paths])
        return chosen

    def _within_budget(
        self, over: np.ndarray, ratio: np.ndarray, paths: np.ndarray, count: np.ndarray
    ) -> np.ndarray:
        """Of the pieces ``over``, those each path may still bisect within ``limit``, the worst
        ratio first."""
        if not over.any():
            return over
        room = (self.limit - count)[paths]  # bisections each path may still make
        order = np.lexsort((-np.where(over, np.nan_to_num(ratio, nan=np.inf), -1.0), paths))
        ranked = np.cumsum(over[order])  # 1, 2, ... over the pieces to split, per path below
        sorted_paths = paths[order]
        first = np.searchsorted(sorted_paths, sorted_paths, side="left")
        rank = ranked - np.where(first > 0, ranked[first - 1], 0)
        allowed = np.zeros(len(over), dtype=bool)
        allowed[order] = over[order] & (rank <= room[order])
        return allowed

    def _observe(
        self,
        observer: NodeObserver,
        start: tuple[Tensor, ...],
        direction: tuple[Tensor, ...],
        pieces: _Pieces,
        accepted: Tensor,
    ) -> None:
        alphas = torch.tensor(self.rule.alphas, dtype=torch.float64)
        weights = torch.tensor(self.rule.weights, dtype=torch.float64)
        piece = accepted.repeat_interleave(alphas.numel())
        width = (pieces.hi - pieces.lo)[piece]
        t = pieces.lo[piece] + alphas.repeat(accepted.numel()) * width
        observer(start, direction, pieces.paths[piece], t, weights.repeat(accepted.numel()) * width)

    # -- IDGI ---------------------------------------------------------------------------------
    def _idgi(self, start: Point, end: Point, evaluate: Evaluate) -> SegmentIntegral:
        """IDGI on the pieces [j/n, (j+1)/n] of the segment, with the gradient at each left node:
        piece j adds (f(t_j+1) - f(t_j)) * g_j^2 / ||g_j||^2, g_j = grad f(t_j)."""
        n = self.rule.nodes
        n_paths = start.value.shape[0]
        direction = tuple(b - a for a, b in zip(start.x, end.x))
        values = [start.value]
        grads: list[tuple[Tensor, ...]] = []
        assert start.grad is not None
        grads.append(start.grad)
        evaluations = torch.zeros(n_paths, dtype=torch.long)
        if n > 1:
            paths = torch.arange(n_paths).repeat(n - 1)
            t = torch.arange(1, n, dtype=torch.float64).repeat_interleave(n_paths) / n
            table_f: list[Tensor] = []
            table_g: list[tuple[Tensor, ...]] = []

            def visit(rows: slice, value: Tensor, grad: tuple[Tensor, ...]) -> None:
                table_f.append(value)
                table_g.append(grad)

            self._evaluate_table(start.x, direction, paths, t, evaluate, visit)
            evaluations += n - 1
            f_nodes = torch.cat(table_f).view(n - 1, n_paths)
            g_nodes = tuple(torch.cat(parts) for parts in zip(*table_g))
            for j in range(n - 1):
                values.append(f_nodes[j])
                grads.append(tuple(g[j * n_paths : (j + 1) * n_paths] for g in g_nodes))
        values.append(end.value)
        total = tuple(torch.zeros_like(t) for t in start.x)
        residual = torch.zeros_like(start.value)
        for j in range(n):
            change = values[j + 1] - values[j]
            squares = tuple(g * g for g in grads[j])
            norm = per_row_sum(squares)
            # Where the gradient vanishes the change cannot be split; it stays in the residual.
            safe = torch.where(norm > 0, norm, torch.ones_like(norm))
            share = torch.where(norm > 0, change / safe, torch.zeros_like(norm))
            for acc, s in zip(total, squares):
                acc.add_(s * broadcast_rows(share, s))
            residual += torch.where(norm > 0, torch.zeros_like(change), change)
        return SegmentIntegral(total, residual, evaluations)


@dataclass(frozen=True)
class Integration:
    """How the paths of a call are integrated: the rule and its nodes per segment, the
    completeness tolerance, and the budget of pieces per segment."""

    method: str
    nodes: int
    epsrel: float | None
    epsabs: float
    limit: int
    local: bool = False  # the gradient alone, without the segments' directions
    share: float = 1.0  # c of the condition on every piece (see Quadrature)

    @functools.cached_property
    def rule(self) -> Rule:
        return make_rule(self.method, self.nodes)

    @property
    def refines(self) -> bool:
        """Whether segments are refined (IDGI is complete by construction)."""
        return self.epsrel is not None and self.method != "idgi" and self.limit > 1

    @property
    def map_tolerance(self) -> float | None:
        """The tolerance of the map's estimated relative error, sqrt(epsrel), for the
        complete trapezoid (whose paths are complete by construction); None for the other
        rules and without ``epsrel``."""
        if self.method != "complete_trapezoid" or self.epsrel is None:
            return None
        # A relative error e gives a cosine of at least 1 - e^2 / 2 to the exact integral:
        # epsrel = 0.02 asks for 0.99.
        return math.sqrt(self.epsrel)

    @property
    def uses_start(self) -> bool:
        """The rule takes the gradient at a segment's start (reused from the path point)."""
        return self.rule.uses_start

    @property
    def uses_end(self) -> bool:
        """The rule takes the gradient at a segment's end (reused from the path point)."""
        return self.rule.uses_end

    def quadrature(
        self,
        start_output: Tensor,
        heading_output: Tensor | None,
        n_steps: int,
        chunk_size: int | None,
        group: int = 1,
    ) -> Quadrature:
        """The quadrature of the segments of paths that start at f = ``start_output`` and head
        for f = ``heading_output`` (which sets the scale of ``epsrel``; needed only where
        segments are refined) in ``n_steps`` steps; ``group`` consecutive paths make one
        example's attribution (their mean)."""
        tolerance = group_tolerance = None
        if self.refines and self.map_tolerance is None:
            assert self.epsrel is not None and heading_output is not None
            gap = heading_output - start_output
            tolerance = self.epsabs + self.epsrel * gap.abs()
            # The example's mean must be complete to its own gap, the mean of its paths' gaps
            # (as the call's final check measures it).
            group_tolerance = self.epsabs + self.epsrel * gap.reshape(-1, group).mean(dim=1).abs()
        return Quadrature(
            self.rule, tolerance, n_steps, self.limit, chunk_size, self.local, group, self.share,
            group_tolerance, self.map_tolerance if self.refines else None,
        )  # fmt: skip


class ConvergenceWarning(UserWarning):
    """A path integral ended above its completeness tolerance.

    Emitted by ``attribute`` and ``path`` when, for some examples, the convergence delta
    (the sum of the attributions minus the output difference between the path's ends) is larger
    than ``epsabs + epsrel * |output difference|``. The message names how many examples missed
    the tolerance, by how much, and what to raise; ``path(...)`` reports the error and the
    gradient evaluations of every example.
    """
