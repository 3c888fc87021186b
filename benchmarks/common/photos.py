"""The real-model image set: EfficientNet-Lite0 with its ImageNet weights and square crops of
the colour photos that scikit-image and scikit-learn ship (``captum_ig2.pretrained``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from captum_ig2.pretrained import PHOTOS, NormalizedEfficientNet, efficientnet_lite0, photo_crops


@dataclass
class PhotoSet:
    """Crops, the class the network predicts for each, and its probability.

    Attributes
    ----------
    model : NormalizedEfficientNet
        EfficientNet-Lite0 on images in [0, 1].
    x : Tensor
        The crops, (N, 3, size, size) in [0, 1].
    labels : list[str]
        ``"photo/k"`` per crop (see ``captum_ig2.pretrained.CROPS``).
    target : Tensor
        The predicted ImageNet class of each crop, the class every method explains.
    probability : Tensor
        Its softmax probability.
    """

    model: NormalizedEfficientNet
    x: Tensor
    labels: list[str]
    target: Tensor
    probability: Tensor

    @property
    def photo(self) -> list[str]:
        """The photo of each crop."""
        return [label.split("/")[0] for label in self.labels]


def load_photo_set(size: int = 224, crops: int = 7, names: tuple[str, ...] = PHOTOS) -> PhotoSet:
    """The network and ``crops`` crops of each photo in ``names`` at ``size`` pixels."""
    model = efficientnet_lite0()
    x, labels = photo_crops(names, crops=crops, size=size)
    with torch.no_grad():
        probabilities = torch.softmax(model(x), dim=1)
    probability, target = probabilities.max(dim=1)
    return PhotoSet(model, x, labels, target, probability)


def other_photo_references(photos: PhotoSet, per_input: int) -> Tensor:
    """IG2's references: per crop, the first crop (the whole photo) of ``per_input`` other
    photos whose crop-0 class differs from the crop's predicted class, taken in the order of
    ``PHOTOS`` after the crop's own photo. Shape (N, per_input, 3, size, size)."""
    names = list(dict.fromkeys(photos.photo))
    whole = {name: photos.labels.index(f"{name}/0") for name in names}
    out = []
    for i, name in enumerate(photos.photo):
        start = names.index(name)
        candidates = [names[(start + j) % len(names)] for j in range(1, len(names))]
        chosen = [
            whole[other] for other in candidates
            if int(photos.target[whole[other]]) != int(photos.target[i])
        ][:per_input]  # fmt: skip
        if len(chosen) < per_input:
            raise ValueError(
                f"`per_input`={per_input} references of another class asked for "
                f"{photos.labels[i]}, but only {len(chosen)} other photos have one."
            )
        out.append(photos.x[chosen])
    return torch.stack(out)
