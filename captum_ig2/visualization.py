"""Pictures of paths and attributions, on top of ``captum.attr.visualization``.

Every function takes tensors on any device (CPU or CUDA), images as (C, H, W) and token
sequences as (L,) or (L, D), and returns a matplotlib ``Figure``; none calls ``plt.show()``.

- :func:`visualize_path`: the path as a strip of frames (IG2: input ... GradCF; Guided IG:
  baseline ... input);
- :func:`visualize_path_outputs`: the explained output along the path, with the completeness gap;
- :func:`visualize_counterfactual`: the input, the GradCF and their difference;
- :func:`visualize_attributions`: attribution maps of several methods side by side;
- :func:`visualize_token_attributions`: per-token attributions as bars, and
  :func:`text_record` to hand them to ``captum.attr.visualization.visualize_text``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from captum.attr import visualization as viz
from torch import Tensor

from captum_ig2._attribution import AttributionPath

__all__ = [
    "text_record",
    "visualize_attributions",
    "visualize_counterfactual",
    "visualize_path",
    "visualize_path_outputs",
    "visualize_token_attributions",
]


def _figure(n_rows: int, n_cols: int, size: float = 2.2) -> tuple[Any, np.ndarray]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size * n_cols, size * n_rows))
    axes = np.asarray(fig.subplots(n_rows, n_cols, squeeze=False))
    return fig, axes


def _hwc(image: Tensor) -> np.ndarray:
    """(C, H, W) or (H, W) tensor, any device, as an (H, W, C) float array."""
    array = image.detach().cpu().double()
    if array.dim() == 2:
        array = array.unsqueeze(0)
    if array.dim() != 3:
        raise ValueError(f"an image must have shape (C, H, W) or (H, W), got {tuple(image.shape)}.")
    return array.permute(1, 2, 0).numpy()


def _show(ax: Any, image: Tensor, value_range: tuple[float, float] | None) -> None:
    array = _hwc(image)
    low, high = value_range if value_range is not None else (float(array.min()), float(array.max()))
    scaled = np.clip((array - low) / ((high - low) or 1.0), 0.0, 1.0)
    if scaled.shape[2] == 1:
        ax.imshow(scaled[:, :, 0], cmap="gray", vmin=0.0, vmax=1.0)
    else:
        ax.imshow(scaled)
    ax.set_xticks([])
    ax.set_yticks([])


def _path_points(path: AttributionPath | Tensor, example: int, reference: int) -> Tensor:
    points = path.points if isinstance(path, AttributionPath) else path
    if isinstance(points, tuple):
        points = points[0]
    if points.dim() < 4:
        raise ValueError(
            f"path points must have shape (T + 1, N, R, ...), got {tuple(points.shape)}."
        )
    return points[:, example, reference]


def visualize_path(
    path: AttributionPath | Tensor,
    example: int = 0,
    reference: int = 0,
    n_frames: int = 8,
    value_range: tuple[float, float] | None = None,
    title: str | None = None,
) -> Any:
    """The path of one example as a strip of ``n_frames`` evenly spaced frames.

    Args:
        path: an :class:`~captum_ig2.AttributionPath` (``method.path(...)``) or its points,
            shape (T + 1, N, R, C, H, W); for tuple inputs the first tensor is shown.
        example, reference: which path (input n, reference r) to show.
        n_frames: how many points to show, first and last included.
        value_range: the (low, high) of the data for a common grey scale; default: the range
            of the path.
        title: the figure's title.

    Returns:
        matplotlib ``Figure``.
    """
    points = _path_points(path, example, reference)
    n_frames = max(2, min(n_frames, points.shape[0]))
    steps = np.linspace(0, points.shape[0] - 1, n_frames).round().astype(int)
    if value_range is None:
        value_range = (float(points.min()), float(points.max()))
    fig, axes = _figure(1, n_frames)
    for ax, k in zip(axes[0], steps):
        _show(ax, points[k], value_range)
        ax.set_title(f"step {k}", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def visualize_path_outputs(
    path: AttributionPath,
    example: int = 0,
    labels: Sequence[str] | None = None,
    title: str | None = None,
) -> Any:
    """The explained output f along the path of one example, one curve per reference, with the
    completeness gap: sum of the attributions against the change of f along the path.

    Args:
        path: an :class:`~captum_ig2.AttributionPath`.
        example: which input to show.
        labels: a label per reference (curve); default "reference r".
        title: the figure's title.

    Returns:
        matplotlib ``Figure``.
    """
    outputs = path.outputs[:, example].detach().cpu().double().numpy()  # (T + 1, R)
    attributions = path.attributions
    parts = attributions if isinstance(attributions, tuple) else (attributions,)
    total = sum(float(a[example].detach().double().sum().cpu()) for a in parts)
    delta = float(path.delta[example].detach().cpu())
    fig, axes = _figure(1, 1, size=4.0)
    ax = axes[0, 0]
    for r in range(outputs.shape[1]):
        label = labels[r] if labels is not None else f"reference {r}"
        ax.plot(outputs[:, r], label=label if outputs.shape[1] > 1 else None)
    at_input = outputs[path.input_index].mean()
    at_other_end = outputs[-1 - path.input_index].mean()
    ax.axhline(at_input, color="gray", lw=0.8, ls=":")
    ax.axhline(at_other_end, color="gray", lw=0.8, ls=":")
    ax.set_xlabel("path step")
    ax.set_ylabel("explained output f")
    # Completeness: the attributions add up to f(input) - f(other end), up to delta.
    ax.set_title(
        f"f(input) - f(other end) = {at_input - at_other_end:+.4f}\n"
        f"sum of attributions = {total:+.4f}, |delta| = {abs(delta):.2e}",
        fontsize=9,
    )
    if 1 < outputs.shape[1] <= 8:
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def visualize_counterfactual(
    inputs: Tensor,
    gradcf: Tensor,
    value_range: tuple[float, float] | None = None,
    title: str | None = None,
) -> Any:
    """One input, its GradCF and their difference (input - GradCF), side by side.

    Args:
        inputs: one input, (C, H, W).
        gradcf: its GradCF, (C, H, W) (e.g. ``path.end[n].mean(0)`` over references).
        value_range: the (low, high) of the data; default: the range of both images.
        title: the figure's title.

    Returns:
        matplotlib ``Figure``.
    """
    if inputs.shape != gradcf.shape:
        raise ValueError(
            f"`inputs` and `gradcf` must have one shape, got {tuple(inputs.shape)} and "
            f"{tuple(gradcf.shape)}."
        )
    if value_range is None:
        value_range = (
            float(torch.minimum(inputs.min(), gradcf.min())),
            float(torch.maximum(inputs.max(), gradcf.max())),
        )
    fig, axes = _figure(1, 3)
    _show(axes[0, 0], inputs, value_range)
    axes[0, 0].set_title("input", fontsize=9)
    _show(axes[0, 1], gradcf, value_range)
    axes[0, 1].set_title("GradCF", fontsize=9)
    difference = _hwc(inputs - gradcf)
    viz.visualize_image_attr(
        difference, method="heat_map", sign="all", plt_fig_axis=(fig, axes[0, 2]),
        use_pyplot=False, title="input - GradCF",
    )  # fmt: skip
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def visualize_attributions(
    attributions: Mapping[str, Tensor],
    inputs: Tensor | None = None,
    sign: str = "all",
    title: str | None = None,
) -> Any:
    """Attribution maps of several methods for one image, side by side, through Captum's
    ``visualize_image_attr`` (heat maps in Captum's colours: green positive, red negative with
    ``sign="all"``).

    Args:
        attributions: method name -> attribution of one image, (C, H, W).
        inputs: the image itself, (C, H, W), shown first when given.
        sign: Captum's ``sign``: ``"all"``, ``"positive"``, ``"negative"`` or
            ``"absolute_value"``.
        title: the figure's title.

    Returns:
        matplotlib ``Figure``.
    """
    n = len(attributions) + (inputs is not None)
    fig, axes = _figure(1, n)
    column = 0
    if inputs is not None:
        _show(axes[0, 0], inputs, None)
        axes[0, 0].set_title("input", fontsize=9)
        column = 1
    for ax, (name, attribution) in zip(axes[0, column:], attributions.items()):
        array = _hwc(attribution)
        if not np.any(array):
            ax.imshow(np.zeros(array.shape[:2]), cmap="gray")
            ax.set_title(f"{name} (all zero)", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        viz.visualize_image_attr(
            array, method="heat_map", sign=sign, plt_fig_axis=(fig, ax), use_pyplot=False,
            title=name,
        )  # fmt: skip
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def _per_token(attributions: Tensor) -> np.ndarray:
    values = attributions.detach().cpu().double()
    if values.dim() == 2:
        values = values.sum(dim=1)  # (L, D) embeddings -> one value per token
    if values.dim() != 1:
        raise ValueError(
            f"token attributions must have shape (L,) or (L, D), got {tuple(attributions.shape)}."
        )
    return values.numpy()


def visualize_token_attributions(
    tokens: Sequence[str],
    attributions: Mapping[str, Tensor] | Tensor,
    title: str | None = None,
) -> Any:
    """Per-token attributions as horizontal bars, one panel per method.

    Args:
        tokens: the L tokens.
        attributions: a tensor (L,) or (L, D) (summed over D), or method name -> such tensor.
        title: the figure's title.

    Returns:
        matplotlib ``Figure``.
    """
    if isinstance(attributions, Tensor):
        attributions = {"attribution": attributions}
    fig, axes = _figure(1, len(attributions), size=3.2)
    fig.set_figheight(max(2.0, 0.28 * len(tokens) + 1.0))
    for ax, (name, attribution) in zip(axes[0], attributions.items()):
        values = _per_token(attribution)
        if len(values) != len(tokens):
            raise ValueError(f"{name}: {len(values)} attributions for {len(tokens)} tokens.")
        colors = ["#d45c43" if v > 0 else "#4a7ab8" for v in values]
        ax.barh(range(len(tokens)), values, color=colors)
        ax.set_yticks(range(len(tokens)))
        ax.set_yticklabels(list(tokens), fontsize=8)
        ax.invert_yaxis()
        ax.axvline(0, color="black", lw=0.6)
        ax.locator_params(axis="x", nbins=4)  # keeps the value labels apart
        ax.set_title(name, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def text_record(
    tokens: Sequence[str],
    attributions: Tensor,
    predicted_probability: float,
    predicted_label: str,
    true_label: str,
    attribution_label: str,
    convergence_delta: float | None = None,
) -> Any:
    """A ``captum.attr.visualization.VisualizationDataRecord`` of token attributions, for
    ``visualize_text`` (attributions normalised to [-1, 1] for its colours)."""
    values = _per_token(attributions)
    scale = np.abs(values).max() or 1.0
    return viz.VisualizationDataRecord(
        values / scale,
        predicted_probability,
        predicted_label,
        true_label,
        attribution_label,
        float(values.sum()),
        list(tokens),
        convergence_delta,
    )
