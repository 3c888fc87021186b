"""Convergence on a real pretrained network: EfficientNet-Lite0 with its ImageNet weights.

The convergence issue's case, at 112 x 112 and with fewer steps so that it fits CI's time:
scikit-image's chelsea (class 285), IG2 against coffee with the representation ``_conv_head``,
Guided IG from a black image. One gradient per step (the papers' sum) is far off there; the
default must reach its tolerance without a warning and agree with a 16-node Gauss-Legendre
integral along the same path.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from captum_ig2 import ConvergenceWarning, GuidedIG, IterativeGradientIG
from captum_ig2.pretrained import efficientnet_lite0, photo


@pytest.fixture(scope="module")
def network():  # type: ignore[no-untyped-def]
    return efficientnet_lite0()


@pytest.mark.parametrize("name", ["ig2", "guided_ig"])
def test_default_converges_on_efficientnet_lite0(name: str, network) -> None:  # type: ignore[no-untyped-def]
    x = photo("chelsea", 112)
    with torch.no_grad():
        assert int(network(x).argmax()) == 285
    if name == "ig2":
        method: IterativeGradientIG | GuidedIG = IterativeGradientIG(
            network, representation_layer=network.representation_layer
        )
        kwargs = dict(baselines=photo("coffee", 112), n_steps=20, clamp=(0.0, 1.0))
    else:
        method = GuidedIG(network)
        kwargs = dict(baselines=0.0, n_steps=40)
    papers = method.path(x, target=285, method="riemann_left", nodes=1, epsrel=None, **kwargs)
    assert papers.relative_error.item() > 0.05
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        default = method.path(x, target=285, **kwargs)
    assert default.relative_error.item() <= 0.02
    fine = method.path(
        x, target=285, method="gausslegendre", nodes=16, epsrel=None, internal_batch_size=64,
        **kwargs,
    )  # fmt: skip
    torch.testing.assert_close(default.end, fine.end)  # the same path
    cosine = torch.nn.functional.cosine_similarity(
        default.attributions.flatten(), fine.attributions.flatten(), dim=0
    )
    assert cosine > 0.98
