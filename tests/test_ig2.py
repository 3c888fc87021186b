"""IterativeGradientIG against a plain implementation of the published procedure."""

from __future__ import annotations

import pytest
import torch
from conftest import SmallCNN
from oracles import ig2_reference
from torch import nn

from captum_ig2 import IterativeGradientIG


def test_ig2_papers_walk_equals_plain_reference_implementation(cnn: SmallCNN) -> None:
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    references = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    ig2 = IterativeGradientIG(cnn)
    path = ig2.path(
        x, references, target=1, n_steps=15, step_size=0.2, clamp=(0.0, 1.0),
        method="riemann_left", nodes=1, epsrel=None, walk="fixed", n_walks=1,
    )  # fmt: skip
    for i in range(3):
        expected, gradcf = ig2_reference(cnn, x[i], references, 1, 15, 0.2, (0.0, 1.0))
        torch.testing.assert_close(path.attributions[i], expected, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(path.end[i], gradcf, rtol=1e-9, atol=1e-12)


def test_ig2_default_walks_equal_plain_reference_implementation(cnn: SmallCNN) -> None:
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    references = torch.rand(3, 1, 8, 8, dtype=torch.float64)  # a set shared by both inputs
    path = IterativeGradientIG(cnn).path(
        x, references, target=1, n_steps=15, step_size=0.4, clamp=(0.0, 1.0),
        method="riemann_left", nodes=1, epsrel=None,
    )  # fmt: skip
    assert path.walks == 8 and path.end.shape == (2, 24, 1, 8, 8)
    for i in range(2):
        expected, gradcf = ig2_reference(
            cnn, x[i], references, 1, 15, 0.4, (0.0, 1.0), adaptive=True, n_walks=8
        )
        torch.testing.assert_close(path.attributions[i], expected, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(path.end[i], gradcf, rtol=1e-9, atol=1e-12)


def test_ig2_adaptive_walk_halves_its_step_after_a_reversal(cnn: SmallCNN) -> None:
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    references = torch.rand(1, 1, 8, 8, dtype=torch.float64)
    path = IterativeGradientIG(cnn).path(
        x, references, target=0, n_steps=30, step_size=0.5, n_walks=1,
        method="riemann_left", nodes=1, epsrel=None,
    )  # fmt: skip
    steps = (path.points[1:] - path.points[:-1]).flatten(3)[:, :, 0]  # (T, N, D), no clamp
    length = steps.norm(dim=-1)
    turn = (steps[1:] * steps[:-1]).sum(-1)
    assert torch.allclose(length[0], torch.full_like(length[0], 0.5))
    expected = torch.where(turn < 0, length[:-1] / 2, (length[:-1] * 1.5).clamp(max=0.5))
    torch.testing.assert_close(length[1:], expected)
    assert bool((turn < 0).any()), "the walk never reversed: the test checks nothing"


def test_ig2_with_representation_layer_equals_plain_reference(cnn: SmallCNN) -> None:
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    references = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    attributions = IterativeGradientIG(cnn, representation_layer=cnn.features).attribute(
        x, references, target=0, n_steps=12, step_size=0.3, clamp=(0.0, 1.0),
        method="riemann_left", nodes=1, epsrel=None, walk="fixed", n_walks=1,
    )  # fmt: skip
    for i in range(2):
        expected, _ = ig2_reference(
            cnn, x[i], references, 0, 12, 0.3, (0.0, 1.0),
            representation=lambda t: cnn.features(t).flatten(1),
        )  # fmt: skip
        torch.testing.assert_close(attributions[i], expected, rtol=1e-9, atol=1e-12)


def test_ig2_representation_input_uses_the_layer_input(cnn: SmallCNN) -> None:
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    references = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    by_input = IterativeGradientIG(cnn, representation_layer=cnn.head, representation_input=True)
    by_output = IterativeGradientIG(cnn, representation_layer=cnn.act)
    kwargs = dict(baselines=references, target=0, n_steps=8, step_size=0.2)
    torch.testing.assert_close(by_input.attribute(x, **kwargs), by_output.attribute(x, **kwargs))


def test_ig2_walks_start_at_the_input_and_stay_in_clamp(mlp: nn.Module) -> None:
    x = torch.rand(4, 6, dtype=torch.float64)
    references = torch.rand(3, 6, dtype=torch.float64)
    path = IterativeGradientIG(mlp).path(x, references, target=2, n_steps=20, clamp=(0.1, 0.9))
    assert path.walks == 8 and path.points.shape == (21, 4, 24, 6)
    assert torch.equal(path.start, x.unsqueeze(1).expand(4, 24, 6))
    assert path.points[1:].min() >= 0.1 and path.points[1:].max() <= 0.9
    # The walks of a reference part ways: their first steps differ.
    first = path.points[1].reshape(4, 3, 8, 6)
    assert bool((first[:, :, 1:] != first[:, :, :1]).any())


def test_ig2_walks_do_not_depend_on_the_batch(mlp: nn.Module) -> None:
    x = torch.rand(4, 6, dtype=torch.float64)
    references = torch.rand(4, 6, dtype=torch.float64)
    ig2 = IterativeGradientIG(mlp)
    together = ig2.path(x, references, target=0, n_steps=3)
    for i in range(4):
        alone = ig2.path(x[i : i + 1], references[i : i + 1], target=0, n_steps=3)
        torch.testing.assert_close(alone.points[:, 0], together.points[:, i])


def test_ig2_papers_walk_is_as_long_as_the_line_to_the_reference(mlp: nn.Module) -> None:
    x = torch.rand(2, 6, dtype=torch.float64)
    references = torch.rand(3, 6, dtype=torch.float64)
    path = IterativeGradientIG(mlp).path(
        x, references, target=0, n_steps=10, walk="fixed", n_walks=1
    )
    segment = (path.points[1:] - path.points[:-1]).norm(dim=-1)  # (T, N, R), no clamp
    expected = (x.unsqueeze(1) - references.unsqueeze(0)).norm(dim=-1) / 10
    torch.testing.assert_close(segment, expected.expand_as(segment))


def test_ig2_adaptive_steps_are_at_most_the_step_size(mlp: nn.Module) -> None:
    x = torch.rand(2, 6, dtype=torch.float64)
    references = torch.rand(3, 6, dtype=torch.float64)
    path = IterativeGradientIG(mlp).path(x, references, target=0, n_steps=10)
    segment = (path.points[1:] - path.points[:-1]).norm(dim=-1)  # (T, N, R W), no clamp
    eta = (x.unsqueeze(1) - references.unsqueeze(0)).norm(dim=-1) / 10
    eta = eta.repeat_interleave(8, dim=1)
    torch.testing.assert_close(segment[0], eta)
    assert (segment <= eta * (1 + 1e-9)).all()


def test_ig2_gradcf_lowers_representation_distance(cnn: SmallCNN) -> None:
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    references = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    path = IterativeGradientIG(cnn).path(x, references, target=0, n_steps=40, clamp=(0, 1))
    with torch.no_grad():
        rep_ref = cnn(references).repeat_interleave(8, dim=0)  # every reference's 8 walks
        before = ((cnn(x).unsqueeze(1) - rep_ref) ** 2).mean(-1)
        gradcf = path.end.reshape(48, 1, 8, 8)
        after = ((cnn(gradcf).reshape(3, 16, -1) - rep_ref) ** 2).mean(-1)
    assert (after < before).all()


def test_ig2_reference_forms_agree(mlp: nn.Module) -> None:
    x = torch.rand(3, 6, dtype=torch.float64)
    refs = torch.rand(4, 6, dtype=torch.float64)
    ig2 = IterativeGradientIG(mlp)
    kwargs = dict(target=1, n_steps=10, step_size=0.05)
    shared = ig2.attribute(x, refs, **kwargs)
    one_set = ig2.attribute(x, refs.unsqueeze(0), **kwargs)
    per_input = ig2.attribute(x, refs.unsqueeze(0).expand(3, 4, 6), **kwargs)
    torch.testing.assert_close(one_set, shared)
    torch.testing.assert_close(per_input, shared)
    # A reference set averages the single-reference attributions.
    singles = torch.stack([ig2.attribute(x, r.unsqueeze(0), **kwargs) for r in refs])
    torch.testing.assert_close(shared, singles.mean(0))
    # Paired references (Captum's per-example form) explain input n against reference n.
    paired = ig2.attribute(x, refs[:3], **kwargs)
    for i in range(3):
        torch.testing.assert_close(
            paired[i], ig2.attribute(x[i : i + 1], refs[i : i + 1], **kwargs)[0]
        )


def test_ig2_delta_is_measured_against_gradcf_not_reference(mlp: nn.Module) -> None:
    x = torch.rand(2, 6, dtype=torch.float64)
    refs = torch.rand(3, 6, dtype=torch.float64) * 4
    ig2 = IterativeGradientIG(mlp)
    path = ig2.path(x, refs, target=0, n_steps=30, step_size=0.01)  # far from the references
    with torch.no_grad():
        gradcf_out = mlp(path.end.reshape(48, 6))[:, 0].reshape(2, 24).mean(1)
        reference_out = mlp(refs)[:, 0].mean()
        expected = path.attributions.sum(1) - (mlp(x)[:, 0] - gradcf_out)
    torch.testing.assert_close(path.delta, expected)
    assert path.delta.abs().max() < 1e-4
    assert (path.attributions.sum(1) - (mlp(x)[:, 0] - reference_out)).abs().min() > 1e-3


class MappingLayer(nn.Module):
    """Returns a mapping, as Hugging Face encoders return a ModelOutput."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"last_hidden_state": torch.tanh(self.inner(x)), "note": "not a tensor"}


class TensorLayer(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.inner(x))


def test_ig2_representation_may_be_a_mapping_of_tensors() -> None:
    torch.manual_seed(0)
    inner, head = nn.Linear(6, 4).double(), nn.Linear(4, 2).double()
    mapping, tensor = MappingLayer(inner), TensorLayer(inner)
    x = torch.rand(3, 6, dtype=torch.float64)
    refs = torch.rand(4, 6, dtype=torch.float64)
    by_mapping = IterativeGradientIG(
        lambda t: head(mapping(t)["last_hidden_state"]), representation_layer=mapping
    )
    by_tensor = IterativeGradientIG(lambda t: head(tensor(t)), representation_layer=tensor)
    torch.testing.assert_close(
        by_mapping.attribute(x, refs, target=0, n_steps=8),
        by_tensor.attribute(x, refs, target=0, n_steps=8),
    )


def test_path_without_points_keeps_the_same_ends_and_attributions(mlp: nn.Module) -> None:
    from captum_ig2 import GuidedIG

    x = torch.rand(3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    for explainer, baselines in (
        (IterativeGradientIG(mlp), torch.rand(2, 6, dtype=torch.float64)),
        (GuidedIG(mlp), torch.zeros(3, 6, dtype=torch.float64)),
    ):
        full = explainer.path(x, baselines, target=1, n_steps=6)
        ends = explainer.path(x, baselines, target=1, n_steps=6, keep_points=False)
        assert ends.points is None
        assert torch.equal(ends.start, full.points[0]) and torch.equal(ends.end, full.points[-1])
        assert torch.equal(ends.attributions, full.attributions)
        assert torch.equal(ends.delta, full.delta)
    with pytest.raises(TypeError, match="keep_points"):
        IterativeGradientIG(mlp).path(x, target=1, keep_points="no")
