"""How much IG2, Guided IG and IG move under a change of the input far below any visible one.

IG2's GradPath follows the gradient of a representation distance. On a piecewise-linear (ReLU)
network that gradient jumps where the path crosses a kink, and a step that starts a hair's
breadth away can end somewhere else: the path, and with it the attributions, depend on the input
discontinuously. This script measures it on the digits CNN of the demo (ReLU, max-pooling,
trained in seconds):

- the relative L2 change of the attributions when every input pixel moves by a random +-1e-6,
  in float32 and in float64;
- the relative L2 difference between a float32 and a float64 run on the same input.

Captum's Integrated Gradients on the straight line is the named reference: its path does not
depend on gradients, so it moves only as much as the integrand does. Guided IG ranks gradients
to choose which features move, so it sits in between. IG2 runs with the digits of the other
classes as references (2 per class, as the demo) and the representation ``fc``. Each path
method runs with the package's default (converged) quadrature and with the papers' sum.

Run:  python benchmarks/reproducibility.py [--n-examples 16] [--smoke]
"""

from __future__ import annotations

import argparse
import copy
import warnings

import torch
from captum.attr import IntegratedGradients
from torch import Tensor

from captum_ig2 import ConvergenceWarning, GuidedIG, IterativeGradientIG
from captum_ig2.demo import load_digits_data, other_class_references, train_digits_cnn

# The papers' estimator: one left-rule gradient per path step, no refinement.
PAPERS = {"method": "riemann_left", "nodes": 1, "epsrel": None}


def relative(a: Tensor, b: Tensor) -> Tensor:
    """Per example ||a - b|| / ||b||."""
    a, b = a.double().flatten(1), b.double().flatten(1)
    return (a - b).norm(dim=1) / b.norm(dim=1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-examples", type=int, default=16)
    parser.add_argument("--n-steps", type=int, default=50)
    parser.add_argument("--eps", type=float, default=1e-6)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for CI")
    args = parser.parse_args(argv)
    if args.smoke:
        args.n_examples, args.n_steps = 2, 5

    data = load_digits_data()
    model32 = train_digits_cnn(data, epochs=1 if args.smoke else 8)
    model64 = copy.deepcopy(model32).double()
    x = data.x_test[: args.n_examples]
    target = model32(x).argmax(1)
    refs = other_class_references(data, target, per_class=2)
    noise = torch.randint(0, 2, x.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    noise = noise.double() * args.eps

    def methods(model):  # type: ignore[no-untyped-def]
        return {
            "IG (Captum, reference)": lambda inp, dt: IntegratedGradients(model).attribute(
                inp, target=target, n_steps=args.n_steps
            ),
            "Guided IG": lambda inp, dt: GuidedIG(model).attribute(
                inp, target=target, n_steps=args.n_steps
            ),
            "Guided IG, papers' sum": lambda inp, dt: GuidedIG(model).attribute(
                inp, target=target, n_steps=args.n_steps, **PAPERS
            ),
            "IG2": lambda inp, dt: IterativeGradientIG(
                model, representation_layer=model.fc
            ).attribute(inp, refs.to(dt), target=target, n_steps=args.n_steps, clamp=(0.0, 1.0)),
            "IG2, papers' sum": lambda inp, dt: IterativeGradientIG(
                model, representation_layer=model.fc
            ).attribute(
                inp,
                refs.to(dt),
                target=target,
                n_steps=args.n_steps,
                clamp=(0.0, 1.0),
                **PAPERS,
            ),
        }

    print(
        f"digits CNN (ReLU), {args.n_examples} test digits, n_steps={args.n_steps}, "
        f"inputs moved by +-{args.eps:g}; relative L2 change of the attributions, "
        "median and max over the examples"
    )
    print(f"{'method':24s} {'1e-6 move, f32':>18s} {'1e-6 move, f64':>18s} {'f32 vs f64':>18s}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for name in methods(model32):
            run32, run64 = methods(model32)[name], methods(model64)[name]
            a32 = run32(x, torch.float32)
            moved32 = run32((x.double() + noise).clamp(0, 1).float(), torch.float32)
            a64 = run64(x.double(), torch.float64)
            moved64 = run64((x.double() + noise).clamp(0, 1), torch.float64)
            cells = [relative(moved32, a32), relative(moved64, a64), relative(a32, a64)]
            text = "".join(f" {c.median().item():8.2e} / {c.max().item():7.1e}" for c in cells)
            print(f"{name:24s}{text}")


if __name__ == "__main__":
    main()
