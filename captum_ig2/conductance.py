"""Internal neuron attribution along IG2 and Guided IG paths: path conductance.

After Lundstrom, Huang & Razaviyayn (ICML 2022, "A Rigorous Study of Integrated Gradients Method
and Extensions to Internal Neuron Attributions"): with F = g(h(x)) for the activations h of a
layer, the attribution of a path splits over the layer's neurons by the chain rule,

    sum_i (x_k+1 - x_k)_i dF/dx_i (x_k) = sum_j dg/dh_j (x_k) * [J_h(x_k) (x_k+1 - x_k)]_j,

so neuron j's share of the path integral ("conductance") is the sum over path segments of the
gradient dg/dh_j times the directional derivative of h_j along the segment. Restricting the
segment to an input region (masking x_k+1 - x_k) gives each neuron's share of that region's
attribution. One forward-mode product per path point gives the directional derivative of every
neuron at once, so the cost does not grow with the number of neurons.
"""

from __future__ import annotations

import inspect
import threading
import warnings
from typing import Any

import torch
import torch.autograd.forward_ad as fwAD
from captum._utils.common import (
    _format_additional_forward_args,
    _format_output,
    _format_tensor_into_tuples,
)
from captum.attr import LayerAttribution
from captum.log import log_usage
from torch import Tensor
from torch.nn import Module

from captum_ig2._attribution import mean_over_references, per_example_sum
from captum_ig2._common import take
from captum_ig2._path import Capture, PathFunction, chunks
from captum_ig2._quadrature import broadcast_rows
from captum_ig2.guided_ig import GuidedIG
from captum_ig2.ig2 import IterativeGradientIG
from captum_ig2.layer import _LayerPaths
from captum_ig2.neuron import _NeuronPaths

# PyTorch's forward-mode AD has one dual level for the whole process, not one per thread:
# concurrent conductance calls take turns at their forward-mode section.
_FORWARD_AD_LOCK = threading.Lock()

with warnings.catch_warnings():
    # Forward AD registers torch's own jvp decompositions through torch.jit.script on first
    # use, which torch itself deprecates; importing them here keeps that internal warning away
    # from callers who run with warnings as errors.
    warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=DeprecationWarning)
    try:
        import torch._decomp.decompositions_for_jvp
    except ImportError:  # other torch versions: nothing to preload
        pass

#: Rules that split a piece's residual over the input's features: no decomposition at a layer.
UNDECOMPOSABLE = ("idgi", "complete_trapezoid")
#: The rule a path method's undecomposable default is replaced with.
CONDUCTANCE_METHOD = "gausslegendre"


def _format_region(region: Any, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...] | None:
    """``region`` as one mask per input tensor, broadcastable to its (N, *F) shape."""
    if region is None:
        return None
    masks = region if isinstance(region, tuple) else (region,)
    if len(masks) != len(inputs):
        raise ValueError(
            f"`region` must give one mask per input tensor: inputs has {len(inputs)} tensors, "
            f"region has {len(masks)}."
        )
    formatted = []
    for i, (mask, inp) in enumerate(zip(masks, inputs)):
        if not isinstance(mask, Tensor):
            raise TypeError(f"`region[{i}]` must be a tensor, got {type(mask).__name__}.")
        try:
            torch.broadcast_shapes(mask.shape, inp.shape)
        except RuntimeError as error:
            raise ValueError(
                f"`region[{i}]` of shape {tuple(mask.shape)} does not broadcast to input {i} "
                f"of shape {tuple(inp.shape)}."
            ) from error
        formatted.append(mask.to(device=inp.device, dtype=inp.dtype).expand_as(inp))
    return tuple(formatted)


class _ConductanceObserver:
    """Accumulates every neuron's share of the path integral at the quadrature's own nodes,
    restricted to the region: at a node x with weight w on a segment with direction d, neuron
    j's share is dF/dh_j (x) * [J_h(x) (w d)]_j."""

    def __init__(self, layer: Module, use_input: bool, region: tuple[Tensor, ...] | None) -> None:
        self.layer = layer
        self.use_input = use_input
        self.region = region
        self.total: list[Tensor] | None = None
        self.layer_is_tuple = False

    def __call__(
        self,
        function: PathFunction,
        internal_batch_size: int | None,
        start: tuple[Tensor, ...],
        direction: tuple[Tensor, ...],
        node_paths: Tensor,
        node_t: Tensor,
        node_weights: Tensor,
    ) -> None:
        tangent = direction
        if self.region is not None:
            repeats = start[0].shape[0] // self.region[0].shape[0]
            tangent = tuple(
                d * m.repeat_interleave(repeats, dim=0) for d, m in zip(direction, self.region)
            )
        capture = Capture(self.layer, self.use_input, flat=False)
        try:
            for rows in chunks(node_paths.numel(), internal_batch_size):
                paths = node_paths[rows]
                tangents = tuple(take(t, paths) for t in tangent)
                points = tuple(
                    take(s, paths) + broadcast_rows(node_t[rows], s) * take(d, paths)
                    for s, d in zip(start, direction)
                )
                weights = node_weights[rows]
                with _FORWARD_AD_LOCK, torch.enable_grad(), fwAD.dual_level():
                    duals = tuple(
                        fwAD.make_dual(
                            p.detach().requires_grad_(),
                            (broadcast_rows(weights, t) * t).contiguous(),
                        )
                        for p, t in zip(points, tangents)
                    )
                    value = function.output(duals, paths)
                    h = capture.take()
                    if h is None:
                        raise ValueError(
                            f"`layer` {self.layer} was not called during the forward pass."
                        )
                    self.layer_is_tuple = len(h) > 1
                    grads = torch.autograd.grad(value.sum(), h, allow_unused=True)
                    shares = []
                    for h_i, g_i in zip(h, grads):
                        directional = fwAD.unpack_dual(h_i).tangent
                        if g_i is None or directional is None:
                            shares.append(torch.zeros_like(h_i).detach())
                        else:
                            shares.append((g_i * directional).detach())
                self._add(shares, paths, start[0].shape[0])
        finally:
            capture.remove()

    def _add(self, shares: list[Tensor], paths: Tensor, n_paths: int) -> None:
        if self.total is None:
            self.total = [s.new_zeros((n_paths, *s.shape[1:])) for s in shares]
        for acc, share in zip(self.total, shares):
            acc.index_add_(0, paths.to(acc.device), share)


class LayerPathConductance(LayerAttribution):
    r"""
    The conductance of every neuron of a layer along the path of an IG2 or Guided IG method:
    how much of the method's input attribution flows through each neuron, optionally for an
    input region only ("which neurons make up this region of the attribution map").

    Summed over the layer's neurons, the conductance equals the method's attribution with the
    same quadrature rule summed over the region (exactly, up to floating point, when every path
    from the input to the output goes through the layer). IG2's default rule has no such
    split, so here IG2 takes ``method="gausslegendre"`` by default: compare with
    ``attribute(..., method="gausslegendre")``. It is computed along the same path as the method's
    attribution, with one forward-mode product per path point for all neurons at once.

    Examples::

        >>> ig2 = IterativeGradientIG(net)
        >>> conductance = LayerPathConductance(ig2, net.conv2)
        >>> # Which channels of conv2 make up the attribution of the top-left quarter?
        >>> region = torch.zeros(1, 1, 28, 28); region[..., :14, :14] = 1
        >>> shares = conductance.attribute(images, references, target=3, region=region)
        >>> per_channel = shares.sum(dim=(2, 3))

    References:
        D. Lundstrom, T. Huang, M. Razaviyayn, "A Rigorous Study of Integrated Gradients
        Method and Extensions to Internal Neuron Attributions", ICML 2022.
        K. Dhamdhere, M. Sundararajan, Q. Yan, "How Important Is a Neuron?", ICLR 2019.
    """

    def __init__(self, path_method: IterativeGradientIG | GuidedIG, layer: Module) -> None:
        r"""
        Args:
            path_method (IterativeGradientIG or GuidedIG): The input attribution method whose
                        path is decomposed; its model, representation and gradient function
                        are used.
            layer (torch.nn.Module): The layer whose neurons share the attribution.
        """
        if not isinstance(path_method, (IterativeGradientIG, GuidedIG)) or isinstance(
            path_method, (_LayerPaths, _NeuronPaths)
        ):
            raise TypeError(
                "`path_method` must be an IterativeGradientIG or a GuidedIG (input "
                f"attribution), got {type(path_method).__name__}."
            )
        if not isinstance(layer, Module):
            raise TypeError(f"`layer` must be a torch.nn.Module, got {type(layer).__name__}.")
        if not path_method.multiplies_by_inputs:
            raise ValueError(
                "`path_method` must have `multiply_by_inputs=True`: conductance decomposes the "
                "path integral, not the mean gradient along the path."
            )
        super().__init__(path_method.forward_func, layer)
        self.path_method = path_method

    @classmethod
    def get_name(cls) -> str:
        return "Layer Path Conductance"

    def has_convergence_delta(self) -> bool:
        return True

    @log_usage()
    def attribute(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        baselines: Any = None,
        target: Any = None,
        additional_forward_args: Any = None,
        region: Tensor | tuple[Tensor, ...] | None = None,
        attribute_to_layer_input: bool = False,
        return_convergence_delta: bool = False,
        **path_kwargs: Any,
    ) -> Tensor | tuple[Tensor, ...] | tuple[Tensor | tuple[Tensor, ...], Tensor]:
        r"""
        Each neuron's share of the path method's attribution.

        Args:
            inputs, baselines, target, additional_forward_args: as in the path method's
                        ``attribute`` (for IG2, `baselines` are the references).
            region (Tensor or tuple of Tensor, optional): A mask (0/1, or weights) per input
                        tensor, broadcastable to its shape: only the path's movement inside
                        the region is decomposed. Default: None, the whole input.
            attribute_to_layer_input (bool, optional): Decompose over the layer's input
                        instead of its output. Default: False
            return_convergence_delta (bool, optional): Also return, per example, the sum of
                        the conductance minus the sum of the method's attribution over the
                        region. Default: False
            path_kwargs: the path method's own arguments (n_steps, method,
                        internal_batch_size, step_size, clamp, fraction, max_dist, ...).
                        ``method="complete_trapezoid"`` and ``"idgi"`` split residuals over
                        the input's features, which has no counterpart at a layer, and are
                        refused; where the path method's default is one of them (IG2's), the
                        default here is ``"gausslegendre"``, refined by residuals.

        Returns:
            **conductance** or 2-element tuple of **conductance**, **delta**: conductance of
            the layer's shape (a tuple for a layer with several tensors), summed over the
            path and, for IG2, averaged over the references.
        """
        compute_args = self._path_arguments(path_kwargs)
        formatted = _format_tensor_into_tuples(inputs)
        masks = _format_region(region, formatted)
        if compute_args["method"] in UNDECOMPOSABLE:
            raise ValueError(
                f"`method={compute_args['method']!r}` splits output changes over the input's "
                "features, so it has no decomposition over the neurons of a layer: use one of "
                "the quadrature rules, e.g. 'gausslegendre'."
            )
        observer = _ConductanceObserver(self.layer, attribute_to_layer_input, masks)
        result = self.path_method._compute(
            inputs=inputs,
            baselines=baselines,
            target=target,
            additional_forward_args=additional_forward_args,
            record=False,
            observer=observer,
            **compute_args,
        )
        n = formatted[0].shape[0]
        total = observer.total
        if total is None:  # no examples: no path, no node; the layer's shape, with 0 rows
            total = self._empty_layer(formatted, additional_forward_args, attribute_to_layer_input)
            observer.layer_is_tuple = len(total) > 1
            if not return_convergence_delta:
                return _format_output(observer.layer_is_tuple, total)
            return _format_output(observer.layer_is_tuple, total), total[0].new_zeros(0)
        r = total[0].shape[0] // n
        # IG2 attributes f(input) - f(GradCF): the path runs backwards, averaged over R.
        sign = -1.0 if isinstance(self.path_method, IterativeGradientIG) else 1.0
        conductance = tuple(mean_over_references(sign * t, n, r) for t in total)
        formatted_conductance = _format_output(observer.layer_is_tuple, conductance)
        if not return_convergence_delta:
            return formatted_conductance
        attributions = _format_tensor_into_tuples(result.attributions)
        if masks is not None:
            attributions = tuple(a * m for a, m in zip(attributions, masks))
        delta = per_example_sum(conductance) - per_example_sum(attributions)
        return formatted_conductance, delta

    def _empty_layer(
        self, inputs: tuple[Tensor, ...], additional_forward_args: Any, use_input: bool
    ) -> tuple[Tensor, ...]:
        """Empty conductance, (0, *layer shape), from one forward pass on the empty batch."""
        args = _format_additional_forward_args(additional_forward_args) or ()
        capture = Capture(self.layer, use_input, flat=False)
        try:
            with torch.no_grad():
                self.path_method.forward_func(*inputs, *args)
            value = capture.take()
        except Exception as error:
            raise ValueError(
                "`inputs` hold no examples, and the model does not run on an empty batch, so "
                f"the shape of `layer`'s (empty) conductance is unknown: {error}"
            ) from error
        finally:
            capture.remove()
        if value is None:
            raise ValueError(f"`layer` {self.layer} was not called during the forward pass.")
        return tuple(torch.zeros_like(v) for v in value)

    def _path_arguments(self, path_kwargs: dict[str, Any]) -> dict[str, Any]:
        """The path method's ``attribute`` defaults, updated with the caller's arguments."""
        parameters = inspect.signature(self.path_method.attribute).parameters
        reserved = {"inputs", "baselines", "target", "additional_forward_args"}
        allowed = {name for name in parameters if name not in reserved}
        allowed.discard("return_convergence_delta")
        unknown = set(path_kwargs) - allowed
        if unknown:
            raise TypeError(
                f"{type(self.path_method).__name__}.attribute takes no argument(s) "
                f"{sorted(unknown)}; it takes {sorted(allowed)}."
            )
        arguments = {
            name: p.default
            for name, p in parameters.items()
            if name in allowed and p.default is not inspect.Parameter.empty
        }
        if arguments.get("method") in UNDECOMPOSABLE:
            # IG2's default, the complete trapezoid, has no decomposition at a layer: the
            # earlier default, Gauss-Legendre nodes refined by residuals, takes its place
            arguments["method"] = CONDUCTANCE_METHOD
        arguments.update(path_kwargs)
        return arguments
