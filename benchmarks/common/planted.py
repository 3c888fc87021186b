"""The models and data of the small benchmarks: the planted-feature images, whose ground truth
is known, a small translation-invariant CNN for them, and training, freezing and prediction for
any small classifier (the digits and their CNN are ``captum_ig2.demo``'s).

Every planted 1 x 8 x 8 image has a background of i.i.d. U(0, ``BACKGROUND_MAX``) noise. A
3 x 3 *signal patch* is placed at a uniformly random position; five of its pixels, in one of
the ``SHAPES`` (plus, x, T, L), are set to U(``BRIGHT_MIN``, 1); the shape *is* the class,
drawn uniformly. A 2 x 2 *distractor* square of the same brightness, no part of any class
shape, is placed at a random position that does not touch the patch, in every image whatever
its class. Given where the patch is, the label is a function of the patch alone, and every
pixel outside it (the distractor included) is independent of the label: the patch is the
ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

SIZE = 8  # image side of both small benchmarks: the planted images and the digits
PATCH = 3  # side of the planted signal patch
DISTRACTOR = 2  # side of the planted distractor square
BACKGROUND_MAX = 0.5
BRIGHT_MIN = 0.7
SHAPES: dict[str, tuple[tuple[int, int], ...]] = {
    "plus": ((0, 1), (1, 0), (1, 1), (1, 2), (2, 1)),
    "x": ((0, 0), (0, 2), (1, 1), (2, 0), (2, 2)),
    "T": ((0, 0), (0, 1), (0, 2), (1, 1), (2, 1)),
    "L": ((0, 0), (1, 0), (2, 0), (2, 1), (2, 2)),
}


@dataclass
class PlantedData:
    """Images with a planted class shape and a planted distractor, and where each lies.

    Attributes
    ----------
    x : Tensor
        Images, (N, 1, 8, 8), values in [0, 1].
    y : Tensor
        Classes, (N,): the index of the planted shape in ``SHAPES``.
    signal : Tensor
        (N, 64) bool, the 3 x 3 patch that holds the shape: the ground truth.
    distractor : Tensor
        (N, 64) bool, the class-independent 2 x 2 bright square.
    """

    x: Tensor
    y: Tensor
    signal: Tensor
    distractor: Tensor


def boxes_apart(patch: tuple[int, int], square: tuple[int, int]) -> bool:
    """Whether the patch and distractor boxes (top-left corners) are at least a pixel apart."""
    (pr, pc), (dr, dc) = patch, square
    return dr > pr + PATCH or dr + DISTRACTOR < pr or dc > pc + PATCH or dc + DISTRACTOR < pc


def place_patch_and_distractor(
    rng: np.random.Generator,
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Uniform positions of the patch and of the distractor, drawn until they do not touch."""
    while True:
        pr, pc = (int(v) for v in rng.integers(0, SIZE - PATCH + 1, size=2))
        dr, dc = (int(v) for v in rng.integers(0, SIZE - DISTRACTOR + 1, size=2))
        if boxes_apart((pr, pc), (dr, dc)):
            return (pr, pc), (dr, dc)


def make_planted_data(n: int, rng: np.random.Generator) -> PlantedData:
    """``n`` images of the planted-feature benchmark (see the module docstring)."""
    shapes = list(SHAPES.values())
    x = rng.uniform(0.0, BACKGROUND_MAX, size=(n, SIZE, SIZE))
    y = rng.integers(0, len(shapes), size=n)
    signal = np.zeros((n, SIZE, SIZE), dtype=bool)
    distractor = np.zeros((n, SIZE, SIZE), dtype=bool)
    for i in range(n):
        (pr, pc), (dr, dc) = place_patch_and_distractor(rng)
        for r, c in shapes[y[i]]:
            x[i, pr + r, pc + c] = rng.uniform(BRIGHT_MIN, 1.0)
        signal[i, pr : pr + PATCH, pc : pc + PATCH] = True
        x[i, dr : dr + DISTRACTOR, dc : dc + DISTRACTOR] = rng.uniform(
            BRIGHT_MIN, 1.0, size=(DISTRACTOR, DISTRACTOR)
        )
        distractor[i, dr : dr + DISTRACTOR, dc : dc + DISTRACTOR] = True
    return PlantedData(
        x=torch.tensor(x, dtype=torch.float32).unsqueeze(1),
        y=torch.tensor(y, dtype=torch.long),
        signal=torch.from_numpy(signal.reshape(n, -1)),
        distractor=torch.from_numpy(distractor.reshape(n, -1)),
    )


def other_class_reference_sets(
    pool: PlantedData, labels: Tensor, per_class: int, n_classes: int
) -> Tensor:
    """For every label, the first ``per_class`` pool images of each other class: (N, R, ...)."""
    sets = [
        torch.cat([pool.x[pool.y == c][:per_class] for c in range(n_classes) if c != label])
        for label in labels.tolist()
    ]
    return torch.stack(sets)


class PlantedCNN(nn.Module):
    """A small translation-invariant CNN (global max pooling) for 1 x 8 x 8 images."""

    def __init__(self, n_classes: int = len(SHAPES)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32, 32)
        self.out = nn.Linear(32, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        h = torch.relu(self.fc(h.amax(dim=(2, 3))))
        return self.out(h)


def train_classifier(model: nn.Module, x: Tensor, y: Tensor, epochs: int, seed: int) -> nn.Module:
    """Trains ``model`` with Adam and cross-entropy; returns it in eval mode, frozen."""
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        for idx in torch.randperm(len(y)).split(64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            optimizer.step()
    return freeze(model)


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode, no parameter gradients (the attributions only need input gradients)."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model.eval()


def predict(model: nn.Module, x: Tensor) -> Tensor:
    """The predicted class of every example."""
    with torch.no_grad():
        return model(x).argmax(dim=1)


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """The share of examples classified correctly."""
    return float((predict(model, x) == y).float().mean())
