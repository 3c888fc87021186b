"""Neuron variants: the explained output is a neuron of a layer, chosen Captum's ways."""

from __future__ import annotations

import pytest
import torch
from captum.attr import NeuronIntegratedGradients, NoiseTunnel
from captum.metrics import infidelity, sensitivity_max
from conftest import SmallCNN
from torch import nn

from captum_ig2 import GuidedIG, IterativeGradientIG, NeuronGuidedIG, NeuronIterativeGradientIG


def deep_mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 7), nn.Tanh(), nn.Linear(7, 3)
    ).double()


def test_neuron_ig2_equals_ig2_of_the_model_truncated_at_the_neuron() -> None:
    net = deep_mlp()
    truncated = nn.Sequential(*list(net)[:3])
    x = torch.rand(4, 6, dtype=torch.float64)
    refs = torch.rand(3, 6, dtype=torch.float64)
    # The same representation (net[1]) drives both GradPaths.
    neuron = NeuronIterativeGradientIG(net, net[2], representation_layer=net[1])
    whole = IterativeGradientIG(truncated, representation_layer=net[1])
    torch.testing.assert_close(
        neuron.attribute(x, (5,), refs, n_steps=20),
        whole.attribute(x, refs, target=5, n_steps=20),
    )


def test_neuron_guided_ig_equals_guided_ig_of_the_truncated_model() -> None:
    net = deep_mlp()
    truncated = nn.Sequential(*list(net)[:3])
    x = torch.rand(4, 6, dtype=torch.float64)
    torch.testing.assert_close(
        NeuronGuidedIG(net, net[2]).attribute(x, 5, n_steps=20),
        GuidedIG(truncated).attribute(x, target=5, n_steps=20),
    )


def test_neuron_guided_ig_with_max_dist_zero_equals_captum_neuron_ig(cnn: SmallCNN) -> None:
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    selector = (2, slice(0, 2), slice(1, 3))  # a slice selection: the neurons are summed
    ours = NeuronGuidedIG(cnn, cnn.features[0]).attribute(
        x, selector, n_steps=20, max_dist=0.0, method="riemann_left", epsrel=None
    )
    captum = NeuronIntegratedGradients(cnn, cnn.features[0]).attribute(
        x, selector, n_steps=20, method="riemann_left"
    )
    torch.testing.assert_close(ours, captum, rtol=1e-5, atol=1e-7)


def test_every_neuron_selector_form_selects_the_same_neuron(cnn: SmallCNN) -> None:
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    # IG2's path does not depend on the explained neuron, so selections add up linearly.
    method = NeuronIterativeGradientIG(cnn, cnn.features[0], representation_layer=cnn.act)
    kwargs = dict(n_steps=8, baselines=0.5)
    one = method.attribute(x, (1, 3, 4), **kwargs)
    by_callable = method.attribute(x, lambda out: out[:, 1, 3, 4], **kwargs)
    torch.testing.assert_close(by_callable, one)
    summed = method.attribute(x, (1, slice(3, 5), 4), **kwargs)
    torch.testing.assert_close(summed, one + method.attribute(x, (1, 4, 4), **kwargs))
    flat = NeuronIterativeGradientIG(cnn, cnn.head, representation_layer=cnn.act)
    torch.testing.assert_close(
        flat.attribute(x, 2, **kwargs),
        IterativeGradientIG(cnn, representation_layer=cnn.act).attribute(x, target=2, **kwargs),
    )


@pytest.mark.parametrize(
    "cls", [NeuronIterativeGradientIG, NeuronGuidedIG], ids=lambda c: c.__name__
)
def test_attribute_to_neuron_input_selects_from_the_layer_input(cls) -> None:  # type: ignore[no-untyped-def]
    net = deep_mlp()
    x = torch.rand(3, 6, dtype=torch.float64)
    extra = {"representation_layer": net[4]} if cls is NeuronIterativeGradientIG else {}
    by_input = cls(net, net[2], **extra).attribute(
        x, (4,), n_steps=8, attribute_to_neuron_input=True
    )
    by_output = cls(net, net[1], **extra).attribute(x, (4,), n_steps=8)
    torch.testing.assert_close(by_input, by_output)


@pytest.mark.parametrize(
    "cls", [NeuronIterativeGradientIG, NeuronGuidedIG], ids=lambda c: c.__name__
)
def test_completeness_for_the_neuron(cls) -> None:  # type: ignore[no-untyped-def]
    net = deep_mlp()
    x = torch.rand(3, 6, dtype=torch.float64)
    attributions, delta = cls(net, net[3]).attribute(
        x, (2,), n_steps=60, return_convergence_delta=True
    )
    assert attributions.shape == x.shape and delta.abs().max() < 1e-4


@pytest.mark.parametrize(
    "cls", [NeuronIterativeGradientIG, NeuronGuidedIG], ids=lambda c: c.__name__
)
@pytest.mark.parametrize("selector", [(10,), (0, 1), (slice(12, 20),)], ids=str)
def test_a_neuron_out_of_range_is_rejected(cls, selector) -> None:  # type: ignore[no-untyped-def]
    net = deep_mlp()
    with pytest.raises(ValueError, match="neuron_selector"):
        cls(net, net[2]).attribute(torch.rand(2, 6, dtype=torch.float64), selector)
    for module in net.modules():
        assert not module._forward_hooks


@pytest.mark.parametrize(
    "cls", [NeuronIterativeGradientIG, NeuronGuidedIG], ids=lambda c: c.__name__
)
def test_a_layer_the_forward_never_runs_is_rejected(cls) -> None:  # type: ignore[no-untyped-def]
    stray = nn.Linear(3, 3)
    with pytest.raises(ValueError, match="layer"):
        cls(deep_mlp(), stray).attribute(torch.rand(2, 6, dtype=torch.float64), (0,))
    assert not stray._forward_hooks


@pytest.mark.parametrize(
    "cls", [NeuronIterativeGradientIG, NeuronGuidedIG], ids=lambda c: c.__name__
)
@pytest.mark.parametrize("nt_type", ["smoothgrad", "smoothgrad_sq", "vargrad"])
def test_noise_tunnel_and_metrics_accept_neuron_variants(cls, nt_type: str) -> None:  # type: ignore[no-untyped-def]
    net = deep_mlp()
    x = torch.rand(2, 6, dtype=torch.float64)
    method = cls(net, net[2])
    smoothed = NoiseTunnel(method).attribute(
        x, nt_type=nt_type, nt_samples=3, stdevs=0.05, neuron_selector=(1,), n_steps=5
    )
    assert smoothed.shape == x.shape
    plain = method.attribute(x, (1,), n_steps=5)
    no_noise = NoiseTunnel(method).attribute(
        x, nt_samples=2, stdevs=0.0, neuron_selector=(1,), n_steps=5
    )
    torch.testing.assert_close(no_noise, plain)
    sens = sensitivity_max(
        method.attribute, x, neuron_selector=(1,), n_steps=5, n_perturb_samples=2
    )
    assert sens.shape == (2,)

    def perturb(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        noise = torch.randn_like(inputs) * 0.01
        return noise, inputs - noise

    neuron_model = lambda t: net[:3](t)[:, 1]  # noqa: E731
    score = infidelity(neuron_model, perturb, x, plain, n_perturb_samples=3)
    assert score.shape == (2,) and torch.isfinite(score).all()


def test_names() -> None:
    assert NeuronIterativeGradientIG.get_name() == "Neuron IG2"
    assert NeuronGuidedIG.get_name() == "Neuron Guided IG"


@pytest.mark.parametrize(
    "cls", [NeuronIterativeGradientIG, NeuronGuidedIG], ids=lambda c: c.__name__
)
def test_a_swapped_gradient_func_agrees(cls) -> None:  # type: ignore[no-untyped-def]
    from captum._utils.gradient import compute_gradients

    net = deep_mlp()
    x = torch.rand(3, 6, dtype=torch.float64)
    calls = []

    def counting(forward_fn, inputs, target_ind=None, additional_forward_args=None):  # type: ignore[no-untyped-def]
        calls.append(1)
        return compute_gradients(forward_fn, inputs, target_ind, additional_forward_args)

    method = cls(net, net[2])
    expected = method.attribute(x, (3,), n_steps=6)
    method.gradient_func = counting
    torch.testing.assert_close(method.attribute(x, (3,), n_steps=6), expected)
    assert calls
    for module in net.modules():
        assert not module._forward_hooks
