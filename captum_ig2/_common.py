"""Argument formatting and validation shared by every class of the package.

All checks live here so that each public class validates the same way, with real exceptions whose
messages name the argument, what was expected and what came.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch
from captum._utils.common import (
    ExpansionTypes,
    _expand_additional_forward_args,
    _expand_target,
    _format_additional_forward_args,
)
from torch import Tensor, nn

from captum_ig2._quadrature import DEFAULT_LIMIT, DEFAULT_NODES, METHODS, Integration


def check_inputs(inputs: tuple[Tensor, ...], floating: bool = True) -> int:
    """Checks the formatted inputs and returns the number of examples.

    ``floating=False`` admits integer inputs (token ids) for paths that run in a layer."""
    if len(inputs) == 0:
        raise ValueError("`inputs` must hold at least one tensor, got an empty tuple.")
    for i, inp in enumerate(inputs):
        if not isinstance(inp, Tensor):
            raise TypeError(f"`inputs[{i}]` must be a torch.Tensor, got {type(inp).__name__}.")
        if floating and not inp.is_floating_point():
            raise TypeError(
                f"`inputs[{i}]` must be a floating point tensor to take gradients, got dtype "
                f"{inp.dtype}. For token ids, attribute to an embedding layer instead."
            )
        if inp.dim() == 0:
            raise ValueError(f"`inputs[{i}]` must have a batch dimension, got a 0-d tensor.")
        if inp.is_floating_point() and not bool(torch.isfinite(inp).all()):
            raise ValueError(f"`inputs[{i}]` holds NaN or infinite values.")
    n = inputs[0].shape[0]
    for i, inp in enumerate(inputs[1:], start=1):
        if inp.shape[0] != n:
            raise ValueError(
                f"All tensors of `inputs` must have the same first (batch) dimension: inputs[0] "
                f"has {n} examples, inputs[{i}] has {inp.shape[0]}."
            )
    return n


def ordinary(value: Any) -> Any:
    """``value``, with a tensor made under ``torch.inference_mode()`` copied into an ordinary
    one (autograd refuses inference tensors); anything else unchanged."""
    if isinstance(value, Tensor) and value.is_inference():
        return value.clone()
    return value


def check_eval_mode(forward_func: Any) -> None:
    """Raises where the model (``forward_func`` itself or the module of a bound method) has a
    dropout or batch-norm module in training mode: its output is then random, or depends on
    the other points of the batch, and no path integral of it can converge."""
    module = forward_func if isinstance(forward_func, nn.Module) else None
    if module is None and isinstance(getattr(forward_func, "__self__", None), nn.Module):
        module = forward_func.__self__
    if module is None:
        return  # a plain function: the engine's repeated evaluation checks it
    training = sorted(
        {
            f"`{name or type(module).__name__}` ({type(m).__name__})"
            for name, m in module.named_modules()
            if m.training
            and (
                isinstance(m, nn.modules.batchnorm._BatchNorm)
                or (isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0)
            )
        }
    )
    if training:
        shown = ", ".join(training[:3]) + (f" and {len(training) - 3} more" if len(training) > 3
                                            else "")  # fmt: skip
        raise ValueError(
            f"The model is in training mode: {shown} would make its output random (dropout) "
            "or dependent on the other points of the batch (batch norm), so that no path "
            "integral of it converges. Call `model.eval()` before attributing."
        )


def check_n_steps(n_steps: Any) -> int:
    return _check_int("n_steps", n_steps, 1)


#: IG2's GradPath walks: "adaptive" (the package's default) and "fixed" (the paper's); see
#: ``_steps.CounterfactualGradientStep``.
WALKS = ("adaptive", "fixed")


def check_walks(n_walks: Any, walk: Any) -> tuple[int, str]:
    """IG2's number of walks per reference and its kind of walk."""
    if walk not in WALKS:
        raise ValueError(
            f"`walk` must be one of {WALKS}, got {walk!r}: 'adaptive' shortens a step after the "
            "GradPath reversed, 'fixed' is the paper's walk of equal steps."
        )
    return _check_int("n_walks", n_walks, 1), walk


def _check_int(name: str, value: Any, least: int) -> int:
    """An integral number (Python's or NumPy's) of at least ``least``, as a Python int."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be an int, got {type(value).__name__}.")
    if value < least:
        raise ValueError(f"`{name}` must be at least {least}, got {value}.")
    return int(value)


def check_integration(method: Any, nodes: Any, epsrel: Any, epsabs: Any, limit: Any) -> Integration:
    """Checks the quadrature arguments shared by every class and bundles them."""
    if method not in METHODS:
        raise ValueError(
            f"`method` must be one of {METHODS}, got {method!r}: Captum's integral "
            "approximation methods, applied to every path segment, or IDGI."
        )
    if nodes is None:
        nodes = DEFAULT_NODES[method]
    if method == "riemann_trapezoid" and isinstance(nodes, numbers.Integral) and nodes == 1:
        raise ValueError(
            "`nodes` must be at least 2 with method='riemann_trapezoid' (a node at each end of "
            "a segment), got 1; one node per segment is method='riemann_left' (the papers' sum)."
        )
    nodes = _check_int("nodes", nodes, 2 if method == "riemann_trapezoid" else 1)
    if method == "complete_trapezoid" and nodes != 2:
        raise ValueError(
            "`nodes` must be 2 (or None) with method='complete_trapezoid', whose pieces have a "
            f"node at each end and are refined by bisection, got {nodes!r}."
        )
    if epsrel is not None:
        epsrel = _check_tolerance("epsrel", epsrel)
    epsabs = _check_tolerance("epsabs", epsabs)
    if limit is None:
        limit = DEFAULT_LIMIT[method]
    limit = _check_int("limit", limit, 1)
    return Integration(method, nodes, epsrel, epsabs, limit)


def _check_tolerance(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a float, got {type(value).__name__}.")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"`{name}` must be a finite float >= 0, got {value}.")
    return float(value)


def check_internal_batch_size(internal_batch_size: Any) -> int | None:
    if internal_batch_size is None:
        return None
    return _check_int("internal_batch_size", internal_batch_size, 1)


def check_unit_interval(name: str, value: Any, *, open_low: bool) -> float:
    """Checks ``value`` lies in (0, 1] (``open_low``) or [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`{name}` must be a float, got {type(value).__name__}.")
    low_ok = value > 0 if open_low else value >= 0
    if not (low_ok and value <= 1) or math.isnan(value):
        interval = "(0, 1]" if open_low else "[0, 1]"
        raise ValueError(f"`{name}` must lie in {interval}, got {value}.")
    return float(value)


def check_target(target: Any, n: int) -> None:
    """Rejects per-example targets whose length is not the number of examples."""
    if isinstance(target, list) or (isinstance(target, Tensor) and target.numel() > 1):
        if len(target) != n:
            raise ValueError(
                f"`target` given per example must have one entry per input example: expected "
                f"{n}, got {len(target)}."
            )


def _baseline_for(inp: Tensor, baseline: Any, i: int) -> tuple[Tensor, bool]:
    """One input's baseline as a tensor of shape (N, R, *F) or (1, R, *F); flag: a reference set."""
    feature_shape = inp.shape[1:]
    if baseline is None:
        return torch.zeros((1, 1, *feature_shape), dtype=inp.dtype, device=inp.device), False
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        if not math.isfinite(baseline):
            raise ValueError(f"`baselines[{i}]` must be finite, got {baseline}.")
        value = float(baseline) if inp.is_floating_point() else int(baseline)
        full = torch.full((1, 1, *feature_shape), value, dtype=inp.dtype)
        return full.to(inp.device), False
    if not isinstance(baseline, Tensor):
        raise TypeError(
            f"`baselines[{i}]` must be a tensor, a number or None, got {type(baseline).__name__}."
        )
    if baseline.is_floating_point() and not bool(torch.isfinite(baseline).all()):
        raise ValueError(f"`baselines[{i}]` holds NaN or infinite values.")
    baseline = ordinary(baseline.detach()).to(device=inp.device, dtype=inp.dtype)
    n = inp.shape[0]
    if baseline.dim() == inp.dim() and baseline.shape[1:] == feature_shape:
        if baseline.shape[0] in (1, n):
            return baseline.unsqueeze(1), False  # Captum's forms: one reference per input
        return baseline.unsqueeze(0), True  # (R, *F): a reference set shared by every input
    if baseline.dim() == inp.dim() + 1 and baseline.shape[2:] == feature_shape:
        if baseline.shape[0] in (1, n):
            return baseline, True  # (N, R, *F) per-input sets, or (1, R, *F) one shared set
    forms = "(1, *F)" if n == 1 else f"({n}, *F) or (1, *F)"
    sets = "(1, R, *F)" if n == 1 else f"({n}, R, *F) or (1, R, *F)"
    raise ValueError(
        f"`baselines[{i}]` has shape {tuple(baseline.shape)}, which does not fit input "
        f"{i} of shape {tuple(inp.shape)}: expected a scalar, {forms}, a reference set "
        f"(R, *F), or reference sets {sets}, with F = {tuple(feature_shape)}."
    )


def _reading(baseline: Tensor, inp: Tensor, is_set: bool) -> str:
    """How a reference tensor was read, in words, for error messages."""
    if not is_set:
        return "one reference per input"
    if baseline.dim() == inp.dim():
        return f"a set of {baseline.shape[0]} references shared by every input"
    if baseline.shape[0] == 1:
        return f"one set of {baseline.shape[1]} references for all inputs"
    return f"a set of {baseline.shape[1]} references per input"


def format_references(
    inputs: tuple[Tensor, ...], baselines: Any, *, allow_sets: bool
) -> tuple[tuple[Tensor, ...], int]:
    """Brings ``baselines`` to one tensor of shape (N, R, *F) per input; returns them and R.

    Captum's forms (None, a scalar, a tensor of N or 1 examples) give one reference per input
    (R = 1). With ``allow_sets``, a tensor of R != N examples is a reference set shared by all
    inputs, and a tensor with one more dimension than the input holds reference sets
    (N, R, *F) or one set (1, R, *F).
    """
    if baselines is None:
        baselines = (None,) * len(inputs)
    elif not isinstance(baselines, tuple):
        baselines = (baselines,)
    if len(baselines) != len(inputs):
        raise ValueError(
            f"`baselines` must give one entry per input tensor: inputs has {len(inputs)} "
            f"tensors, baselines has {len(baselines)}."
        )
    n = inputs[0].shape[0]
    formatted = [_baseline_for(inp, b, i) for i, (inp, b) in enumerate(zip(inputs, baselines))]
    if not allow_sets and any(is_set for _, is_set in formatted):
        shapes = [tuple(b.shape) for b in baselines if isinstance(b, Tensor)]
        raise ValueError(
            f"`baselines` must have the shape of the inputs or a first dimension of 1 (got "
            f"shapes {shapes} for inputs of {n} examples): a first dimension of neither 1 nor "
            f"{n} is read as a set of references shared by every input (IG2's form), and this "
            "method takes no reference sets."
        )
    counts = {ref.shape[1] for ref, _ in formatted}
    counts.discard(1)
    if len(counts) > 1:
        readings = "; ".join(
            f"baselines[{i}] {tuple(b.shape)}: " + _reading(b, inp, is_set)
            for i, (b, inp, (_, is_set)) in enumerate(zip(baselines, inputs, formatted))
            if isinstance(b, Tensor)
        )
        raise ValueError(
            f"All tensors of `baselines` must hold the same number of references, got "
            f"{sorted(counts)}, read as: {readings}. A first dimension of 1 or N = {n} gives "
            "one reference per input (Captum's forms), any other R a set of R references "
            "shared by every input."
        )
    if any(ref.shape[1] == 0 for ref, _ in formatted):
        raise ValueError(
            "`baselines` holds an empty reference set (R = 0): give at least one reference."
        )
    r = counts.pop() if counts else 1
    refs = tuple(ref.expand(n, r, *ref.shape[2:]) for ref, _ in formatted)
    return refs, r


def _python_ints(target: Any) -> Any:
    """``target`` with integral numbers of any kind (``numpy.int64``) as Python ints, which is
    what Captum's target selection accepts; tensors and other values pass unchanged."""
    if isinstance(target, numbers.Integral) and not isinstance(target, bool):
        return int(target)
    if isinstance(target, tuple):
        return tuple(_python_ints(t) for t in target)
    if isinstance(target, list):
        return [_python_ints(t) for t in target]
    return target


def expand_for_paths(target: Any, additional_forward_args: Any, r: int) -> tuple[Any, Any]:
    """Repeats per-example targets and forward arguments once per reference (path p = n * R + r)."""
    target = _python_ints(target)
    args = _format_additional_forward_args(additional_forward_args)
    if args is not None:
        args = tuple(ordinary(a) for a in args)
    if r == 1:
        return target, args
    target = _expand_target(target, r, expansion_type=ExpansionTypes.repeat_interleave)
    if args is not None:
        args = _expand_additional_forward_args(args, r, ExpansionTypes.repeat_interleave)
    return target, args


#: The paths that the rows of an evaluated batch lie on: a range of paths, or a path per row (an
#: int64 tensor on the CPU), as for the quadrature nodes of several paths.
Rows = slice | Tensor


def slice_target(target: Any, rows: Rows) -> Any:
    """The part of a per-path target that belongs to ``rows``; shared targets pass unchanged."""
    if isinstance(target, list):
        return target[rows] if isinstance(rows, slice) else [target[i] for i in rows.tolist()]
    if isinstance(target, Tensor) and target.numel() > 1:
        return target[rows if isinstance(rows, slice) else rows.to(target.device)]
    return target


def slice_args(args: tuple[Any, ...] | None, rows: Rows, n_rows: int) -> tuple[Any, ...] | None:
    """The part of per-path forward arguments that belongs to ``rows``."""
    if args is None:
        return None
    return tuple(
        take(a, rows) if isinstance(a, Tensor) and a.dim() > 0 and a.shape[0] == n_rows else a
        for a in args
    )


def take(t: Tensor, rows: Rows) -> Tensor:
    """The rows ``rows`` of ``t`` (a view for a range)."""
    return t[rows] if isinstance(rows, slice) else t[rows.to(t.device)]


def format_clamp(
    clamp: Any, inputs: tuple[Tensor, ...]
) -> tuple[tuple[Tensor | float | None, Tensor | float | None], ...] | None:
    """``clamp`` as one (low, high) pair per input tensor, or None.

    A bound is None (no bound), a number, or a tensor that broadcasts to one example of its
    input tensor (shape F, e.g. per-channel bounds of shape (C, 1, 1)); NaN is rejected, and
    low must not exceed high anywhere.
    """
    if clamp is None:
        return None

    def bound(value: Any, where: str, inp: Tensor) -> Tensor | float | None:
        if value is None:
            return None
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            if math.isnan(value):
                raise ValueError(f"`{where}` must not be NaN.")
            return float(value)
        if not isinstance(value, Tensor):
            raise TypeError(
                f"`{where}` must be a number, a tensor or None, got {type(value).__name__}."
            )
        feature_shape = inp.shape[1:]
        try:
            shape = torch.broadcast_shapes(value.shape, feature_shape)
        except RuntimeError:
            shape = None
        if shape != feature_shape:
            raise ValueError(
                f"`{where}` of shape {tuple(value.shape)} must broadcast to one example of "
                f"its input, of shape {tuple(feature_shape)}."
            )
        if bool(torch.isnan(value).any()):
            raise ValueError(f"`{where}` must not hold NaN.")
        return value.detach().to(device=inp.device, dtype=inp.dtype)

    def pair(c: Any, where: str, inp: Tensor) -> tuple[Tensor | float | None, ...]:
        if not isinstance(c, Sequence) or isinstance(c, str) or len(c) != 2:
            raise ValueError(f"`{where}` must be a pair (low, high), got {c!r}.")
        low, high = bound(c[0], f"{where}[0]", inp), bound(c[1], f"{where}[1]", inp)
        if isinstance(low, Tensor) != isinstance(high, Tensor) and None not in (low, high):
            # torch.clamp takes two numbers or two tensors, not one of each
            like = low if isinstance(low, Tensor) else high
            low, high = (torch.as_tensor(b, dtype=like.dtype, device=like.device)  # type: ignore[union-attr]
                         for b in (low, high))  # fmt: skip
        if low is not None and high is not None:
            above = torch.as_tensor(low) > torch.as_tensor(high)
            if bool(above.any()):
                raise ValueError(f"`{where}` must have low <= high, got ({c[0]!r}, {c[1]!r}).")
        return low, high

    per_input = (
        isinstance(clamp, Sequence)
        and len(clamp) == len(inputs)
        and all(isinstance(c, Sequence) and not isinstance(c, str) for c in clamp)
    )
    if per_input:
        return tuple(pair(c, f"clamp[{i}]", inp) for i, (c, inp) in enumerate(zip(clamp, inputs)))
    return tuple(pair(clamp, "clamp", inp) for inp in inputs)  # type: ignore[misc]


def flatten(x: tuple[Tensor, ...]) -> Tensor:
    """Concatenates the features of a tuple of (P, ...) tensors into one (P, D) tensor."""
    if len(x) == 1:
        return x[0].reshape(x[0].shape[0], -1)
    return torch.cat([t.reshape(t.shape[0], -1) for t in x], dim=1)


def unflatten(flat: Tensor, like: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """Inverse of :func:`flatten` for tensors shaped as ``like``."""
    sizes = [t[0].numel() for t in like]
    return tuple(part.reshape(t.shape) for part, t in zip(torch.split(flat, sizes, dim=1), like))
