"""Guided Integrated Gradients (Kapishnikov et al., CVPR 2021)."""

from __future__ import annotations

import typing
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any, Literal

from captum._utils.typing import BaselineType, TargetType, TensorOrTupleOfTensorsGeneric
from captum.log import log_usage
from torch import Tensor

from captum_ig2._attribution import (
    EPSREL,
    GUIDED_IG_METHOD,
    AttributionPath,
    PathAttribution,
    document_quadrature,
    empty_result,
    finish,
)
from captum_ig2._common import check_unit_interval, expand_for_paths, format_references
from captum_ig2._path import Observer, PathFunction, full_float32, integrate_path
from captum_ig2._steps import GuidedStep


class GuidedIG(PathAttribution):
    r"""
    Guided Integrated Gradients chooses the path from the baseline to the input adaptively:
    at every step it moves only the `fraction` of features whose gradient is smallest in
    magnitude, the features that matter least for the output at that point, and keeps every
    feature within `max_dist` of the straight line. Features with large gradients are thus
    moved late, which avoids the accumulation of noisy gradients from regions of saturation
    that makes IG's maps noisy. With ``max_dist=0`` the path is IG's straight line.

    The attribution is the line integral of the explained output's gradient along the path,
    computed to a stated completeness tolerance (see ``epsrel``); ``multiply_by_inputs=False``
    gives the mean gradient along the path instead, Captum's local attribution.

    The path is identical to PAIR's reference implementation
    (``saliency.core.guided_ig.guided_ig_impl``), computed for a whole batch at once.

    Examples::

        >>> net = ImageClassifier()
        >>> gig = GuidedIG(net)
        >>> attributions = gig.attribute(images, baselines=0.0, target=3)

    References:
        A. Kapishnikov, S. Venugopalan, B. Avci, B. Wedin, M. Terry, T. Bolukbasi, "Guided
        Integrated Gradients: An Adaptive Path Method for Removing Noise", CVPR 2021.
        https://arxiv.org/abs/2106.09788
    """

    _name = "Guided IG"
    # A guided step moves a few features: the segments' residuals are few and large, and a
    # piece may keep 8 times IG2's share of the tolerance at the same map accuracy (measured on
    # EfficientNet-Lite0, see ``_quadrature.Quadrature``).
    _piece_share = 8.0

    def __init__(
        self, forward_func: Callable[..., Tensor], multiply_by_inputs: bool = True
    ) -> None:
        r"""
        Args:
            forward_func (Callable): The forward function of the model or any modification of
                        it.
            multiply_by_inputs (bool, optional): As Captum's ``IntegratedGradients``: True
                        integrates (x_k+1 - x_k) * grad f along the path (global attribution,
                        complete: it adds up to f(input) - f(baseline)); False returns the
                        mean gradient along the path instead (local attribution; on the
                        straight line, ``max_dist=0``, Captum's local IG).
                        Default: True
        """
        super().__init__(forward_func, multiply_by_inputs)

    @typing.overload
    def attribute(
        self,
        inputs: TensorOrTupleOfTensorsGeneric,
        baselines: BaselineType = None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        n_steps: int = 200,
        method: str = GUIDED_IG_METHOD,
        internal_batch_size: int | None = None,
        *,
        return_convergence_delta: Literal[True],
        fraction: float = 0.25,
        max_dist: float = 0.02,
        nodes: int | None = None,
        epsrel: float | None = EPSREL,
        epsabs: float = 0.0,
        limit: int | None = None,
        show_progress: bool = False,
    ) -> tuple[TensorOrTupleOfTensorsGeneric, Tensor]: ...

    @typing.overload
    def attribute(
        self,
        inputs: TensorOrTupleOfTensorsGeneric,
        baselines: BaselineType = None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        n_steps: int = 200,
        method: str = GUIDED_IG_METHOD,
        internal_batch_size: int | None = None,
        return_convergence_delta: Literal[False] = False,
        fraction: float = 0.25,
        max_dist: float = 0.02,
        nodes: int | None = None,
        epsrel: float | None = EPSREL,
        epsabs: float = 0.0,
        limit: int | None = None,
        show_progress: bool = False,
    ) -> TensorOrTupleOfTensorsGeneric: ...

    @document_quadrature(GUIDED_IG_METHOD, "guided_ig")
    @log_usage()
    def attribute(  # type: ignore[misc]
        self,
        inputs: TensorOrTupleOfTensorsGeneric,
        baselines: BaselineType = None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        n_steps: int = 200,
        method: str = GUIDED_IG_METHOD,
        internal_batch_size: int | None = None,
        return_convergence_delta: bool = False,
        fraction: float = 0.25,
        max_dist: float = 0.02,
        nodes: int | None = None,
        epsrel: float | None = EPSREL,
        epsabs: float = 0.0,
        limit: int | None = None,
        show_progress: bool = False,
    ) -> TensorOrTupleOfTensorsGeneric | tuple[TensorOrTupleOfTensorsGeneric, Tensor]:
        r"""
        Attributes the explained output to the inputs along the guided path.

        `inputs`, `baselines`, `target`, `additional_forward_args`, `internal_batch_size` and
        `return_convergence_delta` are those of
        :meth:`captum.attr.IntegratedGradients.attribute`, in the same order; inputs with no
        examples give empty attributions.

        Args:
            n_steps (int, optional): The number of path steps (segments); a path has
                        n_steps + 1 points. Default: 200, as the paper.
            <quadrature>
            fraction (float, optional): The share of all features, in (0, 1], that is moved
                        at a time, those with the smallest absolute gradient first.
                        Default: 0.25
            max_dist (float, optional): How far, in [0, 1], a feature may deviate from the
                        straight line, as a fraction of the way from baseline to input; 0 gives
                        IG's straight path, 1 an unbounded guided path. Default: 0.02
            show_progress (bool, optional): Show a progress bar over the path points.
                        Default: False

        Returns:
            **attributions** or 2-element tuple of **attributions**, **delta**:

            - **attributions** (*Tensor* or *tuple[Tensor, ...]*): Guided IG attributions, of
              the form and shape of `inputs`.
            - **delta** (*Tensor*, returned if return_convergence_delta=True): per example,
              sum(attributions) - (f(input) - f(baseline)), the completeness error of the path
              integral (also with ``multiply_by_inputs=False``).

        Raises:
            ValueError: where an argument is invalid (also where Captum raises an
                        ``AssertionError``, e.g. a missing `target` on a multi-output model),
                        and where the model's output or gradient is NaN or infinite on a path.
        """
        result = self._compute(
            inputs, baselines, target, additional_forward_args, n_steps, method,
            internal_batch_size, fraction, max_dist, nodes, epsrel, epsabs, limit, show_progress,
            record=False,
        )  # fmt: skip
        if return_convergence_delta:
            return result.attributions, result.delta
        return result.attributions

    def path(
        self,
        inputs: TensorOrTupleOfTensorsGeneric,
        baselines: BaselineType = None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        n_steps: int = 200,
        method: str = GUIDED_IG_METHOD,
        internal_batch_size: int | None = None,
        fraction: float = 0.25,
        max_dist: float = 0.02,
        nodes: int | None = None,
        epsrel: float | None = EPSREL,
        epsabs: float = 0.0,
        limit: int | None = None,
        show_progress: bool = False,
        keep_points: bool = True,
    ) -> AttributionPath[TensorOrTupleOfTensorsGeneric]:
        r"""
        Computes the attribution and keeps the guided path: every point and f along it.

        Takes the arguments of :meth:`attribute`; ``path(...).points`` has shape
        (n_steps + 1, N, 1, \*F), from the baseline to the input, and the record reports each
        example's completeness error and tolerance and the gradient evaluations spent.
        Memory grows with n_steps unless ``keep_points=False``.

        Args:
            keep_points (bool, optional): Keep every path point and output. False keeps
                        only each path's two ends (``start``, ``end``; the GradCF of IG2), so
                        memory stays flat in n_steps. Default: True

        Returns:
            :class:`AttributionPath`
        """
        if not isinstance(keep_points, bool):
            raise TypeError(f"`keep_points` must be a bool, got {type(keep_points).__name__}.")
        return self._compute(
            inputs, baselines, target, additional_forward_args, n_steps, method,
            internal_batch_size, fraction, max_dist, nodes, epsrel, epsabs, limit, show_progress,
            record=keep_points,
        )  # fmt: skip

    def _compute(
        self,
        inputs: Any,
        baselines: Any,
        target: Any,
        additional_forward_args: Any,
        n_steps: int,
        method: str,
        internal_batch_size: int | None,
        fraction: float,
        max_dist: float,
        nodes: int | None,
        epsrel: float | None,
        epsabs: float,
        limit: int,
        show_progress: bool,
        record: bool,
        observer: Observer | None = None,
        **options: Any,
    ) -> AttributionPath:
        call = self._prepare(
            inputs, target, n_steps, method, nodes, epsrel, epsabs, limit, internal_batch_size
        )
        fraction = check_unit_interval("fraction", fraction, open_low=True)
        max_dist = check_unit_interval("max_dist", max_dist, open_low=False)
        references, _ = format_references(call.inputs, baselines, allow_sets=False)
        baseline_inputs = tuple(ref[:, 0] for ref in references)
        explained = tuple(t.detach() for t in call.inputs)
        target, args = expand_for_paths(target, additional_forward_args, 1)
        with ExitStack() as stack:
            stack.enter_context(full_float32(explained[0].device))
            model = self._path_model(
                call.is_inputs_tuple, explained, baseline_inputs, target, args, call.n, stack,
                **options,
            )  # fmt: skip
            if call.n == 0:
                return empty_result(model, call, 1, record)
            chunk = model.chunk_size(call.internal_batch_size)
            start, end = model.baselines, model.inputs
            function = stack.enter_context(
                PathFunction(
                    model.forward,
                    model.explain,
                    self.gradient_func,
                    n_paths=call.n,
                    grad_kwargs=model.grad_kwargs,
                )
            )
            result = integrate_path(
                start,
                GuidedStep(start, end, call.n_steps, fraction, max_dist),
                call.n_steps,
                function,
                call.integration,
                heading=end,
                internal_batch_size=chunk,
                record=record,
                show_progress=show_progress,
                desc="Guided IG",
                observer=observer,
            )
        return finish(self.get_name(), result, model, call, 1, 1.0, record, -1)
