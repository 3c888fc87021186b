"""What the public path-attribution classes share: the Captum base class and the path record."""

from __future__ import annotations

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
from captum._utils.common import _format_output
from captum._utils.typing import TensorOrTupleOfTensorsGeneric
from captum.attr import GradientAttribution
from torch import Tensor

from captum_ig2._path import Explain, Forward, PathIntegral, model_forward, target_output
from captum_ig2._quadrature import ConvergenceWarning, Integration

#: The default rules: IG2's path points are where its steps took their direction, so the output's
#: gradient there is biased along the segment and IG2 takes interior (Gauss-Legendre) nodes;
#: Guided IG's step takes the output's gradient at every path point anyway, and the trapezoid
#: rule reuses it. Both were the cheapest of the rules measured on EfficientNet-Lite0 to meet the
#: default tolerance (README, "Convergence").
IG2_METHOD = "gausslegendre"
GUIDED_IG_METHOD = "riemann_trapezoid"
#: Segments are refined until the completeness error is within 2 % of the output difference,
#: into at most LIMIT pieces each.
EPSREL = 0.02
LIMIT = 8


#: The quadrature arguments of every ``attribute`` and ``path``, documented once.
QUADRATURE_DOC = """\
            method (str, optional): The quadrature rule applied to every path segment, by
                        Captum's names, ``"gausslegendre"``, ``"riemann_left"``,
                        ``"riemann_right"``, ``"riemann_middle"``, ``"riemann_trapezoid"``,
                        or ``"idgi"``: IDGI (Yang, Wang & Bilgic, CVPR 2023) splits each
                        segment's exact output change over the features in proportion to
                        their squared gradient at its start, so it is complete by
                        construction. ``method="riemann_left", nodes=1, epsrel=None`` is the
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
                        ``path`` reports every example's error and cost. None: no refinement
                        and no warning. Default: {epsrel}
            epsabs (float, optional): The absolute part of the tolerance. Default: 0.0
            limit (int, optional): The most pieces a segment is cut into, which bounds the
                        cost of refinement. Default: {limit}
"""


_WHY = {
    IG2_METHOD: "interior nodes: the output's gradient at a GradPath point is biased along "
    "the step taken from there",
    GUIDED_IG_METHOD: "it reuses the output's gradient that every guided step takes",
}


def document_quadrature(method: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Fills the quadrature arguments, with ``method`` as the default rule, into the docstring
    of an ``attribute``."""
    from captum_ig2._quadrature import DEFAULT_NODES

    text = QUADRATURE_DOC.format(
        method=method,
        why=_WHY[method],
        nodes=", ".join(f"{n} ({m})" for m, n in DEFAULT_NODES.items()),
        epsrel=EPSREL,
        limit=LIMIT,
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
            input (index 0) to the GradCF (index -1) of each of the R references; for Guided IG
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
    """

    points: TensorOrTupleOfTensorsGeneric
    outputs: Tensor
    attributions: TensorOrTupleOfTensorsGeneric
    delta: Tensor
    gap: Tensor
    tolerance: Tensor
    evaluations: Tensor
    input_index: int = 0

    @property
    def converged(self) -> Tensor:
        """Per example, whether the completeness error is within the tolerance, shape (N,)."""
        return self.delta.abs() <= self.tolerance

    @property
    def relative_error(self) -> Tensor:
        """Per example, abs(delta) / abs(gap), shape (N,)."""
        return self.delta.abs() / self.gap.abs()

    @property
    def start(self) -> TensorOrTupleOfTensorsGeneric:
        """The first point of every path, shape (N, R, *F) per input."""
        return _index(self.points, 0)

    @property
    def end(self) -> TensorOrTupleOfTensorsGeneric:
        """The last point of every path, shape (N, R, *F): IG2's GradCF, Guided IG's input."""
        return _index(self.points, -1)


def _index(points, i: int):  # type: ignore[no-untyped-def]
    if isinstance(points, tuple):
        return tuple(p[i] for p in points)
    return points[i]


class PathAttribution(GradientAttribution):
    """Base of the path methods: Captum's gradient attribution with a convergence delta."""

    _name = "Path"
    #: Input attribution differentiates the inputs; layer variants admit token ids.
    _floating_inputs = True

    @property
    def multiplies_by_inputs(self) -> bool:
        # The Riemann terms (x_k+1 - x_k) * grad already carry the input differences.
        return True

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
class PathModel:
    """Where the paths of one call run and what they explain.

    Attributes:
        inputs, baselines: the P-row path-space points of the explained inputs and of the
            baselines (IG2: references).
        forward: the model as a function of path points (see ``PathFunction``).
        explain: the explained scalar per path (see ``PathFunction``).
        format: brings path-space tensors (attributions, path points) to the user's form.
    """

    inputs: tuple[Tensor, ...]
    baselines: tuple[Tensor, ...]
    forward: Forward
    explain: Explain
    format: Callable[[tuple[Tensor, ...]], Any]


def finish(
    name: str,
    result: PathIntegral,
    model: PathModel,
    n: int,
    r: int,
    sign: float,
    integration: Integration,
    record: bool,
    input_index: int,
) -> AttributionPath:
    """Attributions, completeness error and path record of P = N x R integrated paths.

    ``sign`` is +1 for paths that run towards the input (Guided IG) and -1 for paths that start
    at it (IG2), which attribute f(input) - f(path end). Warns with :class:`ConvergenceWarning`
    where an example misses the completeness tolerance.
    """
    attributions = tuple(mean_over_references(sign * t, n, r) for t in result.integral)
    gap = mean_over_references(sign * (result.end_output - result.start_output), n, r)
    delta = per_example_sum(attributions) - gap
    if integration.epsrel is None:
        tolerance = torch.full_like(gap, math.inf)
    else:
        tolerance = integration.epsabs + integration.epsrel * gap.abs()
    evaluations = result.evaluations.reshape(n, r).sum(dim=1)
    missed = ~(delta.abs() <= tolerance)
    if bool(missed.any()):
        _warn_not_converged(name, delta, gap, missed, integration)
    points: Any = None
    outputs = torch.empty(0)
    if record:
        assert result.points is not None and result.outputs is not None
        points = model.format(
            tuple(t.reshape(t.shape[0], n, r, *t.shape[2:]) for t in result.points)
        )
        outputs = result.outputs.reshape(-1, n, r)
    return AttributionPath(
        points=points,
        outputs=outputs,
        attributions=model.format(attributions),
        delta=delta,
        gap=gap,
        tolerance=tolerance,
        evaluations=evaluations,
        input_index=input_index,
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
        f"({relative:.1%}). Raise `limit` (now {integration.limit}) to let segments be "
        f"refined further, or `nodes` (now {integration.nodes}), or loosen `epsrel`; "
        "`path(...)` reports the error and the gradient evaluations of every example.",
        ConvergenceWarning,
        stacklevel=_caller_stacklevel(),
    )


_INTERNAL = (os.path.dirname(__file__), os.path.dirname(captum.__file__))


def _caller_stacklevel() -> int:
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
