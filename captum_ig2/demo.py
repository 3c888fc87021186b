"""Demo: explain a small CNN trained on scikit-learn's digits with IG, Guided IG and IG2.

Run ``python -m captum_ig2.demo`` (needs the ``demo`` extra: scikit-learn and matplotlib). It
trains the CNN in a few seconds on the CPU, attributes a few test digits with Captum's
IntegratedGradients (zero baseline), GuidedIG and IterativeGradientIG (references: training
digits of the other classes), prints each method's completeness error and writes one
side-by-side figure, in Captum's colours (green: positive attribution, red: negative).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn


class DigitsCNN(nn.Module):
    """A small CNN for 1 x 8 x 8 digit images with values in [0, 1]."""

    def __init__(self, n_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(32 * 4 * 4, 64)
        self.out = nn.Linear(64, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.conv1(x))
        h = self.pool(torch.relu(self.conv2(h)))
        h = torch.relu(self.fc(h.flatten(1)))
        return self.out(h)


@dataclass
class Digits:
    """scikit-learn's 8 x 8 digits, scaled to [0, 1], split into train and test."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor


def load_digits_data(seed: int = 0) -> Digits:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    n_train = int(0.8 * len(y))
    return Digits(x[:n_train], y[:n_train], x[n_train:], y[n_train:])


def train_digits_cnn(data: Digits, epochs: int = 8, seed: int = 0) -> DigitsCNN:
    """Trains :class:`DigitsCNN` with Adam; about two seconds on a CPU."""
    torch.manual_seed(seed)
    model = DigitsCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        for idx in torch.randperm(len(data.y_train)).split(64):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
            loss.backward()
            optimizer.step()
    return model.eval()


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def other_class_references(data: Digits, labels: Tensor, per_class: int) -> Tensor:
    """For every explained digit, ``per_class`` training digits of each other class: (N, R, ...)."""
    sets = []
    for label in labels.tolist():
        refs = [
            data.x_train[data.y_train == c][:per_class] for c in range(10) if c != label
        ]  # the first digits of each class, so the choice is reproducible
        sets.append(torch.cat(refs))
    return torch.stack(sets)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="IG, Guided IG and IG2 on the digits CNN.")
    parser.add_argument("--out", type=Path, default=Path("captum_ig2_demo.png"))
    parser.add_argument("--n-examples", type=int, default=4)
    parser.add_argument("--n-steps", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--refs-per-class", type=int, default=2)
    args = parser.parse_args(argv)

    from captum.attr import IntegratedGradients

    from captum_ig2 import GuidedIG, IterativeGradientIG

    t0 = time.perf_counter()
    data = load_digits_data()
    model = train_digits_cnn(data, epochs=args.epochs)
    print(
        f"trained DigitsCNN in {time.perf_counter() - t0:.1f} s, "
        f"test accuracy {accuracy(model, data.x_test, data.y_test):.3f}"
    )

    x = data.x_test[: args.n_examples]
    target = model(x).argmax(1).detach()
    references = other_class_references(data, target, args.refs_per_class)
    steps = args.n_steps
    results: dict[str, tuple[Tensor, Tensor]] = {}
    report: dict[str, tuple[Tensor, float, float]] = {}  # relative error, evaluations, seconds
    with torch.no_grad():
        gap_ig = (model(x) - model(torch.zeros_like(x))).gather(1, target.unsqueeze(1))[:, 0]
    t = time.perf_counter()
    ig, delta = IntegratedGradients(model).attribute(
        x, target=target, n_steps=steps, return_convergence_delta=True
    )
    report["IG (zero baseline)"] = (delta.abs() / gap_ig.abs(), steps, time.perf_counter() - t)
    results["IG (zero baseline)"] = (ig, delta)
    paths = {
        "Guided IG": lambda: GuidedIG(model).path(x, target=target, n_steps=steps),
        "IG2": lambda: IterativeGradientIG(model, representation_layer=model.fc).path(
            x, references, target=target, n_steps=steps, clamp=(0.0, 1.0)
        ),
    }
    gradcf, walks = x, 1
    for name, run in paths.items():
        t = time.perf_counter()
        path = run()
        seconds = time.perf_counter() - t
        results[name] = (path.attributions, path.delta)
        report[name] = (path.relative_error, path.evaluations.double().mean().item(), seconds)
        if name == "IG2":
            gradcf = path.end.mean(dim=1)  # the GradCF averaged over the references and walks
            walks = path.walks

    print(
        f"\n{len(x)} test digits, {steps} steps, targets {target.tolist()}; IG2 walks "
        f"{references.shape[1]} references x {walks} walks = {references.shape[1] * walks} "
        "GradPaths per digit (its gradients count them all)"
    )
    print(
        f"{'method':20s} {'|delta| / |gap|, max':>21s} {'gradients per digit':>20s} {'time s':>7s}"
    )
    for name, (relative, evaluations, seconds) in report.items():
        print(f"{name:20s} {relative.max().item():21.2e} {evaluations:20.0f} {seconds:7.2f}")
    print(
        "(gap: f(input) - f(baseline), for IG2 f(input) - f(GradCF); IG: Captum's "
        "Gauss-Legendre on the straight line; Guided IG and IG2: the default quadrature, "
        "refined to 2 %)"
    )
    attribution_figure(x, target, results, gradcf).savefig(args.out, dpi=110)
    print(f"\nwrote {args.out}")


def attribution_figure(
    x: Tensor,
    target: Tensor,
    results: dict[str, tuple[Tensor, Tensor]],
    gradcf: Tensor,
) -> Any:
    """One row per digit: the input, each method's map in Captum's colours with its colour bar,
    and the mean GradCF; a matplotlib ``Figure``."""
    from matplotlib.figure import Figure

    from captum_ig2.visualization import attribution_convention, draw_attribution

    columns = ["input", *results, "GradCF (mean)"]
    fig = Figure(figsize=(2.1 * len(columns), 2.5 * len(x) + 0.8), layout="constrained")
    axes = fig.subplots(len(x), len(columns), squeeze=False)
    for i in range(len(x)):
        for ax, image in ((axes[i, 0], x[i, 0]), (axes[i, -1], gradcf[i, 0])):
            shown = ax.imshow(image.detach().numpy(), cmap="gray_r", vmin=0, vmax=1)
            bar = fig.colorbar(shown, ax=ax, orientation="horizontal", shrink=0.9, aspect=12,
                               pad=0.03)  # fmt: skip
            bar.set_ticks([0.0, 1.0])
            bar.ax.tick_params(labelsize=7)
        axes[i, 0].set_ylabel(f"class {int(target[i])}")
        for j, (attr, _) in enumerate(results.values(), start=1):
            draw_attribution(axes[i, j], attr[i])
    for j, name in enumerate(columns):
        axes[0, j].set_title(name, fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("Attributions of the predicted class", fontsize=10)
    fig.supxlabel(
        f"{attribution_convention()}.\nInput and GradCF: ink in black (pixel values 0 to 1).",
        fontsize=8,
    )
    return fig


if __name__ == "__main__":
    main()
