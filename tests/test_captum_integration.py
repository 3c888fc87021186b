"""The classes as Captum users meet them: NoiseTunnel, metrics, no_grad, gradient_func swaps."""

from __future__ import annotations

import pytest
import torch
from captum._utils.gradient import compute_gradients
from captum.attr import GradientAttribution, NoiseTunnel
from captum.metrics import infidelity, sensitivity_max
from conftest import SmallCNN
from torch import nn

from captum_ig2 import GuidedIG, IterativeGradientIG

CLASSES = [IterativeGradientIG, GuidedIG]
each = pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)


@each
def test_is_a_captum_gradient_attribution_with_delta(cls) -> None:  # type: ignore[no-untyped-def]
    method = cls(nn.Linear(3, 2))
    assert isinstance(method, GradientAttribution)
    assert method.has_convergence_delta()
    assert method.multiplies_by_inputs
    assert callable(method.attribute.__wrapped__)


def test_names_read_as_in_the_papers() -> None:
    assert IterativeGradientIG.get_name() == "IG2"
    assert GuidedIG.get_name() == "Guided IG"


@each
@pytest.mark.parametrize("nt_type", ["smoothgrad", "smoothgrad_sq", "vargrad"])
def test_noise_tunnel_wraps_the_method(cls, nt_type: str, cnn: SmallCNN) -> None:  # type: ignore[no-untyped-def]
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    nt = NoiseTunnel(cls(cnn))
    attributions, delta = nt.attribute(
        x, nt_type=nt_type, nt_samples=4, stdevs=0.1, target=1, n_steps=6,
        return_convergence_delta=True,
    )  # fmt: skip
    assert attributions.shape == x.shape
    assert delta.shape == (3 * 4,)
    assert torch.isfinite(attributions).all()


@each
def test_noise_tunnel_without_noise_equals_the_method(cls, cnn: SmallCNN) -> None:  # type: ignore[no-untyped-def]
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    plain = cls(cnn).attribute(x, target=0, n_steps=6)
    smoothed = NoiseTunnel(cls(cnn)).attribute(
        x, nt_type="smoothgrad", nt_samples=3, stdevs=0.0, target=0, n_steps=6
    )
    torch.testing.assert_close(smoothed, plain)


def test_noise_tunnel_with_a_reference_set(cnn: SmallCNN) -> None:
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    references = torch.rand(1, 5, 1, 8, 8, dtype=torch.float64)  # one set of 5, shared
    ig2 = IterativeGradientIG(cnn)
    plain = ig2.attribute(x, baselines=references, target=0, n_steps=6)
    smoothed = NoiseTunnel(ig2).attribute(
        x, nt_samples=3, stdevs=0.0, baselines=references, target=0, n_steps=6
    )
    torch.testing.assert_close(smoothed, plain)
    noisy = NoiseTunnel(ig2).attribute(
        x, nt_samples=3, stdevs=0.05, baselines=references, target=0, n_steps=6
    )
    assert noisy.shape == x.shape and not torch.allclose(noisy, plain)


@each
def test_works_under_no_grad(cls, mlp: nn.Module) -> None:  # type: ignore[no-untyped-def]
    x = torch.rand(2, 6, dtype=torch.float64)
    expected = cls(mlp).attribute(x, target=0, n_steps=5)
    with torch.no_grad():
        got = cls(mlp).attribute(x, target=0, n_steps=5)
    torch.testing.assert_close(got, expected)


@each
def test_captum_metrics_accept_the_method(cls, mlp: nn.Module) -> None:  # type: ignore[no-untyped-def]
    x = torch.rand(3, 6, dtype=torch.float64)
    method = cls(mlp)
    attributions = method.attribute(x, target=0, n_steps=5)

    def perturb(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        noise = torch.randn_like(inputs) * 0.01
        return noise, inputs - noise

    score = infidelity(mlp, perturb, x, attributions, target=0, n_perturb_samples=4)
    assert score.shape == (3,) and torch.isfinite(score).all()
    sens = sensitivity_max(method.attribute, x, target=0, n_steps=5, n_perturb_samples=2)
    assert sens.shape == (3,) and torch.isfinite(sens).all()


@each
def test_a_swapped_gradient_func_is_used_and_agrees(cls, cnn: SmallCNN) -> None:  # type: ignore[no-untyped-def]
    calls = []

    def counting_gradients(forward_fn, inputs, target_ind=None, additional_forward_args=None):  # type: ignore[no-untyped-def]
        calls.append(target_ind)
        return compute_gradients(forward_fn, inputs, target_ind, additional_forward_args)

    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    kwargs = dict(
        target=1, n_steps=6, return_convergence_delta=True, method="gausslegendre", epsrel=None
    )
    method = cls(cnn)
    expected, expected_delta = method.attribute(x, **kwargs)
    method.gradient_func = counting_gradients
    got, delta = method.attribute(x, **kwargs)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(delta, expected_delta)
    # Per step one gradient at the path point (IG2's distance, Guided IG's output) and the
    # segment's 5 Gauss-Legendre nodes, in batches of at most one point per path (the memory of
    # a step, without internal_batch_size): 5 batches.
    assert len(calls) == 6 * (1 + 5)
    # With refinement, too, the swapped function sees every evaluation and agrees.
    calls.clear()
    refine = dict(target=1, n_steps=6, method="riemann_middle", epsrel=1e-5, limit=64)
    refined = method.attribute(x, **refine)
    assert len(calls) > 12
    method.gradient_func = compute_gradients
    torch.testing.assert_close(refined, method.attribute(x, **refine))


def test_representation_layer_hook_is_removed_after_success_and_error(cnn: SmallCNN) -> None:
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    IterativeGradientIG(cnn, representation_layer=cnn.act).attribute(x, target=0, n_steps=3)
    assert not cnn.act._forward_hooks
    unused = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="representation_layer"):
        IterativeGradientIG(cnn, representation_layer=unused).attribute(x, target=0, n_steps=3)
    assert not unused._forward_hooks

    class Boom(Exception):
        pass

    def failing(t: torch.Tensor) -> torch.Tensor:
        out = cnn(t)
        if failing.calls > 1:  # type: ignore[attr-defined]
            raise Boom
        failing.calls += 1  # type: ignore[attr-defined]
        return out

    failing.calls = 0  # type: ignore[attr-defined]
    with pytest.raises(Boom):
        IterativeGradientIG(failing, representation_layer=cnn.act).attribute(x, target=0, n_steps=3)
    assert not cnn.act._forward_hooks


@each
def test_progress_bar_reports_path_points(cls, mlp: nn.Module, capsys) -> None:  # type: ignore[no-untyped-def]
    cls(mlp).attribute(torch.rand(2, 6, dtype=torch.float64), target=0, n_steps=4,
                       show_progress=True)  # fmt: skip
    err = capsys.readouterr().err
    assert "5/5" in err
