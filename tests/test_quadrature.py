"""The quadrature along the path: rules against closed forms and a literal oracle, refinement,
the convergence warning, the per-example report, and IDGI."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from conftest import SmallCNN
from oracles import idgi_reference, polyline_quadrature, rule_table
from torch import nn

from captum_ig2 import ConvergenceWarning, GuidedIG, IterativeGradientIG


class Separable(nn.Module):
    """f(x) = sum_i c_i x_i^p. Along any path the line integral of df/dx_i dx_i is exactly
    c_i (end_i^p - start_i^p), so every method's converged attribution is known in closed
    form, and on a segment the integrand is a polynomial of degree p - 1 in t."""

    def __init__(self, power: int, n_features: int = 6) -> None:
        super().__init__()
        self.power = power
        self.c = torch.linspace(0.5, 1.5, n_features, dtype=torch.float64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.c * x**self.power).sum(dim=1, keepdim=True)


def deep_relu_net(seed: int = 0) -> nn.Sequential:
    """A deep ReLU MLP on which one gradient per path segment is far off (see the test)."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    width = 16
    for _ in range(6):
        layers += [nn.Linear(width, 64), nn.ReLU()]
        width = 64
    return nn.Sequential(*layers, nn.Linear(64, 3)).double().eval()


def closed_form(model: Separable, path, name: str) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """The converged attribution of ``path`` (an AttributionPath) for a separable model."""
    p, c = model.power, model.c
    if name == "ig2":  # f(input) - f(GradCF), averaged over the references
        return (c * (path.start**p - path.end**p)).mean(dim=1)
    return (c * (path.end**p - path.start**p))[:, 0]


def run(name: str, model: nn.Module, x: torch.Tensor, n_steps: int = 5, **kwargs):  # type: ignore[no-untyped-def]
    """IG2 against two references, or Guided IG from 0.1, of output 0, with ``n_steps``."""
    if name == "ig2":
        g = torch.Generator().manual_seed(5)
        refs = torch.rand(2, x.shape[1], dtype=torch.float64, generator=g)
        return IterativeGradientIG(model).path(x, refs, target=0, n_steps=n_steps, **kwargs)
    return GuidedIG(model).path(
        x, 0.1, target=0, n_steps=n_steps, fraction=0.5, max_dist=0.3, **kwargs
    )


both = pytest.mark.parametrize("name", ["ig2", "guided_ig"])

# (method, nodes, the highest power p whose integrand, of degree p - 1, the rule is exact for)
EXACTNESS = [
    ("riemann_left", 1, 1),
    ("riemann_right", 3, 1),
    ("riemann_middle", 1, 2),
    ("riemann_trapezoid", 2, 2),
    ("riemann_trapezoid", 4, 2),
    ("gausslegendre", 1, 2),
    ("gausslegendre", 2, 4),
    ("gausslegendre", 3, 6),
]


@both
@pytest.mark.parametrize(("method", "nodes", "power"), EXACTNESS, ids=lambda v: str(v))
def test_each_rule_is_exact_to_its_degree_and_not_beyond(name, method, nodes, power) -> None:  # type: ignore[no-untyped-def]
    x = torch.rand(3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) + 0.2
    for p, exact in ((power, True), (power + 1, False)):
        model = Separable(p)
        path = run(name, model, x, n_steps=2, method=method, nodes=nodes, epsrel=None)
        expected = closed_form(model, path, name)
        error = (path.attributions - expected).abs().max().item()
        assert (error < 1e-12) if exact else (error > 1e-8), (p, error)


@both
@pytest.mark.parametrize(
    ("method", "nodes"),
    [
        ("riemann_left", 2),
        ("riemann_right", 2),
        ("riemann_middle", 3),
        ("riemann_trapezoid", 3),
        ("gausslegendre", 2),
        ("gausslegendre", 3),
    ],
    ids=lambda v: str(v),
)
def test_each_rule_equals_a_literal_quadrature_along_the_same_path(name, method, nodes) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    cnn = SmallCNN().double().eval()
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    kwargs = dict(target=1, n_steps=4, method=method, nodes=nodes, epsrel=None)
    if name == "ig2":
        references = torch.rand(2, 1, 8, 8, dtype=torch.float64)
        path = IterativeGradientIG(cnn).path(x, references, **kwargs)
    else:
        path = GuidedIG(cnn).path(x, **kwargs)
    alphas, weights = rule_table(method, nodes)
    f = lambda t: cnn(t)[:, 1]  # noqa: E731
    for i in range(2):
        per_reference = [
            polyline_quadrature(f, path.points[:, i, r], alphas, weights)
            for r in range(path.points.shape[2])
        ]
        expected = torch.stack(per_reference).mean(0) * (-1.0 if name == "ig2" else 1.0)
        torch.testing.assert_close(path.attributions[i], expected, rtol=1e-9, atol=1e-12)


@both
def test_refinement_converges_to_the_closed_form_feature_by_feature(name: str) -> None:
    # The midpoint rule is not exact for a quartic: bisection must bring every feature there.
    model = Separable(4)
    x = torch.rand(3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) + 0.2
    coarse = run(name, model, x, method="riemann_middle", epsrel=None)
    refined = run(name, model, x, method="riemann_middle", epsrel=1e-6, limit=4096)
    expected = closed_form(model, refined, name)
    assert (coarse.attributions - expected).abs().max() > 1e-4
    torch.testing.assert_close(refined.attributions, expected, rtol=1e-5, atol=1e-7)
    assert (refined.evaluations > coarse.evaluations).all()
    assert refined.converged.all()


@both
def test_default_converges_where_one_gradient_per_segment_is_far_off(name: str) -> None:
    seed = 0 if name == "ig2" else 1
    model = deep_relu_net(seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(4, 16, dtype=torch.float64, generator=g)
    if name == "ig2":
        method: IterativeGradientIG | GuidedIG = IterativeGradientIG(model)
        kwargs = dict(baselines=torch.rand(3, 16, dtype=torch.float64, generator=g), n_steps=10)
    else:
        method = GuidedIG(model)
        kwargs = dict(n_steps=20)
    papers = method.path(x, target=0, method="riemann_left", nodes=1, epsrel=None, **kwargs)
    assert papers.relative_error.max() > 0.2  # the papers' estimator is off by more than 20 %
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        default = method.path(x, target=0, **kwargs)
    assert (default.delta.abs() <= default.tolerance).all()
    # The same path, integrated with 64 Gauss-Legendre nodes on every segment.
    fine = method.path(x, target=0, method="gausslegendre", nodes=64, epsrel=None, **kwargs)
    torch.testing.assert_close(default.points, fine.points)
    cosine = nn.functional.cosine_similarity(default.attributions, fine.attributions, dim=1)
    if name == "ig2":  # the complete trapezoid: the map within sqrt(epsrel), a cosine of 0.99
        error = (default.attributions - fine.attributions).norm(dim=1)
        error = error / fine.attributions.norm(dim=1)
        assert default.map_error is not None and (error <= default.map_error).all()
        assert (error <= 0.02**0.5).all() and cosine.min() > 0.99
    else:
        assert cosine.min() > 0.999


@both
def test_warning_names_who_missed_by_how_much_and_what_to_raise(name: str) -> None:
    model = deep_relu_net()
    x = torch.rand(3, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with pytest.warns(ConvergenceWarning) as record:
        path = run(name, model, x, method="riemann_left", nodes=1, epsrel=1e-6, limit=1)
    message = str(record[0].message)
    missed = int((~path.converged).sum())
    assert missed > 0 and f"{missed} of 3 examples" in message
    assert "epsrel=1e-06" in message and "`limit` (now 1)" in message and "`nodes`" in message
    worst = int(torch.argmax(torch.where(path.converged, -1.0, path.delta.abs())))
    assert f"example {worst}" in message and f"{path.delta.abs()[worst].item():.4g}" in message
    assert record[0].filename == __file__  # the warning points at the caller's line


def test_the_warnings_suggested_limit_converges() -> None:
    # The warning names a concrete limit; on the deep ReLU net, where one piece per segment
    # misses 2 %, IG2's default with that limit is within the tolerance and does not warn.
    model = deep_relu_net()
    x = torch.rand(3, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with pytest.warns(ConvergenceWarning) as record:
        run("ig2", model, x, limit=1)
    suggested = re.search(r"e\.g\. limit=(\d+)", str(record[0].message))
    assert suggested is not None and int(suggested.group(1)) > 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        path = run("ig2", model, x, limit=int(suggested.group(1)))
    assert bool(path.converged.all())


@both
def test_no_warning_when_within_tolerance_or_without_one(name: str, cnn: SmallCNN) -> None:
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        model = deep_relu_net()
        run(name, model, torch.rand(2, 16, dtype=torch.float64), method="riemann_left",
            nodes=1, epsrel=None)  # fmt: skip
        path = run(name, lambda t: cnn(t.reshape(-1, 1, 8, 8)), x.reshape(2, 64))
    assert torch.isinf(
        run(name, cnn.head, torch.rand(2, 24, dtype=torch.float64), epsrel=None).tolerance
    ).all()
    assert path.converged.all()


@both
def test_path_reports_error_tolerance_and_evaluations_per_example(name: str) -> None:
    model = deep_relu_net()
    x = torch.rand(3, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    path = run(name, model, x, method="gausslegendre", nodes=4, epsrel=None)
    r = path.points.shape[2]
    with torch.no_grad():
        f = model(path.points.reshape(-1, 16))[:, 0].reshape(path.points.shape[:3])
    gap = (f[0] - f[-1]).mean(1) if name == "ig2" else f[-1, :, 0] - f[0, :, 0]
    torch.testing.assert_close(path.gap, gap)
    torch.testing.assert_close(path.delta, path.attributions.sum(1) - gap)
    # 4 nodes on each of the 5 segments of every path, and a gradient at the 5 points each step
    # starts from (IG2's representation distance, Guided IG's output).
    assert path.evaluations.tolist() == [r * 25] * 3
    relaxed = run(name, model, x, epsrel=0.05, epsabs=1e-3)
    torch.testing.assert_close(relaxed.tolerance, 1e-3 + 0.05 * relaxed.gap.abs())
    torch.testing.assert_close(relaxed.converged, relaxed.delta.abs() <= relaxed.tolerance)
    torch.testing.assert_close(relaxed.relative_error, relaxed.delta.abs() / relaxed.gap.abs())


@both
@pytest.mark.parametrize("nodes", [1, 3])
def test_idgi_is_complete_by_construction(name: str, nodes: int) -> None:
    model = deep_relu_net()
    x = torch.rand(3, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    path = run(name, model, x, method="idgi", nodes=nodes)
    torch.testing.assert_close(path.delta, torch.zeros(3, dtype=torch.float64), atol=1e-12, rtol=0)
    # The gradient at the start of each of the 5 segments, and nodes - 1 more on each; IG2's
    # walks take their first direction a rounding-size away from the start: one more each.
    r = path.points.shape[2]
    assert path.evaluations.tolist() == [r * 5 * nodes + (r if name == "ig2" else 0)] * 3


def test_idgi_equals_the_papers_definition_on_the_straight_line(cnn: SmallCNN) -> None:
    # Guided IG with max_dist = 0 walks IG's straight line; IDGI's Algorithm 1 along its points.
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    baseline = torch.rand(2, 1, 8, 8, dtype=torch.float64) * 0.3
    path = GuidedIG(cnn).path(x, baseline, target=2, n_steps=12, max_dist=0.0, method="idgi")
    for i in range(2):
        alphas = torch.linspace(0, 1, 13, dtype=torch.float64).view(-1, 1, 1, 1)
        line = baseline[i] + alphas * (x[i] - baseline[i])
        torch.testing.assert_close(path.points[:, i, 0], line)
        expected = idgi_reference(lambda t: cnn(t)[:, 2], line)
        torch.testing.assert_close(path.attributions[i], expected, rtol=1e-9, atol=1e-12)
    # IDGI with m nodes per segment is IDGI on the m times finer line.
    finer = GuidedIG(cnn).attribute(x, baseline, target=2, n_steps=4, max_dist=0.0,
                                    method="idgi", nodes=3)  # fmt: skip
    torch.testing.assert_close(finer, path.attributions, rtol=1e-9, atol=1e-12)


@both
@pytest.mark.parametrize(
    "rule",
    [
        dict(),
        dict(method="riemann_middle", epsrel=0.05, limit=64),
        dict(method="complete_trapezoid"),
        dict(method="idgi", nodes=2),
    ],
    ids=["default", "middle_refined", "complete", "idgi"],
)
@pytest.mark.filterwarnings("ignore::captum_ig2.ConvergenceWarning")
def test_refined_paths_do_not_depend_on_batch_or_chunking(name: str, rule: dict) -> None:  # type: ignore[type-arg]
    # On the deep ReLU net the refinement differs from path to path; every path must still be
    # integrated as if it were alone, whatever the chunks its nodes are evaluated in. A batch of
    # rows and a row alone go through different matrix-product kernels, whose sums differ in
    # the last bit (on an AVX-512 CPU, about 1e-17 here; on another CPU they may not differ at
    # all), and where a residual sits at its threshold that bit decides whether a piece is
    # bisected. So what is promised is the accuracy, not the count: the attributions agree to
    # the tolerance and the counts to within 10 % (IG2's default makes 8 walks' worth of such
    # decisions per path); without refinement (IDGI) they are equal.
    # (Some of these paths have a tiny output gap and miss the relative tolerance, and say so;
    # this test is about invariance only.)
    model = deep_relu_net()
    x = torch.rand(3, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    batch = run(name, model, x, **rule)
    refined = rule.get("method") != "idgi"
    assert (batch.evaluations > batch.evaluations.min()).any() or not refined
    epsrel = rule.get("epsrel", 0.02)

    def agree(a: torch.Tensor, b: torch.Tensor, count_a: torch.Tensor, count_b: torch.Tensor):  # type: ignore[no-untyped-def]
        if not refined:
            torch.testing.assert_close(a, b)
            torch.testing.assert_close(count_a, count_b)
            return
        relative = (a - b).norm(dim=-1) / b.norm(dim=-1)
        assert (relative <= epsrel).all(), relative
        assert ((count_a - count_b).abs() <= 0.1 * count_b).all(), (count_a, count_b)

    chunked = run(name, model, x, internal_batch_size=2, **rule)
    agree(chunked.attributions, batch.attributions, chunked.evaluations, batch.evaluations)
    for i in range(3):
        alone = run(name, model, x[i : i + 1], **rule)
        agree(alone.attributions, batch.attributions[i : i + 1], alone.evaluations,
              batch.evaluations[i : i + 1])  # fmt: skip




def test_guided_igs_default_spends_no_gradient_beyond_its_path_where_it_is_exact() -> None:
    # On a quadratic model the trapezoid is exact for the per-feature integrand of degree 1:
    # Guided IG's default takes its two nodes at the path points, whose gradients the guided
    # steps take anyway, so the call costs the path's T + 1 gradients and nothing more.
    model = Separable(2)
    x = torch.rand(3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(4)) + 0.2
    path = run("guided_ig", model, x, n_steps=7)
    assert (path.evaluations == 7 + 1).all()
    torch.testing.assert_close(path.attributions, closed_form(model, path, "guided_ig"))
    papers = run("guided_ig", model, x, n_steps=7, method="riemann_left", nodes=1, epsrel=None)
    assert (papers.evaluations == 7).all()  # one gradient per step, the path's own
