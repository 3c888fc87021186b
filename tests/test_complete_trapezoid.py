"""The complete trapezoid: complete by construction, refined by its estimate of the map's error,
which must be honest against a fine integral along the same path, exact where the trapezoid is,
and warned on where it exceeds its tolerance."""

from __future__ import annotations

import warnings

import pytest
import torch
from test_quadrature import Separable, closed_form, deep_relu_net, run
from torch import nn

from captum_ig2 import ConvergenceWarning, GuidedIG, IterativeGradientIG, set_refinement_memory

both = pytest.mark.parametrize("name", ["ig2", "guided_ig"])


def relative_error(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)


def fine_integral(name: str, model: nn.Module, x: torch.Tensor, **kwargs):  # type: ignore[no-untyped-def]
    """The same path integrated with 64 Gauss-Legendre nodes on every segment."""
    return run(name, model, x, method="gausslegendre", nodes=64, epsrel=None, **kwargs)


def test_ig2s_default_rule_is_the_complete_trapezoid_with_a_map_error() -> None:
    # IG2's default reports the map's estimated error; Guided IG's default and IG2's other
    # rules keep their completeness tolerance and report none.
    model = deep_relu_net()
    x = torch.rand(2, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    default = run("ig2", model, x)
    assert default.map_error is not None and default.map_tolerance == pytest.approx(0.02**0.5)
    assert (default.map_error <= default.map_tolerance).all()
    chosen = run("ig2", model, x, method="gausslegendre")
    assert chosen.map_error is None and chosen.map_tolerance is None
    guided = run("guided_ig", model, x)
    assert guided.map_error is None and guided.map_tolerance is None


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
    # the tightest tolerance, sqrt(0.001), holds for the real error, far below the unrefined one
    assert errors[-1] <= 0.001**0.5 and errors[-1] < errors[0] / 5


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
    # trapezoid: a tolerance of 1e-4 (epsrel = 1e-8) gives a map well within 1e-4, and the
    # estimate must bound the real error.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        refined = run(name, model, x, method="complete_trapezoid", epsrel=1e-8, limit=4096)
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


def _kinked(x: torch.Tensor) -> torch.Tensor:
    """f(x) = sum_i relu(x_i - 0.5): the gradient of feature i jumps where x_i crosses 0.5."""
    return torch.relu(x - 0.5).sum(dim=1)


def _refine_polylines(points: torch.Tensor, epsrel: float, group: int = 1, limit: int = 64):  # type: ignore[no-untyped-def]
    """The quadrature of the engine, driven by hand: the complete trapezoid along polylines
    ``points`` (T + 1, P, F) of ``_kinked``, refined after the last segment."""
    from captum_ig2._quadrature import Integration, Point

    def evaluate(x: tuple[torch.Tensor, ...], paths: torch.Tensor):  # type: ignore[no-untyped-def]
        t = x[0].detach().requires_grad_()
        value = _kinked(t)
        (grad,) = torch.autograd.grad(value.sum(), t)
        return value.detach(), (grad,)

    integration = Integration("complete_trapezoid", 2, epsrel, 0.0, limit)
    steps, n_paths = points.shape[0] - 1, points.shape[1]
    quadrature = integration.quadrature(
        _kinked(points[0]), _kinked(points[-1]), steps, chunk_size=3, group=group
    )
    total = torch.zeros_like(points[0])
    error2 = torch.zeros(n_paths, dtype=torch.float64)
    previous = None
    for k in range(steps + 1):
        value, (grad,) = evaluate((points[k],), torch.arange(n_paths))
        point = Point((points[k],), value, (grad,))
        if previous is not None:
            segment = quadrature.integrate(previous, point, evaluate)
            total += segment.integral[0]
            error2 += segment.error2
        previous = point
    refined = quadrature.refine((total,), evaluate, None)
    if refined is None:  # no refinement (limit=1)
        return total, torch.zeros(n_paths, dtype=torch.long), error2
    change, evaluations, error2, held = refined
    assert (held == 0).all()  # without a memory budget, every piece may be refined
    return total + change[0], evaluations, error2


def test_refinement_goes_where_the_error_is_across_paths_and_segments() -> None:
    # Path 0 stays below the kinks (a constant gradient: the trapezoid is exact, its estimate 0);
    # path 1 crosses them on its second segment only. The exact map is, feature by feature,
    # relu(end - 0.5) - relu(start - 0.5) (the gradient theorem per feature, f being separable).
    base = torch.linspace(0.0, 0.4, 5, dtype=torch.float64)
    path0 = torch.stack([base * s for s in (0.2, 0.5, 0.8, 1.0)])
    path1 = torch.stack([base * 0.2, base * 0.2 + 0.9 * (1 - base * 0.2), torch.ones(5) * 0.95,
                         torch.ones(5).double()])  # fmt: skip
    points = torch.stack([path0, path1], dim=1)  # (T + 1 = 4, P = 2, F = 5)
    exact = torch.relu(points[-1] - 0.5) - torch.relu(points[0] - 0.5)
    coarse, no_evaluations, _ = _refine_polylines(points, epsrel=1e-4, limit=1)  # no bisection
    assert no_evaluations.tolist() == [0, 0]
    for epsrel in (0.01, 1e-4):
        attribution, evaluations, error2 = _refine_polylines(points, epsrel, limit=4096)
        # complete by construction, and within the tolerance of the map, as estimated
        torch.testing.assert_close(attribution.sum(dim=1), exact.sum(dim=1))
        real = (attribution - exact).norm(dim=1) / exact.norm(dim=1).clamp_min(1e-300)
        estimated = error2.sqrt() / exact.norm(dim=1).clamp_min(1e-300)
        assert evaluations[0] == 0 and error2[0] == 0 and real[0] < 1e-12
        assert evaluations[1] > 0 and real[1] <= estimated[1] <= epsrel**0.5
    assert (attribution[1] - exact[1]).norm() < (coarse[1] - exact[1]).norm() / 2


def _ig2_within(budget: int | None):  # type: ignore[no-untyped-def]
    """IG2's default on the deep ReLU net (4 examples, 3 references, 8 walks, 10 steps: 96 paths
    of 16 float64, 24.6 kB of rows per path point, 270 kB unbounded) within ``budget``."""
    model = deep_relu_net(0)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 16, dtype=torch.float64, generator=g)
    refs = torch.rand(3, 16, dtype=torch.float64, generator=g)
    ig2 = IterativeGradientIG(model)
    previous = set_refinement_memory(budget)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            path = ig2.path(x, refs, target=0, n_steps=10)
    finally:
        set_refinement_memory(previous)
    fine = ig2.path(x, refs, target=0, n_steps=10, method="gausslegendre", nodes=64, epsrel=None)
    warned = [w for w in caught if issubclass(w.category, ConvergenceWarning)]
    return path, relative_error(path.attributions, fine.attributions), warned


def test_a_budget_that_holds_every_row_changes_nothing() -> None:
    unbounded, error, warned = _ig2_within(None)
    assert not warned and unbounded.converged.all()
    assert (error <= unbounded.map_error).all()  # the estimate is honest
    within, _, _ = _ig2_within(10**6)
    torch.testing.assert_close(within.attributions, unbounded.attributions, rtol=0, atol=0)
    torch.testing.assert_close(within.evaluations, unbounded.evaluations)


@pytest.mark.parametrize("budget", [150_000, 80_000, 0])
def test_a_small_budget_freezes_pieces_honestly_and_warns(budget: int) -> None:
    # Rows freed during the walk freeze the pieces of least error relative to their example's
    # tolerance: the refinement cannot reach them, the map error estimate keeps their error
    # (still an upper bound of the real error), the attributions stay complete, and the call
    # warns where the estimate ends above the tolerance.
    unbounded, _, _ = _ig2_within(None)
    path, error, warned = _ig2_within(budget)
    assert path.map_error is not None and unbounded.map_error is not None
    assert (error <= path.map_error).all()
    torch.testing.assert_close(path.delta, torch.zeros_like(path.delta), atol=1e-12, rtol=0)
    beyond = path.map_error > path.map_tolerance
    assert beyond.any() and warned  # this example needs refinement the budget cannot hold
    message = str(warned[0].message)
    assert f"{int(beyond.sum())} of 4 examples" in message
    assert (path.map_error >= unbounded.map_error - 1e-12).all()
    if budget == 0:  # nothing could be refined: the warning names the budget, not `limit`
        assert "captum_ig2.set_refinement_memory(nbytes)" in message
        assert "(now 0 bytes)" in message and "Raise `limit`" not in message


def test_a_warning_without_the_budget_in_the_way_names_limit() -> None:
    model = deep_relu_net(0)
    x = torch.rand(3, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    with pytest.warns(ConvergenceWarning) as record:
        run("ig2", model, x, n_steps=10, epsrel=1e-4, limit=2)
    message = str(record[0].message)
    assert "Raise `limit` (now 2), e.g. limit=16" in message
    assert "set_refinement_memory" not in message


def test_set_refinement_memory_checks_its_argument_and_returns_the_previous() -> None:
    from captum_ig2._refine import REFINEMENT_MEMORY, refinement_memory

    assert refinement_memory() == REFINEMENT_MEMORY == 4 * 2**30  # the documented default
    for bad in ("4G", True, [1]):
        with pytest.raises(TypeError, match="`nbytes` must be a number of bytes"):
            set_refinement_memory(bad)  # type: ignore[arg-type]
    for bad in (-1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="`nbytes` must be a finite number of bytes >= 0"):
            set_refinement_memory(bad)
    assert refinement_memory() == REFINEMENT_MEMORY  # unchanged by a refused value
    previous = set_refinement_memory(2**20)
    try:
        assert previous == REFINEMENT_MEMORY and refinement_memory() == 2**20
        assert set_refinement_memory(4e9) == 2**20 and refinement_memory() == 4_000_000_000
        assert set_refinement_memory(None) == 4_000_000_000 and refinement_memory() is None
    finally:
        set_refinement_memory(previous)
    assert refinement_memory() == REFINEMENT_MEMORY


def _two_walks(gap: float) -> torch.Tensor:
    """Two polylines (T + 1 = 3, P = 2, F = 6) of one example from one start: their first
    segments cross every kink of ``_kinked`` and end ``gap`` apart (relative to the segment's
    length), then they go their own ways, beyond the kinks."""
    start = torch.linspace(0.0, 0.45, 6, dtype=torch.float64)  # kinks at other places
    end = torch.linspace(0.9, 0.6, 6, dtype=torch.float64)
    nudge = gap * (end - start).norm() * torch.tensor([1.0, -1.0, 0.5, 0.0, -0.5, 0.0]) / 1.5
    path0 = torch.stack([start, end, end + 0.05])  # beyond the kinks: no error there
    path1 = torch.stack([start, end + nudge.double(), end + 0.1])
    return torch.stack([path0, path1], dim=1)


def test_walks_that_coincide_share_their_refinement_and_its_error() -> None:
    # Both first segments cross all kinks: refined path by path, each would cost its own
    # bisections for one and the same error. Path 1 shares path 0's (it spends nothing), stays
    # complete, and the map, the mean of the two, is within the estimate, which includes the
    # difference of the two segments' errors (here its exact size: the kinks sit at other
    # places of the two segments by the gap).
    for gap in (0.0, 1e-3):
        points = _two_walks(gap)
        exact = (torch.relu(points[-1] - 0.5) - torch.relu(points[0] - 0.5)).mean(dim=0)
        _, alone_cost, _ = _refine_polylines(points, epsrel=1e-3, group=1, limit=4096)
        shared, cost, error2 = _refine_polylines(points, epsrel=1e-3, group=2, limit=4096)
        assert alone_cost[0] > 0 and alone_cost[1] > 0
        assert cost[0] > 0 and cost[1] == 0
        sums = torch.relu(points[-1] - 0.5).sum(1) - torch.relu(points[0] - 0.5).sum(1)
        torch.testing.assert_close(shared.sum(dim=1), sums)  # every path stays complete
        real = (shared.mean(dim=0) - exact).norm() / exact.norm()
        estimated = error2.sum().sqrt() / 2 / exact.norm()
        assert real <= estimated + 1e-12 and estimated <= 1e-3**0.5
        # path 1's own integral gained from path 0's bisections
        coarse, _, _ = _refine_polylines(points, epsrel=1e-3, group=2, limit=1)
        own = torch.relu(points[-1, 1] - 0.5) - torch.relu(points[0, 1] - 0.5)
        assert (shared[1] - own).norm() < (coarse[1] - own).norm() / 4


def test_walks_that_part_or_a_tight_tolerance_refine_on_their_own() -> None:
    # Where the first segments end far apart (10 % of their length) the difference of their
    # errors is about their errors: nothing is shared. Where they end close but the tolerance
    # is tighter than the error of sharing, path 1 is refined on its own too.
    for gap, epsrel in ((0.1, 1e-3), (1e-3, 1e-9)):
        points = _two_walks(gap)
        exact = (torch.relu(points[-1] - 0.5) - torch.relu(points[0] - 0.5)).mean(dim=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            shared, cost, error2 = _refine_polylines(points, epsrel=epsrel, group=2, limit=4096)
        assert cost[0] > 0 and cost[1] > 0
        real = (shared.mean(dim=0) - exact).norm() / exact.norm()
        assert real <= error2.sum().sqrt() / 2 / exact.norm() + 1e-12


def test_sharing_saves_ig2s_walks_gradients_within_the_estimate(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # IG2's walks of one reference start at the input together: sharing the refinement of
    # their first segments costs fewer gradients than refining them walk by walk, for maps
    # that stay within their estimated error of a fine integral along the same walks.
    import captum_ig2._refine as refine

    model = deep_relu_net(1)
    x = torch.rand(3, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    shared = run("ig2", model, x, n_steps=10, epsrel=0.005)
    monkeypatch.setattr(refine, "SHARE_GOAL", 0.0)  # only identical segments share
    alone = run("ig2", model, x, n_steps=10, epsrel=0.005)
    fine = fine_integral("ig2", model, x, n_steps=10)
    torch.testing.assert_close(shared.points, fine.points)
    assert shared.evaluations.sum() < alone.evaluations.sum()
    for path in (shared, alone):
        assert path.map_error is not None and path.converged.all()
        assert (relative_error(path.attributions, fine.attributions) <= path.map_error).all()
        torch.testing.assert_close(path.delta, torch.zeros_like(path.delta), atol=1e-12, rtol=0)
