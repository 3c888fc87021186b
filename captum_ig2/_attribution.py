"""What the public path-attribution classes share: the Captum base class and the path record."""

from __future__ import annotations

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
    """

    points: TensorOrTupleOfTensorsGeneric
    outputs: Tensor
    attributions: TensorOrTupleOfTensorsGeneric
    delta: Tensor

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
        inputs: tuple[Tensor, ...],
        baselines: tuple[Tensor, ...],
        target: Any,
        additional_forward_args: tuple[Any, ...] | None,
        n_paths: int,
        stack: ExitStack,
    ) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...], Forward, Explain]:
        """Path-space points of the (P-row) inputs and baselines, the model as a function of
        path points, and the explained scalar; hooks go on ``stack`` so they are removed."""
        forward = model_forward(self.forward_func, additional_forward_args, n_paths)
        return inputs, baselines, forward, target_output(target, n_paths)

    def _format_result(self, is_inputs_tuple: bool, tensors: tuple[Tensor, ...]) -> Any:
        """Attributions (or path points) in the form of the attributed tensors."""
        return _format_output(is_inputs_tuple, tensors)


def mean_over_references(t: Tensor, n: int, r: int) -> Tensor:
    """(N * R, ...) -> (N, ...), averaging the R paths of every input."""
    return t.reshape(n, r, *t.shape[1:]).mean(dim=1)


def per_example_sum(attributions: tuple[Tensor, ...]) -> Tensor:
    return torch.stack([a.reshape(a.shape[0], -1).sum(dim=1) for a in attributions]).sum(dim=0)
