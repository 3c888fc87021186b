"""Mistakes a Captum user makes without noticing: each is an error or a warning that says what is
wrong, never a result that looks right."""

from __future__ import annotations

import warnings

import pytest
import torch
from captum.attr import NoiseTunnel
from torch import nn

from captum_ig2 import (
    GuidedIG,
    IterativeGradientIG,
    LayerIterativeGradientIG,
    LayerPathConductance,
    NeuronGuidedIG,
)


def net(*extra: nn.Module) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), *extra, nn.ReLU(), nn.Linear(8, 3)).double().eval()


X = torch.rand(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


# -- a model in training mode -------------------------------------------------------------------
@pytest.mark.parametrize(
    "layer", [nn.Dropout(0.3), nn.BatchNorm1d(8)], ids=["dropout", "batchnorm"]
)
@pytest.mark.parametrize("cls", [IterativeGradientIG, GuidedIG], ids=lambda c: c.__name__)
def test_a_model_in_training_mode_is_an_error_that_says_call_eval(cls, layer) -> None:  # type: ignore[no-untyped-def]
    model = net(layer).train()
    with pytest.raises(ValueError, match=r"training mode.*`1` \((Dropout|BatchNorm1d)\).*eval"):
        cls(model).attribute(X, target=0, n_steps=4)
    # ... also through a bound method and in the layer and neuron variants.
    with pytest.raises(ValueError, match=r"model\.eval\(\)"):
        cls(model.forward).attribute(X, target=0, n_steps=4)
    with pytest.raises(ValueError, match=r"model\.eval\(\)"):
        NeuronGuidedIG(model, model[0]).attribute(X, neuron_selector=0, n_steps=4)
    model.eval()
    cls(model).attribute(X, target=0, n_steps=4)  # no error once in eval mode


def test_a_model_in_training_mode_without_dropout_or_batch_norm_is_fine() -> None:
    IterativeGradientIG(net().train()).attribute(X, target=0, n_steps=4)


def test_a_random_forward_function_is_an_error_before_any_path_is_walked() -> None:
    dropout = nn.Dropout(0.3).train()
    model = net()

    def forward(x: torch.Tensor) -> torch.Tensor:  # a plain function: nothing to inspect
        return model(dropout(x))

    for cls in (IterativeGradientIG, GuidedIG):
        with pytest.raises(ValueError, match=r"differs between two evaluations.*eval"):
            cls(forward).attribute(X, target=0, n_steps=4)


# -- inputs outside clamp -----------------------------------------------------------------------
def test_inputs_far_outside_clamp_warn_naming_both_ranges() -> None:
    images = X * 255  # 0..255 images with the [0, 1] clamp of the README
    with pytest.warns(UserWarning, match=r"lie in \[.*\], far outside `clamp` \(0, 1\)"):
        IterativeGradientIG(net()).attribute(images, target=0, n_steps=4, clamp=(0.0, 1.0))


def test_per_channel_clamp_bounds_are_checked_per_channel() -> None:
    bounds = (torch.tensor([0.0] * 3 + [10.0] * 3), torch.tensor([1.0] * 3 + [11.0] * 3))
    inside = X.clone()
    inside[:, 3:] += 10.0  # every feature inside its own channel's bounds
    IterativeGradientIG(net()).attribute(inside, target=0, n_steps=4, clamp=bounds)
    with pytest.warns(UserWarning, match="far outside `clamp`"):
        IterativeGradientIG(net()).attribute(X, target=0, n_steps=4, clamp=bounds)


def test_noise_tunnel_samples_just_outside_clamp_do_not_warn() -> None:
    # SmoothGrad's noise takes [0, 1] inputs a little outside [0, 1]: the clamp pulls them in.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        NoiseTunnel(IterativeGradientIG(net())).attribute(
            X, nt_type="smoothgrad", nt_samples=2, stdevs=0.2, target=0, n_steps=4,
            clamp=(0.0, 1.0), baselines=torch.rand(1, 3, 6, dtype=torch.float64),
        )  # fmt: skip


# -- a forward function that returns a tuple or a mapping ---------------------------------------
@pytest.mark.parametrize("wrap", [lambda y: (y,), lambda y: {"logits": y}], ids=["tuple", "dict"])
@pytest.mark.parametrize("cls", [IterativeGradientIG, GuidedIG], ids=lambda c: c.__name__)
def test_a_model_returning_a_tuple_or_mapping_is_a_type_error_that_says_how_to_wrap(
    cls, wrap
) -> None:  # type: ignore[no-untyped-def]
    model = net()
    with pytest.raises(TypeError, match=r"must return a tensor.*\.logits.*\[0\]"):
        cls(lambda x: wrap(model(x))).attribute(X, target=0, n_steps=4)


# -- IG2's reading of `baselines` ---------------------------------------------------------------
def test_the_reference_set_rule_opens_the_attribute_docstring() -> None:
    doc = IterativeGradientIG.attribute.__doc__ or ""
    opening = " ".join(doc.split("Args:")[0].split())
    assert "a tensor of any other number R of examples is read as a set of R references" in (
        opening.replace("**", "")
    )


def test_references_of_different_counts_name_how_each_was_read() -> None:
    def model(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a.sum(1) + b.sum(1)).unsqueeze(1)

    x = (torch.rand(4, 3), torch.rand(4, 2))
    with pytest.raises(ValueError) as raised:
        IterativeGradientIG(model).attribute(
            x, baselines=(torch.rand(5, 3), torch.rand(4, 3, 2)), target=0, n_steps=2
        )
    message = str(raised.value)
    assert "baselines[0] (5, 3): a set of 5 references shared by every input" in message
    assert "baselines[1] (4, 3, 2): a set of 3 references per input" in message


def test_guided_ig_names_the_reference_set_reading_it_refuses() -> None:
    with pytest.raises(ValueError, match="neither 1 nor 4 is read as a set of references"):
        GuidedIG(net()).attribute(X, baselines=torch.zeros(3, 6, dtype=torch.float64), target=0)


# -- LayerPathConductance on an empty batch ------------------------------------------------------
@pytest.mark.parametrize("cls", [IterativeGradientIG, GuidedIG], ids=lambda c: c.__name__)
def test_conductance_of_an_empty_batch_is_empty_with_the_layers_shape(cls) -> None:  # type: ignore[no-untyped-def]
    model = net()
    empty = torch.zeros(0, 6, dtype=torch.float64)
    conductance = LayerPathConductance(cls(model), model[1]).attribute(empty, target=0)
    assert conductance.shape == (0, 8)
    conductance, delta = LayerPathConductance(cls(model), model[1]).attribute(
        empty, target=0, return_convergence_delta=True
    )
    assert conductance.shape == (0, 8) and delta.shape == (0,)
    # as the layer method itself
    assert LayerIterativeGradientIG(model, model[1]).attribute(empty, target=0).shape == (0, 8)
