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

**One colour convention, Captum's** (``visualize_image_attr``): signed attributions in the
diverging map "RdWhGn" (red negative, white zero, green positive), positive-only in "Greens",
negative-only in "Reds", absolute values in "Blues". Each map is scaled as Captum scales it:
its largest |attributions|, which together make up ``outlier_perc`` = 2 % of the total
|attribution|, saturate the colours. The building blocks are public for other figures:
:func:`attribution_cmap` (the colour map of a sign), :func:`attribution_scale` (where a map's
colours saturate), :func:`draw_attribution` (one map with its colour bar on an axis) and
:func:`attribution_convention` (the line a figure states its colours with).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from captum.attr import visualization as viz
from matplotlib.colors import Colormap, LinearSegmentedColormap
from torch import Tensor

from captum_ig2._attribution import AttributionPath

__all__ = [
    "OUTLIER_PERC",
    "attribution_cmap",
    "attribution_convention",
    "attribution_scale",
    "draw_attribution",
    "text_record",
    "visualize_attributions",
    "visualize_counterfactual",
    "visualize_path",
    "visualize_path_outputs",
    "visualize_token_attributions",
]

OUTLIER_PERC = 2
"""Captum's default ``outlier_perc``: the largest |attributions| making up this percentage of
the total saturate the colour scale."""

# Captum's own maps (``_initialize_cmap_and_vmin_vmax`` in captum/attr/_utils/visualization.py).
_RDWHGN = LinearSegmentedColormap.from_list("RdWhGn", ["red", "white", "green"])
_SIGN_CMAPS = {"all": "RdWhGn", "positive": "Greens", "negative": "Reds", "absolute_value": "Blues"}
_SIGN_WORDS = {
    "all": "green: positive attribution, red: negative, white: zero",
    "positive": "green: positive attribution (negative ones not shown)",
    "negative": "red: negative attribution (positive ones not shown)",
    "absolute_value": "blue: |attribution|",
}


def _check_sign(sign: str) -> None:
    if sign not in _SIGN_CMAPS:
        raise ValueError(f"`sign` must be one of {sorted(_SIGN_CMAPS)}, got {sign!r}.")


def attribution_cmap(sign: str = "all") -> Colormap:
    """Captum's colour map for attribution maps of this ``sign``.

    >>> cmap = attribution_cmap()  # signed: -1 -> red, 0 -> white, +1 -> green
    >>> [tuple(round(float(c), 2) for c in cmap(v)[:3]) for v in (0.0, 0.5, 1.0)]
    [(1.0, 0.0, 0.0), (1.0, 1.0, 1.0), (0.0, 0.5, 0.0)]

    Args:
        sign: ``"all"`` (signed: "RdWhGn", red at the negative end, white at zero, green at the
            positive end), ``"positive"`` ("Greens"), ``"negative"`` ("Reds", darker for more
            negative) or ``"absolute_value"`` ("Blues").

    Returns:
        matplotlib ``Colormap``.
    """
    _check_sign(sign)
    if sign == "all":
        return _RDWHGN
    from matplotlib import colormaps

    return colormaps[_SIGN_CMAPS[sign]]


def _signed_part(values: np.ndarray, sign: str) -> np.ndarray:
    if sign == "positive":
        return np.maximum(values, 0.0)
    if sign == "negative":
        return np.minimum(values, 0.0)
    if sign == "absolute_value":
        return np.abs(values)
    return values


def attribution_scale(
    attribution: Tensor | np.ndarray, sign: str = "all", outlier_perc: float = OUTLIER_PERC
) -> float:
    """Where Captum's colour scale of a map saturates: the smallest of the largest
    |attributions| that together make up ``outlier_perc`` % of the total |attribution|
    (channels summed first, as Captum does). 0 for an all-zero map.

    Args:
        attribution: one map, (C, H, W) or (H, W).
        sign: which part is drawn (see :func:`attribution_cmap`).
        outlier_perc: Captum's ``outlier_perc``.

    Returns:
        the scale s >= 0; the map's colours span [-s, s] (``sign="all"``) or [0, s].
    """
    _check_sign(sign)
    values = np.abs(_signed_part(_map2d(attribution), sign)).ravel()
    ordered = np.sort(values)
    cumulative = np.cumsum(ordered)
    if cumulative[-1] <= 0:
        return 0.0
    index = int(np.searchsorted(cumulative, cumulative[-1] * (100.0 - outlier_perc) / 100.0))
    return float(ordered[min(index, len(ordered) - 1)])


def attribution_convention(sign: str = "all", outlier_perc: float = OUTLIER_PERC) -> str:
    """The line a figure states its colours with, e.g. as a caption:

    >>> attribution_convention()
    "green: positive attribution, red: negative, white: zero (Captum's colours); each map saturates at its largest |attributions|, which make up 2 % of its total"
    """  # noqa: E501
    _check_sign(sign)
    return (
        f"{_SIGN_WORDS[sign]} (Captum's colours); each map saturates at its largest "
        f"|attributions|, which make up {outlier_perc:g} % of its total"
    )


def draw_attribution(
    ax: Any,
    attribution: Tensor | np.ndarray,
    sign: str = "all",
    outlier_perc: float = OUTLIER_PERC,
    title: str | None = None,
    colorbar: bool = True,
) -> Any:
    """One attribution map on a matplotlib axis, in Captum's colours and scale, with a colour bar
    in the attribution's own units (arrows mark the clipped outliers).

    The picture is the one ``captum.attr.visualization.visualize_image_attr(..., "heat_map",
    sign)`` draws; only the colour bar's ticks are the attribution's values instead of [-1, 1].

    Args:
        ax: a matplotlib ``Axes``.
        attribution: one map, (C, H, W) or (H, W), any device; channels are summed.
        sign: ``"all"``, ``"positive"``, ``"negative"`` or ``"absolute_value"``.
        outlier_perc: Captum's ``outlier_perc``.
        title: the axis' title; " (all zero)" is added to it for an all-zero map.
        colorbar: draw the colour bar below the map.

    Returns:
        the ``AxesImage``.
    """
    values = _signed_part(_map2d(attribution), sign)
    scale = attribution_scale(values, sign, outlier_perc)
    all_zero = scale == 0.0
    scale = scale or 1.0
    cmap = attribution_cmap(sign)
    if sign == "all":
        low, high, extend = -scale, scale, "both"
    elif sign == "negative":  # darker red for more negative, as Captum's |x| / s in "Reds"
        cmap, low, high, extend = cmap.reversed(), -scale, 0.0, "min"
    else:
        low, high, extend = 0.0, scale, "max"
    image = ax.imshow(values, cmap=cmap, vmin=low, vmax=high, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title is not None or all_zero:
        ax.set_title(f"{title or ''}{' (all zero)' if all_zero else ''}".strip(), fontsize=9)
    if colorbar:
        bar = ax.figure.colorbar(
            image, ax=ax, orientation="horizontal", extend=extend, shrink=0.9, aspect=12,
            pad=0.03,
        )  # fmt: skip
        bar.set_ticks(sorted({low, 0.0, high}))
        bar.ax.xaxis.set_major_formatter("{x:.2g}")
        bar.ax.tick_params(labelsize=7)
    return image


def _map2d(attribution: Tensor | np.ndarray) -> np.ndarray:
    """(C, H, W) or (H, W) map, any device, channels summed, as an (H, W) float array."""
    if isinstance(attribution, Tensor):
        array = attribution.detach().cpu().double().numpy()
    else:
        array = np.asarray(attribution, dtype=np.float64)
    if array.ndim == 3:
        array = array.sum(axis=0)
    if array.ndim != 2:
        raise ValueError(
            f"an attribution map must have shape (C, H, W) or (H, W), got {array.shape}."
        )
    return array


def _figure(
    n_rows: int, n_cols: int, size: float = 2.2, extra_height: float = 0.0
) -> tuple[Any, np.ndarray]:
    """A figure of n_rows x n_cols panels of ``size`` inches, laid out by matplotlib's
    constrained layout (titles, colour bars and captions never overlap); ``extra_height``
    inches are added for colour bars and a caption."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size * n_cols, size * n_rows + extra_height), layout="constrained")
    fig.get_layout_engine().set(h_pad=0.1)  # room between a suptitle and the panels' titles
    axes = np.asarray(fig.subplots(n_rows, n_cols, squeeze=False))
    return fig, axes


def _caption(fig: Any, text: str, fontsize: float = 8.0) -> None:
    """``text`` below the panels, wrapped to the figure's width; the figure grows by its height."""
    import textwrap

    characters = int(fig.get_figwidth() * 72 / (0.55 * fontsize))
    wrapped = textwrap.fill(text, max(characters, 30))
    fig.set_figheight(fig.get_figheight() + (wrapped.count("\n") + 1) * 1.4 * fontsize / 72)
    fig.supxlabel(wrapped, fontsize=fontsize)


def _hwc(image: Tensor) -> np.ndarray:
    """(C, H, W) or (H, W) tensor, any device, as an (H, W, C) float array."""
    array = image.detach().cpu().double()
    if array.dim() == 2:
        array = array.unsqueeze(0)
    if array.dim() != 3:
        raise ValueError(f"an image must have shape (C, H, W) or (H, W), got {tuple(image.shape)}.")
    return array.permute(1, 2, 0).numpy()


def _show(
    ax: Any, image: Tensor, value_range: tuple[float, float] | None, colorbar: bool = False
) -> None:
    """An image in grey (one channel) or colour; with ``colorbar``, a grey bar of its values
    below it, so that it lines up with the attribution maps beside it."""
    array = _hwc(image)
    low, high = value_range if value_range is not None else (float(array.min()), float(array.max()))
    if array.shape[2] == 1:
        shown = ax.imshow(
            array[:, :, 0], cmap="gray", vmin=low, vmax=high if high > low else low + 1.0
        )
        if colorbar:
            bar = ax.figure.colorbar(
                shown, ax=ax, orientation="horizontal", shrink=0.9, aspect=12, pad=0.03
            )
            bar.set_ticks([low, high])
            bar.ax.xaxis.set_major_formatter("{x:.2g}")
            bar.ax.tick_params(labelsize=7)
    else:
        ax.imshow(np.clip((array - low) / ((high - low) or 1.0), 0.0, 1.0))
        if colorbar:  # a colour image has no single scale; keep the space for alignment
            bar = ax.figure.colorbar(
                ax.images[-1], ax=ax, orientation="horizontal", shrink=0.9, aspect=12, pad=0.03
            )
            bar.ax.set_visible(False)
    ax.set_xticks([])
    ax.set_yticks([])


def _outline(ax: Any, mask: Tensor) -> None:
    """The border of the pixels where ``mask`` is nonzero, as black lines on their edges."""
    from matplotlib.collections import LineCollection

    inside = _map2d(mask) != 0
    padded = np.pad(inside, 1)
    segments = []
    for i, j in zip(*np.nonzero(inside)):
        top, bottom, left, right = i - 0.5, i + 0.5, j - 0.5, j + 0.5
        if not padded[i, j + 1]:  # the pixel above is outside
            segments.append([(left, top), (right, top)])
        if not padded[i + 2, j + 1]:
            segments.append([(left, bottom), (right, bottom)])
        if not padded[i + 1, j]:
            segments.append([(left, top), (left, bottom)])
        if not padded[i + 1, j + 2]:
            segments.append([(right, top), (right, bottom)])
    ax.add_collection(LineCollection(segments, colors="black", linewidths=1.5))


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
    return fig


def visualize_path_outputs(
    path: AttributionPath,
    example: int = 0,
    labels: Sequence[str] | None = None,
    title: str | None = None,
) -> Any:
    """The explained output f along the path of one example, one curve per path (IG2: the
    walks of a reference share its colour), with the completeness gap: sum of the attributions
    against the change of f along the path.

    Args:
        path: an :class:`~captum_ig2.AttributionPath`.
        example: which input to show.
        labels: a label per reference; default "reference r".
        title: the figure's title.

    Returns:
        matplotlib ``Figure``.
    """
    outputs = path.outputs[:, example].detach().cpu().double().numpy()  # (T + 1, R W)
    walks = path.walks
    n_references = outputs.shape[1] // walks
    attributions = path.attributions
    parts = attributions if isinstance(attributions, tuple) else (attributions,)
    total = sum(float(a[example].detach().double().sum().cpu()) for a in parts)
    delta = float(path.delta[example].detach().cpu())
    fig, axes = _figure(1, 1, size=4.0)
    ax = axes[0, 0]
    for r in range(n_references):
        label = labels[r] if labels is not None else f"reference {r}"
        colour = f"C{r % 10}"
        for w in range(walks):
            ax.plot(
                outputs[:, r * walks + w], color=colour, lw=1.5 if walks == 1 else 0.8,
                alpha=1.0 if walks == 1 else 0.6,
                label=label if n_references > 1 and w == 0 else None,
            )  # fmt: skip
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
    if 1 < n_references <= 8:
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def visualize_counterfactual(
    inputs: Tensor,
    gradcf: Tensor,
    value_range: tuple[float, float] | None = None,
    title: str | None = None,
) -> Any:
    """One input, its GradCF and their difference (input - GradCF), side by side.

    The difference is a change of the image, not an attribution, so it is drawn in a map of its
    own ("PuOr": purple where the input is brighter, orange where the GradCF is), keeping green
    and red for attributions.

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
    fig, axes = _figure(1, 3, extra_height=0.7)
    _show(axes[0, 0], inputs, value_range, colorbar=True)
    axes[0, 0].set_title("input", fontsize=9)
    _show(axes[0, 1], gradcf, value_range, colorbar=True)
    axes[0, 1].set_title("GradCF", fontsize=9)
    difference = _map2d(inputs - gradcf)
    bound = float(np.abs(difference).max()) or 1.0
    shown = axes[0, 2].imshow(difference, cmap="PuOr", vmin=-bound, vmax=bound)
    axes[0, 2].set_xticks([])
    axes[0, 2].set_yticks([])
    axes[0, 2].set_title("input - GradCF", fontsize=9)
    bar = fig.colorbar(
        shown, ax=axes[0, 2], orientation="horizontal", shrink=0.9, aspect=12, pad=0.03
    )
    bar.set_ticks([-bound, 0.0, bound])
    bar.ax.xaxis.set_major_formatter("{x:.2g}")
    bar.ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    _caption(fig, "input - GradCF (channels summed): purple where the input is brighter, "
             "orange where the GradCF is")  # fmt: skip
    return fig


def visualize_attributions(
    attributions: Mapping[str, Tensor],
    inputs: Tensor | None = None,
    sign: str = "all",
    title: str | None = None,
    region: Tensor | None = None,
    outlier_perc: float = OUTLIER_PERC,
    smooth: float = 0.0,
) -> Any:
    """Attribution maps of several methods for one image, side by side, each with its colour
    bar, in Captum's colours and scale (:func:`draw_attribution`); the figure states the
    convention below the maps.

    A raw map of a real network looks like scattered pixels: its gradient changes from one pixel
    to the next (shattered gradients), and so does the attribution. ``smooth`` draws each map
    (channels summed) smoothed by a Gaussian, which shows the regions the map weighs, much as
    SmoothGrad's averaging does; the caption says so.

    Args:
        attributions: method name -> attribution of one image, (C, H, W) (channels summed).
        inputs: the image itself, (C, H, W), shown first when given.
        sign: Captum's ``sign``: ``"all"`` (green positive, red negative), ``"positive"``,
            ``"negative"`` or ``"absolute_value"``.
        title: the figure's title.
        region: a mask (1, H, W) or (H, W) whose outline is drawn on every panel (e.g. the
            region a conductance is computed for).
        outlier_perc: Captum's ``outlier_perc`` (see :func:`attribution_scale`).
        smooth: the standard deviation, in pixels, of the Gaussian each map is smoothed with
            for display; 0 draws the raw map.

    Returns:
        matplotlib ``Figure``.
    """
    _check_sign(sign)
    if isinstance(smooth, bool) or not isinstance(smooth, (int, float)) or not smooth >= 0:
        raise ValueError(f"`smooth` must be a number >= 0 (pixels), got {smooth!r}.")
    n = len(attributions) + (inputs is not None)
    fig, axes = _figure(1, n, size=2.2, extra_height=0.7 + 0.3 * bool(title))
    column = 0
    if inputs is not None:
        _show(axes[0, 0], inputs, None, colorbar=True)
        axes[0, 0].set_title("input", fontsize=9)
        column = 1
    for ax, (name, attribution) in zip(axes[0, column:], attributions.items()):
        if smooth > 0:
            attribution = torch.from_numpy(_gaussian_smooth(_map2d(attribution), smooth))
        draw_attribution(ax, attribution, sign=sign, outlier_perc=outlier_perc, title=name)
    if region is not None:
        for ax in axes[0]:
            _outline(ax, region)
    if title:
        fig.suptitle(title, fontsize=10)
    caption = attribution_convention(sign, outlier_perc)
    if smooth > 0:
        caption += f"; each map smoothed by a Gaussian of {smooth:g} pixels for display"
    if region is not None:
        caption += "; black outline: the region"
    _caption(fig, caption)
    return fig


def _gaussian_smooth(image: np.ndarray, sigma: float) -> np.ndarray:
    """``image`` (H, W) convolved with a Gaussian of ``sigma`` pixels, edges reflected."""
    radius = max(1, round(3 * sigma))
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    out = image.astype(np.float64)
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="reflect" if out.shape[axis] > radius else "edge")
        out = np.apply_along_axis(lambda v: np.convolve(v, kernel, mode="valid"), axis, padded)
    return out


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
    """Per-token attributions as horizontal bars, one panel per method, in Captum's colours
    (green positive, red negative).

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
    fig.set_figheight(max(2.4, 0.28 * len(tokens) + 1.4))
    cmap = attribution_cmap("all")
    positive, negative = cmap(1.0), cmap(0.0)
    for ax, (name, attribution) in zip(axes[0], attributions.items()):
        values = _per_token(attribution)
        if len(values) != len(tokens):
            raise ValueError(f"{name}: {len(values)} attributions for {len(tokens)} tokens.")
        colors = [positive if v > 0 else negative for v in values]
        ax.barh(range(len(tokens)), values, color=colors)
        ax.set_yticks(range(len(tokens)))
        ax.set_yticklabels(list(tokens), fontsize=8)
        ax.invert_yaxis()
        ax.axvline(0, color="black", lw=0.6)
        ax.locator_params(axis="x", nbins=4)  # keeps the value labels apart
        ax.set_title(name, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    _caption(fig, "green: positive attribution, red: negative (Captum's colours)")
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
