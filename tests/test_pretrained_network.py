"""Convergence on a real pretrained network: EfficientNet-Lite0 with its ImageNet weights.

At 112 x 112 and with fewer steps so that it fits CI's time: scikit-image's chelsea (class
285), IG2 against coffee with the representation ``_conv_head``, Guided IG from a black image.
One gradient per step (the papers' sum) is far off there; the default must reach its tolerance
without a warning and agree with a 16-node Gauss-Legendre integral along the same path. And
stability at 64 x 64: the paper's walk is redrawn by a change of 1e-6, the default walks far
less, as their own prediction says.
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
        default = method.path(x, target=285, keep_points=False, **kwargs)
    assert default.relative_error.item() <= 0.02
    if name == "ig2":
        # Every walk is integrated alike: two of them stand for the eight of the default.
        kwargs["n_walks"] = 2
        default = method.path(x, target=285, **kwargs)
    fine = method.path(
        x, target=285, method="gausslegendre", nodes=16, epsrel=None, internal_batch_size=64,
        **kwargs,
    )  # fmt: skip
    torch.testing.assert_close(default.end, fine.end)  # the same path
    cosine = torch.nn.functional.cosine_similarity(
        default.attributions.flatten(), fine.attributions.flatten(), dim=0
    )
    assert cosine > 0.98


def test_default_walks_are_stable_where_the_papers_walk_is_redrawn(network) -> None:  # type: ignore[no-untyped-def]
    x, reference = photo("chelsea", 64), photo("coffee", 64)
    moved = x + (torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1) * 1e-6
    ig2 = IterativeGradientIG(network, representation_layer=network.representation_layer)
    # The walks are compared, with the papers' integral (one gradient per step) for speed.
    options = dict(baselines=reference, target=285, clamp=(0.0, 1.0), keep_points=False,
                   method="riemann_left", nodes=1, epsrel=None)  # fmt: skip

    def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
        return torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()

    papers = [ig2.path(t, walk="fixed", n_walks=1, **options) for t in (x, moved.clamp(0, 1))]
    default = [ig2.path(t, **options) for t in (x, moved.clamp(0, 1))]
    papers_cosine = cosine(papers[0].attributions, papers[1].attributions)
    default_cosine = cosine(default[0].attributions, default[1].attributions)
    assert papers_cosine < 0.8 and default_cosine > 0.9
    predicted = default[0].stability
    assert predicted is not None and abs(predicted.item() - default_cosine) < 0.1


def test_photo_crops_are_the_stated_squares_of_every_photo() -> None:
    from skimage.transform import resize

    from captum_ig2.pretrained import CROPS, PHOTOS, photo_array, photo_crops

    images, labels = photo_crops(size=32)
    assert images.shape == (len(PHOTOS) * len(CROPS), 3, 32, 32)
    assert labels[0] == f"{PHOTOS[0]}/0" and len(set(labels)) == len(labels)
    assert 0.0 <= images.min() and images.max() <= 1.0
    torch.testing.assert_close(images[:1], photo(PHOTOS[0], 32))  # crop 0 is photo()'s square
    # crop 2 of coffee (400 x 600): side 0.8 * 400 = 320 at the top right corner
    array = photo_array("coffee")
    expected = resize(array[0:320, 280:600], (32, 32), anti_aliasing=True)
    row = labels.index("coffee/2")
    expected_tensor = torch.tensor(expected, dtype=torch.float32).permute(2, 0, 1)
    torch.testing.assert_close(images[row], expected_tensor)
    assert len({tuple(image.flatten()[:50].tolist()) for image in images}) == len(images)


@pytest.mark.parametrize("kwargs", [dict(crops=0), dict(crops=8), dict(size=0), dict(crops=1.5)])
def test_photo_crops_rejects_bad_arguments(kwargs: dict) -> None:
    from captum_ig2.pretrained import photo_crops

    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=f"`{name}`"):
        photo_crops(**kwargs)
