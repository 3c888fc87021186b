"""LayerPathConductance: neuron shares of the IG2 and Guided IG path integrals."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import SmallCNN
from torch import nn

from captum_ig2 import GuidedIG, IterativeGradientIG, LayerPathConductance

METHODS = {
    "ig2": lambda model: IterativeGradientIG(model),
    "guided_ig": lambda model: GuidedIG(model),
}
each = pytest.mark.parametrize("name", list(METHODS))
# The papers' rule and the trapezoid without refinement, Gauss-Legendre refined to the default
# tolerance, and the midpoint rule refined to a tight one: conductance follows the same nodes.
RULES = {
    "left": dict(method="riemann_left", epsrel=None),
    "trapezoid": dict(method="riemann_trapezoid", epsrel=None),
    "gausslegendre": dict(method="gausslegendre"),
    "middle_refined": dict(method="riemann_middle", epsrel=1e-5, limit=64),
}
rules = pytest.mark.parametrize("rule", list(RULES))


def quarter_region() -> torch.Tensor:
    region = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    region[..., :4, 2:6] = 1.0
    return region


@each
@rules
def test_conductance_sums_to_the_region_attribution(name: str, rule: str, cnn: SmallCNN) -> None:
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    kwargs = dict(target=2, n_steps=12, **RULES[rule])
    if name == "ig2":
        kwargs.update(baselines=torch.rand(2, 1, 8, 8, dtype=torch.float64), clamp=(0.0, 1.0))
    method = METHODS[name](cnn)
    region = quarter_region()
    conductance = LayerPathConductance(method, cnn.features[1]).attribute(
        x, region=region, **kwargs
    )
    assert conductance.shape == (3, 4, 8, 8)
    attributions = method.attribute(x, **kwargs)
    torch.testing.assert_close(
        conductance.flatten(1).sum(1), (attributions * region).flatten(1).sum(1)
    )
    whole = LayerPathConductance(method, cnn.features[1]).attribute(x, **kwargs)
    torch.testing.assert_close(whole.flatten(1).sum(1), attributions.flatten(1).sum(1))


@each
def test_conductance_equals_a_jacobian_oracle(name: str) -> None:
    torch.manual_seed(0)
    lower = nn.Sequential(nn.Linear(4, 5), nn.Tanh())
    upper = nn.Sequential(nn.Linear(5, 3), nn.Softplus(), nn.Linear(3, 2))
    model = nn.Sequential(lower, upper).double()
    x = torch.rand(2, 4, dtype=torch.float64)
    region = torch.tensor([[1.0, 0.0, 1.0, 0.0]], dtype=torch.float64)
    method = METHODS[name](model)
    kwargs = dict(target=1, n_steps=6, method="riemann_left", epsrel=None)
    path = method.path(x, **kwargs)
    conductance = LayerPathConductance(method, lower).attribute(x, region=region, **kwargs)
    expected = torch.zeros(2, path.points.shape[2], 5, dtype=torch.float64)
    for a, b in itertools.pairwise(path.points):
        for i, r in itertools.product(range(2), range(path.points.shape[2])):
            point = a[i, r]
            jac = torch.autograd.functional.jacobian(lower, point)  # (5, 4)
            h = lower(point).detach().requires_grad_(True)
            (dg,) = torch.autograd.grad(upper(h)[1], h)
            expected[i, r] += dg * (jac @ ((b[i, r] - point) * region[0]))
    sign = -1.0 if name == "ig2" else 1.0
    torch.testing.assert_close(conductance, sign * expected.mean(1))


def test_conductance_is_computed_once_per_point_not_per_neuron(cnn: SmallCNN) -> None:
    calls = {"n": 0}

    def counting(x: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        return cnn(x)

    LayerPathConductance(GuidedIG(counting), cnn.features[0]).attribute(
        torch.rand(2, 1, 8, 8, dtype=torch.float64), target=0, n_steps=5, method="riemann_left",
        epsrel=None,
    )  # fmt: skip
    # 6 path points + one batch of forward-mode products per segment's node (5), whatever
    # the layer's 4 x 8 x 8 neurons, + 3 passes that check the model is not random (f where the
    # paths head for, twice, and at their start once more).
    assert calls["n"] == 6 + 5 + 3


def test_delta_reports_the_gap_to_the_attribution(cnn: SmallCNN) -> None:
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    _, delta = LayerPathConductance(IterativeGradientIG(cnn), cnn.features[3]).attribute(
        x, target=0, n_steps=5, return_convergence_delta=True
    )
    assert delta.shape == (2,) and delta.abs().max() < 1e-10


def test_bad_arguments_are_rejected(cnn: SmallCNN) -> None:
    with pytest.raises(TypeError, match="path_method"):
        LayerPathConductance(cnn, cnn.features[0])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="layer"):
        LayerPathConductance(GuidedIG(cnn), "conv")  # type: ignore[arg-type]
    conductance = LayerPathConductance(GuidedIG(cnn), cnn.features[0])
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    with pytest.raises(TypeError, match="step_size"):
        conductance.attribute(x, target=0, step_size=0.1)
    with pytest.raises(ValueError, match="region"):
        conductance.attribute(x, target=0, region=torch.ones(3, 3))
    stray = nn.Conv2d(1, 1, 1)
    with pytest.raises(ValueError, match="layer"):
        LayerPathConductance(GuidedIG(cnn), stray).attribute(x, target=0, n_steps=2)
    assert not stray._forward_hooks


@pytest.mark.parametrize("nt_type", ["smoothgrad", "smoothgrad_sq", "vargrad"])
def test_noise_tunnel_wraps_conductance(nt_type: str, cnn: SmallCNN) -> None:
    from captum.attr import NoiseTunnel

    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    conductance = LayerPathConductance(GuidedIG(cnn), cnn.features[1])
    plain = conductance.attribute(x, target=0, n_steps=4)
    no_noise = NoiseTunnel(conductance).attribute(
        x, nt_type="smoothgrad", nt_samples=2, stdevs=0.0, target=0, n_steps=4
    )
    torch.testing.assert_close(no_noise, plain)
    noisy = NoiseTunnel(conductance).attribute(
        x, nt_type=nt_type, nt_samples=2, stdevs=0.1, target=0, n_steps=4
    )
    assert noisy.shape == plain.shape
