"""GuidedIG against PAIR's reference implementation and Captum's IG."""

from __future__ import annotations

import pytest
import torch
from captum.attr import IntegratedGradients
from conftest import SmallCNN
from oracles import pair_guided_ig
from torch import nn

from captum_ig2 import GuidedIG


class TiedGradients(nn.Module):
    """Gradients with many exact ties: unused features (zero), a ReLU, equal weights."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.hidden = nn.Linear(10, 3)
        self.out = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(x[:, :10]))) + 0.5 * x[:, 10:14].sum(1, keepdim=True)


SETTINGS = [(0.25, 0.02), (0.1, 0.1), (0.05, 1.0), (0.5, 0.0), (1.0, 0.02)]


@pytest.mark.parametrize(("fraction", "max_dist"), SETTINGS, ids=lambda v: str(v))
def test_guided_ig_equals_pair_reference_on_cnn(fraction: float, max_dist: float) -> None:
    torch.manual_seed(0)
    net = SmallCNN().double().eval()
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    baseline = torch.rand(3, 1, 8, 8, dtype=torch.float64) * 0.2
    expected = pair_guided_ig(net, x, baseline, 2, 20, fraction, max_dist)
    ours = GuidedIG(net).attribute(
        x, baseline, target=2, n_steps=20, fraction=fraction, max_dist=max_dist,
        method="riemann_left", nodes=1, epsrel=None,
    )  # fmt: skip
    torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(("fraction", "max_dist"), SETTINGS, ids=lambda v: str(v))
def test_guided_ig_equals_pair_reference_with_tied_gradients(fraction: float, max_dist: float):
    net = TiedGradients().double()
    x = torch.rand(4, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x[:, 20:25] = 0.0  # features equal to the baseline never move
    baseline = torch.zeros_like(x)
    baseline[0] = 0.3
    expected = pair_guided_ig(net, x, baseline, 1, 25, fraction, max_dist)
    ours = GuidedIG(net).attribute(
        x, baseline, target=1, n_steps=25, fraction=fraction, max_dist=max_dist,
        method="riemann_left", nodes=1, epsrel=None,
    )  # fmt: skip
    torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-12)


def test_guided_ig_max_dist_zero_equals_ig(cnn: nn.Module) -> None:
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    ours = GuidedIG(cnn).attribute(
        x, target=1, n_steps=30, max_dist=0.0, method="riemann_left", epsrel=None
    )
    ig = IntegratedGradients(cnn).attribute(x, target=1, n_steps=30, method="riemann_left")
    # Captum scales its Riemann weights in float32.
    torch.testing.assert_close(ours, ig, rtol=1e-5, atol=1e-7)


def test_guided_ig_path_runs_from_baseline_to_input_within_max_dist(mlp: nn.Module) -> None:
    x = torch.rand(3, 6, dtype=torch.float64)
    baseline = torch.full_like(x, -0.5)
    n_steps, max_dist = 10, 0.1
    path = GuidedIG(mlp).path(x, baseline, target=0, n_steps=n_steps, max_dist=max_dist)
    assert path.points.shape == (n_steps + 1, 3, 1, 6)
    torch.testing.assert_close(path.start[:, 0], baseline)
    torch.testing.assert_close(path.end[:, 0], x)
    alphas = (path.points[:, :, 0] - baseline) / (x - baseline)
    for k in range(1, n_steps + 1):
        assert (alphas[k] >= k / n_steps - max_dist - 1e-12).all()
        assert (alphas[k] <= k / n_steps + max_dist + 1e-12).all()
    torch.testing.assert_close(path.outputs[0, :, 0], mlp(baseline)[:, 0].detach())


def test_guided_ig_is_zero_where_input_equals_baseline(mlp: nn.Module) -> None:
    x = torch.rand(2, 6, dtype=torch.float64)
    attributions = GuidedIG(mlp).attribute(x, baselines=x.clone(), target=0, n_steps=5)
    assert torch.count_nonzero(attributions) == 0
