"""Path and attribution pictures: figures of the right content, never shown on their own."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
import torch
from captum.attr import visualization as captum_viz
from conftest import SmallCNN
from matplotlib.figure import Figure
from matplotlib.text import Text

from captum_ig2 import GuidedIG, IterativeGradientIG, visualization

matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def no_show(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import matplotlib.pyplot as plt

    def fail(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("plt.show() must not be called by the package")

    monkeypatch.setattr(plt, "show", fail)


@pytest.fixture
def ig2_path(cnn: SmallCNN):  # type: ignore[no-untyped-def]
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    refs = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    return IterativeGradientIG(cnn).path(x, refs, target=1, n_steps=12, clamp=(0, 1))


def test_path_strip_shows_evenly_spaced_frames_from_start_to_end(ig2_path) -> None:  # type: ignore[no-untyped-def]
    fig = visualization.visualize_path(ig2_path, example=1, reference=2, n_frames=5)
    assert isinstance(fig, Figure)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["step 0", "step 3", "step 6", "step 9", "step 12"]
    first = fig.axes[0].images[0].get_array()
    assert first.shape == (8, 8)


def test_output_curve_states_the_completeness_gap(ig2_path, cnn: SmallCNN) -> None:  # type: ignore[no-untyped-def]
    fig = visualization.visualize_path_outputs(ig2_path, example=0)
    (ax,) = fig.axes
    assert len(ax.lines) == 3 * 8 + 2  # one curve per walk, two reference lines
    assert len(ax.get_legend().get_texts()) == 3  # one entry per reference
    with torch.no_grad():
        f_input = cnn(ig2_path.start[0, :1])[0, 1].item()
        f_end = cnn(ig2_path.end[0])[:, 1].mean().item()
    assert f"{f_input - f_end:+.4f}" in ax.get_title()
    assert f"{ig2_path.attributions[0].sum().item():+.4f}" in ax.get_title()


def test_output_curve_of_guided_ig_measures_from_the_input_end(cnn: SmallCNN) -> None:
    x = torch.rand(1, 1, 8, 8, dtype=torch.float64)
    path = GuidedIG(cnn).path(x, target=0, n_steps=10)
    (ax,) = visualization.visualize_path_outputs(path).axes
    with torch.no_grad():
        gap = (cnn(x)[0, 0] - cnn(torch.zeros_like(x))[0, 0]).item()
    assert f"{gap:+.4f}" in ax.get_title()


def test_counterfactual_shows_input_gradcf_and_difference(ig2_path) -> None:  # type: ignore[no-untyped-def]
    x, gradcf = ig2_path.start[0, 0], ig2_path.end[0].mean(0)
    fig = visualization.visualize_counterfactual(x, gradcf)
    assert [ax.get_title() for ax in fig.axes[:3]] == ["input", "GradCF", "input - GradCF"]
    with pytest.raises(ValueError, match="shape"):
        visualization.visualize_counterfactual(x, gradcf[:, :4])


def test_attributions_side_by_side_one_panel_per_method(ig2_path) -> None:  # type: ignore[no-untyped-def]
    maps = {"IG2": ig2_path.attributions[0], "zero": torch.zeros(1, 8, 8)}
    fig = visualization.visualize_attributions(maps, inputs=ig2_path.start[0, 0])
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:3] == ["input", "IG2", "zero (all zero)"]


def test_token_attributions_sum_embeddings_per_token() -> None:
    tokens = ["the", "cat", "sat"]
    embedding_attr = torch.tensor([[0.5, 0.5], [-1.0, 0.2], [0.0, 0.3]])
    fig = visualization.visualize_token_attributions(tokens, {"IG2": embedding_attr})
    (ax,) = fig.axes
    heights = [bar.get_width() for bar in ax.patches]
    assert heights == pytest.approx([1.0, -0.8, 0.3])
    assert [t.get_text() for t in ax.get_yticklabels()] == tokens
    with pytest.raises(ValueError, match="tokens"):
        visualization.visualize_token_attributions(["a"], embedding_attr)


def test_text_record_feeds_captum_visualize_text() -> None:
    record = visualization.text_record(
        ["good", "film"], torch.tensor([2.0, -1.0]), 0.9, "pos", "pos", "pos", 0.01
    )
    assert list(record.word_attributions) == [1.0, -0.5]
    assert record.attr_score == pytest.approx(1.0)
    assert record.raw_input_ids == ["good", "film"]


def _texts(fig: Figure) -> str:
    return "\n".join(t.get_text() for t in fig.findobj(Text))


def _overlapping_texts(fig: Figure) -> list[tuple[str, str]]:
    """Pairs of visible, non-empty texts (titles, caption, labels) whose boxes overlap once
    drawn, and texts that overlap an image panel."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()  # runs the constrained layout
    renderer = canvas.get_renderer()
    texts = [(t, None) for t in fig.texts]  # suptitle, caption
    texts += [(ax.title, ax) for ax in fig.axes]
    texts = [(t, ax) for t, ax in texts if t.get_visible() and t.get_text().strip()]
    clashes = []
    for i, (text, own) in enumerate(texts):
        box = text.get_window_extent(renderer)
        if not fig.bbox.contains(box.x0, box.y0) or not fig.bbox.contains(box.x1, box.y1):
            clashes.append((text.get_text(), "the figure's edge"))
        for other, _ in texts[i + 1 :]:
            if box.overlaps(other.get_window_extent(renderer)):
                clashes.append((text.get_text(), other.get_text()))
        for ax in fig.axes:  # panels and colour bars, with their tick labels
            if ax is not own and ax.get_visible():
                if box.overlaps(ax.get_tightbbox(renderer, for_layout_only=False)):
                    clashes.append((text.get_text(), ax.get_title() or ax.get_label() or "axes"))
    return clashes


def test_colour_map_is_captums_red_white_green() -> None:
    cmap = visualization.attribution_cmap()
    red, white, green = (np.asarray(cmap(v))[:3] for v in (0.0, 0.5, 1.0))
    assert red == pytest.approx([1.0, 0.0, 0.0])
    assert white == pytest.approx([1.0, 1.0, 1.0], abs=0.01)  # 256 colours: next to white
    assert green[1] > 0.4 and green[0] == green[2] == 0.0  # matplotlib's "green"
    assert visualization.attribution_cmap("positive").name == "Greens"
    assert visualization.attribution_cmap("negative").name == "Reds"
    assert visualization.attribution_cmap("absolute_value").name == "Blues"
    with pytest.raises(ValueError, match="sign"):
        visualization.attribution_cmap("signed")


def test_negative_attribution_is_drawn_red_and_positive_green() -> None:
    ax = Figure().subplots()
    attribution = torch.tensor([[-3.0, 0.0, 2.0]])
    image = visualization.draw_attribution(ax, attribution)
    rgb = image.to_rgba(image.get_array())[0, :, :3]
    assert rgb[0] == pytest.approx([1.0, 0.0, 0.0])  # the negative pixel: red
    assert rgb[1] == pytest.approx([1.0, 1.0, 1.0], abs=0.01)  # zero: white
    assert rgb[2][1] > rgb[2][0] + 0.3 and rgb[2][1] > rgb[2][2] + 0.3  # positive: green


@pytest.mark.parametrize("sign", ["all", "positive", "negative", "absolute_value"])
def test_maps_are_captums_heat_maps_pixel_for_pixel(sign: str) -> None:
    attribution = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(0))
    # The 2 % outliers saturate: the scale is below the largest |value|.
    assert visualization.attribution_scale(attribution, sign) < attribution.sum(0).abs().max()
    ours = visualization.draw_attribution(Figure().subplots(), attribution, sign=sign)
    _, captum_ax = captum_viz.visualize_image_attr(
        attribution.permute(1, 2, 0).numpy(), method="heat_map", sign=sign,
        plt_fig_axis=(Figure(), Figure().subplots()), use_pyplot=False,
    )  # fmt: skip
    (theirs,) = captum_ax.images
    np.testing.assert_allclose(
        ours.to_rgba(ours.get_array()), theirs.to_rgba(theirs.get_array()), atol=1e-6
    )


def test_scale_is_where_the_top_two_percent_of_the_total_begin() -> None:
    # |a| = 1 ... 100, total 5050: the values 100 and 99 hold 3.9 % of it, 100 alone 2 %,
    # so 99 is the smallest of the top values that make up (at least) 2 %.
    values = torch.arange(1.0, 101.0).reshape(10, 10)
    values[::2] *= -1.0
    assert visualization.attribution_scale(values) == 99.0
    assert visualization.attribution_scale(values, outlier_perc=5) == 98.0
    negative = visualization.attribution_scale(values, sign="negative")
    assert negative == visualization.attribution_scale(values.clamp(max=0).abs())
    assert visualization.attribution_scale(torch.zeros(4, 4)) == 0.0


def test_every_attribution_map_has_a_colour_bar_and_the_figure_states_the_convention(
    ig2_path,
) -> None:  # type: ignore[no-untyped-def]
    maps = {"IG2": ig2_path.attributions[0], "twice": 2 * ig2_path.attributions[0]}
    fig = visualization.visualize_attributions(maps, inputs=ig2_path.start[0, 0], title="t")
    panels = [ax for ax in fig.axes if ax.get_title() in maps]
    assert len(panels) == 2
    for ax in panels:
        (image,) = ax.images
        assert image.colorbar is not None and image.colorbar.ax in fig.axes
        assert image.cmap.name == "RdWhGn"
    text = _texts(fig)
    assert "green: positive attribution, red: negative" in text
    assert "Captum's colours" in text and "2 %" in text


@pytest.mark.parametrize("n_maps", [1, 4])
def test_titles_colour_bars_and_caption_do_not_overlap(ig2_path, n_maps: int) -> None:  # type: ignore[no-untyped-def]
    maps = {f"method {k}": ig2_path.attributions[0] * (k + 1) for k in range(n_maps)}
    fig = visualization.visualize_attributions(
        maps, inputs=ig2_path.start[0, 0], title="a digit predicted as 1"
    )
    assert _overlapping_texts(fig) == []
    counterfactual = visualization.visualize_counterfactual(
        ig2_path.start[0, 0], ig2_path.end[0].mean(0), title="GradCF"
    )
    assert _overlapping_texts(counterfactual) == []


def test_region_outline_is_drawn_on_every_panel(ig2_path) -> None:  # type: ignore[no-untyped-def]
    region = torch.zeros(1, 8, 8)
    region[0, 2:4, 2:4] = 1.0  # a 2 x 2 square: 8 pixel edges on its border
    fig = visualization.visualize_attributions(
        {"IG2": ig2_path.attributions[0]}, inputs=ig2_path.start[0, 0], region=region
    )
    panels = [ax for ax in fig.axes if ax.images and ax.get_title()]
    for ax in panels:
        (outline,) = ax.collections
        assert len(outline.get_segments()) == 8
    assert "black outline: the region" in _texts(fig)


def test_counterfactual_difference_is_not_drawn_in_attribution_colours(ig2_path) -> None:  # type: ignore[no-untyped-def]
    fig = visualization.visualize_counterfactual(ig2_path.start[0, 0], ig2_path.end[0].mean(0))
    difference = next(ax for ax in fig.axes if ax.get_title() == "input - GradCF")
    (image,) = difference.images
    assert image.cmap.name == "PuOr" and image.colorbar is not None
    assert "purple where the input is brighter" in _texts(fig)


def test_token_bars_are_green_for_positive_and_red_for_negative() -> None:
    fig = visualization.visualize_token_attributions(["a", "b"], torch.tensor([1.0, -1.0]))
    positive, negative = (np.asarray(bar.get_facecolor())[:3] for bar in fig.axes[0].patches)
    assert negative == pytest.approx([1.0, 0.0, 0.0])
    assert positive[1] > 0.4 and positive[0] == positive[2] == 0.0
    assert "green: positive attribution, red: negative" in _texts(fig)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_are_drawn() -> None:
    x = torch.rand(1, 8, 8, device="cuda")
    fig = visualization.visualize_attributions({"m": x}, inputs=x)
    assert len(fig.axes) >= 2


def test_a_smoothed_map_is_the_gaussian_smoothed_channel_sum_and_says_so(ig2_path) -> None:  # type: ignore[no-untyped-def]
    attribution = torch.zeros(1, 16, 16)
    attribution[0, 8, 8] = 1.0  # a single pixel spreads into a Gaussian, away from the edges
    fig = visualization.visualize_attributions({"one pixel": attribution}, smooth=1.0)
    drawn = np.asarray(fig.axes[0].images[0].get_array())
    offsets = np.arange(-3, 4)
    kernel = np.exp(-0.5 * offsets**2)
    kernel /= kernel.sum()
    expected = np.zeros((16, 16))
    expected[5:12, 5:12] = np.outer(kernel, kernel)  # the kernel centred on (8, 8)
    np.testing.assert_allclose(drawn, expected, atol=1e-12)
    assert "smoothed by a Gaussian of 1 pixels" in _texts(fig)
    with pytest.raises(ValueError, match="smooth"):
        visualization.visualize_attributions({"m": attribution}, smooth=-1.0)
