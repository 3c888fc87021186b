"""Stability: a map must not change with a rounding-sized change of its input. IG2's walks, the
stability figure they predict, its warning, map_stability, and full float32 precision on CUDA."""

from __future__ import annotations

import threading

import pytest
import torch
from captum.attr import IntegratedGradients
from torch import nn

from captum_ig2 import GuidedIG, IterativeGradientIG, StabilityWarning, map_stability
from captum_ig2._attribution import predicted_stability, walk_stability
from captum_ig2._path import full_float32

#: The papers' integral (one left gradient per step): the walk, not the integral, is tested here.
PAPERS_SUM = {"method": "riemann_left", "nodes": 1, "epsrel": None}


def chaotic_cnn() -> nn.Sequential:
    """A deep ReLU CNN whose weights are drawn 2.5 times larger than He's initialisation: the
    chaotic regime of deep networks (Poole et al., NeurIPS 2016), in which, as in a trained
    ImageNet network, the gradient changes direction within a short distance, so that the
    paper's walk of equal steps is redrawn by a change of 1e-6 (the default network of
    PyTorch's initialisation is too smooth for that)."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    channels = 3
    for i in range(10):
        conv = nn.Conv2d(channels, 8, 3, padding=1, stride=2 if i in (1, 3) else 1)
        nn.init.normal_(conv.weight, std=2.5 / (channels * 9) ** 0.5)
        nn.init.normal_(conv.bias, std=0.1)
        layers += [conv, nn.ReLU()]
        channels = 8
    return nn.Sequential(nn.Sequential(*layers), nn.Flatten(), nn.Linear(8 * 8 * 8, 10)).eval()


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.flatten(1).double(), b.flatten(1).double()
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


@pytest.fixture(scope="module")
def chaos():  # type: ignore[no-untyped-def]
    model = chaotic_cnn()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 32, 32, generator=g)
    references = torch.rand(3, 3, 32, 32, generator=g)
    moved = (x + (torch.rand(x.shape, generator=g) * 2 - 1) * 1e-6).clamp(0, 1)
    return model, x, moved, references


def test_the_papers_walk_is_redrawn_by_1e6_and_the_default_walks_are_not(chaos) -> None:  # type: ignore[no-untyped-def]
    model, x, moved, references = chaos
    ig2 = IterativeGradientIG(model, representation_layer=model[0])
    options = dict(baselines=references, target=0, clamp=(0.0, 1.0), **PAPERS_SUM)
    papers = dict(walk="fixed", n_walks=1)
    before, after = (ig2.attribute(t, **options, **papers) for t in (x, moved))
    assert cosine(before, after).min() < 0.9  # the float32 walk of equal steps: another map
    default = [ig2.path(t, **options, keep_points=False) for t in (x, moved)]
    assert cosine(default[0].attributions, default[1].attributions).min() > 0.99
    assert default[0].stability is not None and default[0].stability.min() > 0.95


def test_the_predicted_stability_matches_the_measured_one(chaos) -> None:  # type: ignore[no-untyped-def]
    # The paper's walk, averaged over 4 walks: unstable enough to tell a prediction from 1.
    model, x, moved, references = chaos
    ig2 = IterativeGradientIG(model, representation_layer=model[0])
    options = dict(baselines=references, target=0, clamp=(0.0, 1.0), n_steps=20, walk="fixed",
                   n_walks=4, keep_points=False, **PAPERS_SUM)  # fmt: skip
    with pytest.warns(StabilityWarning):
        before = ig2.path(x, **options)
    with pytest.warns(StabilityWarning):
        after = ig2.path(moved, **options)
    measured = cosine(before.attributions, after.attributions)
    assert before.stability is not None and measured.min() < 0.95
    assert (before.stability - measured).abs().max() < 0.1


def test_a_low_stability_warns_naming_n_walks_and_the_worst_example(chaos) -> None:  # type: ignore[no-untyped-def]
    model, x, _, references = chaos
    ig2 = IterativeGradientIG(model, representation_layer=model[0])
    with pytest.warns(StabilityWarning, match=r"raise `n_walks`") as record:
        path = ig2.path(x, references, target=0, clamp=(0.0, 1.0), n_steps=20, walk="fixed",
                        n_walks=2, **PAPERS_SUM)  # fmt: skip
    assert path.stability is not None
    worst = int(path.stability.argmin())
    assert f"example {worst}" in str(record[0].message)
    assert f"{float(path.stability[worst]):.3f}" in str(record[0].message)


def test_a_stable_map_does_not_warn(cnn) -> None:  # type: ignore[no-untyped-def]
    # pytest turns any warning into an error: none may come.
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    path = IterativeGradientIG(cnn).path(x, torch.rand(3, 1, 8, 8, dtype=torch.float64),
                                         target=0, n_steps=10)  # fmt: skip
    assert path.stability is not None and path.stability.min() > 0.99


def test_one_walk_has_no_stability_and_never_warns(chaos) -> None:  # type: ignore[no-untyped-def]
    model, x, _, references = chaos
    ig2 = IterativeGradientIG(model, representation_layer=model[0])
    path = ig2.path(x, references, target=0, clamp=(0.0, 1.0), n_steps=20, walk="fixed",
                    n_walks=1, **PAPERS_SUM)  # fmt: skip
    assert path.stability is None and path.walks == 1


def test_predicted_stability_is_the_spearman_brown_formula_for_equal_halves() -> None:
    c = torch.tensor([-0.3, 0.0, 0.2, 0.5, 0.9, 1.0], dtype=torch.float64)
    expected = torch.where(c > 0, 2 * c / (1 + c), 0.0)
    torch.testing.assert_close(predicted_stability(c, 4, 4), expected)


@pytest.mark.parametrize(("a", "b", "q"), [(1, 1, 0.5), (2, 3, 4.0), (4, 4, 1.0), (3, 5, 10.0)])
def test_predicted_stability_is_exact_for_walks_of_a_common_map_and_orthogonal_parts(
    a: int, b: int, q: float
) -> None:
    # Walk w's map is s + n_w, the n_w orthogonal to s and to each other, |n_w|^2 = q |s|^2:
    # the model the prediction assumes, where it holds exactly.
    basis = torch.eye(a + b + 1, dtype=torch.float64)
    s, parts = basis[0] * 2.0, basis[1:] * 2.0 * q**0.5
    maps = s + parts  # (a + b, D)
    first, second = maps[:a].mean(0), maps[a:].mean(0)
    c = (first @ second) / (first.norm() * second.norm())
    # Two calls of a + b walks each: cos = |s|^2 / (|s|^2 + q |s|^2 / (a + b)).
    expected = 1.0 / (1.0 + q / (a + b))
    torch.testing.assert_close(predicted_stability(c.reshape(1), a, b), torch.tensor([expected],
                               dtype=torch.float64))  # fmt: skip


def test_walk_stability_reads_the_halves_of_every_reference() -> None:
    # 1 example, 2 references, 4 walks: rows (r W + w). Identical walks: 1; halves opposite: 0.
    same = torch.ones(8, 5, dtype=torch.float64)
    assert walk_stability((same,), 1, 2, 4).item() == 1.0
    opposite = same.clone()
    opposite[[2, 3, 6, 7]] *= -1  # walks 2 and 3 of both references
    assert walk_stability((opposite,), 1, 2, 4).item() == 0.0
    zero = torch.zeros(8, 5, dtype=torch.float64)
    assert walk_stability((zero,), 1, 2, 4).item() == 1.0  # no attribution: nothing varies


def test_map_stability_of_captums_ig_is_one_and_of_the_papers_walk_is_not(chaos) -> None:  # type: ignore[no-untyped-def]
    model, x, _, references = chaos
    ig = map_stability(IntegratedGradients(model), x, target=0, n_steps=32)
    assert ig.shape == (3,) and ig.dtype == torch.float64 and ig.min() > 0.9999
    ig2 = IterativeGradientIG(model, representation_layer=model[0])
    papers = map_stability(ig2, x, baselines=references, target=0, clamp=(0.0, 1.0),
                           walk="fixed", n_walks=1, **PAPERS_SUM)  # fmt: skip
    assert papers.min() < 0.9
    guided = map_stability(GuidedIG(model), x, target=0, n_steps=20, **PAPERS_SUM)
    assert ((guided > -1) & (guided <= 1 + 1e-12)).all()


def test_map_stability_rejects_bad_arguments(cnn) -> None:  # type: ignore[no-untyped-def]
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    with pytest.raises(TypeError, match="explainer"):
        map_stability(cnn, x)
    with pytest.raises(ValueError, match="eps"):
        map_stability(GuidedIG(cnn), x, eps=0.0, target=0)
    with pytest.raises(ValueError, match="return_convergence_delta"):
        map_stability(GuidedIG(cnn), x, target=0, return_convergence_delta=True)
    with pytest.raises(TypeError, match="floating point"):
        map_stability(GuidedIG(cnn), torch.ones(2, 1, 8, 8, dtype=torch.long), target=0)


def test_map_stability_leaves_the_inputs_unchanged(cnn) -> None:  # type: ignore[no-untyped-def]
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    copy = x.clone()
    map_stability(GuidedIG(cnn), x, target=0, n_steps=5)
    assert torch.equal(x, copy)


class TestFullFloat32:
    """TF32 off for the calls on a CUDA device, the user's settings back afterwards, also when
    calls overlap in threads; nothing changes for the CPU."""

    @pytest.fixture(autouse=True)
    def restore(self):  # type: ignore[no-untyped-def]
        saved = (torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision())
        torch.backends.cudnn.allow_tf32 = True
        torch.set_float32_matmul_precision("high")
        yield
        torch.backends.cudnn.allow_tf32 = saved[0]
        torch.set_float32_matmul_precision(saved[1])

    def test_off_inside_and_restored_after(self) -> None:
        with full_float32(torch.device("cuda")):
            assert torch.backends.cudnn.allow_tf32 is False
            assert torch.get_float32_matmul_precision() == "highest"
        assert torch.backends.cudnn.allow_tf32 is True
        assert torch.get_float32_matmul_precision() == "high"

    def test_restored_after_an_error(self) -> None:
        with pytest.raises(RuntimeError), full_float32(torch.device("cuda")):
            raise RuntimeError
        assert torch.backends.cudnn.allow_tf32 is True
        assert torch.get_float32_matmul_precision() == "high"

    def test_the_last_of_overlapping_calls_restores(self) -> None:
        inside, release = threading.Event(), threading.Event()

        def other() -> None:
            with full_float32(torch.device("cuda")):
                inside.set()
                release.wait(10)

        thread = threading.Thread(target=other)
        thread.start()
        inside.wait(10)
        with full_float32(torch.device("cuda")):
            pass
        assert torch.backends.cudnn.allow_tf32 is False  # the other call still runs
        release.set()
        thread.join()
        assert torch.backends.cudnn.allow_tf32 is True

    def test_the_cpu_is_left_alone(self) -> None:
        with full_float32(torch.device("cpu")):
            assert torch.backends.cudnn.allow_tf32 is True
