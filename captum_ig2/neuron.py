"""Neuron attribution: IG2 and Guided IG of one neuron (or a selection) of a layer.

As Captum's ``NeuronIntegratedGradients``: the paths run in input space and the explained output
is a neuron of ``layer``, chosen by ``neuron_selector`` in every form Captum accepts (an index
tuple, a tuple with slices, which sums the selected neurons, or a callable of the layer's
output). IG2's GradPath is still driven by the representation distance.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any, Literal

import torch
from captum._utils.common import _format_output, _verify_select_neuron
from captum._utils.typing import BaselineType, TensorOrTupleOfTensorsGeneric
from captum.attr import NeuronAttribution
from captum.log import log_usage
from torch import Tensor
from torch.nn import Module

from captum_ig2._attribution import (
    EPSREL,
    GUIDED_IG_METHOD,
    IG2_METHOD,
    N_WALKS,
    PathModel,
)
from captum_ig2._common import Rows
from captum_ig2._path import Capture, Explain, model_forward, scalar_per_example
from captum_ig2.guided_ig import GuidedIG
from captum_ig2.ig2 import IterativeGradientIG

NeuronSelector = int | tuple[int | slice, ...] | Callable[..., Tensor]


def neuron_output(layer: Module, neuron_selector: NeuronSelector, use_input: bool,
                  stack: ExitStack) -> Explain:  # fmt: skip
    """The selected neuron of ``layer`` as the explained scalar of every path, read from a hook
    that lives on ``stack``; selection through Captum's ``_verify_select_neuron``."""
    capture = Capture(layer, use_input, flat=False)
    stack.callback(capture.remove)

    def explain(output: Any, rows: Rows) -> Tensor:
        return select_neuron(capture.take(), layer, neuron_selector)

    return explain


def select_neuron(value: Any, layer: Module, neuron_selector: NeuronSelector) -> Tensor:
    """The selected neuron of every row, from the layer's captured values; a callable that
    returns one number for the whole batch gives a tensor of shape (1,)."""
    if value is None:
        raise ValueError(
            f"`layer` {layer} was not called during the forward pass of the model, so it "
            "has no neuron to explain."
        )
    _check_selection(value, neuron_selector)
    try:
        selected = _verify_select_neuron(value, neuron_selector)
    except (IndexError, AssertionError) as error:
        shapes = [tuple(v.shape[1:]) for v in value]
        raise ValueError(
            f"`neuron_selector` {neuron_selector!r} does not select a neuron of `layer`, "
            f"whose values have per-example shape(s) {shapes}: {error}"
        ) from error
    if selected.dim() > 1 and selected[0].numel() == 1:
        selected = selected.reshape(selected.shape[0])
    if selected.dim() > 1:
        raise ValueError(
            f"`neuron_selector` must select one value per example, got shape "
            f"{tuple(selected.shape)}."
        )
    return scalar_per_example(selected)


def _selects_one_number_per_batch(
    forward: Any, inputs: tuple[Tensor, ...], layer: Module, neuron_selector: NeuronSelector,
    use_input: bool,
) -> bool:  # fmt: skip
    """Whether a callable ``neuron_selector`` returns one number for a whole batch (which
    Captum admits) rather than one per example: tried on two copies of the first example."""
    if not callable(neuron_selector) or inputs[0].shape[0] == 0:
        return False
    capture = Capture(layer, use_input, flat=False)
    try:
        with torch.no_grad():
            forward(tuple(t[:1].expand(2, *t.shape[1:]) for t in inputs), torch.tensor([0, 0]))
        value = capture.take()
    finally:
        capture.remove()
    return select_neuron(value, layer, neuron_selector).numel() == 1


def _check_selection(value: tuple[Tensor, ...], neuron_selector: NeuronSelector) -> None:
    """Rejects index tuples whose slices select no neuron (Python slicing would not)."""
    if not isinstance(neuron_selector, tuple):
        return
    shape = value[0].shape[1:]
    for dim, index in enumerate(neuron_selector[: len(shape)]):
        if isinstance(index, slice) and len(range(*index.indices(shape[dim]))) == 0:
            raise ValueError(
                f"`neuron_selector` {neuron_selector!r} selects no neuron: {index} is empty "
                f"for dimension {dim + 1} of size {shape[dim]} of the layer's values."
            )


class _NeuronPaths:
    """The explained output of a method is a neuron of ``self.layer``."""

    forward_func: Callable[..., Any]
    layer: Module
    device_ids: list[int] | None

    def _init_layer(self, layer: Module, device_ids: list[int] | None) -> None:
        if not isinstance(layer, Module):
            raise TypeError(f"`layer` must be a torch.nn.Module, got {type(layer).__name__}.")
        if device_ids is not None:
            raise NotImplementedError(
                "`device_ids` (DataParallel) is not supported by the path methods; run the "
                "model on one device."
            )
        self.layer = layer
        self.device_ids = device_ids

    def _path_model(
        self,
        is_inputs_tuple: bool,
        inputs: tuple[Tensor, ...],
        baselines: tuple[Tensor, ...],
        target: Any,
        additional_forward_args: tuple[Any, ...] | None,
        n_paths: int,
        stack: ExitStack,
        neuron_selector: NeuronSelector = 0,
        attribute_to_neuron_input: bool = False,
    ) -> PathModel:
        forward = model_forward(self.forward_func, additional_forward_args, n_paths)
        one_per_batch = _selects_one_number_per_batch(
            forward, inputs, self.layer, neuron_selector, attribute_to_neuron_input
        )
        return PathModel(
            inputs,
            baselines,
            forward,
            neuron_output(self.layer, neuron_selector, attribute_to_neuron_input, stack),
            lambda tensors: _format_output(is_inputs_tuple, tensors),
            # A selection of one number per batch is that row's value only in a batch of one.
            rows_at_once=1 if one_per_batch else None,
        )


class NeuronIterativeGradientIG(_NeuronPaths, IterativeGradientIG, NeuronAttribution):
    r"""
    IG2 of a neuron: the GradPath of :class:`~captum_ig2.IterativeGradientIG`, with the
    selected neuron of `layer` as the explained output. Mirrors
    :class:`captum.attr.NeuronIntegratedGradients`.

    Examples::

        >>> nig2 = NeuronIterativeGradientIG(net, net.conv1)
        >>> # The neuron at channel 3, row 5, column 5 of conv1's output.
        >>> attributions = nig2.attribute(images, (3, 5, 5), baselines=references)
    """

    _name = "Neuron IG2"

    def __init__(
        self,
        forward_func: Callable[..., Tensor],
        layer: Module,
        device_ids: list[int] | None = None,
        multiply_by_inputs: bool = True,
        representation_layer: Module | None = None,
        representation_input: bool = False,
    ) -> None:
        r"""
        The first four arguments are those of :class:`captum.attr.NeuronIntegratedGradients`,
        in the same order.

        Args:
            forward_func (Callable): The forward function of the model or any modification of
                        it.
            layer (torch.nn.Module): The layer that holds the explained neuron.
            device_ids (list[int], optional): Not supported (DataParallel); must be None.
            multiply_by_inputs (bool, optional): As in
                        :class:`~captum_ig2.IterativeGradientIG`. Default: True
            representation_layer, representation_input: as in
                        :class:`~captum_ig2.IterativeGradientIG`.
        """
        IterativeGradientIG.__init__(
            self, forward_func, representation_layer, representation_input, multiply_by_inputs
        )
        self._init_layer(layer, device_ids)

    @typing.overload
    def attribute(
        self,
        inputs: TensorOrTupleOfTensorsGeneric,
        neuron_selector: NeuronSelector,
        baselines: BaselineType = None,
        additional_forward_args: Any = None,
        n_steps: int = 50,
        method: str = IG2_METHOD,
        internal_batch_size: int | None = None,
        attribute_to_neuron_input: bool = False,
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
        neuron_selector: NeuronSelector,
        baselines: BaselineType = None,
        additional_forward_args: Any = None,
        n_steps: int = 50,
        method: str = IG2_METHOD,
        internal_batch_size: int | None = None,
        attribute_to_neuron_input: bool = False,
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

    @log_usage()
    def attribute(  # type: ignore[override, misc]
        self,
        inputs: TensorOrTupleOfTensorsGeneric,
        neuron_selector: NeuronSelector,
        baselines: BaselineType = None,
        additional_forward_args: Any = None,
        n_steps: int = 50,
        method: str = IG2_METHOD,
        internal_batch_size: int | None = None,
        attribute_to_neuron_input: bool = False,
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
        Attributes the selected neuron to the inputs along the GradPath.

        Takes the arguments of :meth:`captum_ig2.IterativeGradientIG.attribute`, without
        `target`.

        Args:
            neuron_selector (int, tuple, or Callable): The neuron of `layer`, as in
                        :meth:`captum.attr.NeuronIntegratedGradients.attribute`: an index
                        tuple into the layer's per-example output, a tuple with slices (the
                        selected neurons are summed), or a callable that takes the layer's
                        output and returns one value per example.
            attribute_to_neuron_input (bool, optional): Select the neuron from the layer's
                        input instead of its output. Default: False
        """
        result = self._compute(
            inputs, baselines, None, additional_forward_args, n_steps, method,
            internal_batch_size, step_size, clamp, nodes, epsrel, epsabs, limit, show_progress,
            record=False, n_walks=n_walks, walk=walk,
            neuron_selector=neuron_selector, attribute_to_neuron_input=attribute_to_neuron_input,
        )  # fmt: skip
        if return_convergence_delta:
            return result.attributions, result.delta
        return result.attributions


class NeuronGuidedIG(_NeuronPaths, GuidedIG, NeuronAttribution):
    r"""
    Guided IG of a neuron: the guided path of :class:`~captum_ig2.GuidedIG`, chosen by the
    gradients of the selected neuron of `layer`, which is also the explained output. Mirrors
    :class:`captum.attr.NeuronIntegratedGradients`.

    Examples::

        >>> ngig = NeuronGuidedIG(net, net.conv1)
        >>> attributions = ngig.attribute(images, (3, 5, 5))
    """

    _name = "Neuron Guided IG"

    def __init__(
        self,
        forward_func: Callable[..., Tensor],
        layer: Module,
        device_ids: list[int] | None = None,
        multiply_by_inputs: bool = True,
    ) -> None:
        r"""
        The arguments of :class:`captum.attr.NeuronIntegratedGradients`, in the same order.

        Args:
            forward_func (Callable): The forward function of the model or any modification of
                        it.
            layer (torch.nn.Module): The layer that holds the explained neuron.
            device_ids (list[int], optional): Not supported (DataParallel); must be None.
            multiply_by_inputs (bool, optional): As in :class:`~captum_ig2.GuidedIG`.
                        Default: True
        """
        GuidedIG.__init__(self, forward_func, multiply_by_inputs)
        self._init_layer(layer, device_ids)

    @typing.overload
    def attribute(
        self,
        inputs: TensorOrTupleOfTensorsGeneric,
        neuron_selector: NeuronSelector,
        baselines: BaselineType = None,
        additional_forward_args: Any = None,
        n_steps: int = 200,
        method: str = GUIDED_IG_METHOD,
        internal_batch_size: int | None = None,
        attribute_to_neuron_input: bool = False,
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
        neuron_selector: NeuronSelector,
        baselines: BaselineType = None,
        additional_forward_args: Any = None,
        n_steps: int = 200,
        method: str = GUIDED_IG_METHOD,
        internal_batch_size: int | None = None,
        attribute_to_neuron_input: bool = False,
        return_convergence_delta: Literal[False] = False,
        fraction: float = 0.25,
        max_dist: float = 0.02,
        nodes: int | None = None,
        epsrel: float | None = EPSREL,
        epsabs: float = 0.0,
        limit: int | None = None,
        show_progress: bool = False,
    ) -> TensorOrTupleOfTensorsGeneric: ...

    @log_usage()
    def attribute(  # type: ignore[override, misc]
        self,
        inputs: TensorOrTupleOfTensorsGeneric,
        neuron_selector: NeuronSelector,
        baselines: BaselineType = None,
        additional_forward_args: Any = None,
        n_steps: int = 200,
        method: str = GUIDED_IG_METHOD,
        internal_batch_size: int | None = None,
        attribute_to_neuron_input: bool = False,
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
        Attributes the selected neuron to the inputs along the guided path.

        Takes the arguments of :meth:`captum_ig2.GuidedIG.attribute`, without `target`, and
        `neuron_selector` and `attribute_to_neuron_input` as
        :meth:`NeuronIterativeGradientIG.attribute`.
        """
        result = self._compute(
            inputs, baselines, None, additional_forward_args, n_steps, method,
            internal_batch_size, fraction, max_dist, nodes, epsrel, epsabs, limit, show_progress,
            record=False,
            neuron_selector=neuron_selector, attribute_to_neuron_input=attribute_to_neuron_input,
        )  # fmt: skip
        if return_convergence_delta:
            return result.attributions, result.delta
        return result.attributions
