"""Layer attribution: IG2 and Guided IG paths in a layer's activation space.

As Captum's ``LayerIntegratedGradients``, the path starts and ends at the layer activations of
the inputs and of the baselines (references), and the rest of the network is evaluated by
substituting the layer's output (or input) with the path points through a forward hook. The
typical use is text: attribute to the embedding layer of a model that takes token ids.
"""

from __future__ import annotations

import functools
import typing
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from typing import Any, Literal

import torch
from captum._utils.common import _format_output
from captum._utils.typing import BaselineType, ModuleOrModuleList, TargetType
from captum.attr import LayerAttribution
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
from captum_ig2._common import Rows, slice_args, take
from captum_ig2._path import Capture, Forward, on_this_thread, target_output
from captum_ig2.guided_ig import GuidedIG
from captum_ig2.ig2 import IterativeGradientIG

LayerAttributions = Tensor | tuple[Tensor, ...] | list[Tensor | tuple[Tensor, ...]]


def _layers(layer: ModuleOrModuleList) -> list[Module]:
    layers = layer if isinstance(layer, list) else [layer]
    for i, module in enumerate(layers):
        if not isinstance(module, Module):
            raise TypeError(
                f"`layer` must be a torch.nn.Module or a list of them; entry {i} is a "
                f"{type(module).__name__}."
            )
    return layers


def layer_activations(
    forward_func: Callable[..., Any],
    inputs: tuple[Tensor, ...],
    layer: ModuleOrModuleList,
    additional_forward_args: tuple[Any, ...] | None,
    attribute_to_layer_input: bool,
) -> tuple[tuple[Tensor, ...], list[int]]:
    """The activations of every layer, as one tuple, and how many tensors each layer has.

    One forward pass without gradients; the model's own errors pass through untouched."""
    layers = _layers(layer)
    captures = [Capture(module, attribute_to_layer_input, flat=False) for module in layers]
    try:
        with torch.no_grad():
            forward_func(*inputs, *(additional_forward_args or ()))
    finally:
        for capture in captures:
            capture.remove()
    per_layer = []
    for module, capture in zip(layers, captures):
        if capture.value is None:
            raise ValueError(
                f"`layer` {module} was not called during the forward pass of the model: pass a "
                "module that the forward pass runs."
            )
        per_layer.append(tuple(t for t in capture.value if isinstance(t, Tensor)))
    flat = tuple(t.detach() for layer_tensors in per_layer for t in layer_tensors)
    for t in flat:
        if not t.is_floating_point():
            raise TypeError(
                f"`layer` {layer} gives {t.dtype} activations; a path needs floating point ones."
            )
    return flat, [len(layer_tensors) for layer_tensors in per_layer]


def _replace_output(
    module: Module, inp: Any, out: Any, part: tuple[Tensor, ...], mine: Callable[[], bool]
) -> Any:
    if not mine():
        return None  # another thread's forward pass: leave it alone
    return part if isinstance(out, tuple) else part[0]


def _replace_input(
    module: Module, inp: Any, part: tuple[Tensor, ...], mine: Callable[[], bool]
) -> Any:
    return part if mine() else None


def substituted_forward(
    forward_func: Callable[..., Any],
    layers: Sequence[Module],
    layout: Sequence[int],
    inputs: tuple[Tensor, ...],
    additional_forward_args: tuple[Any, ...] | None,
    n_paths: int,
    attribute_to_layer_input: bool,
) -> Forward:
    """The model as a function of layer activations: runs it on the paths' inputs with the
    layers' outputs (or inputs) replaced by the path points; the hooks live for one call and
    act on the calling thread's forward pass only."""
    offsets = [0]
    for count in layout:
        offsets.append(offsets[-1] + count)

    def forward(x: tuple[Tensor, ...], rows: Rows) -> Any:
        handles = []
        mine = on_this_thread()
        try:
            for i, layer in enumerate(layers):
                part = x[offsets[i] : offsets[i + 1]]
                if attribute_to_layer_input:
                    hook = functools.partial(_replace_input, part=part, mine=mine)
                    handles.append(layer.register_forward_pre_hook(hook))
                else:
                    hook = functools.partial(_replace_output, part=part, mine=mine)
                    handles.append(layer.register_forward_hook(hook))
            chunk = tuple(take(t, rows) for t in inputs)
            args = slice_args(additional_forward_args, rows, n_paths)
            return forward_func(*chunk, *args) if args else forward_func(*chunk)
        finally:
            for handle in handles:
                handle.remove()

    return forward


class _LayerPaths:
    """The paths of a method run in the activation space of ``self.layer``."""

    _floating_inputs = False

    forward_func: Callable[..., Any]
    layer: ModuleOrModuleList
    device_ids: list[int] | None

    def _init_layer(self, layer: ModuleOrModuleList, device_ids: list[int] | None) -> None:
        _layers(layer)
        if device_ids is not None:
            raise NotImplementedError(
                "`device_ids` (DataParallel) is not supported by the path methods' layer "
                "substitution; run the model on one device."
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
        attribute_to_layer_input: bool = False,
        grad_kwargs: dict[str, Any] | None = None,
    ) -> PathModel:
        layers = _layers(self.layer)
        if grad_kwargs is not None and not isinstance(grad_kwargs, dict):
            raise TypeError(
                f"`grad_kwargs` must be a dict or None, got {type(grad_kwargs).__name__}."
            )
        try:
            start, layout = layer_activations(
                self.forward_func, inputs, self.layer, additional_forward_args,
                attribute_to_layer_input,
            )  # fmt: skip
        except Exception as error:
            if n_paths == 0:  # the layer's shape needs one forward pass, of an empty batch
                raise ValueError(
                    "`inputs` hold no examples, and the model cannot run an empty batch to "
                    f"give the shape of `layer` ({type(error).__name__}: {error})."
                ) from error
            raise
        other, _ = layer_activations(
            self.forward_func,
            baselines,
            self.layer,
            additional_forward_args,
            attribute_to_layer_input,
        )
        forward = substituted_forward(
            self.forward_func,
            layers,
            layout,
            inputs,
            additional_forward_args,
            n_paths,
            attribute_to_layer_input,
        )
        return PathModel(
            start,
            other,
            forward,
            target_output(target),
            functools.partial(self._format_layers, layout=layout),
            grad_kwargs,
        )

    def _format_layers(self, tensors: tuple[Tensor, ...], layout: list[int]) -> LayerAttributions:
        """As Captum's layer methods: per layer a tensor, or a tuple for a tuple-valued layer;
        a list over layers when ``layer`` is a list."""
        per_layer = []
        start = 0
        for count in layout:
            per_layer.append(_format_output(count > 1, tensors[start : start + count]))
            start += count
        return per_layer if isinstance(self.layer, list) else per_layer[0]


class LayerIterativeGradientIG(_LayerPaths, IterativeGradientIG, LayerAttribution):
    r"""
    IG2 in the activation space of a layer: the GradPath starts at the layer activations of
    the input and descends the representation distance to each reference's activations; the
    attributions have the layer's shape. Mirrors :class:`captum.attr.LayerIntegratedGradients`.

    The representation layer (default: the model output) must lie downstream of `layer`.

    Examples::

        >>> # Token ids in, an embedding layer to attribute to.
        >>> lig2 = LayerIterativeGradientIG(model, model.embedding)
        >>> attributions = lig2.attribute(token_ids, baselines=reference_ids, target=1)
    """

    _name = "Layer IG2"

    def __init__(
        self,
        forward_func: Callable[..., Tensor],
        layer: ModuleOrModuleList,
        device_ids: list[int] | None = None,
        multiply_by_inputs: bool = True,
        representation_layer: Module | None = None,
        representation_input: bool = False,
    ) -> None:
        r"""
        The first four arguments are those of :class:`captum.attr.LayerIntegratedGradients`,
        in the same order.

        Args:
            forward_func (Callable): The forward function of the model or any modification of
                        it.
            layer (torch.nn.Module or list of torch.nn.Module): The layer(s) whose output (or
                        input, with `attribute_to_layer_input`) the path runs in.
            device_ids (list[int], optional): Not supported (DataParallel); must be None.
            multiply_by_inputs (bool, optional): True: the path integral of
                        (h_k - h_k+1) * dF/dh along the GradPath in the layer's activations h
                        (global attribution); False: the mean gradient dF/dh along it (local).
                        Default: True
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
        inputs: Tensor | tuple[Tensor, ...],
        baselines: BaselineType = None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        n_steps: int = 50,
        method: str = IG2_METHOD,
        internal_batch_size: int | None = None,
        *,
        return_convergence_delta: Literal[True],
        attribute_to_layer_input: bool = False,
        grad_kwargs: dict[str, Any] | None = None,
        step_size: float | None = None,
        clamp: Any = None,
        nodes: int | None = None,
        epsrel: float | None = EPSREL,
        epsabs: float = 0.0,
        limit: int | None = None,
        show_progress: bool = False,
        n_walks: int = N_WALKS,
        walk: str = "adaptive",
    ) -> tuple[LayerAttributions, Tensor]: ...

    @typing.overload
    def attribute(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        baselines: BaselineType = None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        n_steps: int = 50,
        method: str = IG2_METHOD,
        internal_batch_size: int | None = None,
        return_convergence_delta: Literal[False] = False,
        attribute_to_layer_input: bool = False,
        grad_kwargs: dict[str, Any] | None = None,
        step_size: float | None = None,
        clamp: Any = None,
        nodes: int | None = None,
        epsrel: float | None = EPSREL,
        epsabs: float = 0.0,
        limit: int | None = None,
        show_progress: bool = False,
        n_walks: int = N_WALKS,
        walk: str = "adaptive",
    ) -> LayerAttributions: ...

    @log_usage()
    def attribute(  # type: ignore[override, misc]
        self,
        inputs: Tensor | tuple[Tensor, ...],
        baselines: BaselineType = None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        n_steps: int = 50,
        method: str = IG2_METHOD,
        internal_batch_size: int | None = None,
        return_convergence_delta: bool = False,
        attribute_to_layer_input: bool = False,
        grad_kwargs: dict[str, Any] | None = None,
        step_size: float | None = None,
        clamp: Any = None,
        nodes: int | None = None,
        epsrel: float | None = EPSREL,
        epsabs: float = 0.0,
        limit: int | None = None,
        show_progress: bool = False,
        n_walks: int = N_WALKS,
        walk: str = "adaptive",
    ) -> LayerAttributions | tuple[LayerAttributions, Tensor]:
        r"""
        Attributes the explained output to the layer's activations along the GradPath.

        Takes the arguments of :meth:`captum_ig2.IterativeGradientIG.attribute`; `baselines`
        (the references) are given in input space, as in Captum's layer methods, and `clamp`
        bounds the layer activations.

        Args:
            attribute_to_layer_input (bool, optional): Run the path in the layer's input
                        instead of its output. Default: False
            grad_kwargs (dict, optional): More keyword arguments for ``torch.autograd.grad``,
                        as in :class:`captum.attr.LayerIntegratedGradients` (with Captum's
                        default `gradient_func` only). Default: None

        Returns:
            **attributions** or 2-element tuple of **attributions**, **delta**: attributions
            of the layer's shape (a tuple for a layer with several output tensors, a list
            for a list of layers), and the delta as in
            :meth:`captum_ig2.IterativeGradientIG.attribute`.
        """
        result = self._compute(
            inputs, baselines, target, additional_forward_args, n_steps, method,
            internal_batch_size, step_size, clamp, nodes, epsrel, epsabs, limit, show_progress,
            record=False, n_walks=n_walks, walk=walk,
            attribute_to_layer_input=attribute_to_layer_input, grad_kwargs=grad_kwargs,
        )  # fmt: skip
        if return_convergence_delta:
            return result.attributions, result.delta
        return result.attributions


class LayerGuidedIG(_LayerPaths, GuidedIG, LayerAttribution):
    r"""
    Guided IG in the activation space of a layer: the guided path runs from the layer
    activations of the baselines to those of the inputs; the attributions have the layer's
    shape. Mirrors :class:`captum.attr.LayerIntegratedGradients`.

    Examples::

        >>> lgig = LayerGuidedIG(model, model.embedding)
        >>> attributions = lgig.attribute(token_ids, baselines=pad_ids, target=1)
    """

    _name = "Layer Guided IG"

    def __init__(
        self,
        forward_func: Callable[..., Tensor],
        layer: ModuleOrModuleList,
        device_ids: list[int] | None = None,
        multiply_by_inputs: bool = True,
    ) -> None:
        r"""
        The arguments of :class:`captum.attr.LayerIntegratedGradients`, in the same order.

        Args:
            forward_func (Callable): The forward function of the model or any modification of
                        it.
            layer (torch.nn.Module or list of torch.nn.Module): The layer(s) whose output (or
                        input, with `attribute_to_layer_input`) the path runs in.
            device_ids (list[int], optional): Not supported (DataParallel); must be None.
            multiply_by_inputs (bool, optional): True: the path integral of
                        (h_k+1 - h_k) * dF/dh along the guided path in the layer's activations
                        h (global attribution); False: the mean gradient dF/dh along it (local).
                        Default: True
        """
        GuidedIG.__init__(self, forward_func, multiply_by_inputs)
        self._init_layer(layer, device_ids)

    @typing.overload
    def attribute(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        baselines: BaselineType = None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        n_steps: int = 200,
        method: str = GUIDED_IG_METHOD,
        internal_batch_size: int | None = None,
        *,
        return_convergence_delta: Literal[True],
        attribute_to_layer_input: bool = False,
        grad_kwargs: dict[str, Any] | None = None,
        fraction: float = 0.25,
        max_dist: float = 0.02,
        nodes: int | None = None,
        epsrel: float | None = EPSREL,
        epsabs: float = 0.0,
        limit: int | None = None,
        show_progress: bool = False,
    ) -> tuple[LayerAttributions, Tensor]: ...

    @typing.overload
    def attribute(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        baselines: BaselineType = None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        n_steps: int = 200,
        method: str = GUIDED_IG_METHOD,
        internal_batch_size: int | None = None,
        return_convergence_delta: Literal[False] = False,
        attribute_to_layer_input: bool = False,
        grad_kwargs: dict[str, Any] | None = None,
        fraction: float = 0.25,
        max_dist: float = 0.02,
        nodes: int | None = None,
        epsrel: float | None = EPSREL,
        epsabs: float = 0.0,
        limit: int | None = None,
        show_progress: bool = False,
    ) -> LayerAttributions: ...

    @log_usage()
    def attribute(  # type: ignore[override, misc]
        self,
        inputs: Tensor | tuple[Tensor, ...],
        baselines: BaselineType = None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        n_steps: int = 200,
        method: str = GUIDED_IG_METHOD,
        internal_batch_size: int | None = None,
        return_convergence_delta: bool = False,
        attribute_to_layer_input: bool = False,
        grad_kwargs: dict[str, Any] | None = None,
        fraction: float = 0.25,
        max_dist: float = 0.02,
        nodes: int | None = None,
        epsrel: float | None = EPSREL,
        epsabs: float = 0.0,
        limit: int | None = None,
        show_progress: bool = False,
    ) -> LayerAttributions | tuple[LayerAttributions, Tensor]:
        r"""
        Attributes the explained output to the layer's activations along the guided path.

        Takes the arguments of :meth:`captum_ig2.GuidedIG.attribute`; `baselines` are given
        in input space, as in Captum's layer methods.

        Args:
            attribute_to_layer_input (bool, optional): Run the path in the layer's input
                        instead of its output. Default: False
            grad_kwargs (dict, optional): More keyword arguments for ``torch.autograd.grad``,
                        as in :class:`captum.attr.LayerIntegratedGradients` (with Captum's
                        default `gradient_func` only). Default: None

        Returns:
            **attributions** or 2-element tuple of **attributions**, **delta**: attributions
            of the layer's shape (a tuple for a layer with several output tensors, a list for
            a list of layers), and the delta as in :meth:`captum_ig2.GuidedIG.attribute`.
        """
        result = self._compute(
            inputs, baselines, target, additional_forward_args, n_steps, method,
            internal_batch_size, fraction, max_dist, nodes, epsrel, epsabs, limit, show_progress,
            record=False,
            attribute_to_layer_input=attribute_to_layer_input, grad_kwargs=grad_kwargs,
        )  # fmt: skip
        if return_convergence_delta:
            return result.attributions, result.delta
        return result.attributions
