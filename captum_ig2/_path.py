"""The shared path engine.

Every method of the package is a discrete path x_0 -> x_1 -> ... -> x_T, built step by step from
gradients of the model, and a line integral of the explained output's gradient along it, so that
the integral sums to f(x_T) - f(x_0) up to the quadrature error. Two parts, kept apart:

- the **step rule** (``_steps.py``) makes the path: IG2's GradPath, Guided IG's guided path;
- the **quadrature** (``_quadrature.py``) integrates every segment x_k -> x_k+1 with a rule,
  refining the segments whose exactly known residual is too large.

The engine steps all P paths of a call together (P = N inputs x R references): one forward pass
per path point for all of them, one batched evaluation per level of quadrature nodes, in chunks of
at most ``internal_batch_size`` rows, and keeps only the current segment in memory, whatever
``n_steps`` is; the complete trapezoid alone keeps every path point and its gradient, on the
CPU, for its refinement after the walk (``_refine.py``).
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from captum._utils.common import _select_targets
from captum._utils.gradient import compute_gradients
from captum._utils.progress import progress
from torch import Tensor
from torch.nn import Module

from captum_ig2._common import Rows, slice_args, slice_target, take
from captum_ig2._quadrature import Integration, Point

GradientFunc = Callable[..., tuple[Tensor, ...]]


class StepRule(Protocol):
    """Moves every path one step: ``x_k -> x_k+1``.

    ``needs_output_gradient`` and ``needs_distance_gradient`` ask the engine for the explained
    output's gradient at ``x_k`` and for the gradient of the representation distance (IG2's
    GradPath); what was not asked for may come as None. Where ``first_offset`` is not None, the
    distance's gradient of the first step is taken at x_0 + first_offset (IG2's walks), while
    the path, and its integral, start at x_0.
    """

    needs_output_gradient: bool
    needs_distance_gradient: bool
    first_offset: tuple[Tensor, ...] | None

    def __call__(
        self,
        k: int,
        x: tuple[Tensor, ...],
        output_grad: tuple[Tensor, ...] | None,
        distance_grad: tuple[Tensor, ...] | None,
    ) -> tuple[Tensor, ...]: ...


@dataclass
class PathIntegral:
    """What the engine returns for P paths.

    Attributes:
        integral: the line integral of grad f along the path, per feature, one (P, ...) tensor
            per input.
        start_output: the explained output f(x_0), shape (P,).
        end_output: f(x_T), shape (P,).
        residual: the sum of the segments' residuals, shape (P,): f(x_T) - f(x_0) minus the
            integral's sum, whatever the quadrature accumulated (see ``Integration.local``).
        first_nonfinite: per path, the first step at which f was NaN or infinite, or -1,
            shape (P,), int64.
        evaluations: the points at which each path took a gradient (path points and quadrature
            nodes), shape (P,), int64 on the CPU.
        points: with ``record=True``, the path points, one (T + 1, P, ...) tensor per input.
        outputs: with ``record=True``, f at every path point, shape (T + 1, P).
        ends: x_0 and x_T, one pair of (P, ...) tensors per input, kept also without ``record``
            (they cost no memory beyond the walk's own).
        error2: for the complete trapezoid, the estimated squared error of the integral (summed
            over features and pieces), shape (P,), float64 on the CPU; None for other rules.
        held2: the part of ``error2`` in pieces the refinement's memory budget kept from
            being refined, shape (P,); None where there was no refinement.
    """

    integral: tuple[Tensor, ...]
    start_output: Tensor
    end_output: Tensor
    residual: Tensor
    evaluations: Tensor
    first_nonfinite: Tensor
    points: tuple[Tensor, ...] | None = None
    outputs: Tensor | None = None
    ends: tuple[tuple[Tensor, ...], tuple[Tensor, ...]] | None = None
    error2: Tensor | None = None
    held2: Tensor | None = None


class _FullFloat32:
    """Keeps CUDA's float32 convolutions and matrix products in full float32 precision while any
    call of the package runs on a CUDA device, and restores the user's settings after the last.

    PyTorch lets cuDNN run float32 convolutions as TF32 by default, which rounds every product to
    10 bits of mantissa (about 1e-3). A straight path (Captum's IG) hardly notices; a GradPath
    turns such a rounding difference into another walk: on EfficientNet-Lite0 on an H200, IG2's
    default map in float32 had cosine 0.81 to its float64 map with TF32 and 0.98 to 0.99
    without (``benchmarks/stability.py``). The settings are process-wide, so calls in several
    threads share one count and the first to start saves them, the last to end restores them.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._saved: tuple[bool, str] | None = None

    @contextlib.contextmanager
    def __call__(self, device: torch.device) -> Iterator[None]:
        if device.type != "cuda":
            yield
            return
        with self._lock:
            if self._depth == 0:
                self._saved = (
                    torch.backends.cudnn.allow_tf32,
                    torch.get_float32_matmul_precision(),
                )
                torch.backends.cudnn.allow_tf32 = False
                torch.set_float32_matmul_precision("highest")
            self._depth += 1
        try:
            yield
        finally:
            with self._lock:
                self._depth -= 1
                if self._depth == 0 and self._saved is not None:
                    torch.backends.cudnn.allow_tf32 = self._saved[0]
                    torch.set_float32_matmul_precision(self._saved[1])
                    self._saved = None


full_float32 = _FullFloat32()


def on_this_thread() -> Callable[[], bool]:
    """A check that the code runs on the thread that called this: hooks that one call puts on
    a shared model must not act on the forward passes of calls in other threads."""
    owner = threading.get_ident()
    return lambda: threading.get_ident() == owner


class Capture:
    """Forward hook that keeps the latest output (or input) of a layer: flattened per example
    into one (rows, features) tensor, or with ``flat=False`` as the tuple of its tensors. It
    only sees the forward passes of the thread that created it."""

    def __init__(self, module: Module, use_input: bool, flat: bool = True) -> None:
        self.value: Any = None
        self.use_input = use_input
        self.flat = flat
        self.mine = on_this_thread()
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module: Module, inp: Any, out: Any) -> None:
        if not self.mine():
            return
        value = inp if self.use_input else out
        if self.flat:
            self.value = _as_flat(value)
        else:
            self.value = value if isinstance(value, tuple) else (value,)

    def take(self) -> Any:
        value, self.value = self.value, None
        return value

    def remove(self) -> None:
        self.handle.remove()


def _as_flat(value: Any) -> Tensor:
    """A layer's output or input (a tensor, a tuple of them, or a mapping of them such as a
    Hugging Face ``ModelOutput``) as one (rows, features) tensor."""
    if isinstance(value, Tensor):
        return value.reshape(value.shape[0], -1) if value.dim() > 0 else value.reshape(1, 1)
    items = value.values() if isinstance(value, Mapping) else value
    tensors = [v for v in items if isinstance(v, Tensor)]
    if not tensors:
        raise ValueError(
            f"the representation ({type(value).__name__}) holds no tensor: pass a "
            "`representation_layer` whose output (or input) is a tensor, a tuple or a mapping "
            "of tensors."
        )
    rows = tensors[0].shape[0]
    return torch.cat([t.reshape(rows, -1) for t in tensors if t.shape[:1] == (rows,)], dim=1)


Forward = Callable[[tuple[Tensor, ...], Rows], Any]
Explain = Callable[[Any, Rows], Tensor]
# observer(function, internal_batch_size, start, direction, node_paths, node_t, node_weights):
# sees every quadrature node of the attribution (see ``_quadrature.NodeObserver``), to compute
# more along the same path with the same nodes (e.g. conductance).
Observer = Callable[..., None]


def model_forward(
    forward_func: Callable[..., Any], additional_forward_args: tuple[Any, ...] | None, n_paths: int
) -> Forward:
    """Runs the model on path points that are its inputs, with the paths' forward arguments."""

    def forward(x: tuple[Tensor, ...], rows: Rows) -> Any:
        args = slice_args(additional_forward_args, rows, n_paths)
        return forward_func(*x, *args) if args else forward_func(*x)

    return forward


_NOT_A_TENSOR = (
    "The forward function must return a tensor (the outputs, one row per example, that "
    "`target` selects from), got a {kind}. Wrap the model so that it returns one: e.g. "
    "`lambda *x: model(*x).logits` or `lambda *x: model(*x)['logits']` for a Hugging Face "
    "model, `lambda *x: model(*x)[0]` for a model that returns a tuple."
)


def target_output(target: Any) -> Explain:
    """Selects each path's ``target`` from the model output, as Captum's ``_select_targets``."""

    def explain(output: Any, rows: Rows) -> Tensor:
        if not isinstance(output, Tensor):
            raise TypeError(_NOT_A_TENSOR.format(kind=type(output).__name__))
        try:
            selected = _select_targets(output, slice_target(target, rows))
        except (IndexError, AssertionError, RuntimeError) as error:  # only the output is indexed
            shape = (
                f"of shape {tuple(output.shape[1:])} per example"
                if isinstance(output, Tensor)
                else f"({type(output).__name__})"
            )
            raise ValueError(
                f"`target` does not select from the model output {shape}: {str(error).rstrip('.')}."
            ) from error
        return scalar_per_example(selected)

    return explain


class PathFunction:
    """The model seen from the paths: the explained output and, for IG2, the representation
    distance, as functions of the path points of a chunk of paths.

    Gradients go through ``gradient_func``, which has the signature of Captum's
    ``GradientAttribution.gradient_func``: ``(forward_fn, inputs, target_ind,
    additional_forward_args) -> gradients``. With Captum's default ``compute_gradients`` the
    engine takes both gradients of IG2 from one shared forward pass (one forward, two backward
    passes); any other gradient function (a user's swap) is called once per gradient, with a
    ``forward_fn`` of the path points that returns one scalar per path, so it sees every
    evaluation, the representation distance included.

    Args:
        forward: ``forward(x, rows)`` runs the model for the points ``x`` of paths ``rows``:
            the points are the model inputs (:func:`model_forward`), or the activations of a
            layer that the model's own are replaced with (layer attribution).
        explain: ``explain(output, rows)``, the explained scalar of every path from the model's
            output (:func:`target_output`), or from a neuron captured during the forward.
        gradient_func: see above.
        n_paths: P.
        representation_layer: module whose output (or input) is the representation; None means
            the model's output. Only used with :meth:`set_references`.
        representation_input: use the layer's input instead of its output.
        grad_kwargs: more keyword arguments for ``torch.autograd.grad`` (Captum's layer
            methods take them), with Captum's default gradient function.
    """

    def __init__(
        self,
        forward: Forward,
        explain: Explain,
        gradient_func: GradientFunc,
        n_paths: int,
        representation_layer: Module | None = None,
        representation_input: bool = False,
        grad_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if grad_kwargs and gradient_func is not compute_gradients:
            raise ValueError(
                "`grad_kwargs` reach torch.autograd.grad through Captum's default gradient "
                "function only; this object's `gradient_func` was replaced."
            )
        self.grad_kwargs = grad_kwargs or {}
        self.forward = forward
        self.explain = explain
        self.gradient_func = gradient_func
        self.n_paths = n_paths
        self.representation_layer = representation_layer
        self.representation_input = representation_input
        self.reference_representation: Tensor | None = None
        self._capture: Capture | None = None

    # -- hooks -------------------------------------------------------------------------------
    def __enter__(self) -> PathFunction:
        if self.representation_layer is not None:
            self._capture = Capture(self.representation_layer, self.representation_input)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._capture is not None:
            self._capture.remove()
            self._capture = None

    # -- representation distance ---------------------------------------------------------------
    def _representation(self, output: Any) -> Tensor:
        if self._capture is None:
            return _as_flat(output)
        rep = self._capture.take()
        if rep is None:
            raise ValueError(
                f"`representation_layer` {type(self.representation_layer).__name__} was not "
                "called during the forward pass of the model, so it gives no representation. "
                "Pass a module that the forward pass runs, or None for the model output."
            )
        return rep

    def set_references(self, references: tuple[Tensor, ...], internal_batch_size: int | None):
        """Computes the representation of every path's reference (one forward, no gradient)."""
        parts = []
        with torch.no_grad():
            for rows in chunks(self.n_paths, internal_batch_size):
                output = self.forward(tuple(r[rows] for r in references), rows)
                parts.append(self._representation(output).detach())
        self.reference_representation = torch.cat(parts, dim=0)

    def _distance(self, output: Any, rows: Rows) -> Tensor:
        """Mean squared distance between representations, as in the authors' code (MSE)."""
        rep = self._representation(output)
        assert self.reference_representation is not None
        ref = take(self.reference_representation, rows)
        return (rep - ref).pow(2).mean(dim=1)

    def output(self, x: tuple[Tensor, ...], rows: Rows) -> Tensor:
        """The explained scalar of paths ``rows`` at points ``x``, differentiable."""
        value = self.explain(self.forward(x, rows), rows)
        if self._capture is not None:
            self._capture.take()
        return value

    def _value(self, x: tuple[Tensor, ...], rows: Rows) -> Tensor:
        with torch.no_grad():
            value = self.explain(self.forward(x, rows), rows).detach()
        if self._capture is not None:
            self._capture.take()
        return value

    # -- evaluation ---------------------------------------------------------------------------
    def evaluate(
        self,
        x: tuple[Tensor, ...],
        rows: Rows,
        need_value: bool,
        output_grad: bool,
        distance_grad: bool,
    ) -> tuple[Tensor | None, tuple[Tensor, ...] | None, tuple[Tensor, ...] | None]:
        """f(x), and the gradients asked for, at the points ``x`` of paths ``rows``."""
        if not (output_grad or distance_grad):
            return self._value(x, rows), None, None
        if self.gradient_func is compute_gradients:
            return self._evaluate_fused(x, rows, output_grad, distance_grad)

        # A custom gradient function is called once per gradient: it owns the forward pass.
        x = tuple(t.detach().requires_grad_() for t in x)
        out_g, dist_g = None, None
        if distance_grad:
            dist_g = self.gradient_func(
                lambda *points: self._distance(self.forward(points, rows), rows), x, None, None
            )
        if output_grad:
            out_g = self.gradient_func(
                lambda *points: self.explain(self.forward(points, rows), rows), x, None, None
            )
        if self._capture is not None:
            self._capture.take()
        return (self._value(x, rows) if need_value else None), out_g, dist_g

    def _evaluate_fused(
        self, x: tuple[Tensor, ...], rows: Rows, output_grad: bool, distance_grad: bool
    ) -> tuple[Tensor, tuple[Tensor, ...] | None, tuple[Tensor, ...] | None]:
        with torch.enable_grad():
            x = tuple(t.detach().requires_grad_() for t in x)
            output = self.forward(x, rows)
            value = self.explain(output, rows)
            dist_g = None
            if distance_grad:
                distance = self._distance(output, rows)
                dist_g = _grad(distance, x, output_grad, self.grad_kwargs, required=True)
            elif self._capture is not None:
                self._capture.take()
            out_g = _grad(value, x, False, self.grad_kwargs) if output_grad else None
        return value.detach(), out_g, dist_g


def check_repeatable(first: Tensor, second: Tensor) -> None:
    """Raises where two evaluations of the same points differ by more than rounding (relative
    1e-3): a model with dropout in training mode, or another source of randomness, whose path
    integral cannot converge."""
    scale = torch.maximum(first.abs(), second.abs())
    differ = (first - second).abs() > 1e-3 * scale + 1e-6 * float(scale.max().clamp(min=1e-30))
    differ = differ & torch.isfinite(first) & torch.isfinite(second)
    if bool(differ.any()):
        p = int(torch.nonzero(differ)[0])
        raise ValueError(
            "The model's output at the same point differs between two evaluations "
            f"({float(first[p]):.6g} and {float(second[p]):.6g}, path {p}): it is random, e.g. "
            "with dropout in training mode, so that no path integral of it converges. Call "
            "`model.eval()`, or make the forward function deterministic."
        )


def scalar_per_example(selected: Tensor) -> Tensor:
    if selected.dim() == 0:
        selected = selected.reshape(1)
    if selected.dim() > 1 and selected[0].numel() != 1:
        raise ValueError(
            "`target` is needed: the forward function returns "
            f"{selected[0].numel()} values per example (output shape {tuple(selected.shape)}), "
            "and only one scalar per example can be attributed."
        )
    return selected.reshape(selected.shape[0])


def _grad(
    y: Tensor,
    x: tuple[Tensor, ...],
    retain_graph: bool,
    grad_kwargs: dict[str, Any],
    required: bool = False,
) -> tuple[Tensor, ...]:
    """d sum(y) / d x, with zeros where ``y`` does not depend on an input.

    ``grad_kwargs`` go to ``torch.autograd.grad`` (the graph is kept where either asks for it).
    ``required``: ``y`` is the representation distance, which must depend on the path points.
    """
    grads: tuple[Tensor | None, ...] = (None,) * len(x)
    if y.requires_grad:
        options = {"allow_unused": True, **grad_kwargs}
        options["retain_graph"] = retain_graph or bool(grad_kwargs.get("retain_graph"))
        grads = torch.autograd.grad(y.sum(), x, **options)
    if required and all(g is None for g in grads):
        raise ValueError(
            "The representation does not depend on the path points, so the GradPath cannot "
            "move. For layer attribution, `representation_layer` must lie downstream of "
            "`layer`."
        )
    return tuple(torch.zeros_like(t) if g is None else g for g, t in zip(grads, x))


def chunks(n_rows: int, internal_batch_size: int | None) -> list[slice]:
    size = n_rows if internal_batch_size is None else internal_batch_size
    return [slice(a, min(a + size, n_rows)) for a in range(0, n_rows, max(size, 1))]


def _evaluate_chunked(
    function: PathFunction,
    x: tuple[Tensor, ...],
    internal_batch_size: int | None,
    need_value: bool,
    output_grad: bool,
    distance_grad: bool,
) -> tuple[Tensor | None, tuple[Tensor, ...] | None, tuple[Tensor, ...] | None]:
    parts = chunks(x[0].shape[0], internal_batch_size)
    if len(parts) == 1:
        return function.evaluate(x, parts[0], need_value, output_grad, distance_grad)
    results = [
        function.evaluate(tuple(t[rows] for t in x), rows, need_value, output_grad, distance_grad)
        for rows in parts
    ]
    values = torch.cat([r[0] for r in results]) if results[0][0] is not None else None

    def join(i: int) -> tuple[Tensor, ...] | None:
        if results[0][i] is None:
            return None
        return tuple(torch.cat(parts) for parts in zip(*(r[i] for r in results)))

    return values, join(1), join(2)


def _node_evaluator(function: PathFunction) -> Callable[..., Any]:
    """f and its gradient at quadrature nodes, row b of which lies on path ``paths[b]``."""

    def evaluate(points: tuple[Tensor, ...], paths: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        value, grad, _ = function.evaluate(points, paths, True, True, False)
        assert value is not None and grad is not None
        return value, grad

    return evaluate


def integrate_path(
    start: tuple[Tensor, ...],
    step: StepRule,
    n_steps: int,
    function: PathFunction,
    integration: Integration,
    heading: tuple[Tensor, ...],
    internal_batch_size: int | None = None,
    record: bool = False,
    show_progress: bool = False,
    desc: str = "path",
    observer: Observer | None = None,
    group_size: int = 1,
) -> PathIntegral:
    """Walks every path ``n_steps`` steps from ``start`` and integrates the output's gradient.

    Args:
        start: x_0, one (P, ...) tensor per input; never modified.
        step: the step rule that gives x_k+1 from x_k and the gradients at x_k.
        n_steps: T, the number of path segments (T + 1 points).
        function: the model seen from the paths (see :class:`PathFunction`).
        integration: the quadrature rule, tolerance and budget (see ``_quadrature``).
        heading: where the paths head for (IG2: the references, Guided IG: the inputs): f there
            sets the scale of the relative tolerance before the path's end is known.
        internal_batch_size: at most this many points go through the model at once; None: the
            P points of a step at once, and the quadrature's nodes in batches of at most P.
        record: keep every point and f along the path (memory grows with T).
        show_progress: show a progress bar over the path points.
        desc: the progress bar's label.
        observer: sees every quadrature node (see :data:`Observer`), e.g. for conductance.
        group_size: M, the consecutive paths whose mean is one example's attribution (IG2's
            walks and references): the tolerance holds for their mean.
    """
    x = tuple(t.detach() for t in start)
    n_paths = x[0].shape[0]
    # f where the paths head for sets the scale of the relative tolerance; evaluated twice, it
    # also tells a random model (dropout in training mode) before any path is walked.
    heading = tuple(t.detach() for t in heading)
    heading_output = None
    for _ in range(2):
        value, _, _ = _evaluate_chunked(function, heading, internal_batch_size, True, False, False)
        assert value is not None
        if heading_output is not None:
            check_repeatable(heading_output, value)
        heading_output = value
    quadrature = None
    node_evaluate = _node_evaluator(function)
    node_observer = None
    if observer is not None:
        node_observer = functools.partial(observer, function, internal_batch_size)
    total = tuple(torch.zeros_like(t) for t in x)
    residual = torch.zeros(0)
    evaluations = torch.zeros(n_paths, dtype=torch.long)
    error2: Tensor | None = None
    held: Tensor | None = None
    points: list[tuple[Tensor, ...]] = []
    outputs: list[Tensor] = []
    previous: Point | None = None
    start_output = value = first_nonfinite = torch.empty(0)
    rule_start, rule_end = integration.uses_start, integration.uses_end
    bar = progress(desc=desc, total=n_steps + 1) if show_progress else None
    try:
        for k in range(n_steps + 1):
            last = k == n_steps
            # The gradient at a path point serves the rule (a node at a segment's start or end)
            # and the step rule (Guided IG's); IG2's step needs the distance's only.
            output_grad = (
                (rule_start and not last)
                or (rule_end and k > 0)
                or (step.needs_output_gradient and not last)
            )
            distance_grad = step.needs_distance_gradient and not last
            offset = step.first_offset if k == 0 and distance_grad else None
            value, grad, dist_grad = _evaluate_chunked(
                function, x, internal_batch_size, True, output_grad,
                distance_grad and offset is None,
            )  # fmt: skip
            assert value is not None
            if output_grad or (distance_grad and offset is None):  # one forward, 1 or 2 backward
                evaluations += 1
            if offset is not None:  # the first direction, taken a rounding-size away
                probe = tuple(t + o for t, o in zip(x, offset))
                _, _, dist_grad = _evaluate_chunked(
                    function, probe, internal_batch_size, False, False, True
                )
                evaluations += 1
            # Where the model's output stops being finite, remember the step, without a sync.
            if k == 0:
                first_nonfinite = torch.full_like(value, -1, dtype=torch.long)
                residual = torch.zeros_like(value)
                again, _, _ = _evaluate_chunked(
                    function, x, internal_batch_size, True, False, False
                )
                check_repeatable(value, again)
            newly = ~torch.isfinite(value) & (first_nonfinite < 0)
            first_nonfinite = torch.where(newly, k, first_nonfinite)
            point = Point(x, value, grad)
            if record:
                points.append(x)
                outputs.append(value)
            if k == 0:
                start_output = value
                # Without a bound of the caller's, quadrature nodes go through the model in
                # batches of at most one path point per path, as many as a step evaluates, so
                # that refinement needs no more memory than the walk itself.
                quadrature = integration.quadrature(
                    value, heading_output if integration.refines else None, n_steps,
                    internal_batch_size if internal_batch_size is not None else n_paths,
                    group_size,
                )  # fmt: skip
            else:
                assert previous is not None and quadrature is not None
                segment = quadrature.integrate(
                    previous, point, node_evaluate, node_observer, total
                )
                for acc, part in zip(total, segment.integral):
                    acc.add_(part)
                residual += segment.residual
                evaluations += segment.evaluations
                if segment.error2 is not None:
                    error2 = segment.error2 if error2 is None else error2 + segment.error2
            if bar is not None:
                bar.update()
            if last:
                break
            previous = point
            x = step(k, x, grad, dist_grad)
        assert quadrature is not None
        refined = quadrature.refine(total, node_evaluate, None)
        if refined is not None:  # the complete trapezoid, refined across all segments
            change, more, error2, held = refined
            for acc, part in zip(total, change):
                acc.add_(part)
            evaluations += more
    finally:
        if bar is not None:
            bar.close()
    return PathIntegral(
        integral=total,
        start_output=start_output,
        end_output=value,
        residual=residual,
        evaluations=evaluations,
        first_nonfinite=first_nonfinite,
        points=tuple(torch.stack(p) for p in zip(*points)) if record else None,
        outputs=torch.stack(outputs) if record else None,
        ends=(tuple(t.detach() for t in start), x),
        error2=error2,
        held2=held,
    )
