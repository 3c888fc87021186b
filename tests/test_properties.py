"""Property-based tests: random small networks, inputs and references (hypothesis).

Each property holds for every network and input, so hypothesis draws them: the architecture
(widths, depth, activation), the parameters (through a seed), the batch, the references, the
method's options. The runs are derandomised (the same examples on every run, so CI is never red
by chance) and bounded in number and time.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from captum_ig2 import ConvergenceWarning, GuidedIG, IterativeGradientIG

PROPERTY = settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
ACTIVATIONS = {"tanh": nn.Tanh, "softplus": nn.Softplus, "relu": nn.ReLU}
SMOOTH = ["tanh", "softplus"]


@dataclass
class Case:
    """A random network, a batch of inputs and a reference set, all in float64."""

    model: nn.Sequential
    inputs: torch.Tensor
    references: torch.Tensor
    target: int
    n_steps: int
    method: str  # "ig2" or "gig"

    def explainer(self, model: nn.Module | None = None, **kwargs):  # type: ignore[no-untyped-def]
        model = self.model if model is None else model
        if self.method == "ig2":
            return IterativeGradientIG(model, representation_layer=model[-2], **kwargs)
        return GuidedIG(model, **kwargs)

    def kwargs(self) -> dict:
        # (1, R, *F): one reference set shared by all inputs, also when R == N
        baselines = self.references[None] if self.method == "ig2" else self.references[:1]
        return {"baselines": baselines, "target": self.target, "n_steps": self.n_steps}


@st.composite
def cases(draw, activations=tuple(ACTIVATIONS), scales=(1.0,)):  # type: ignore[no-untyped-def]
    n_in = draw(st.integers(1, 6))
    widths = draw(st.lists(st.integers(1, 8), min_size=1, max_size=3))
    act = ACTIVATIONS[draw(st.sampled_from(activations))]
    n_out = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**31 - 1))
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for a, b in zip([n_in, *widths], widths):
        layers += [nn.Linear(a, b), act()]
    layers.append(nn.Linear(widths[-1], n_out))
    model = nn.Sequential(*layers).double().eval()
    g = torch.Generator().manual_seed(seed)
    s = draw(st.sampled_from(scales))
    n, r = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    inputs = (torch.rand(n, n_in, generator=g, dtype=torch.float64) * 2 - 1) * s
    references = (torch.rand(r, n_in, generator=g, dtype=torch.float64) * 2 - 1) * s
    return Case(
        model, inputs, references,
        target=draw(st.integers(0, n_out - 1)),
        n_steps=draw(st.integers(1, 12)),
        method=draw(st.sampled_from(["ig2", "gig"])),
    )  # fmt: skip


def quietly(call):  # type: ignore[no-untyped-def]
    """Runs call() and says whether it warned that it missed the completeness tolerance."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        result = call()
    warned = any(issubclass(w.category, ConvergenceWarning) for w in caught)
    return result, warned


@PROPERTY
@given(cases())
def test_the_reported_delta_is_the_completeness_error_at_the_path_ends(case: Case) -> None:
    path, warned = quietly(lambda: case.explainer().path(case.inputs, **case.kwargs()))
    # The gap, recomputed here from the path's ends with the model itself.
    f = lambda x: case.model(x)[:, case.target]  # noqa: E731
    ends = path.end if case.method == "ig2" else path.start
    n, r = ends.shape[:2]
    f_ends = f(ends.reshape(n * r, -1)).reshape(n, r).mean(1)
    gap = f(case.inputs) - f_ends
    torch.testing.assert_close(path.gap, gap)
    torch.testing.assert_close(path.delta, path.attributions.sum(1) - gap)
    # Within the tolerance, or the call said it is not.
    assert warned or bool((path.delta.abs() <= path.tolerance + 1e-12).all())


@PROPERTY
@given(cases())
def test_each_example_is_attributed_as_if_alone(case: Case) -> None:
    explainer = case.explainer()
    kwargs = case.kwargs()
    batch, _ = quietly(lambda: explainer.attribute(case.inputs, **kwargs))
    for i in range(case.inputs.shape[0]):
        alone, _ = quietly(lambda i=i: explainer.attribute(case.inputs[i : i + 1], **kwargs))
        torch.testing.assert_close(batch[i : i + 1], alone)


@PROPERTY
@given(cases(), st.integers(1, 7))
def test_internal_batch_size_changes_nothing(case: Case, internal_batch_size: int) -> None:
    explainer = case.explainer()
    whole, _ = quietly(lambda: explainer.attribute(case.inputs, **case.kwargs()))
    chunked, _ = quietly(
        lambda: explainer.attribute(
            case.inputs, internal_batch_size=internal_batch_size, **case.kwargs()
        )
    )
    torch.testing.assert_close(chunked, whole)


@PROPERTY
@given(cases(activations=SMOOTH))
def test_two_parametrisations_of_one_function_get_the_same_attributions(case: Case) -> None:
    # The same function: every hidden unit of the first layer split into two halves.
    other = copy.deepcopy(case.model)
    first, second = other[0], other[2]
    with torch.no_grad():
        other[0] = nn.Linear(first.in_features, 2 * first.out_features).double()
        other[0].weight.copy_(torch.cat([first.weight, first.weight]))
        other[0].bias.copy_(torch.cat([first.bias, first.bias]))
        other[2] = nn.Linear(2 * second.in_features, second.out_features).double()
        other[2].weight.copy_(torch.cat([second.weight, second.weight], dim=1) / 2)
        other[2].bias.copy_(second.bias)
    x = case.inputs
    torch.testing.assert_close(other(x), case.model(x))
    a, _ = quietly(lambda: case.explainer().attribute(x, **case.kwargs()))
    b, _ = quietly(lambda: case.explainer(other).attribute(x, **case.kwargs()))
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


@PROPERTY
@given(cases())
def test_two_calls_give_bitwise_equal_results(case: Case) -> None:
    explainer = case.explainer()
    a, _ = quietly(lambda: explainer.attribute(case.inputs, **case.kwargs()))
    b, _ = quietly(lambda: explainer.attribute(case.inputs, **case.kwargs()))
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    "dtype, rel_l2",
    [(torch.float64, 1e-3), (torch.float16, 0.15), (torch.bfloat16, 0.3)],
    ids=["float64", "float16", "bfloat16"],
)
@settings(PROPERTY, max_examples=10)
@given(case=cases(activations=SMOOTH))
def test_other_dtypes_stay_finite_and_close_to_float32(
    dtype: torch.dtype, rel_l2: float, case: Case
) -> None:
    def run(dt: torch.dtype) -> torch.Tensor:
        model = copy.deepcopy(case.model).to(dt)
        kwargs = {k: v.to(dt) if torch.is_tensor(v) else v for k, v in case.kwargs().items()}
        attr, _ = quietly(lambda: case.explainer(model).attribute(case.inputs.to(dt), **kwargs))
        assert attr.dtype == dt
        return attr.double()

    reference, other = run(torch.float32), run(dtype)
    assert torch.isfinite(other).all()
    scale = reference.norm() + 1e-3 * case.inputs.norm()
    assert (other - reference).norm() <= rel_l2 * scale


@PROPERTY
@given(cases(scales=(1e-6, 1.0, 255.0, 1e6, 1e15)))
def test_finite_inputs_never_give_nan(case: Case) -> None:
    attr, delta = quietly(
        lambda: case.explainer().attribute(
            case.inputs, return_convergence_delta=True, **case.kwargs()
        )
    )[0]
    assert torch.isfinite(attr).all() and torch.isfinite(delta).all()
