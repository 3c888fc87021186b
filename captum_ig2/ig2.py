"""IG2: Integrated Gradient on Iterative Gradient Path (Zhuo & Ge, TPAMI 2024)."""

from __future__ import annotations

import math
import numbers
import typing
import warnings
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any, Literal

import torch
from captum._utils.typing import BaselineType, TargetType, TensorOrTupleOfTensorsGeneric
from captum.log import log_usage
from torch import Tensor
from torch.nn import Module

from captum_ig2._attribution import (
    EPSREL,
    IG2_METHOD,
    N_WALKS,
    AttributionPath,
    PathAttribution,
    caller_stacklevel,
    document_quadrature,
    empty_result,
    finish,
)
from captum_ig2._common import check_walks, expand_for_paths, format_clamp, format_references
from captum_ig2._path import Observer, PathFunction, full_float32, integrate_path
from captum_ig2._steps import CounterfactualGradientStep, default_step_size, walk_offsets


class IterativeGradientIG(PathAttribution):
    r"""
    IG2 (Integrated Gradient on Iterative Gradient path) integrates the gradient of the explained
    output along the GradPath: a path that starts at the input and walks, step by step, down the
    gradient of the distance between the model's representation of the current point and that of
    a counterfactual *reference* (for instance a sample of another class). The path's end, the
    GradCF, is a counterfactual baseline found by the model itself, so no baseline has to be
    chosen by hand, and following the gradient keeps the path on directions the model cares
    about, which removes much of IG's noise. Attributions are averaged over the references.

    Each step goes along the normalised gradient and is clipped to the input domain ``clamp``;
    the attribution of the path is the line integral of grad f along it (the paper's Eq. 3 is its
    Riemann sum), so that its sum is f(input) - f(GradCF), to the stated tolerance.

    **The walk and its stability.** The paper's walk (``walk="fixed"``) takes steps of one
    length eta (``step_size``). On a real network the distance's gradient turns within a
    fraction of eta, the walk zig-zags across the valleys of the distance, and a difference of
    1e-7 (another batch, float64, a GPU kernel) grows into another walk and another map: on
    EfficientNet-Lite0 two such maps have cosine 0.25 to 0.5. The default walk
    (``walk="adaptive"``) descends the same distance but halves its step after a reversal (the
    step overshot a valley) and lets it grow back to eta where the walk goes on, and IG2
    averages ``n_walks`` such walks per reference, each of which takes its first direction a
    rounding-sized offset away from the input: a map that rounding cannot redraw (cosine 0.95 to
    0.99 between two such calls on EfficientNet-Lite0), with a **stability** figure, the
    predicted cosine to a repeated call, from the agreement of the walks
    (:attr:`~captum_ig2.AttributionPath.stability`), and a
    :class:`~captum_ig2.StabilityWarning` below 0.9. ``walk="fixed", n_walks=1`` is the paper's
    procedure.

    All N inputs x R references x W walks are stepped together, with one forward pass per path
    point.

    Examples::

        >>> net = ImageClassifier()
        >>> ig2 = IterativeGradientIG(net)
        >>> # references: 16 images of other classes, shared by every input
        >>> attributions, delta = ig2.attribute(
        ...     images, baselines=references, target=3, n_steps=200,
        ...     clamp=(0.0, 1.0), return_convergence_delta=True)

    References:
        Y. Zhuo and Z. Ge, "IG2: Integrated Gradient on Iterative Gradient Path for Feature
        Attribution", IEEE TPAMI 46(11), 7173-7190, 2024. https://arxiv.org/abs/2406.10852
    """

    _name = "IG2"

    def __init__(
        self,
        forward_func: Callable[..., Tensor],
        representation_layer: Module | None = None,
        representation_input: bool = False,
        multiply_by_inputs: bool = True,
    ) -> None:
        r"""
        Args:
            forward_func (Callable): The forward function of the model or any modification of
                        it.
            representation_layer (torch.nn.Module, optional): The layer whose output defines
                        the representation rep(x) of the GradPath's distance
                        mean((rep(x) - rep(reference))^2). The paper uses a late hidden layer.
                        If None, the model's output is the representation.
                        Default: None
            representation_input (bool, optional): Use the input of `representation_layer`
                        instead of its output.
                        Default: False
            multiply_by_inputs (bool, optional): As Captum's ``IntegratedGradients``: True
                        integrates (x_k - x_k+1) * grad f along the GradPath (global
                        attribution, complete: it adds up to f(input) - f(GradCF)); False
                        returns the mean gradient along the GradPath instead, each step
                        weighing the same (local attribution).
                        Default: True
        """
        super().__init__(forward_func, multiply_by_inputs)
        if representation_layer is not None and not isinstance(representation_layer, Module):
            raise TypeError(
                "`representation_layer` must be a torch.nn.Module or None, got "
                f"{type(representation_layer).__name__}."
            )
        if representation_input and representation_layer is None:
            raise ValueError(
                "`representation_input=True` needs a `representation_layer` whose input to use."
            )
        self.representation_layer = representation_layer
        self.representation_input = representation_input

    @typing.overload
    def attribute(
        self,
        inputs: TensorOrTupleOfTensorsGeneric,
        baselines: BaselineType = None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        n_steps: int = 50,
        method: str = IG2_METHOD,
        internal_batch_size: int | None = None,
        *,
        return_convergence_delta: Literal[True],
        step_size: float | None = None,
        clamp: Any = None,
        nodes: int | None = None,
        epsrel: float | None = EPSREL,
        epsabs: float = 0.0,
        limit: int | None = None,
        show_progress: bool = False,
        n_walks: int = N_WALKS,
        walk: str = "adaptive",
    ) -> tuple[TensorOrTupleOfTensorsGeneric, Tensor]: ...

    @typing.overload
    def attribute(
        self,
        inputs: TensorOrTupleOfTensorsGeneric,
        baselines: BaselineType = None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        n_steps: int = 50,
        method: str = IG2_METHOD,
        internal_batch_size: int | None = None,
        return_convergence_delta: Literal[False] = False,
        step_size: float | None = None,
        clamp: Any = None,
        nodes: int | None = None,
        epsrel: float | None = EPSREL,
        epsabs: float = 0.0,
        limit: int | None = None,
        show_progress: bool = False,
        n_walks: int = N_WALKS,
        walk: str = "adaptive",
    ) -> TensorOrTupleOfTensorsGeneric: ...

    @document_quadrature(IG2_METHOD, "ig2")
    @log_usage()
    def attribute(  # type: ignore[misc]
        self,
        inputs: TensorOrTupleOfTensorsGeneric,
        baselines: BaselineType = None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        n_steps: int = 50,
        method: str = IG2_METHOD,
        internal_batch_size: int | None = None,
        return_convergence_delta: bool = False,
        step_size: float | None = None,
        clamp: Any = None,
        nodes: int | None = None,
        epsrel: float | None = EPSREL,
        epsabs: float = 0.0,
        limit: int | None = None,
        show_progress: bool = False,
        n_walks: int = N_WALKS,
        walk: str = "adaptive",
    ) -> TensorOrTupleOfTensorsGeneric | tuple[TensorOrTupleOfTensorsGeneric, Tensor]:
        r"""
        Attributes the explained output to the inputs along the GradPath of every reference.

        `baselines` are the references. As in Captum, a tensor of N (or 1) examples gives every
        input one reference; **a tensor of any other number R of examples is read as a set of
        R references shared by every input** (N x R paths, averaged), where Captum's IG would
        raise: check R when you pass per-example baselines.

        `inputs`, `target`, `additional_forward_args`, `internal_batch_size` and
        `return_convergence_delta` are those of
        :meth:`captum.attr.IntegratedGradients.attribute`, in the same order; inputs with no
        examples give empty attributions.

        Args:
            baselines (scalar, Tensor, tuple of scalar or Tensor, optional): The
                        counterfactual references, per input tensor:

                        - Captum's forms (a scalar, a tensor of N examples, or of one example)
                          give one reference per input;
                        - a tensor of R != N examples, shape (R, \*F), is a **reference set**
                          shared by every input: N x R paths, attributions averaged over R;
                        - a tensor with one more dimension holds the references of each input,
                          shape (N, R, \*F), or one shared set, shape (1, R, \*F) (use this form
                          when R == N, and inside ``NoiseTunnel``).

                        Default: None, a zero reference.
            n_steps (int, optional): The number of GradPath steps (segments); a path has
                        n_steps + 1 points. Default: 50
            <quadrature>
            internal_batch_size (int, optional): At most this many path points go through
                        the model at once (the N x R points of a step are split into chunks).
                        Default: None, all N x R at once.
            step_size (float, optional): The L2 length eta of each step of the paper's walk,
                        the longest step of the adaptive walk. Default: None, which takes, per
                        path, ||input - reference||_2 / n_steps, so that the paper's GradPath is
                        as long as the straight line to its reference.
            clamp (tuple, optional): ``(low, high)`` bounds of the input domain that every
                        path point is clipped to (the authors' ``clip_min_max``), or one such
                        pair per input tensor. A bound is a number, None (unbounded), or a
                        tensor that broadcasts to one example (e.g. per-channel bounds of shape
                        (C, 1, 1)); low <= high. Default: None
            show_progress (bool, optional): Show a progress bar over the path points.
                        Default: False
            n_walks (int, optional): W, the walks of every reference, averaged: walk 0
                        takes its first direction at the input, walk w >= 1 at the input moved
                        by a fixed pseudo-random offset of relative size 2e-6, so that the
                        walks are W of the walks that rounding chooses between. With W >= 2
                        the call predicts its stability and warns with
                        :class:`~captum_ig2.StabilityWarning` below 0.9; the part of the map
                        that differs from walk to walk falls as 1 / W, the cost grows as W.
                        Default: 8
            walk (str, optional): ``"adaptive"``: a step halves after a reversal
                        (consecutive directions with a negative inner product) and grows back
                        by 1.5 up to `step_size` otherwise; ``"fixed"``: every step is
                        `step_size` long, the paper's walk. Default: ``"adaptive"``

        Returns:
            **attributions** or 2-element tuple of **attributions**, **delta**:

            - **attributions** (*Tensor* or *tuple[Tensor, ...]*): IG2 attributions, of the
              form and shape of `inputs`.
            - **delta** (*Tensor*, returned if return_convergence_delta=True): per example,
              sum(attributions) - (f(input) - mean over references of f(GradCF)): the
              completeness error of the path integral against the path's real end, not
              against the reference, which the path need not reach (also with
              ``multiply_by_inputs=False``).

        Raises:
            ValueError: where an argument is invalid (also where Captum raises an
                        ``AssertionError``, e.g. a missing `target` on a multi-output model),
                        and where the model's output or gradient is NaN or infinite on a path.
        """
        result = self._compute(
            inputs, baselines, target, additional_forward_args, n_steps, method,
            internal_batch_size, step_size, clamp, nodes, epsrel, epsabs, limit, show_progress,
            record=False, n_walks=n_walks, walk=walk,
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
        n_steps: int = 50,
        method: str = IG2_METHOD,
        internal_batch_size: int | None = None,
        step_size: float | None = None,
        clamp: Any = None,
        nodes: int | None = None,
        epsrel: float | None = EPSREL,
        epsabs: float = 0.0,
        limit: int | None = None,
        show_progress: bool = False,
        n_walks: int = N_WALKS,
        walk: str = "adaptive",
        keep_points: bool = True,
    ) -> AttributionPath[TensorOrTupleOfTensorsGeneric]:
        r"""
        Computes the attribution and keeps the GradPath: every point and f along it.

        Takes the arguments of :meth:`attribute`. The GradCF of every walk of every reference
        is ``path(...).end``, shape (N, R W, \*F), walk w of reference r at index r W + w;
        ``path(...).points`` holds the whole GradPaths, shape (n_steps + 1, N, R W, \*F), and
        the record reports each example's completeness error and tolerance, its stability
        (with W >= 2) and the gradient evaluations spent. Memory grows with n_steps unless
        ``keep_points=False``.

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
            internal_batch_size, step_size, clamp, nodes, epsrel, epsabs, limit, show_progress,
            record=keep_points, n_walks=n_walks, walk=walk,
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
        step_size: float | None,
        clamp: Any,
        nodes: int | None,
        epsrel: float | None,
        epsabs: float,
        limit: int,
        show_progress: bool,
        record: bool,
        observer: Observer | None = None,
        n_walks: int = N_WALKS,
        walk: str = "adaptive",
        **options: Any,
    ) -> AttributionPath:
        call = self._prepare(
            inputs, target, n_steps, method, nodes, epsrel, epsabs, limit, internal_batch_size
        )
        n_walks, walk = check_walks(n_walks, walk)
        references, r = format_references(call.inputs, baselines, allow_sets=True)
        if step_size is not None:
            if isinstance(step_size, bool) or not isinstance(step_size, numbers.Real):
                raise TypeError(
                    f"`step_size` must be a positive float or None, got {type(step_size).__name__}."
                )
            if not (math.isfinite(step_size) and step_size > 0):
                raise ValueError(f"`step_size` must be a positive finite float, got {step_size}.")

        # Path p = (n * R + r) * W + w is walk w of input n against reference r.
        w = n_walks
        p = call.n * r * w
        path_inputs = tuple(t.detach().repeat_interleave(r * w, dim=0) for t in call.inputs)
        references = tuple(
            t.reshape(call.n * r, *t.shape[2:]).repeat_interleave(w, dim=0) for t in references
        )
        path_target, path_args = expand_for_paths(target, additional_forward_args, r * w)
        with ExitStack() as stack:
            stack.enter_context(full_float32(path_inputs[0].device))
            model = self._path_model(
                call.is_inputs_tuple, path_inputs, references, path_target, path_args, p, stack,
                **options,
            )  # fmt: skip
            start, references = model.inputs, model.baselines
            clamp = format_clamp(clamp, start)
            _warn_outside_clamp(start, clamp)
            if call.n == 0:
                return empty_result(model, call, r * w, record, w)
            chunk = model.chunk_size(call.internal_batch_size)
            eta = _step_sizes(step_size, start, references, call.n_steps)
            function = stack.enter_context(
                PathFunction(
                    model.forward,
                    model.explain,
                    self.gradient_func,
                    n_paths=p,
                    representation_layer=self.representation_layer,
                    representation_input=self.representation_input,
                    grad_kwargs=model.grad_kwargs,
                )
            )
            function.set_references(references, chunk)
            result = integrate_path(
                start,
                CounterfactualGradientStep(
                    eta, clamp, walk, walk_offsets(start, references, w, clamp)
                ),
                call.n_steps,
                function,
                call.integration,
                heading=references,
                internal_batch_size=chunk,
                record=record,
                show_progress=show_progress,
                desc="IG2",
                observer=observer,
                group_size=r * w,
            )
        # The engine integrates along the path, input -> GradCF; IG2 attributes f(input) -
        # f(GradCF), the reverse direction.
        return finish(self.get_name(), result, model, call, r * w, -1.0, record, 0, walks=w)


def _warn_outside_clamp(start: tuple[Tensor, ...], clamp: Any) -> None:
    """Warns where the paths start far outside ``clamp`` (by more than the clamp's width, far
    beyond a noise sample's excursion in ``NoiseTunnel``): the first step would be clipped into
    the bounds at once, a jump no gradient chose (e.g. images in 0..255, clamp (0, 1))."""
    if clamp is None:
        return
    for i, (t, (low, high)) in enumerate(zip(start, clamp)):
        if low is None or high is None or t.numel() == 0:
            continue
        width = high - low
        far = ((low - t) > width) | ((t - high) > width)
        if bool(far.any()):
            low_text = f"{float(torch.as_tensor(low).min()):.4g}"
            high_text = f"{float(torch.as_tensor(high).max()):.4g}"
            warnings.warn(
                f"IG2: `inputs[{i}]` (for a layer method: the layer's activations) lie in "
                f"[{float(t.min()):.4g}, {float(t.max()):.4g}], far outside `clamp` "
                f"({low_text}, {high_text}): the GradPath's first step would clip them into "
                "the bounds, a jump that no gradient chose. Give inputs in the clamp's range "
                "(e.g. images scaled to [0, 1]) or the clamp of the inputs' range (e.g. "
                "clamp=(0, 255)).",
                UserWarning,
                stacklevel=caller_stacklevel(),
            )


def _step_sizes(
    step_size: float | None, start: tuple[Tensor, ...], references: tuple[Tensor, ...], n: int
) -> Tensor:
    """eta per path: the given step size, or the default one, in the paths' dtype."""
    if step_size is None:
        return default_step_size(start, references, n)
    largest = torch.finfo(start[0].dtype).max
    if step_size > largest:
        raise ValueError(
            f"`step_size` {step_size} does not fit the paths' dtype {start[0].dtype} (largest "
            f"{largest:.3g})."
        )
    return torch.full((start[0].shape[0],), float(step_size), dtype=start[0].dtype,
                      device=start[0].device)  # fmt: skip
