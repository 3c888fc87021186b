"""Shared fixtures: seeded small models in float64, where tolerances can be tight."""

from __future__ import annotations

import pytest
import torch
from torch import nn


class SmallCNN(nn.Module):
    """A small convolutional classifier on 1 x 8 x 8 images (the digits' size)."""

    def __init__(self, n_classes: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.Softplus(), nn.AvgPool2d(2), nn.Conv2d(4, 6, 3)
        )
        self.act = nn.Softplus()
        self.head = nn.Linear(6 * 2 * 2, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.features(x)).flatten(1))


def make_mlp(n_in: int = 6, n_hidden: int = 10, n_out: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, n_hidden), nn.Tanh(), nn.Linear(n_hidden, n_out))


@pytest.fixture
def rng() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return make_mlp().double().eval()


@pytest.fixture
def cnn() -> SmallCNN:
    torch.manual_seed(0)
    return SmallCNN().double().eval()
