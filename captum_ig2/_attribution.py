"""What the public path-attribution classes share: the Captum base class and the path record."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Generic

import torch
from captum._utils.common import _format_output
from captum._utils.typing import TensorOrTupleOfTensorsGeneric
from captum.attr import GradientAttribution
from torch import Tensor

from captum_ig2._path import Explain, Forward, model_forward, target_output


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
        delta: the convergence delta per example, shape (N,), as ``attribute`` returns it.
        input_index: where the explained input lies on the path: 0 (IG2, the path starts
            there) or -1 (Guided IG, the path ends there).
    """

    points: TensorOrTupleOfTensorsGeneric
    outputs: Tensor
    attributions: TensorOrTupleOfTensorsGeneric
    delta: Tensor
    input_index: int = 0

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


def mean_over_references(t: Tensor, n: int, r: int) -> Tensor:
    """(N * R, ...) -> (N, ...), averaging the R paths of every input."""
    return t.reshape(n, r, *t.shape[1:]).mean(dim=1)


def per_example_sum(attributions: tuple[Tensor, ...]) -> Tensor:
    return torch.stack([a.reshape(a.shape[0], -1).sum(dim=1) for a in attributions]).sum(dim=0)
