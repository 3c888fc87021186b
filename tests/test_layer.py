"""Layer variants: paths in a layer's activation space, Captum's layer contracts."""

from __future__ import annotations

import pytest
import torch
from captum.attr import LayerIntegratedGradients, NoiseTunnel
from torch import nn

from captum_ig2 import GuidedIG, IterativeGradientIG, LayerGuidedIG, LayerIterativeGradientIG


def identity_first_mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Identity(), nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 3)).double()


class TextModel(nn.Module):
    """Token ids -> embedding -> mean -> classifier."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embedding = nn.Embedding(30, 5)
        self.hidden = nn.Linear(5, 8)
        self.out = nn.Linear(8, 2)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        e = self.embedding(ids)
        if mask is not None:
            e = e * mask.unsqueeze(-1)
        return self.out(torch.tanh(self.hidden(e.mean(1))))


class TwoOutputs(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x[:, :3], x[:, 3:]


class TupleLayerModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.split = TwoOutputs()
        self.a = nn.Linear(3, 2)
        self.b = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.split(x)
        return torch.tanh(self.a(a)) * torch.sigmoid(self.b(b))


def test_layer_ig2_at_an_identity_first_layer_equals_input_ig2() -> None:
    net = identity_first_mlp()
    x = torch.rand(4, 6, dtype=torch.float64)
    refs = torch.rand(3, 6, dtype=torch.float64)
    kwargs = dict(target=1, n_steps=15, clamp=(0.0, 1.0), return_convergence_delta=True)
    layer, layer_delta = LayerIterativeGradientIG(net, net[0]).attribute(x, refs, **kwargs)
    plain, plain_delta = IterativeGradientIG(net).attribute(x, refs, **kwargs)
    torch.testing.assert_close(layer, plain)
    torch.testing.assert_close(layer_delta, plain_delta)


def test_layer_guided_ig_at_an_identity_first_layer_equals_input_guided_ig() -> None:
    net = identity_first_mlp()
    x = torch.rand(4, 6, dtype=torch.float64)
    layer = LayerGuidedIG(net, net[0]).attribute(x, 0.2, target=2, n_steps=15)
    torch.testing.assert_close(layer, GuidedIG(net).attribute(x, 0.2, target=2, n_steps=15))


def test_attribute_to_layer_input_equals_the_previous_layer_output() -> None:
    net = identity_first_mlp()
    x = torch.rand(3, 6, dtype=torch.float64)
    for cls in (LayerIterativeGradientIG, LayerGuidedIG):
        by_input = cls(net, net[2]).attribute(
            x, target=0, n_steps=10, attribute_to_layer_input=True
        )
        by_output = cls(net, net[1]).attribute(x, target=0, n_steps=10)
        torch.testing.assert_close(by_input, by_output)


@pytest.mark.parametrize("cls", [LayerIterativeGradientIG, LayerGuidedIG], ids=lambda c: c.__name__)
def test_completeness_through_the_layer(cls) -> None:  # type: ignore[no-untyped-def]
    model = TextModel()
    ids = torch.randint(1, 30, (3, 7))
    attributions, delta = cls(model, model.embedding).attribute(
        ids, baselines=0, target=1, n_steps=60, return_convergence_delta=True
    )
    assert attributions.shape == (3, 7, 5)
    assert delta.abs().max() < 1e-3


def test_layer_guided_ig_with_max_dist_zero_equals_captum_layer_ig() -> None:
    model = TextModel()
    ids = torch.randint(1, 30, (3, 7))
    ours = LayerGuidedIG(model, model.embedding).attribute(
        ids, baselines=0, target=0, n_steps=20, max_dist=0.0, method="riemann_left", epsrel=None
    )
    captum = LayerIntegratedGradients(model, model.embedding).attribute(
        ids, baselines=0, target=0, n_steps=20, method="riemann_left"
    )
    torch.testing.assert_close(ours, captum, rtol=1e-4, atol=1e-6)


def test_token_ids_and_additional_forward_args_reach_the_model() -> None:
    model = TextModel()
    ids = torch.randint(1, 30, (2, 5))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.float32)
    attributions = LayerIterativeGradientIG(
        model, model.embedding, representation_layer=model.hidden
    ).attribute(
        ids, baselines=torch.zeros(4, 5, dtype=torch.long), target=0,
        additional_forward_args=mask, n_steps=10,
    )  # fmt: skip
    # Masked tokens never reach the output: their embeddings get no attribution.
    assert torch.count_nonzero(attributions[0, 3:]) == 0
    assert attributions[0, :3].abs().sum() > 0


def test_a_list_of_layers_gives_a_list_of_attributions() -> None:
    net = identity_first_mlp()
    x = torch.rand(3, 6, dtype=torch.float64)
    for cls in (LayerIterativeGradientIG, LayerGuidedIG):
        attributions, delta = cls(net, [net[0], net[2]]).attribute(
            x, target=0, n_steps=40, return_convergence_delta=True
        )
        assert isinstance(attributions, list) and len(attributions) == 2
        assert attributions[0].shape == (3, 6) and attributions[1].shape == (3, 10)
        # As in Captum, both layers are replaced: net[2]'s path alone reaches the output.
        assert torch.count_nonzero(attributions[0]) == 0
        assert delta.abs().max() < 1e-3


def test_a_layer_with_tuple_output_gives_tuple_attributions() -> None:
    model = TupleLayerModel().double()
    x = torch.rand(3, 6, dtype=torch.float64)
    for cls in (LayerIterativeGradientIG, LayerGuidedIG):
        attributions, delta = cls(model, model.split).attribute(
            x, target=1, n_steps=40, return_convergence_delta=True
        )
        assert isinstance(attributions, tuple) and len(attributions) == 2
        assert attributions[0].shape == (3, 3) and attributions[1].shape == (3, 3)
        assert delta.abs().max() < 1e-3


def test_representation_layer_upstream_of_layer_is_rejected() -> None:
    net = identity_first_mlp()
    x = torch.rand(2, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match="downstream"):
        LayerIterativeGradientIG(net, net[2], representation_layer=net[1]).attribute(x, target=0)


@pytest.mark.parametrize("cls", [LayerIterativeGradientIG, LayerGuidedIG], ids=lambda c: c.__name__)
def test_a_layer_outside_the_model_is_rejected_and_hooks_are_removed(cls) -> None:  # type: ignore[no-untyped-def]
    net = identity_first_mlp()
    stray = nn.Linear(6, 6)
    with pytest.raises(ValueError, match="layer"):
        cls(net, stray).attribute(torch.rand(2, 6, dtype=torch.float64), target=0)
    assert not stray._forward_hooks
    for module in net.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks


@pytest.mark.parametrize("cls", [LayerIterativeGradientIG, LayerGuidedIG], ids=lambda c: c.__name__)
def test_layer_must_be_a_module(cls) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(TypeError, match="layer"):
        cls(identity_first_mlp(), "fc")


@pytest.mark.parametrize("cls", [LayerIterativeGradientIG, LayerGuidedIG], ids=lambda c: c.__name__)
def test_hooks_are_removed_after_an_error_inside_the_path(cls) -> None:  # type: ignore[no-untyped-def]
    net = identity_first_mlp()
    calls = {"n": 0}

    def flaky(x: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] > 3:
            raise RuntimeError("model failed")
        return net(x)

    with pytest.raises(RuntimeError, match="model failed"):
        cls(flaky, net[1]).attribute(torch.rand(2, 6, dtype=torch.float64), target=0)
    for module in net.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks


@pytest.mark.parametrize("cls", [LayerIterativeGradientIG, LayerGuidedIG], ids=lambda c: c.__name__)
@pytest.mark.parametrize("nt_type", ["smoothgrad", "smoothgrad_sq", "vargrad"])
def test_noise_tunnel_accepts_layer_variants(cls, nt_type: str) -> None:  # type: ignore[no-untyped-def]
    net = identity_first_mlp()
    x = torch.rand(2, 6, dtype=torch.float64)
    method = cls(net, net[1])
    smoothed = NoiseTunnel(method).attribute(
        x, nt_type=nt_type, nt_samples=3, stdevs=0.05, target=0, n_steps=5
    )
    assert smoothed.shape == (2, 10)
    plain = method.attribute(x, target=0, n_steps=5)
    no_noise = NoiseTunnel(method).attribute(x, nt_samples=2, stdevs=0.0, target=0, n_steps=5)
    torch.testing.assert_close(no_noise, plain)


def test_names() -> None:
    assert LayerIterativeGradientIG.get_name() == "Layer IG2"
    assert LayerGuidedIG.get_name() == "Layer Guided IG"


@pytest.mark.parametrize("cls", [LayerIterativeGradientIG, LayerGuidedIG], ids=lambda c: c.__name__)
def test_a_swapped_gradient_func_sees_layer_points_and_agrees(cls) -> None:  # type: ignore[no-untyped-def]
    from captum._utils.gradient import compute_gradients

    model = TextModel()
    ids = torch.randint(1, 30, (2, 5))
    shapes = []

    def recording(forward_fn, inputs, target_ind=None, additional_forward_args=None):  # type: ignore[no-untyped-def]
        shapes.append(tuple(inputs[0].shape))
        return compute_gradients(forward_fn, inputs, target_ind, additional_forward_args)

    method = cls(model, model.embedding)
    expected = method.attribute(ids, target=1, n_steps=6)
    method.gradient_func = recording
    torch.testing.assert_close(method.attribute(ids, target=1, n_steps=6), expected)
    # Embeddings (of path points and quadrature nodes), not ids.
    assert shapes and all(shape[1:] == (5, 5) for shape in shapes)
