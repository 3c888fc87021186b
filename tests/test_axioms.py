"""Axioms and invariants shared by both methods, on small random MLPs and CNNs."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from conftest import SmallCNN, make_mlp
from torch import nn

from captum_ig2 import GuidedIG, IterativeGradientIG

METHODS: dict[str, Callable[[nn.Module], object]] = {
    "ig2": lambda model: IterativeGradientIG(model),
    "guided_ig": lambda model: GuidedIG(model),
}


both = pytest.mark.parametrize("name", list(METHODS))


@both
def test_completeness_delta_shrinks_with_n_steps(name: str, cnn: SmallCNN) -> None:
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    deltas = []
    for n_steps in (8, 32, 128):
        _, delta = METHODS[name](cnn).attribute(
            x, target=1, n_steps=n_steps, method="riemann_left", epsrel=None,
            return_convergence_delta=True,
        )  # fmt: skip
        deltas.append(delta.abs().max().item())
    assert deltas[0] > deltas[1] > deltas[2]
    assert deltas[2] < 0.3 * deltas[0]


@both
def test_completeness_trapezoid_beats_left(name: str, cnn: SmallCNN) -> None:
    x = torch.rand(4, 1, 8, 8, dtype=torch.float64)
    method = METHODS[name](cnn)
    _, left = method.attribute(x, target=2, n_steps=40, method="riemann_left", epsrel=None,
                               return_convergence_delta=True)  # fmt: skip
    _, trap = method.attribute(x, target=2, n_steps=40, method="riemann_trapezoid",
                               epsrel=None, return_convergence_delta=True)  # fmt: skip
    assert trap.abs().mean() < 0.2 * left.abs().mean()


@both
def test_completeness_delta_matches_outputs_at_path_ends(name: str, mlp: nn.Module) -> None:
    x = torch.rand(3, 6, dtype=torch.float64)
    path = METHODS[name](mlp).path(x, target=0, n_steps=20)
    with torch.no_grad():
        f = lambda t: mlp(t.reshape(-1, 6))[:, 0].reshape(3, -1).mean(1)  # noqa: E731
        gap = f(path.end) - f(path.start)
    sign = -1.0 if name == "ig2" else 1.0  # IG2 attributes f(input) - f(GradCF)
    torch.testing.assert_close(path.delta, path.attributions.sum(1) - sign * gap)


@both
def test_dummy_feature_gets_zero_attribution(name: str) -> None:
    torch.manual_seed(1)
    inner = make_mlp(n_in=5).double()
    model = lambda x: inner(x[:, :5])  # noqa: E731  feature 5 is a dummy
    x = torch.rand(4, 6, dtype=torch.float64)
    attributions = METHODS[name](model).attribute(x, target=0, n_steps=20)
    assert torch.count_nonzero(attributions[:, 5]) == 0
    assert attributions[:, :5].abs().sum() > 0


@both
def test_implementation_invariance(name: str, mlp: nn.Sequential) -> None:
    # Same function, other parameters: split the hidden layer into two permuted halves.
    other = copy.deepcopy(mlp)
    perm = torch.randperm(mlp[0].out_features)
    with torch.no_grad():
        other[0].weight.copy_(mlp[0].weight[perm])
        other[0].bias.copy_(mlp[0].bias[perm])
        other[2].weight.copy_(mlp[2].weight[:, perm])
    x = torch.rand(3, 6, dtype=torch.float64)
    a = METHODS[name](mlp).attribute(x, target=1, n_steps=15)
    b = METHODS[name](other).attribute(x, target=1, n_steps=15)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("rule", ["fixed", "default"])
def test_ig2_is_linear_in_the_explained_output(mlp: nn.Sequential, rule: str) -> None:
    # The GradPath follows the representation, not the explained output, so IG2 with a fixed
    # rule is linear in f. The default, the complete trapezoid, splits every piece's residual
    # in proportion to its own error estimate and refines where f's error is: linear within
    # the map's tolerance.
    x = torch.rand(3, 6, dtype=torch.float64)
    refs = torch.rand(2, 6, dtype=torch.float64)
    layer = mlp[1]

    def combo(t: torch.Tensor) -> torch.Tensor:
        out = mlp(t)
        return 2.0 * out[:, 0] - 3.0 * out[:, 2]

    kwargs: dict = dict(baselines=refs, n_steps=15)  # type: ignore[type-arg]
    if rule == "fixed":
        kwargs.update(method="gausslegendre", nodes=8, epsrel=None)
    a0 = IterativeGradientIG(mlp, layer).attribute(x, target=0, **kwargs)
    a2 = IterativeGradientIG(mlp, layer).attribute(x, target=2, **kwargs)
    both_ = IterativeGradientIG(combo, layer).attribute(x, **kwargs)
    linear = 2.0 * a0 - 3.0 * a2
    if rule == "fixed":
        torch.testing.assert_close(both_, linear)
    else:
        error = (both_ - linear).norm(dim=1) / linear.norm(dim=1)
        assert (error <= 0.02**0.5).all()
        assert not torch.allclose(both_, linear, rtol=1e-9, atol=0)  # not exactly linear


def test_guided_ig_is_linear_in_the_explained_output_on_the_straight_line(mlp) -> None:  # type: ignore[no-untyped-def]
    x = torch.rand(3, 6, dtype=torch.float64)
    combo = lambda t: 2.0 * mlp(t)[:, 0] - 3.0 * mlp(t)[:, 2]  # noqa: E731
    kwargs = dict(n_steps=15, max_dist=0.0)
    a0 = GuidedIG(mlp).attribute(x, target=0, **kwargs)
    a2 = GuidedIG(mlp).attribute(x, target=2, **kwargs)
    torch.testing.assert_close(GuidedIG(combo).attribute(x, **kwargs), 2.0 * a0 - 3.0 * a2)


@both
def test_batch_equals_examples_one_by_one(name: str, cnn: SmallCNN) -> None:
    x = torch.rand(4, 1, 8, 8, dtype=torch.float64)
    target = [0, 1, 2, 3]
    batch = METHODS[name](cnn).attribute(x, target=target, n_steps=10)
    for i in range(4):
        single = METHODS[name](cnn).attribute(x[i : i + 1], target=target[i], n_steps=10)
        torch.testing.assert_close(batch[i : i + 1], single)


@both
def test_tuple_inputs_equal_the_concatenated_input(name: str, mlp: nn.Module) -> None:
    x = torch.rand(3, 6, dtype=torch.float64)
    split = lambda a, b: mlp(torch.cat([a, b], dim=1))  # noqa: E731
    whole = METHODS[name](mlp).attribute(x, target=1, n_steps=12)
    parts = METHODS[name](split).attribute((x[:, :2], x[:, 2:]), target=1, n_steps=12)
    assert isinstance(parts, tuple) and len(parts) == 2
    torch.testing.assert_close(torch.cat(parts, dim=1), whole)


class ThreeD(nn.Module):
    """Output of shape (N, 2, 3), to exercise tuple targets."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = make_mlp(n_out=6).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x).reshape(-1, 2, 3)


def with_fixed_representation(name: str, model, layer: nn.Module):  # type: ignore[no-untyped-def]
    """The method; for IG2 with a representation that does not depend on the target."""
    if name == "ig2":
        return IterativeGradientIG(model, representation_layer=layer)
    return GuidedIG(model)


@both
def test_every_target_form_selects_the_same_output(name: str, mlp: nn.Module) -> None:
    x = torch.rand(3, 6, dtype=torch.float64)
    method = with_fixed_representation(name, mlp, mlp[1])
    expected = torch.cat(
        [method.attribute(x[i : i + 1], target=t, n_steps=8) for i, t in enumerate([2, 0, 1])]
    )
    for target in ([2, 0, 1], torch.tensor([2, 0, 1])):
        torch.testing.assert_close(method.attribute(x, target=target, n_steps=8), expected)
    same = method.attribute(x, target=1, n_steps=8)
    torch.testing.assert_close(method.attribute(x, target=torch.tensor(1), n_steps=8), same)
    scalar = with_fixed_representation(name, lambda t: mlp(t)[:, 1], mlp[1])
    torch.testing.assert_close(scalar.attribute(x, n_steps=8), same)
    torch.manual_seed(0)
    model3 = ThreeD()
    layer = model3.inner[1]
    flat = with_fixed_representation(name, lambda t: model3(t)[:, 1, 2], layer).attribute(
        x, n_steps=8
    )
    method3 = with_fixed_representation(name, model3, layer)
    torch.testing.assert_close(method3.attribute(x, target=(1, 2), n_steps=8), flat)
    torch.testing.assert_close(method3.attribute(x, target=[(1, 2)] * 3, n_steps=8), flat)


@both
def test_additional_forward_args_reach_the_model(name: str, mlp: nn.Module) -> None:
    x = torch.rand(3, 6, dtype=torch.float64)
    scale = torch.tensor([[1.0], [2.0], [-1.0]], dtype=torch.float64)

    def model(t: torch.Tensor, s: torch.Tensor, shift: float) -> torch.Tensor:
        return mlp(t * s + shift)

    with_args = METHODS[name](model).attribute(
        x, target=0, additional_forward_args=(scale, 0.25), n_steps=8
    )
    for i in range(3):
        fixed = lambda t, i=i: mlp(t * scale[i] + 0.25)  # noqa: E731
        expected = METHODS[name](fixed).attribute(x[i : i + 1], target=0, n_steps=8)
        torch.testing.assert_close(with_args[i : i + 1], expected)


@both
def test_internal_batch_size_gives_the_same_result(name: str, cnn: SmallCNN) -> None:
    x = torch.rand(5, 1, 8, 8, dtype=torch.float64)
    kwargs = dict(target=[0, 1, 2, 3, 0], n_steps=10, return_convergence_delta=True)
    if name == "ig2":
        kwargs["baselines"] = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    a, da = METHODS[name](cnn).attribute(x, **kwargs)
    b, db = METHODS[name](cnn).attribute(x, internal_batch_size=2, **kwargs)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(da, db)


@both
def test_float32_agrees_with_float64(name: str) -> None:
    torch.manual_seed(0)
    model = SmallCNN().eval()
    x = torch.rand(2, 1, 8, 8)
    a32 = METHODS[name](model).attribute(x, target=1, n_steps=10)
    a64 = METHODS[name](model.double()).attribute(x.double(), target=1, n_steps=10)
    assert a32.dtype == torch.float32 and a64.dtype == torch.float64
    torch.testing.assert_close(a32.double(), a64, rtol=1e-3, atol=1e-5)


@both
def test_inputs_and_baselines_are_never_modified(name: str, mlp: nn.Module) -> None:
    x = torch.rand(3, 6, dtype=torch.float64)
    baselines = torch.rand(3, 6, dtype=torch.float64)
    x_copy, b_copy = x.clone(), baselines.clone()
    METHODS[name](mlp).attribute(x, baselines, target=0, n_steps=5)
    assert torch.equal(x, x_copy) and torch.equal(baselines, b_copy)
    assert not x.requires_grad and x.grad is None
