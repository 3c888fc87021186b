"""The complete trapezoid: complete by construction, refined by its estimate of the map's error,
which must be honest against a fine integral along the same path, exact where the trapezoid is,
and warned on where it exceeds its tolerance."""

from __future__ import annotations

import warnings

import pytest
import torch
from test_quadrature import Separable, closed_form, deep_relu_net, run
from torch import nn

from captum_ig2 import ConvergenceWarning, GuidedIG, IterativeGradientIG

both = pytest.mark.parametrize("name", ["ig2", "guided_ig"])


def relative_error(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)


def fine_integral(name: str, model: nn.Module, x: torch.Tensor, **kwargs):  # type: ignore[no-untyped-def]
    """The same path integrated with 64 Gauss-Legendre nodes on every segment."""
    return run(name, model, x, method="gausslegendre", nodes=64, epsrel=None, **kwargs)


def test_igs_default_rule_is_gauss_legendre_without_a_map_error() -> None:
    # The complete trapezoid is chosen explicitly; the defaults keep their completeness rule.
    model = deep_relu_net()
    x = torch.rand(2, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    default = run("ig2", model, x)
    assert default.map_error is None and default.map_tolerance is None
    chosen = run("ig2", model, x, method="complete_trapezoid")
    assert chosen.map_error is not None and chosen.map_tolerance == pytest.approx(0.02**0.5)


@both
@pytest.mark.parametrize("epsrel", [0.02, None])
def test_attributions_are_complete_by_construction(name: str, epsrel: float | None) -> None:
    model = deep_relu_net()
    x = torch.rand(4, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    path = run(name, model, x, n_steps=10, method="complete_trapezoid", epsrel=epsrel)
    # The gap is the model's own output difference, and the attributions add up to it.
    assert (path.gap.abs() > 1e-5).all()
    torch.testing.assert_close(path.delta, torch.zeros_like(path.delta), atol=1e-12, rtol=0)
    assert path.map_error is not None and path.map_error.shape == (4,)
    assert torch.isfinite(path.map_error).all() and (path.map_error > 0).all()


@both
def test_map_error_estimate_is_honest_against_a_fine_integral(name: str) -> None:
    # Along the same path, 64 Gauss-Legendre nodes per segment give the map to about 1e-6 on
    # this ReLU net (its kinks cost accuracy): the estimate must track the real error (the
    # trapezoid's error is at most |u| / 2 per feature where the gradient is monotone between
    # the nodes, and sums of independent signs make the root sum of squares a fair estimate).
    model = deep_relu_net()
    x = torch.rand(4, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for epsrel in (None, 0.02, 0.005):
        path = run(name, model, x, n_steps=10, method="complete_trapezoid", epsrel=epsrel,
                   limit=64)  # fmt: skip
        fine = fine_integral(name, model, x, n_steps=10)
        torch.testing.assert_close(path.points, fine.points)
        actual = relative_error(path.attributions, fine.attributions)
        assert path.map_error is not None
        assert (actual <= 3.0 * path.map_error).all(), (actual, path.map_error)
        assert (path.map_error <= 6.0 * actual).all(), (actual, path.map_error)
        if epsrel is not None:
            assert path.converged.all()
            assert (actual <= epsrel**0.5).all()
            cosine = nn.functional.cosine_similarity(path.attributions, fine.attributions, dim=1)
            assert cosine.min() > 0.99


def test_tighter_tolerance_buys_accuracy_with_gradients() -> None:
    model = deep_relu_net()
    x = torch.rand(4, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    fine = fine_integral("ig2", model, x, n_steps=10)
    errors, costs = [], []
    for epsrel in (None, 0.02, 0.005, 0.001):
        path = run("ig2", model, x, n_steps=10, method="complete_trapezoid", epsrel=epsrel,
                   limit=256)  # fmt: skip
        errors.append(relative_error(path.attributions, fine.attributions).max().item())
        costs.append(path.evaluations.sum().item())
    assert costs[0] < min(costs[1:]) and costs[-1] == max(costs)
    assert errors == sorted(errors, reverse=True)
    assert errors[-1] < errors[0] / 10


@both
def test_exact_where_the_trapezoid_is(name: str) -> None:
    # f = sum c_i x_i^2: the gradient is linear along a segment, the trapezoid is exact for
    # every feature, and no residual is left to distribute.
    model = Separable(2)
    x = torch.rand(3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(4)) + 0.2
    path = run(name, model, x, method="complete_trapezoid")
    torch.testing.assert_close(path.attributions, closed_form(model, path, name))


@both
def test_refinement_converges_to_the_closed_form_feature_by_feature(name: str) -> None:
    model = Separable(4)
    x = torch.rand(3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) + 0.2
    coarse = run(name, model, x, method="complete_trapezoid", epsrel=None)
    # On a smooth model the first-order estimate overstates the second-order error of the
    # trapezoid, and may stay above a tolerance of 1 %, with a warning, where the map is
    # within 1e-4: what must hold is that it bounds the real error.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        refined = run(name, model, x, method="complete_trapezoid", epsrel=1e-4, limit=4096)
    expected = closed_form(model, refined, name)
    assert (coarse.attributions - expected).abs().max() > 1e-4
    torch.testing.assert_close(refined.attributions, expected, rtol=1e-4, atol=1e-6)
    assert (refined.evaluations > coarse.evaluations).all()
    assert refined.map_error is not None
    assert (relative_error(refined.attributions, expected) <= refined.map_error).all()


def test_a_linear_model_costs_the_path_points_alone() -> None:
    # A constant gradient: the left and right sums agree, the estimate is 0 and nothing is
    # bisected; IG2's attribution is then w * (input - GradCF), in closed form.
    torch.manual_seed(0)
    model = nn.Linear(6, 2).double()
    x = torch.rand(3, 6, dtype=torch.float64)
    path = run("ig2", model, x, n_steps=6, method="complete_trapezoid")
    torch.testing.assert_close(path.map_error, torch.zeros(3, dtype=torch.float64))
    expected = (model.weight[0] * (path.start - path.end)).mean(dim=1)
    torch.testing.assert_close(path.attributions, expected)
    # Every path (walk) takes a gradient at its 7 points and one more a rounding-size away
    # from its start, for its first direction: no node beyond.
    r = path.points.shape[2]
    assert path.evaluations.tolist() == [r * (7 + 1)] * 3


@both
def test_local_form_is_complete_and_accurate(name: str) -> None:
    model = deep_relu_net()
    x = torch.rand(3, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    if name == "ig2":
        refs = torch.rand(2, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
        make = IterativeGradientIG
        args: dict = dict(baselines=refs, target=0, n_steps=5)  # type: ignore[type-arg]
    else:
        make = GuidedIG  # type: ignore[assignment]
        args = dict(baselines=0.1, target=0, n_steps=5, fraction=0.5, max_dist=0.3)
    local = make(model, multiply_by_inputs=False).path(x, method="complete_trapezoid", **args)
    fine = make(model, multiply_by_inputs=False).path(
        x, method="gausslegendre", nodes=64, epsrel=None, **args
    )
    torch.testing.assert_close(local.delta, torch.zeros_like(local.delta), atol=1e-12, rtol=0)
    cosine = nn.functional.cosine_similarity(local.attributions, fine.attributions, dim=1)
    assert cosine.min() > 0.99
    assert local.map_error is not None
    assert (relative_error(local.attributions, fine.attributions) <= 3 * local.map_error).all()


@both
def test_warns_where_the_map_error_exceeds_its_tolerance(name: str) -> None:
    model = deep_relu_net()
    x = torch.rand(3, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with pytest.warns(ConvergenceWarning) as record:
        path = run(name, model, x, method="complete_trapezoid", epsrel=1e-4, limit=1)
    message = str(record[0].message)
    assert path.map_error is not None and path.map_tolerance == pytest.approx(1e-2)
    missed = int((~path.converged).sum())
    assert missed > 0 and f"{missed} of 3 examples" in message
    worst = int(torch.argmax(path.map_error))
    assert f"example {worst}" in message and f"{path.map_error[worst].item():.1%}" in message
    assert "`limit` (now 1)" in message and "estimated map error" in message
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        run(name, model, x, method="complete_trapezoid", epsrel=None)  # no tolerance, no warning


@pytest.mark.parametrize(
    "nodes, error, match",
    [(1, ValueError, "`nodes` must be 2"), (3, ValueError, "`nodes` must be 2"),
     (2.0, TypeError, "`nodes` must be an int"), (True, TypeError, "`nodes` must be an int")],
)  # fmt: skip
def test_nodes_other_than_two_are_refused(nodes: object, error: type, match: str) -> None:
    model = deep_relu_net()
    x = torch.rand(1, 16, dtype=torch.float64)
    with pytest.raises(error, match=match):
        run("ig2", model, x, method="complete_trapezoid", nodes=nodes)
