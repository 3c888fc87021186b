"""What the public path-attribution classes share: the Captum base class and the path record."""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import warnings
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Generic

import captum
import torch
from captum._utils.common import _format_output, _format_tensor_into_tuples, _is_tuple
from captum._utils.typing import TensorOrTupleOfTensorsGeneric
from captum.attr import GradientAttribution
from torch import Tensor

from captum_ig2._common import (
    check_eval_mode,
    check_inputs,
    check_integration,
    check_internal_batch_size,
    check_n_steps,
    check_target,
    ordinary,
)
from captum_ig2._path import Explain, Forward, PathIntegral, model_forward, target_output
from captum_ig2._quadrature import ConvergenceWarning, Integration
from captum_ig2._refine import map_norm

#: The default rules. IG2 takes the complete trapezoid: the output's gradient at every path point
#: (which IG2's walk does not need, so each costs one backward pass more than the walk), refined
#: after the walk across all segments of all paths by the map's estimated error, and complete
#: by construction (``_refine``; walks that coincide share one refinement). On
#: EfficientNet-Lite0 crops it gave maps of cosine >= 0.99 to 32 Gauss-Legendre nodes per
#: segment for 0.9x the gradients Captum's IG needs for 2 % at 112 px (1.8x at 224 px, where
#: the 8 walks alone cost 1.6x), 9x fewer at 112 px than Gauss-Legendre with 5 nodes, refined
#: by residuals, the earlier default (docs/benchmarks.md, "The defaults now"). Guided IG's step
#: takes the output's gradient at every path point anyway, and the trapezoid with its 2 nodes
#: there reuses it, refined by bisection: the cheapest rule measured for it on
#: EfficientNet-Lite0 (docs/benchmarks.md, "The cost of 2 %").
IG2_METHOD = "complete_trapezoid"
GUIDED_IG_METHOD = "riemann_trapezoid"
#: Segments are refined until the completeness error is within 2 % of the output difference
#: (the complete trapezoid: until the map's estimated relative error is within sqrt(0.02)).
EPSREL = 0.02
#: IG2 averages this many walks per reference (see ``IterativeGradientIG.attribute``) and warns
#: with :class:`StabilityWarning` where the agreement of its walks predicts a cosine below
#: MIN_STABILITY between the map and the map of a repeated call.
N_WALKS = 8
MIN_STABILITY = 0.9


class StabilityWarning(UserWarning):
    """An attribution map is not a stable function of its input.

    Emitted by IG2's ``attribute`` and ``path`` where an example's stability, the predicted
    cosine between its map and the map of the same call repeated with a rounding-sized change
    (another batch, device, dtype or GPU kernel), is below ``MIN_STABILITY`` (0.9). The
    prediction comes from the agreement of the call's own walks (see
    :attr:`AttributionPath.stability`); raising ``n_walks`` raises it.
    """


#: The quadrature arguments of every ``attribute`` and ``path``, documented once.
QUADRATURE_DOC = """\
            method (str, optional): The quadrature rule applied to every path segment, by
                        Captum's names, ``"gausslegendre"``, ``"riemann_left"``,
                        ``"riemann_right"``, ``"riemann_middle"``, ``"riemann_trapezoid"``,
                        ``"idgi"`` or ``"complete_trapezoid"``. IDGI (Yang, Wang & Bilgic,
                        CVPR 2023) splits each segment's exact output change over the features
                        in proportion to their squared gradient at its start. The complete
                        trapezoid takes the trapezoid on every segment from the gradients at
                        the path points, and once the walk has ended bisects the pieces of
                        largest estimated error (half the difference of the left and right
                        Riemann sums) across all segments of all paths until the map's
                        estimated error meets the tolerance; it splits each piece's remaining
                        output change over the features in proportion to that estimate. Both
                        are complete by construction (``delta`` is rounding); the complete
                        trapezoid reports its estimated map error instead
                        (``path(...).map_error``) and keeps the path points and their
                        gradients on the CPU for its refinement, within a budget
                        (:func:`~captum_ig2.set_refinement_memory`, 4 GiB by default).
                        ``method="riemann_left", nodes=1, epsrel=None`` is the
                        papers' own estimator, one gradient per step, as the authors' code
                        and PAIR's. Default: ``"{method}"`` ({why})
            nodes (int, optional): The rule's nodes on a segment (for IDGI: the pieces each
                        segment is cut into). Default: None, the rule's own: {nodes}.
            epsrel (float or None, optional): The completeness tolerance, relative to the
                        output difference the attributions must add up to (the gap): the call
                        aims at abs(delta) <= epsabs + epsrel * abs(gap). Since f is evaluated
                        at both ends of every segment, the error of each segment's integral,
                        its residual, is known exactly; a segment whose residual exceeds its
                        share of the tolerance is cut in halves, each integrated with the same
                        rule, again where needed, up to `limit` pieces. A call that ends above
                        the tolerance warns with :class:`~captum_ig2.ConvergenceWarning`;
                        ``path`` reports every example's error and cost. With
                        ``"complete_trapezoid"`` the attributions are complete by construction
                        and `epsrel` bounds the map instead: pieces are bisected until the
                        estimated relative error of the map, ||error|| / ||attributions||, is
                        within sqrt(epsrel) (0.14 at 0.02), which keeps the map's cosine to
                        the exact integral above 1 - epsrel / 2 (0.99), or the call warns.
                        None: no refinement and no warning. Default: {epsrel}
            epsabs (float, optional): The absolute part of the tolerance. Default: 0.0
            limit (int, optional): The most pieces a segment is cut into, which bounds the
                        cost of refinement. Default: None, the rule's own: {limit}
"""


_WHY = {
    "ig2": "refined by the map's estimated error: on EfficientNet-Lite0 crops at 112 px 7x "
    "fewer gradients than Gauss-Legendre nodes refined by residuals, for maps of cosine >= "
    "0.99 to 32 nodes per segment",
    "guided_ig": "with 2 nodes, the path points: it reuses the output's gradient that every "
    "guided step takes",
}


def document_quadrature(
    method: str, kind: str
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Fills the quadrature arguments, with ``method`` as the default rule of method ``kind``
    ("ig2" or "guided_ig"), into the docstring of an ``attribute``."""
    from captum_ig2._quadrature import DEFAULT_LIMIT, DEFAULT_NODES

    text = QUADRATURE_DOC.format(
        method=method,
        why=_WHY[kind],
        nodes=", ".join(f"{n} ({m})" for m, n in DEFAULT_NODES.items()),
        epsrel=EPSREL,
        limit=", ".join(f"{n} ({m})" for m, n in DEFAULT_LIMIT.items() if n != 8)
        + ", 8 (the others)",
    )

    def fill(function: Callable[..., Any]) -> Callable[..., Any]:
        for target in (function, getattr(function, "__wrapped__", None)):
            if target is not None and target.__doc__:
                target.__doc__ = target.__doc__.replace("            <quadrature>\n", text)
        return function

    return fill


@dataclass
class AttributionPath(Generic[TensorOrTupleOfTensorsGeneric]):
    """A computed attribution together with the discrete path it was integrated along.

    Tensors come in the form of the inputs: a tensor for a tensor input, a tuple for a tuple.

    Attributes:
        points: the path points, shape (n_steps + 1, N, R, *F) per input: for IG2 from the
            input (index 0) to the GradCF (index -1) of each of its R paths, one per reference
            and walk (path r * W + w is walk w of reference r, see ``walks``); for Guided IG
            (R = 1) from the baseline to the input.
        outputs: the explained output f at every point, shape (n_steps + 1, N, R).
        attributions: the attributions, as ``attribute`` returns them.
        delta: the completeness error (convergence delta) per example, shape (N,), as
            ``attribute`` returns it: sum(attributions) - gap.
        gap: what the attributions of each example should sum to, shape (N,): f(input) -
            f(path end) averaged over the references for IG2, f(input) - f(baseline) for
            Guided IG.
        tolerance: the completeness tolerance of each example, epsabs + epsrel * abs(gap),
            shape (N,); inf when ``epsrel=None``.
        evaluations: the gradient evaluations spent on each example (path points and
            quadrature nodes of all its references), shape (N,), int64.
        input_index: where the explained input lies on the path: 0 (IG2, the path starts
            there) or -1 (Guided IG, the path ends there).
        ends: the first and last point of every path, shape (N, R, *F) per input; with
            ``points`` None (``path(..., keep_points=False)``) ``start`` and ``end`` read them.
        walks: W, the walks of every reference (IG2's ``n_walks``; 1 for Guided IG).
        stability: per example, the predicted cosine between these attributions and those of
            the same call repeated with a rounding-sized change, shape (N,); None with one
            walk. IG2 averages W walks whose first directions are taken a rounding-sized offset
            apart; on a real network each walk is one draw of many, and the agreement of the two
            halves of the walks, c = cos(mean of walks [0, W/2), mean of walks [W/2, W)),
            predicts the agreement of two whole calls: 2c / (1 + c) for equal halves (the
            Spearman-Brown formula; see :func:`predicted_stability`).
        map_error: with ``method="complete_trapezoid"``, whose attributions are complete by
            construction (``delta`` is rounding), the estimated relative error of every
            example's map, ||error|| / ||attributions||, shape (N,): the root sum of the squared
            error estimates of all the pieces the paths were cut into (see
            ``captum_ig2._refine``). On EfficientNet-Lite0 photo crops the real error was
            0.7-0.9x of it; on small smooth models it is larger than the real error, 10-100x
            before refinement (a first-order estimate), which costs gradients there. None for
            the other rules.
        map_tolerance: the tolerance ``map_error`` is held to, sqrt(epsrel): a relative error
            e gives a cosine of at least 1 - e^2 / 2 to the exact integral, so the default
            epsrel = 0.02 asks for a cosine of 0.99. None where there is none.
    """

    points: TensorOrTupleOfTensorsGeneric
    outputs: Tensor
    attributions: TensorOrTupleOfTensorsGeneric
    delta: Tensor
    gap: Tensor
    tolerance: Tensor
    evaluations: Tensor
    input_index: int = 0
    ends: tuple[Any, Any] | None = None
    walks: int = 1
    stability: Tensor | None = None
    map_error: Tensor | None = None
    map_tolerance: float | None = None

    @property
    def converged(self) -> Tensor:
        """Per example, whether the completeness error is within the tolerance and, where the
        map's error is estimated, that within its tolerance, shape (N,)."""
        within = self.delta.abs() <= self.tolerance
        if self.map_error is not None and self.map_tolerance is not None:
            within = within & (self.map_error <= self.map_tolerance)
        return within

    @property
    def relative_error(self) -> Tensor:
        """Per example, abs(delta) / abs(gap), shape (N,)."""
        return self.delta.abs() / self.gap.abs()

    @property
    def start(self) -> TensorOrTupleOfTensorsGeneric:
        """The first point of every path, shape (N, R, *F) per input."""
        if self.points is None:
            return self._ends()[0]
        return _index(self.points, 0)

    @property
    def end(self) -> TensorOrTupleOfTensorsGeneric:
        """The last point of every path, shape (N, R, *F): IG2's GradCF, Guided IG's input."""
        if self.points is None:
            return self._ends()[1]
        return _index(self.points, -1)

    def _ends(self) -> tuple[Any, Any]:
        if self.ends is None:
            raise ValueError("This record keeps neither the path points nor their ends.")
        return self.ends


def _index(points, i: int):  # type: ignore[no-untyped-def]
    if isinstance(points, tuple):
        return tuple(p[i] for p in points)
    return points[i]


class PathAttribution(GradientAttribution):
    """Base of the path methods: Captum's gradient attribution with a convergence delta.

    Calls on one object from several threads at once are safe: every call keeps its state to
    itself, and the hooks it puts on the model act only on the forward passes of the thread
    that made the call.
    """

    _name = "Path"
    #: Input attribution differentiates the inputs; layer variants admit token ids.
    _floating_inputs = True
    #: c of the refinement's condition on every piece (see ``_quadrature.Quadrature``).
    _piece_share = 1.0

    def __init__(self, forward_func: Callable[..., Any], multiply_by_inputs: bool = True) -> None:
        super().__init__(forward_func)
        if not isinstance(multiply_by_inputs, bool):
            raise TypeError(
                f"`multiply_by_inputs` must be a bool, got {type(multiply_by_inputs).__name__}."
            )
        self._multiply_by_inputs = multiply_by_inputs

    @property
    def multiplies_by_inputs(self) -> bool:
        """True: the attributions integrate (x_k+1 - x_k) * grad f along the path (global
        attribution); False: the mean gradient along the path, Captum's local attribution."""
        return self._multiply_by_inputs

    def _prepare(
        self,
        inputs: Any,
        target: Any,
        n_steps: Any,
        method: Any,
        nodes: Any,
        epsrel: Any,
        epsabs: Any,
        limit: Any,
        internal_batch_size: Any,
    ) -> Call:
        """Checks what every call of every class shares, before any model evaluation."""
        if torch.is_inference_mode_enabled():
            raise RuntimeError(
                f"{self.get_name()} was called inside torch.inference_mode(), where no gradient "
                "can be taken (torch.enable_grad() does not lift it). Call it outside inference "
                "mode; torch.no_grad() around the call is fine."
            )
        if not isinstance(inputs, (Tensor, tuple)):
            raise TypeError(
                f"`inputs` must be a tensor or a tuple of tensors, got {type(inputs).__name__}."
            )
        formatted = tuple(ordinary(t) for t in _format_tensor_into_tuples(inputs))
        n = check_inputs(formatted, floating=self._floating_inputs)
        check_eval_mode(self.forward_func)
        n_steps = check_n_steps(n_steps)
        integration = check_integration(method, nodes, epsrel, epsabs, limit)
        if not self.multiplies_by_inputs:
            if integration.method == "idgi":
                raise ValueError(
                    "`method='idgi'` splits each segment's output change over the features; it "
                    "has no local form: use it with `multiply_by_inputs=True`."
                )
            integration = dataclasses.replace(integration, local=True)
        integration = dataclasses.replace(integration, share=self._piece_share)
        check_target(target, n)
        return Call(
            _is_tuple(inputs),
            formatted,
            n,
            n_steps,
            integration,
            check_internal_batch_size(internal_batch_size),
        )

    def has_convergence_delta(self) -> bool:
        return True

    @classmethod
    def get_name(cls) -> str:
        return cls._name

    def attribute_future(self) -> None:
        raise NotImplementedError(f"attribute_future is not implemented for {self.get_name()}.")

    # The space the paths run in and the output they explain. Input attribution: the model's
    # inputs and its target output; the layer and neuron variants override these two methods.
    def _path_model(
        self,
        is_inputs_tuple: bool,
        inputs: tuple[Tensor, ...],
        baselines: tuple[Tensor, ...],
        target: Any,
        additional_forward_args: tuple[Any, ...] | None,
        n_paths: int,
        stack: ExitStack,
        **options: Any,
    ) -> PathModel:
        """The path space and the explained output for P paths.

        Args:
            is_inputs_tuple: whether the caller passed a tuple of inputs.
            inputs, baselines: the P-row inputs and baselines (references), in input space.
            target, additional_forward_args: already expanded to P rows.
            n_paths: P.
            stack: hooks are registered on it, so that they are removed whatever happens.
            options: the variant's own ``attribute`` options (e.g. attribute_to_layer_input).
        """
        return PathModel(
            inputs,
            baselines,
            model_forward(self.forward_func, additional_forward_args, n_paths),
            target_output(target),
            lambda tensors: _format_output(is_inputs_tuple, tensors),
        )


@dataclass
class Call:
    """What ``PathAttribution._prepare`` checked: the inputs in Captum's tuple form and the
    options every class shares."""

    is_inputs_tuple: bool
    inputs: tuple[Tensor, ...]
    n: int
    n_steps: int
    integration: Integration
    internal_batch_size: int | None


@dataclass
class PathModel:
    """Where the paths of one call run and what they explain.

    Attributes:
        inputs, baselines: the P-row path-space points of the explained inputs and of the
            baselines (IG2: references).
        forward: the model as a function of path points (see ``PathFunction``).
        explain: the explained scalar per path (see ``PathFunction``).
        format: brings path-space tensors (attributions, path points) to the user's form.
        grad_kwargs: more keyword arguments for ``torch.autograd.grad`` (layer variants).
        rows_at_once: the most rows one model call may hold (1 for a neuron selection that
            returns one number per batch), or None.
    """

    inputs: tuple[Tensor, ...]
    baselines: tuple[Tensor, ...]
    forward: Forward
    explain: Explain
    format: Callable[[tuple[Tensor, ...]], Any]
    grad_kwargs: dict[str, Any] | None = None
    rows_at_once: int | None = None

    def chunk_size(self, internal_batch_size: int | None) -> int | None:
        """``internal_batch_size``, lowered to what the explained output allows."""
        if self.rows_at_once is None:
            return internal_batch_size
        return min(internal_batch_size or self.rows_at_once, self.rows_at_once)


def finish(
    name: str,
    result: PathIntegral,
    model: PathModel,
    call: Call,
    r: int,
    sign: float,
    record: bool,
    input_index: int,
    walks: int = 1,
) -> AttributionPath:
    """Attributions, completeness error and path record of P = N x R integrated paths.

    ``sign`` is +1 for paths that run towards the input (Guided IG) and -1 for paths that start
    at it (IG2), which attribute f(input) - f(path end). The R paths of an example are
    ``walks`` walks of each of R / walks references. Raises where the model's output or its
    gradient stopped being finite on a path; warns with :class:`ConvergenceWarning` where an
    example misses the completeness tolerance and with :class:`StabilityWarning` where its
    walks predict a map less stable than ``MIN_STABILITY``.
    """
    n, integration = call.n, call.integration
    _check_finite(name, result, r)
    gap = mean_over_references(sign * (result.end_output - result.start_output), n, r)
    if integration.local:
        # Captum's local attribution: the mean gradient along the path, each step one unit of
        # the path's parameter. Its completeness error is that of the path integral.
        steps = call.n_steps
        attributions = tuple(mean_over_references(t / steps, n, r) for t in result.integral)
        delta = mean_over_references(-sign * result.residual, n, r)
    else:
        attributions = tuple(mean_over_references(sign * t, n, r) for t in result.integral)
        delta = per_example_sum(attributions) - gap
    if integration.epsrel is None:
        tolerance = torch.full_like(gap, math.inf)
    else:
        tolerance = integration.epsabs + integration.epsrel * gap.abs()
    evaluations = result.evaluations.reshape(n, r).sum(dim=1)
    missed = ~(delta.abs() <= tolerance)
    if bool(missed.any()):
        _warn_not_converged(name, delta, gap, missed, integration)
    map_error = None
    if result.error2 is not None:
        map_error = relative_map_error(result.integral, result.error2, n, r)
        if integration.map_tolerance is not None:
            beyond = ~(map_error <= integration.map_tolerance)
            if bool(beyond.any()):
                held = None
                if result.held2 is not None:  # the budget's share of the squared error
                    total = result.error2.double().cpu().reshape(n, r).sum(dim=1)
                    kept = result.held2.double().cpu().reshape(n, r).sum(dim=1)
                    held = torch.where(total > 0, kept / torch.where(total > 0, total, 1.0), 0.0)
                _warn_map_error(name, map_error, beyond, integration, held)
    stability = None
    if walks > 1:
        stability = walk_stability(result.integral, n, r // walks, walks)
        unstable = stability < MIN_STABILITY
        if bool(unstable.any()):
            _warn_unstable(name, stability, unstable, walks)
    points: Any = None
    outputs = torch.empty(0)
    if record:
        assert result.points is not None and result.outputs is not None
        points = model.format(
            tuple(t.reshape(t.shape[0], n, r, *t.shape[2:]) for t in result.points)
        )
        outputs = result.outputs.reshape(-1, n, r)
    ends = None
    if result.ends is not None:
        ends = tuple(
            model.format(tuple(t.reshape(n, r, *t.shape[1:]) for t in side)) for side in result.ends
        )
    return AttributionPath(
        points=points,
        outputs=outputs,
        attributions=model.format(attributions),
        delta=delta,
        gap=gap,
        tolerance=tolerance,
        evaluations=evaluations,
        input_index=input_index,
        ends=ends,  # type: ignore[arg-type]
        walks=walks,
        stability=stability,
        map_error=map_error,
        map_tolerance=integration.map_tolerance,
    )


def relative_map_error(integral: tuple[Tensor, ...], error2: Tensor, n: int, r: int) -> Tensor:
    """Every example's estimated relative map error, shape (N,): the root of its R paths'
    squared error estimates ``error2``, over R (the error of their mean, where the errors of
    pieces are independent; ``error2`` counts those of paths that coincide once for each, so
    that they add up), against the norm of the mean of their integrals, or, where their
    integrals cancel in the mean, against sqrt(sum of their squared norms) / R. 0 for an
    example with neither error nor attribution, inf for one with an error and no attribution."""
    norm = map_norm(integral, r)
    error = error2.double().cpu().reshape(n, r).sum(dim=1).sqrt() / r
    ratio = error / torch.where(norm > 0, norm, 1.0)
    return torch.where(norm > 0, ratio, torch.where(error > 0, math.inf, 0.0))


def walk_stability(integral: tuple[Tensor, ...], n: int, r: int, walks: int) -> Tensor:
    """The predicted stability of every example's map from its paths' integrals.

    ``integral`` holds P = N x R x W rows, walk w of reference r of example n in row
    (n R + r) W + w. The walks [0, W // 2) and [W // 2, W) of every reference make two half
    maps, averaged over the references, whose cosine c gives the prediction (see
    :func:`predicted_stability`).
    """
    flat = torch.cat([t.reshape(n, r, walks, -1) for t in integral], dim=3).double()
    half = walks // 2
    first = flat[:, :, :half].mean(dim=(1, 2))
    second = flat[:, :, half:].mean(dim=(1, 2))
    norms = first.norm(dim=1) * second.norm(dim=1)
    both_zero = (first.norm(dim=1) == 0) & (second.norm(dim=1) == 0)
    cosine = torch.where(
        norms > 0, (first * second).sum(dim=1) / torch.where(norms > 0, norms, 1.0), 0.0
    )
    cosine = torch.where(both_zero, 1.0, cosine)  # no attribution at all: nothing to vary
    return predicted_stability(cosine, half, walks - half).to(integral[0].dtype).cpu()


def predicted_stability(cosine: Tensor, a: int, b: int) -> Tensor:
    """The expected cosine between two maps that each average a + b walks, given the cosine
    between the mean of a walks and the mean of b others.

    Each walk's map is taken as a common map s plus a walk's own part, independent across walks,
    of expected squared norm q |s|^2. Then the means of a and b walks have the cosine
    c = 1 / sqrt((1 + q / a) (1 + q / b)), which gives q, and two means of a + b walks have the
    cosine 1 / (1 + q / (a + b)); for a = b this is the Spearman-Brown formula 2c / (1 + c).
    A cosine c <= 0 predicts 0.
    """
    c = cosine.double().clamp(min=0.0, max=1.0)
    # q^2 / (a b) + q (1 / a + 1 / b) + 1 - 1 / c^2 = 0, for q >= 0
    ia, ib = 1.0 / a, 1.0 / b
    safe = torch.where(c > 0, c, 1.0)
    constant = 1.0 - 1.0 / safe**2
    q = (-(ia + ib) + torch.sqrt((ia + ib) ** 2 - 4 * ia * ib * constant)) / (2 * ia * ib)
    return torch.where(c > 0, 1.0 / (1.0 + q / (a + b)), 0.0)


def empty_result(
    model: PathModel, call: Call, r: int, record: bool, walks: int = 1
) -> AttributionPath:
    """The result of a call with no examples (N = 0): empty attributions of the inputs' (or the
    layer's) shape, as Captum's IG returns, without evaluating the model."""
    empty = torch.zeros(0, dtype=model.inputs[0].dtype, device=model.inputs[0].device)
    points: Any = None
    outputs = torch.empty(0)
    if record:
        points = model.format(
            tuple(t.new_zeros((call.n_steps + 1, 0, r, *t.shape[1:])) for t in model.inputs)
        )
        outputs = empty.new_zeros((call.n_steps + 1, 0, r))
    no_points = model.format(tuple(t.new_zeros((0, r, *t.shape[1:])) for t in model.inputs))
    return AttributionPath(
        points=points,
        outputs=outputs,
        attributions=model.format(tuple(torch.zeros_like(t) for t in model.inputs)),
        delta=empty,
        gap=empty,
        tolerance=empty,
        evaluations=torch.zeros(0, dtype=torch.long),
        ends=(no_points, no_points),
        walks=walks,
        stability=empty if walks > 1 else None,
        map_error=empty.double().cpu() if call.integration.method == "complete_trapezoid" else None,
        map_tolerance=call.integration.map_tolerance,
    )


def _check_finite(name: str, result: PathIntegral, r: int) -> None:
    """Raises where the model's output or gradient stopped being finite on a path."""

    def where(p: int) -> str:
        return f"example {p // r}" + (f" (reference {p % r})" if r > 1 else "")

    first = result.first_nonfinite.cpu()
    if bool((first >= 0).any()):
        p = int(torch.nonzero(first >= 0)[0])
        start, hint = (
            ("the input", " (`clamp` keeps the GradPath in the input domain)")
            if "IG2" in name
            else ("the baseline", "")
        )
        raise ValueError(
            f"{name}: the model's output is NaN or infinite at step {int(first[p])} of the path "
            f"of {where(p)} (step 0 is {start}), so its attributions would be too. Check the "
            f"model on the path's points{hint}."
        )
    total = per_example_sum(result.integral)
    if not bool(torch.isfinite(total).all()):
        p = int(torch.nonzero(~torch.isfinite(total.cpu()))[0])
        raise ValueError(
            f"{name}: the model's gradient is NaN or infinite on the path of {where(p)} (its "
            "output stays finite), so its attributions would be too."
        )


def _warn_not_converged(
    name: str, delta: Tensor, gap: Tensor, missed: Tensor, integration: Integration
) -> None:
    error = delta.abs()
    worst = int(torch.argmax(torch.where(missed, error, -1.0)))
    relative = float(error[worst] / gap[worst].abs()) if float(gap[worst]) != 0 else math.inf
    warnings.warn(
        f"{name}: the path integral of {int(missed.sum())} of {delta.numel()} examples missed "
        f"the completeness tolerance |delta| <= epsabs + epsrel * |gap| (epsrel="
        f"{integration.epsrel}, epsabs={integration.epsabs}); the worst, example {worst}, has "
        f"|delta| = {float(error[worst]):.4g} against a gap of {float(gap[worst]):.4g} "
        f"({relative:.1%}). Raise `limit` (now {integration.limit}) several-fold, e.g. "
        f"limit={8 * integration.limit}, to let segments be bisected further: a gap that is "
        "small next to the swings of the output along the path needs many pieces, and more "
        f"`nodes` per piece (now {integration.nodes}) help less on a network with kinks (ReLU); "
        "or loosen `epsrel`. `path(...)` reports the error and the gradient evaluations of "
        "every example.",
        ConvergenceWarning,
        stacklevel=caller_stacklevel(),
    )


def _warn_map_error(
    name: str, map_error: Tensor, beyond: Tensor, integration: Integration, held: Tensor | None
) -> None:
    """``held``: per example, the share of its estimated squared map error in pieces the
    refinement's memory budget left unrefined."""
    from captum_ig2._refine import refinement_memory

    worst = int(torch.argmax(torch.where(beyond, map_error, -1.0)))
    advice = (
        f"Raise `limit` (now {integration.limit}), e.g. limit={8 * integration.limit}, to let "
        "pieces be bisected further, or loosen `epsrel`."
    )
    if held is not None and bool((held[beyond] > 0.5).any()):
        budget = refinement_memory()
        advice = (
            f"Most of the error of {int((held[beyond] > 0.5).sum())} of them is in pieces left "
            "unrefined because the path points and gradients they need did not fit in the "
            f"refinement's memory budget (now {budget} bytes): raise it with "
            "captum_ig2.set_refinement_memory(nbytes), or attribute fewer examples per call."
        )
    warnings.warn(
        f"{name}: the attributions of {int(beyond.sum())} of {map_error.numel()} examples are "
        f"complete by construction (method='complete_trapezoid'), but their estimated map error "
        f"exceeds its tolerance sqrt(epsrel) = {integration.map_tolerance:.3g}; the worst, example "
        f"{worst}, is {float(map_error[worst]):.1%} of the map's norm. {advice} `path(...)` "
        "reports every example's `map_error` and gradient evaluations.",
        ConvergenceWarning,
        stacklevel=caller_stacklevel(),
    )


def _warn_unstable(name: str, stability: Tensor, unstable: Tensor, walks: int) -> None:
    worst = int(torch.argmin(stability))
    warnings.warn(
        f"{name}: the maps of {int(unstable.sum())} of {stability.numel()} examples are less "
        f"stable than {MIN_STABILITY}: the worst, example {worst}, is predicted to have cosine "
        f"{float(stability[worst]):.3f} to the map of the same call repeated with a "
        "rounding-sized change (another batch, device, dtype or GPU kernel). Its walks, "
        f"{walks} per reference, end in different places: raise `n_walks` (the part of the map "
        "that differs between walks falls as 1 / n_walks); `path(...).stability` reports "
        "every example.",
        StabilityWarning,
        stacklevel=caller_stacklevel(),
    )


_INTERNAL = (os.path.dirname(__file__), os.path.dirname(captum.__file__))


def caller_stacklevel() -> int:
    """The stack level of the first frame outside this package and Captum (the user's call),
    seen from the caller of this function's caller."""
    frame = sys._getframe(2)
    level = 2
    while frame is not None and frame.f_code.co_filename.startswith(_INTERNAL):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    return level


def mean_over_references(t: Tensor, n: int, r: int) -> Tensor:
    """(N * R, ...) -> (N, ...), averaging the R paths of every input."""
    return t.reshape(n, r, *t.shape[1:]).mean(dim=1)


def per_example_sum(attributions: tuple[Tensor, ...]) -> Tensor:
    return torch.stack([a.reshape(a.shape[0], -1).sum(dim=1) for a in attributions]).sum(dim=0)
