"""Whole-call wall time of the core methods against their references, on CPU, in one run.

Every ratio is taken between two measurements of this same run (median of ``--repeats`` calls):

- IG2 (N inputs, 1 reference, T steps) / Captum's IntegratedGradients (N, n_steps=T);
- Guided IG (N, T steps) / Captum's IntegratedGradients (N, n_steps=T);
- the authors' IG2 procedure (per explicand, NumPy round trip per model call, path searched then
  integrated in a second pass) / IG2 (N=8, R=4);
- PAIR's Guided IG (per example, NumPy) / Guided IG (N=16).

Run:  python benchmarks/speed_core.py [--steps 50] [--repeats 5] [--smoke]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from collections.abc import Callable
from functools import partial

import numpy as np
import torch
from captum.attr import IntegratedGradients
from torch import nn

from captum_ig2 import GuidedIG, IterativeGradientIG


class SmallCNN(nn.Module):
    """A small CNN on 3 x 32 x 32 images."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * 8 * 8, 64), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def compare(fn_a: Callable[[], object], fn_b: Callable[[], object], repeats: int):
    """Median wall times of ``fn_a`` and ``fn_b``, measured alternately to share any drift."""
    fn_a(), fn_b()  # warm-up
    times_a, times_b = [], []
    for _ in range(repeats):
        for fn, times in ((fn_a, times_a), (fn_b, times_b)):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times_a), statistics.median(times_b)


def authors_ig2(
    model: nn.Module, x: torch.Tensor, refs: torch.Tensor, target: int, steps: int, step_size: float
) -> np.ndarray:
    """The published procedure (Zhuo & Ge's ``IG2.GetMask``), one explicand, NumPy between calls."""

    def call(points: np.ndarray, key: str, ref_rep: torch.Tensor | None = None):
        t = torch.tensor(points, dtype=torch.float32, requires_grad=True)
        out = model(t)
        if key == "rep":
            return out.detach()
        if key == "dist":
            loss = -((out - ref_rep) ** 2).mean()
            loss.backward()
        else:
            out[:, target].sum().backward()
        return t.grad.numpy()

    xs = np.repeat(x.numpy()[None], len(refs), axis=0)
    ref_rep = call(refs.numpy(), "rep")
    delta = np.zeros_like(xs)
    path = [xs]
    for _ in range(steps):
        g = call(xs + delta, "dist", ref_rep)
        norm = np.sqrt((g.reshape(len(g), -1) ** 2).sum(1)).reshape(-1, 1, 1, 1)
        delta = np.clip(xs + delta + g / norm * step_size, 0, 1) - xs
        path.append(xs + delta)
    attr = np.zeros_like(xs)
    for before, after in itertools.pairwise(path):
        attr += (before - after) * call(before, "grad")
    return attr.mean(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to check it runs")
    args = parser.parse_args()
    steps, repeats = (4, 1) if args.smoke else (args.steps, args.repeats)
    torch.manual_seed(0)
    model = SmallCNN().eval()
    ig, ig2, gig = IntegratedGradients(model), IterativeGradientIG(model), GuidedIG(model)
    rows = []
    for n in (1, 8, 32):
        x = torch.rand(n, 3, 32, 32)
        # Same number of model gradients: T for Captum's IG, T + 1 for the trapezoid's path.
        run_ig = partial(ig.attribute, x, target=0, n_steps=steps, method="riemann_left")
        run_ig2 = partial(ig2.attribute, x, target=0, n_steps=steps, clamp=(0, 1))
        run_gig = partial(gig.attribute, x, target=0, n_steps=steps)
        rows.append((f"IG2 / Captum IG, N={n}, T={steps}", *compare(run_ig2, run_ig, repeats)))
        rows.append(
            (f"Guided IG / Captum IG, N={n}, T={steps}", *compare(run_gig, run_ig, repeats))
        )

    x = torch.rand(8, 3, 32, 32)
    refs = torch.rand(4, 3, 32, 32)
    run_ig2 = partial(ig2.attribute, x, refs, target=0, n_steps=steps, step_size=0.5,
                      clamp=(0, 1), method="riemann_left")  # fmt: skip
    run_authors = partial(lambda: [authors_ig2(model, xi, refs, 0, steps, 0.5) for xi in x])
    rows.append(
        (f"authors' IG2 / IG2, N=8, R=4, T={steps}", *compare(run_authors, run_ig2, repeats))
    )

    try:
        import saliency.core.guided_ig as pair_module
        from saliency.core.base import INPUT_OUTPUT_GRADIENTS
    except ImportError:
        pair_module = None
    if pair_module is not None:
        if np.lib.NumpyVersion(np.__version__) >= "2.0.0":
            # saliency 0.2.1 calls np.quantile(interpolation=...), removed in NumPy 2.
            class _Np:
                def __getattr__(self, name):  # type: ignore[no-untyped-def]
                    return getattr(np, name)

                @staticmethod
                def quantile(a, q, interpolation="linear", **kw):  # type: ignore[no-untyped-def]
                    return np.quantile(a, q, method=interpolation, **kw)

            pair_module.np = _Np()

        x16 = torch.rand(16, 3, 32, 32)

        def call_model(points, call_model_args=None, expected_keys=None):  # type: ignore[no-untyped-def]
            t = torch.tensor(points, dtype=torch.float32, requires_grad=True)
            model(t)[:, 0].sum().backward()
            return {INPUT_OUTPUT_GRADIENTS: t.grad.numpy()}

        pair = pair_module.GuidedIG()
        run_pair = partial(
            lambda: [pair.GetMask(xi.numpy(), call_model, x_steps=steps) for xi in x16]
        )
        run_gig = partial(gig.attribute, x16, target=0, n_steps=steps, method="riemann_left")
        rows.append((f"PAIR Guided IG / Guided IG, N=16, T={steps}",
                     *compare(run_pair, run_gig, repeats)))  # fmt: skip

    print(f"{'ratio':48s} {'numerator s':>12s} {'denominator s':>14s} {'ratio':>7s}")
    for name, a, b in rows:
        print(f"{name:48s} {a:12.4f} {b:14.4f} {a / b:7.2f}")


if __name__ == "__main__":
    main()
