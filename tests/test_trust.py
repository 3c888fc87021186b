"""Trust: no silent NaN or zero, a clear error for every bad input, Captum's whole contract.

Each test here failed on an earlier version of the package, which returned a silent NaN or zero,
a bare assertion or an unnamed error where these tests now expect a named one.
"""

from __future__ import annotations

import inspect
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from captum.attr import (
    IntegratedGradients,
    LayerIntegratedGradients,
    NeuronIntegratedGradients,
)
from torch import nn

from captum_ig2 import (
    ConvergenceWarning,
    GuidedIG,
    IterativeGradientIG,
    LayerGuidedIG,
    LayerIterativeGradientIG,
    LayerPathConductance,
    NeuronGuidedIG,
    NeuronIterativeGradientIG,
)

INPUT_CLASSES = (IterativeGradientIG, GuidedIG)
LAYER_CLASSES = (LayerIterativeGradientIG, LayerGuidedIG)
NEURON_CLASSES = (NeuronIterativeGradientIG, NeuronGuidedIG)


def mlp(n_in: int = 6, dtype: torch.dtype = torch.float64) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(n_in, 8), nn.Tanh(), nn.Linear(8, 3)).to(dtype)


# ----------------------------------------------------------------------------------------
# Silent wrong results
# ----------------------------------------------------------------------------------------


def dead_relu_model() -> nn.Sequential:
    """A model whose hidden ReLUs are all dead: the representation's gradient is exactly 0."""
    net = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2)).double()
    with torch.no_grad():
        net[0].weight.fill_(-0.01)  # inputs are >= 0: every pre-activation is < 0
        net[0].bias.fill_(-1.0)
    return net


@pytest.mark.parametrize("scale", [1.0, 255.0, 1e15])
def test_a_zero_distance_gradient_leaves_the_gradpath_point_where_it_is(scale: float) -> None:
    net = dead_relu_model()
    x = torch.rand(3, 4, dtype=torch.float64) * scale
    refs = torch.rand(2, 4, dtype=torch.float64) * scale
    ig2 = IterativeGradientIG(net, representation_layer=net[1])
    path = ig2.path(x, refs, target=0, n_steps=5)
    assert torch.isfinite(path.attributions).all()
    # Every point of every path is the input itself: there is no direction to walk.
    torch.testing.assert_close(path.points, x[None, :, None].expand_as(path.points))
    assert (path.attributions == 0).all() and (path.delta == 0).all()


def test_inference_mode_raises_a_clear_error() -> None:
    net = mlp()
    x = torch.rand(2, 6, dtype=torch.float64)
    with torch.inference_mode():
        for explainer in (GuidedIG(net), IterativeGradientIG(net, representation_layer=net[1])):
            with pytest.raises(RuntimeError, match="inference_mode"):
                explainer.attribute(x, target=0, n_steps=4)


def test_inference_tensors_made_earlier_are_accepted_and_give_the_same_result() -> None:
    net = mlp()
    x = torch.rand(2, 6, dtype=torch.float64)
    refs = torch.rand(3, 6, dtype=torch.float64)
    with torch.inference_mode():
        x_inf, refs_inf = x.clone(), refs.clone()
    ig2 = IterativeGradientIG(net, representation_layer=net[1])
    torch.testing.assert_close(
        ig2.attribute(x_inf, refs_inf, target=0, n_steps=4),
        ig2.attribute(x, refs, target=0, n_steps=4),
    )
    torch.testing.assert_close(
        GuidedIG(net).attribute(x_inf, target=0, n_steps=8),
        GuidedIG(net).attribute(x, target=0, n_steps=8),
    )


class Sleepy(nn.Module):
    """An MLP that sleeps 1 ms in every forward pass, so that two threads interleave."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.first = nn.Linear(6, 8)
        self.hidden = nn.Tanh()
        self.last = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.hidden(self.first(x))
        time.sleep(0.001)
        return self.last(h)


def _concurrent_calls() -> list[tuple[str, object]]:
    net = Sleepy().double()
    refs = torch.rand(3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    kw = {"n_steps": 4}
    ig2 = IterativeGradientIG(net, representation_layer=net.hidden)
    layer_ig2 = LayerIterativeGradientIG(net, net.first, representation_layer=net.hidden)
    layer_gig = LayerGuidedIG(net, net.first)
    neuron_ig2 = NeuronIterativeGradientIG(net, net.hidden, representation_layer=net.hidden)
    neuron_gig = NeuronGuidedIG(net, net.hidden)
    conductance = LayerPathConductance(ig2, net.hidden)
    return [
        ("IG2", lambda x: ig2.attribute(x, refs, target=0, **kw)),
        ("LayerIG2", lambda x: layer_ig2.attribute(x, refs, target=0, **kw)),
        ("LayerGuidedIG", lambda x: layer_gig.attribute(x, target=0, **kw)),
        ("NeuronIG2", lambda x: neuron_ig2.attribute(x, 1, refs, **kw)),
        ("NeuronGuidedIG", lambda x: neuron_gig.attribute(x, 1, **kw)),
        ("conductance", lambda x: conductance.attribute(x, refs, target=0, **kw)),
    ]


@pytest.mark.parametrize("name", [name for name, _ in _concurrent_calls()])
def test_concurrent_calls_on_one_explainer_do_not_mix(name: str) -> None:
    call = dict(_concurrent_calls())[name]
    inputs = [torch.rand(2, 6, dtype=torch.float64) for _ in range(8)]
    expected = [call(x) for x in inputs]
    barrier = threading.Barrier(2)

    def run(i: int) -> object:
        if i < 2:
            barrier.wait()
        return call(inputs[i])

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(run, range(len(inputs))))
    for got, want in zip(results, expected):
        torch.testing.assert_close(got, want)


def test_guided_ig_with_a_huge_baseline_stays_finite() -> None:
    net = nn.Sequential(nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 2))
    x = torch.rand(2, 6)
    # tanh saturates over all but the last 1e-38 of the path: no budget resolves that, so
    # the call warns, but its attributions are finite (the L1 totals once overflowed to inf).
    with pytest.warns(ConvergenceWarning):
        attr = GuidedIG(net).attribute(x, torch.full_like(x, 3e38), target=0, n_steps=10)
    assert torch.isfinite(attr).all()
    assert (attr != 0).any()


@pytest.mark.parametrize("clamp", [(float("nan"), 1.0), (0.0, float("nan"))])
def test_a_nan_clamp_bound_is_rejected(clamp: tuple[float, float]) -> None:
    net = mlp()
    with pytest.raises(ValueError, match=r"clamp.*NaN"):
        IterativeGradientIG(net).attribute(torch.rand(2, 6, dtype=torch.float64), clamp=clamp)


def test_a_nan_inside_a_tensor_clamp_bound_is_rejected() -> None:
    low = torch.zeros(6, dtype=torch.float64)
    low[2] = float("nan")
    with pytest.raises(ValueError, match=r"clamp.*NaN"):
        IterativeGradientIG(mlp()).attribute(torch.rand(2, 6).double(), clamp=(low, 1.0))


def test_tensor_clamp_bounds_broadcast_to_each_example() -> None:
    net = mlp()
    x = torch.rand(3, 6, dtype=torch.float64)
    refs = torch.rand(2, 6, dtype=torch.float64)
    ig2 = IterativeGradientIG(net)
    low = torch.tensor([0.0, 0.1, 0.2, 0.0, 0.1, 0.2], dtype=torch.float64)
    path = ig2.path(x.clamp(min=0.2), refs, target=0, n_steps=8, clamp=(low, 1.0))
    assert (path.points >= low - 1e-12).all() and (path.points <= 1.0 + 1e-12).all()
    # A tensor bound equal to a number everywhere gives the number's result.
    torch.testing.assert_close(
        ig2.attribute(x, refs, target=0, n_steps=8, clamp=(torch.zeros(6).double(), 1.0)),
        ig2.attribute(x, refs, target=0, n_steps=8, clamp=(0.0, 1.0)),
    )


def test_per_channel_clamp_bounds_on_images() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.Linear(2 * 4 * 4, 3)).double()
    x = torch.rand(2, 3, 6, 6, dtype=torch.float64)
    low = torch.tensor([0.0, 0.25, 0.5], dtype=torch.float64).view(3, 1, 1)
    path = IterativeGradientIG(net).path(
        x, torch.rand(2, 3, 6, 6, dtype=torch.float64), target=0, n_steps=6, clamp=(low, None)
    )
    assert (path.points[1:] >= low).all()


@pytest.mark.parametrize(
    "low, high, match",
    [
        (torch.ones(6), 0.5, "low <= high"),
        (torch.zeros(5), 1.0, "broadcast"),
        (0.5, torch.zeros(6), "low <= high"),
    ],
)
def test_bad_tensor_clamp_bounds_are_rejected(low, high, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=match):
        IterativeGradientIG(mlp(dtype=torch.float32)).attribute(torch.rand(2, 6), clamp=(low, high))


class NanBeyond(nn.Module):
    """Finite for x < 0.5 and NaN beyond: a model that breaks part-way along the path."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.stack([x.sum(1), -x.sum(1)], 1)
        return torch.where(x[:, :1] < 0.5, y, torch.full_like(y, float("nan")))


@pytest.mark.parametrize("cls", INPUT_CLASSES)
def test_a_model_that_becomes_nan_on_the_path_raises_naming_step_and_example(cls) -> None:  # type: ignore[no-untyped-def]
    x = torch.full((2, 3), 0.1, dtype=torch.float64)
    x[1, 0] = 0.9  # example 1's straight path crosses 0.5
    baseline = torch.full_like(x, 0.1)
    kwargs = {} if cls is GuidedIG else {"step_size": 0.1}
    with pytest.raises(ValueError, match=r"(?s)NaN.*step.*example 1") as raised:
        cls(NanBeyond()).attribute(x, baseline, target=0, n_steps=8, **kwargs)
    message = str(raised.value)
    if cls is GuidedIG:  # its path starts at the baseline, and it has no clamp
        assert "step 0 is the baseline" in message and "clamp" not in message
    else:
        assert "step 0 is the input" in message and "`clamp`" in message


# ----------------------------------------------------------------------------------------
# Clear errors where a cryptic one was
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", INPUT_CLASSES)
def test_empty_inputs_give_empty_attributions_of_their_shape(cls) -> None:  # type: ignore[no-untyped-def]
    net = mlp()
    x = torch.rand(0, 6, dtype=torch.float64)
    attr, delta = cls(net).attribute(x, target=0, n_steps=4, return_convergence_delta=True)
    assert attr.shape == (0, 6) and attr.dtype == x.dtype
    assert delta.shape == (0,)


def test_empty_tuple_inputs_give_empty_tuples() -> None:
    net = nn.Bilinear(3, 4, 2).double()
    xs = (torch.rand(0, 3, dtype=torch.float64), torch.rand(0, 4, dtype=torch.float64))
    for explainer in (IterativeGradientIG(net), GuidedIG(net)):
        attr = explainer.attribute(xs, target=1, n_steps=4)
        assert isinstance(attr, tuple) and [a.shape for a in attr] == [(0, 3), (0, 4)]


def test_an_empty_reference_set_is_a_value_error_naming_baselines() -> None:
    x = torch.rand(2, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match="baselines"):
        IterativeGradientIG(mlp()).attribute(x, torch.rand(0, 6, dtype=torch.float64), target=0)
    with pytest.raises(ValueError, match="baselines"):
        IterativeGradientIG(mlp()).attribute(x, torch.rand(2, 0, 6, dtype=torch.float64), target=0)


@pytest.mark.parametrize("cls", INPUT_CLASSES)
def test_inputs_without_features_give_empty_attributions(cls) -> None:  # type: ignore[no-untyped-def]
    class Constant(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.ones(x.shape[0], 2, dtype=x.dtype) + 0 * x.sum()

    x = torch.rand(3, 0, dtype=torch.float64)
    attr, delta = cls(Constant()).attribute(x, target=0, n_steps=4, return_convergence_delta=True)
    assert attr.shape == (3, 0)
    assert (delta == 0).all()


def test_a_step_size_beyond_the_dtype_range_is_a_value_error() -> None:
    net = mlp(dtype=torch.float32)
    with pytest.raises(ValueError, match="step_size"):
        IterativeGradientIG(net).attribute(torch.rand(2, 6), target=0, step_size=1e39)


class Picky(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = mlp()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[1] == 6, "the model's own message"
        return self.inner(x)


@pytest.mark.parametrize("cls", LAYER_CLASSES + NEURON_CLASSES)
def test_a_model_assertion_passes_through_untouched(cls) -> None:  # type: ignore[no-untyped-def]
    net = Picky()
    explainer = cls(net, net.inner[0])
    args = (torch.rand(2, 5, dtype=torch.float64),)
    args += (1,) if cls in NEURON_CLASSES else ()
    kwargs = {} if cls in NEURON_CLASSES else {"target": 0}
    with pytest.raises(AssertionError, match="the model's own message"):
        explainer.attribute(*args, n_steps=3, **kwargs)


@pytest.mark.parametrize("cls", INPUT_CLASSES)
@pytest.mark.parametrize("n_steps", [np.int64(5), np.int32(5)])
def test_numpy_integers_are_accepted_where_captum_takes_an_int(cls, n_steps) -> None:  # type: ignore[no-untyped-def]
    net = mlp()
    x = torch.rand(2, 6, dtype=torch.float64)
    explainer = cls(net)
    torch.testing.assert_close(
        explainer.attribute(x, target=0, n_steps=n_steps, internal_batch_size=np.int64(3)),
        explainer.attribute(x, target=0, n_steps=5, internal_batch_size=3),
    )


# ----------------------------------------------------------------------------------------
# The rest of Captum's contract
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ours_cls, captum_cls, selection",
    [
        (GuidedIG, IntegratedGradients, {"target": 1}),
        (LayerGuidedIG, LayerIntegratedGradients, {"target": 1}),
        (NeuronGuidedIG, NeuronIntegratedGradients, {"neuron_selector": 2}),
    ],
    ids=["input", "layer", "neuron"],
)
def test_local_attribution_on_the_straight_line_equals_captum_local_ig(
    ours_cls, captum_cls, selection
) -> None:  # type: ignore[no-untyped-def]
    net = mlp()
    x = torch.rand(3, 6, dtype=torch.float64)
    layer = () if ours_cls is GuidedIG else (net[1],)
    ours = ours_cls(net, *layer, multiply_by_inputs=False).attribute(
        x, **selection, n_steps=16, max_dist=0.0, method="riemann_left", nodes=1, epsrel=None
    )
    captum = captum_cls(net, *layer, multiply_by_inputs=False).attribute(
        x, **selection, n_steps=16, method="riemann_left"
    )
    torch.testing.assert_close(ours, captum, rtol=1e-5, atol=1e-7)


def test_ig2_local_attribution_is_the_mean_gradient_along_the_gradpath() -> None:
    net = mlp()
    x = torch.rand(2, 6, dtype=torch.float64)
    refs = torch.rand(3, 6, dtype=torch.float64)
    kw = {"target": 0, "n_steps": 6, "method": "riemann_left", "nodes": 1, "epsrel": None}
    path = IterativeGradientIG(net).path(x, refs, **kw)
    local = IterativeGradientIG(net, multiply_by_inputs=False).attribute(x, refs, **kw)
    points = path.points[:-1].reshape(-1, 6).requires_grad_()
    (grads,) = torch.autograd.grad(net(points)[:, 0].sum(), points)
    # over steps and the 8 walks of each of the 3 references
    expected = grads.reshape(6, 2, 24, 6).mean(dim=(0, 2))
    torch.testing.assert_close(local, expected)
    # Its product with the whole path's displacement is the global attribution's sum.
    glob = IterativeGradientIG(net).attribute(x, refs, **kw)
    assert not torch.allclose(local, glob)


def test_conductance_rejects_local_attribution() -> None:
    net = mlp()
    with pytest.raises(ValueError, match="multiply_by_inputs"):
        LayerPathConductance(GuidedIG(net, multiply_by_inputs=False), net[1])


CAPTUM_ATTRIBUTE_ORDER = [
    "inputs",
    "baselines",
    "target",
    "additional_forward_args",
    "n_steps",
    "method",
    "internal_batch_size",
    "return_convergence_delta",
]


def _parameters(func) -> list[str]:  # type: ignore[no-untyped-def]
    return [p for p in inspect.signature(func).parameters if p != "self"]


@pytest.mark.parametrize("cls", INPUT_CLASSES + LAYER_CLASSES)
def test_attribute_takes_captum_arguments_in_captum_order(cls) -> None:  # type: ignore[no-untyped-def]
    captum = LayerIntegratedGradients if cls in LAYER_CLASSES else IntegratedGradients
    expected = [p for p in _parameters(captum.attribute) if p in CAPTUM_ATTRIBUTE_ORDER]
    assert expected == CAPTUM_ATTRIBUTE_ORDER
    assert _parameters(cls.attribute)[: len(expected)] == expected


@pytest.mark.parametrize("cls", NEURON_CLASSES)
def test_neuron_attribute_takes_captum_arguments_in_captum_order(cls) -> None:  # type: ignore[no-untyped-def]
    expected = _parameters(NeuronIntegratedGradients.attribute)
    expected = expected[: expected.index("internal_batch_size") + 1]
    assert _parameters(cls.attribute)[: len(expected)] == expected


@pytest.mark.parametrize("cls", LAYER_CLASSES + NEURON_CLASSES)
def test_constructors_take_captum_arguments_in_captum_order(cls) -> None:  # type: ignore[no-untyped-def]
    captum = LayerIntegratedGradients if cls in LAYER_CLASSES else NeuronIntegratedGradients
    expected = _parameters(captum.__init__)
    assert _parameters(cls.__init__)[: len(expected)] == expected
    net = mlp()
    explainer = cls(net, net[1], None, False)  # device_ids, multiply_by_inputs positionally
    assert not explainer.multiplies_by_inputs


@pytest.mark.parametrize("cls", LAYER_CLASSES)
def test_grad_kwargs_reach_torch_autograd_grad(cls, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    seen: list[dict] = []
    original = torch.autograd.grad

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", spy)
    net = mlp()
    x = torch.rand(2, 6, dtype=torch.float64)
    with_kwargs = cls(net, net[1]).attribute(
        x, target=0, n_steps=4, grad_kwargs={"create_graph": True}
    )
    assert any(k.get("create_graph") for k in seen)
    monkeypatch.setattr(torch.autograd, "grad", original)
    torch.testing.assert_close(with_kwargs, cls(net, net[1]).attribute(x, target=0, n_steps=4))


@pytest.mark.parametrize("cls", NEURON_CLASSES)
def test_a_neuron_selector_returning_one_number_per_batch_equals_the_per_example_one(cls) -> None:  # type: ignore[no-untyped-def]
    net = mlp()
    x = torch.rand(4, 6, dtype=torch.float64)
    refs = torch.rand(2, 6, dtype=torch.float64)
    explainer = cls(net, net[1])
    baselines = refs if cls is NeuronIterativeGradientIG else None
    per_example = explainer.attribute(x, 3, baselines, n_steps=5, internal_batch_size=3)
    per_batch = explainer.attribute(
        x, lambda out: out[:, 3].sum(), baselines, n_steps=5, internal_batch_size=3
    )
    torch.testing.assert_close(per_batch, per_example)
    # Captum's neuron IG reads such a selector the same way.
    if cls is NeuronGuidedIG:
        captum = NeuronIntegratedGradients(net, net[1]).attribute(
            x, lambda out: out[:, 3].sum(), n_steps=16, method="riemann_left"
        )
        ours = explainer.attribute(
            x, lambda out: out[:, 3].sum(), n_steps=16, max_dist=0.0, method="riemann_left",
            nodes=1, epsrel=None,
        )  # fmt: skip
        torch.testing.assert_close(ours, captum, rtol=1e-5, atol=1e-7)


def test_one_trapezoid_node_is_rejected_pointing_at_the_left_rule() -> None:
    with pytest.raises(ValueError, match=r"riemann_trapezoid.*riemann_left"):
        GuidedIG(mlp()).attribute(torch.rand(2, 6).double(), target=0, nodes=1)


def test_a_bad_reference_shape_names_each_accepted_form_once() -> None:
    x = torch.rand(1, 6).double()
    with pytest.raises(ValueError, match=r"baselines\[0\]") as error:
        IterativeGradientIG(mlp()).attribute(x, torch.rand(1, 2, 5).double(), target=0)
    assert str(error.value).count("(1, *F)") == 1


@pytest.mark.parametrize("cls", INPUT_CLASSES + LAYER_CLASSES)
@pytest.mark.parametrize("target", [5000, (1, 3), [0, 7]])
def test_a_target_beyond_the_output_is_a_value_error_naming_target(cls, target) -> None:  # type: ignore[no-untyped-def]
    net = mlp()
    explainer = cls(net) if cls in INPUT_CLASSES else cls(net, net[1])
    with pytest.raises(ValueError, match=r"`target`.*\(3,\) per example") as raised:
        explainer.attribute(torch.rand(2, 6).double(), target=target, n_steps=3)
    assert ".." not in str(raised.value)


@pytest.mark.parametrize("cls", INPUT_CLASSES + LAYER_CLASSES)
def test_numpy_integer_targets_equal_python_int_targets(cls) -> None:  # type: ignore[no-untyped-def]
    net = mlp()
    explainer = cls(net) if cls in INPUT_CLASSES else cls(net, net[1])
    x = torch.rand(2, 6).double()
    expected = explainer.attribute(x, target=[1, 2], n_steps=3)
    for target in (np.int64(1), [np.int64(1), np.int32(2)]):
        got = explainer.attribute(x, target=target, n_steps=3)
        reference = (
            expected if isinstance(target, list) else explainer.attribute(x, target=1, n_steps=3)
        )
        torch.testing.assert_close(got, reference, rtol=0, atol=0)
