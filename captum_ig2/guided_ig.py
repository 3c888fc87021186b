"""Guided Integrated Gradients (Kapishnikov et al., CVPR 2021)."""

from __future__ import annotations

import typing
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any, Literal

from captum._utils.common import _format_tensor_into_tuples, _is_tuple
from captum._utils.typing import BaselineType, TargetType, TensorOrTupleOfTensorsGeneric
from captum.log import log_usage
from torch import Tensor

from captum_ig2._attribution import (
    EPSREL,
    GUIDED_IG_METHOD,
    LIMIT,
    AttributionPath,
    PathAttribution,
    document_quadrature,
    finish,
)
from captum_ig2._common import (
    check_inputs,
    check_integration,
    check_internal_batch_size,
    check_n_steps,
    check_target,
    check_unit_interval,
    expand_for_paths,
    format_references,
)
from captum_ig2._path import Observer, PathFunction, integrate_path
from captum_ig2._steps import GuidedStep


class GuidedIG(PathAttribution):
    r"""
    Guided Integrated Gradients chooses the path from the baseline to the input adaptively:
    at every step it moves only the `fraction` of features whose gradient is smallest in
    magnitude, the features that matter least for the output at that point, and keeps every
    feature within `max_dist` of the straight line. Features with large gradients are thus
    moved late, which avoids the accumulation of noisy gradients from regions of saturation
    that makes IG's maps noisy. With ``max_dist=0`` the path is IG's straight line.

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

    def __init__(self, forward_func: Callable[..., Tensor]) -> None:
        r"""
        Args:
            forward_func (Callable): The forward function of the model or any modification of
                        it.
        """
        super().__init__(forward_func)

    @typing.overload
    def attribute(
        self,
        inputs: TensorOrTupleOfTensorsGeneric,
        baselines: BaselineType = None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        n_steps: int = 200,
        fraction: float = 0.25,
        max_dist: float = 0.02,
        method: str = GUIDED_IG_METHOD,
        internal_batch_size: int | None = None,
        *,
        return_convergence_delta: Literal[True],
        nodes: int | None = None,
        epsrel: float | None = EPSREL,
        epsabs: float = 0.0,
        limit: int = LIMIT,
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
        fraction: float = 0.25,
        max_dist: float = 0.02,
        method: str = GUIDED_IG_METHOD,
        internal_batch_size: int | None = None,
        return_convergence_delta: Literal[False] = False,
        nodes: int | None = None,
        epsrel: float | None = EPSREL,
        epsabs: float = 0.0,
        limit: int = LIMIT,
        show_progress: bool = False,
    ) -> TensorOrTupleOfTensorsGeneric: ...

    @document_quadrature(GUIDED_IG_METHOD)
    @log_usage()
    def attribute(  # type: ignore[misc]
        self,
        inputs: TensorOrTupleOfTensorsGeneric,
        baselines: BaselineType = None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        n_steps: int = 200,
        fraction: float = 0.25,
        max_dist: float = 0.02,
        method: str = GUIDED_IG_METHOD,
        internal_batch_size: int | None = None,
        return_convergence_delta: bool = False,
        nodes: int | None = None,
        epsrel: float | None = EPSREL,
        epsabs: float = 0.0,
        limit: int = LIMIT,
        show_progress: bool = False,
    ) -> TensorOrTupleOfTensorsGeneric | tuple[TensorOrTupleOfTensorsGeneric, Tensor]:
        r"""
        Attributes the explained output to the inputs along the guided path.

        `inputs`, `baselines`, `target`, `additional_forward_args` and
        `return_convergence_delta` are exactly those of
        :meth:`captum.attr.IntegratedGradients.attribute`.

        Args:
            n_steps (int, optional): The number of path steps (segments); a path has
                        n_steps + 1 points. Default: 200, as the paper.
            fraction (float, optional): The share of all features, in (0, 1], that is moved
                        at a time, those with the smallest absolute gradient first.
                        Default: 0.25
            max_dist (float, optional): How far, in [0, 1], a feature may deviate from the
                        straight line, as a fraction of the way from baseline to input; 0 gives
                        IG's straight path, 1 an unbounded guided path. Default: 0.02
            <quadrature>
            internal_batch_size (int, optional): At most this many path points go through the
                        model at once. Default: None, all N at once.
            show_progress (bool, optional): Show a progress bar over the path points.
                        Default: False

        Returns:
            **attributions** or 2-element tuple of **attributions**, **delta**:

            - **attributions** (*Tensor* or *tuple[Tensor, ...]*): Guided IG attributions, of
              the form and shape of `inputs`.
            - **delta** (*Tensor*, returned if return_convergence_delta=True): per example,
              sum(attributions) - (f(input) - f(baseline)).
        """
        result = self._compute(
            inputs, baselines, target, additional_forward_args, n_steps, fraction, max_dist,
            method, internal_batch_size, nodes, epsrel, epsabs, limit, show_progress,
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
        fraction: float = 0.25,
        max_dist: float = 0.02,
        method: str = GUIDED_IG_METHOD,
        internal_batch_size: int | None = None,
        nodes: int | None = None,
        epsrel: float | None = EPSREL,
        epsabs: float = 0.0,
        limit: int = LIMIT,
        show_progress: bool = False,
    ) -> AttributionPath[TensorOrTupleOfTensorsGeneric]:
        r"""
        Computes the attribution and keeps the guided path: every point and f along it.

        Takes the arguments of :meth:`attribute`; ``path(...).points`` has shape
        (n_steps + 1, N, 1, \*F), from the baseline to the input. Memory grows with n_steps.

        Returns:
            :class:`AttributionPath`
        """
        return self._compute(
            inputs, baselines, target, additional_forward_args, n_steps, fraction, max_dist,
            method, internal_batch_size, nodes, epsrel, epsabs, limit, show_progress,
            record=True,
        )  # fmt: skip

    def _compute(
        self,
        inputs: Any,
        baselines: Any,
        target: Any,
        additional_forward_args: Any,
        n_steps: int,
        fraction: float,
        max_dist: float,
        method: str,
        internal_batch_size: int | None,
        nodes: int | None,
        epsrel: float | None,
        epsabs: float,
        limit: int,
        show_progress: bool,
        record: bool,
        observer: Observer | None = None,
        **options: Any,
    ) -> AttributionPath:
        is_inputs_tuple = _is_tuple(inputs)
        formatted = _format_tensor_into_tuples(inputs)
        n = check_inputs(formatted, floating=self._floating_inputs)
        n_steps = check_n_steps(n_steps)
        fraction = check_unit_interval("fraction", fraction, open_low=True)
        max_dist = check_unit_interval("max_dist", max_dist, open_low=False)
        integration = check_integration(method, nodes, epsrel, epsabs, limit)
        internal_batch_size = check_internal_batch_size(internal_batch_size)
        check_target(target, n)
        references, _ = format_references(formatted, baselines, allow_sets=False)
        baseline_inputs = tuple(ref[:, 0] for ref in references)
        explained = tuple(t.detach() for t in formatted)
        target, args = expand_for_paths(target, additional_forward_args, 1)
        with ExitStack() as stack:
            model = self._path_model(
                is_inputs_tuple, explained, baseline_inputs, target, args, n, stack, **options
            )
            start, end = model.baselines, model.inputs
            function = stack.enter_context(
                PathFunction(model.forward, model.explain, self.gradient_func, n_paths=n)
            )
            result = integrate_path(
                start,
                GuidedStep(start, end, n_steps, fraction, max_dist),
                n_steps,
                function,
                integration,
                heading=end,
                internal_batch_size=internal_batch_size,
                record=record,
                show_progress=show_progress,
                desc="Guided IG",
                observer=observer,
            )
        return finish(self.get_name(), result, model, n, 1, 1.0, integration, record, -1)
