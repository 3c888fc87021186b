"""Path and attribution pictures: figures of the right content, never shown on their own."""

from __future__ import annotations

import matplotlib
import pytest
import torch
from conftest import SmallCNN
from matplotlib.figure import Figure

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
    assert len(ax.lines) == 3 + 2  # one curve per reference, two reference lines
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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_are_drawn() -> None:
    x = torch.rand(1, 8, 8, device="cuda")
    fig = visualization.visualize_attributions({"m": x}, inputs=x)
    assert len(fig.axes) >= 2
