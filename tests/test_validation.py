"""Bad input gets a clear ValueError or TypeError that names the argument."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from captum_ig2 import GuidedIG, IterativeGradientIG

each = pytest.mark.parametrize("cls", [IterativeGradientIG, GuidedIG], ids=lambda c: c.__name__)


@pytest.fixture
def x() -> torch.Tensor:
    return torch.rand(3, 6, dtype=torch.float64)


@each
@pytest.mark.parametrize(
    ("kwargs", "error", "argument"),
    [
        (dict(n_steps=0), ValueError, "n_steps"),
        (dict(n_steps=2.5), TypeError, "n_steps"),
        (dict(method="simpson"), ValueError, "method"),
        (dict(nodes=0), ValueError, "nodes"),
        (dict(nodes=2.0), TypeError, "nodes"),
        (dict(method="riemann_trapezoid", nodes=1), ValueError, "nodes"),
        (dict(epsrel=-0.1), ValueError, "epsrel"),
        (dict(epsrel=float("nan")), ValueError, "epsrel"),
        (dict(epsrel="1%"), TypeError, "epsrel"),
        (dict(epsabs=float("inf")), ValueError, "epsabs"),
        (dict(limit=0), ValueError, "limit"),
        (dict(limit=2.5), TypeError, "limit"),
        (dict(internal_batch_size=0), ValueError, "internal_batch_size"),
        (dict(baselines=torch.rand(3, 5, dtype=torch.float64)), ValueError, "baselines"),
        (dict(baselines=torch.rand(2, 3, 7, dtype=torch.float64)), ValueError, "baselines"),
        (dict(baselines=torch.full((3, 6), float("nan"))), ValueError, "baselines"),
        (dict(baselines=(0.0, 0.0)), ValueError, "baselines"),
        (dict(baselines="zero"), TypeError, "baselines"),
        (dict(target=[0, 1]), ValueError, "target"),
        (dict(target=None), ValueError, "target"),
    ],
    ids=lambda v: str(v) if isinstance(v, str) else None,
)
def test_bad_arguments_raise_naming_the_argument(cls, x, kwargs, error, argument) -> None:  # type: ignore[no-untyped-def]
    model = nn.Linear(6, 3).double()
    kwargs = {"target": 0, **kwargs}
    with pytest.raises(error, match=argument):
        cls(model).attribute(x, **kwargs)


@each
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_inputs_are_rejected(cls, x, bad: float) -> None:  # type: ignore[no-untyped-def]
    x[1, 2] = bad
    with pytest.raises(ValueError, match="inputs"):
        cls(nn.Linear(6, 3).double()).attribute(x, target=0)


@each
def test_integer_inputs_are_rejected(cls) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(TypeError, match="inputs"):
        cls(nn.Linear(6, 3)).attribute(torch.ones(2, 6, dtype=torch.long), target=0)


@each
def test_mismatched_batch_sizes_in_tuple_inputs_are_rejected(cls) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="inputs"):
        cls(lambda a, b: a.sum(1) + b.sum(1)).attribute((torch.rand(2, 3), torch.rand(3, 3)))


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5, float("nan")])
def test_guided_ig_fraction_outside_unit_interval(x, fraction: float) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="fraction"):
        GuidedIG(nn.Linear(6, 3).double()).attribute(x, target=0, fraction=fraction)


@pytest.mark.parametrize("max_dist", [-0.01, 1.01])
def test_guided_ig_max_dist_outside_unit_interval(x, max_dist: float) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="max_dist"):
        GuidedIG(nn.Linear(6, 3).double()).attribute(x, target=0, max_dist=max_dist)


def test_guided_ig_takes_no_reference_sets(x) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="baselines"):
        GuidedIG(nn.Linear(6, 3).double()).attribute(x, torch.rand(5, 6).double(), target=0)


@pytest.mark.parametrize(
    ("kwargs", "error", "argument"),
    [
        (dict(step_size=0.0), ValueError, "step_size"),
        (dict(step_size=-1.0), ValueError, "step_size"),
        (dict(step_size="big"), TypeError, "step_size"),
        (dict(clamp=(1.0, 0.0)), ValueError, "clamp"),
        (dict(clamp=(0.0,)), ValueError, "clamp"),
        (dict(clamp=("a", "b")), TypeError, "clamp"),
        (
            dict(
                baselines=torch.rand(4, 6),
            ),
            None,
            None,
        ),
    ],
)
def test_ig2_bad_step_size_and_clamp(x, kwargs, error, argument) -> None:  # type: ignore[no-untyped-def]
    ig2 = IterativeGradientIG(nn.Linear(6, 3).double())
    if error is None:
        return
    with pytest.raises(error, match=argument):
        ig2.attribute(x, target=0, **kwargs)


def test_ig2_reference_sets_of_different_sizes_per_input_are_rejected() -> None:
    inputs = (torch.rand(2, 3), torch.rand(2, 4))
    refs = (torch.rand(5, 3), torch.rand(4, 4))
    with pytest.raises(ValueError, match="baselines"):
        IterativeGradientIG(lambda a, b: a.sum(1) + b.sum(1)).attribute(inputs, refs)


def test_ig2_representation_layer_must_be_a_module() -> None:
    with pytest.raises(TypeError, match="representation_layer"):
        IterativeGradientIG(nn.Linear(2, 2), representation_layer="fc")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="representation_input"):
        IterativeGradientIG(nn.Linear(2, 2), representation_input=True)


def test_ig2_representation_layer_never_reached(x) -> None:  # type: ignore[no-untyped-def]
    model = nn.Sequential(nn.Linear(6, 3)).double()
    with pytest.raises(ValueError, match="representation_layer"):
        IterativeGradientIG(model, representation_layer=nn.ReLU()).attribute(x, target=0)


def test_limit_none_takes_the_rules_own_default() -> None:
    # The complete trapezoid bisects where the map's error is, so it gets a deeper budget.
    from captum_ig2._common import check_integration
    from captum_ig2._quadrature import DEFAULT_LIMIT

    assert DEFAULT_LIMIT["complete_trapezoid"] == 32
    assert check_integration("complete_trapezoid", None, 0.02, 0.0, None).limit == 32
    for method in ("gausslegendre", "riemann_trapezoid", "riemann_left", "idgi"):
        assert check_integration(method, None, 0.02, 0.0, None).limit == DEFAULT_LIMIT[method] == 8
    assert check_integration("complete_trapezoid", None, 0.02, 0.0, 4).limit == 4
