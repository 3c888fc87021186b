"""How stable an attribution map is: the cosine between a map and the map of the same call with a
difference far below any visible one.

IG2 reports this for free: it averages several walks, and their agreement predicts the agreement
of two calls (:attr:`~captum_ig2.AttributionPath.stability`, with a
:class:`~captum_ig2.StabilityWarning` where it is low).
:func:`map_stability` measures it for any attribution method by a second call, e.g. for Guided
IG, whose choice of the features that move flips where a gradient sits at the `fraction`
threshold, or for Captum's own methods.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from captum._utils.common import _format_tensor_into_tuples
from torch import Tensor

__all__ = ["map_stability"]


def map_stability(
    explainer: Any,
    inputs: Tensor | tuple[Tensor, ...],
    eps: float = 1e-6,
    seed: int = 0,
    **attribute_kwargs: Any,
) -> Tensor:
    r"""
    The cosine between the attributions of `inputs` and those of `inputs` moved by a uniform
    random amount in [-eps, eps] times each example's largest input magnitude: 1 where a
    rounding-sized change leaves the map as it is, lower where it redraws the map.

    It costs two calls of ``explainer.attribute``. For IG2 with several walks (its default),
    ``path(...).stability`` predicts the same figure without a second call.

    Examples::

        >>> from captum_ig2 import GuidedIG, map_stability
        >>> stability = map_stability(GuidedIG(model), images, target=labels)
        >>> stability.min()          # the least stable map of the batch

    Args:
        explainer: anything with Captum's ``attribute(inputs, **kwargs)`` (the package's
                    classes, Captum's ``IntegratedGradients``, ``Saliency``, ...).
        inputs (Tensor or tuple of Tensor): the inputs, as ``attribute`` takes them.
        eps (float, optional): the size of the change, relative to each example's largest
                    absolute input value (1 where that is 0): 1e-6 moves an image in [0, 1]
                    by at most 1e-6, far below an 8-bit image's step of 1/255. Default: 1e-6
        seed (int, optional): seeds the change. Default: 0
        \**attribute_kwargs: passed to both calls of ``attribute`` (`target`, `baselines`,
                    `n_steps`, ...).

    Returns:
        *Tensor* of shape (N,), float64 on the CPU: per example, the cosine between the two
        maps, all attribution tensors flattened together; 1 where both maps are zero.
    """
    if not callable(getattr(explainer, "attribute", None)):
        raise TypeError(
            f"`explainer` must have Captum's `attribute` method, got {type(explainer).__name__}."
        )
    if (
        isinstance(eps, bool)
        or not isinstance(eps, (int, float))
        or not (math.isfinite(eps) and eps > 0)
    ):
        raise ValueError(f"`eps` must be a positive finite float, got {eps!r}.")
    if "return_convergence_delta" in attribute_kwargs:
        raise ValueError("`return_convergence_delta` is not taken: the maps alone are compared.")
    tensors = _format_tensor_into_tuples(inputs)
    if not all(isinstance(t, Tensor) and t.is_floating_point() for t in tensors):
        raise TypeError("`inputs` must be floating point tensors, as `attribute` takes them.")
    generator = torch.Generator().manual_seed(seed)
    moved = []
    for t in tensors:
        largest = t.detach().abs().reshape(t.shape[0], -1).amax(dim=1) if t[0].numel() else None
        scale = torch.ones(t.shape[0], dtype=torch.float64)
        if largest is not None:
            scale = torch.where(largest > 0, largest.double().cpu(), 1.0)
        change = (torch.rand(t.shape, generator=generator, dtype=torch.float64) * 2 - 1) * eps
        change = change * scale.view(-1, *([1] * (t.dim() - 1)))
        moved.append((t.detach().double().cpu() + change).to(device=t.device, dtype=t.dtype))
    moved_inputs: Any = tuple(moved) if isinstance(inputs, tuple) else moved[0]
    first = _flat(explainer.attribute(inputs, **attribute_kwargs))
    second = _flat(explainer.attribute(moved_inputs, **attribute_kwargs))
    norms = first.norm(dim=1) * second.norm(dim=1)
    cosine = (first * second).sum(dim=1) / torch.where(norms > 0, norms, 1.0)
    both_zero = (first.norm(dim=1) == 0) & (second.norm(dim=1) == 0)
    return torch.where(both_zero, 1.0, cosine)


def _flat(attributions: Any) -> Tensor:
    """Attributions (a tensor, a tuple or a list of them) as one (N, features) float64 tensor."""
    parts = attributions if isinstance(attributions, (tuple, list)) else (attributions,)
    return torch.cat([p.detach().double().cpu().reshape(p.shape[0], -1) for p in parts], dim=1)
