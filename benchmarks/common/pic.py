"""PAIR's PIC metrics (Kapishnikov et al., XRAI, ICCV 2019; ``saliency.metrics.pic``), the SIC
(softmax) and AIC (accuracy) information curves, adapted to score the 8 x 8 digits.

PAIR's code computes the curves; what is adapted, and reported with the results:
``saliency`` 0.2.1 calls ``np.trapz``, which NumPy 2 deprecated and later removed, so ``pic``
is handed a NumPy proxy whose ``trapz`` is ``numpy.trapezoid`` (:func:`pair_pic_module`); the
images are scored at their native 8 x 8 as uint8 (:func:`to_uint8`); PAIR's saliency
thresholds are rounded up to whole pixels (:func:`pic_thresholds`) and the saliency map is
handed over as ranks, so that a threshold reveals exactly that many pixels. PIC's information
axis, the webp-compressed size, is crude at 8 x 8: :func:`compressed_size_diagnostics` measures
how often it falls while pixels are revealed. Images that PAIR's filters reject are skipped,
with the reason counted. PIC runs on one thread (:func:`limited_threads`, which the scripts also
use to cap torch's and the native thread pools for a whole run).
"""

from __future__ import annotations

import itertools
import math
import types
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from common.planted import SIZE
from common.report import RANDOM, Metric

#: PAIR's suggested saliency thresholds (``compute_pic_metric``'s docstring).
PAIR_THRESHOLDS = (0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.07, 0.10, 0.13, 0.21, 0.34, 0.5, 0.75)
PIC_MIN_PRED = 0.8  # PAIR's default min_pred_value
PIC_RANDOM_FRACTION = 0.01  # PAIR's default fraction for generate_random_mask


class NumpyWithTrapz(types.ModuleType):
    """NumPy as ``saliency.metrics.pic`` 0.2.1 expects it: ``np.trapz``, deprecated in NumPy 2.0
    and since removed, is ``numpy.trapezoid`` (the same rule); everything else is NumPy."""

    def __init__(self) -> None:
        super().__init__("numpy_with_trapz")

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)

    @staticmethod
    def trapz(y: Any, x: Any = None, dx: float = 1.0, axis: int = -1) -> Any:
        return np.trapezoid(y, x=x, dx=dx, axis=axis)


@contextmanager
def pair_pic_module() -> Iterator[tuple[types.ModuleType, str]]:
    """PAIR's ``pic`` module, adapted to this NumPy, and a sentence saying what was adapted."""
    from saliency.metrics import pic

    if not hasattr(np, "trapezoid"):  # NumPy 1.x: np.trapz is there and current
        yield pic, "none needed: this NumPy still has np.trapz"
        return
    status = "deprecated in" if hasattr(np, "trapz") else "gone from"
    adaptation = (
        "saliency.metrics.pic's module-level `np` was replaced, for the PIC calls only, by a "
        f"NumPy proxy whose np.trapz is numpy.trapezoid (np.trapz is {status} NumPy "
        f"{np.__version__}); the rest of PAIR's code runs unchanged"
    )
    original = pic.np
    pic.np = NumpyWithTrapz()
    try:
        yield pic, adaptation
    finally:
        pic.np = original


@contextmanager
def limited_threads(n_threads: int) -> Iterator[None]:
    """At most ``n_threads`` threads for torch and for every native pool (OpenMP, BLAS).

    The models here are tiny: with two threads per pool on a 2-core machine, the idle threads
    of torch's, NumPy's and SciPy's pools spin against each other, and a run is 2 to 10 times
    slower than with one thread (more when other processes share the cores).
    """
    from threadpoolctl import threadpool_limits  # installed with scikit-learn

    threads = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        with threadpool_limits(limits=n_threads):
            yield
    finally:
        torch.set_num_threads(threads)


def pic_thresholds(n_pixels: int) -> list[float]:
    """PAIR's thresholds rounded up to whole pixels, without duplicates."""
    counts = sorted({max(1, math.ceil(t * n_pixels)) for t in PAIR_THRESHOLDS})
    return [k / n_pixels for k in counts if k < n_pixels]


def to_uint8(image: Tensor) -> np.ndarray:
    """An image in [0, 1] as PAIR's uint8 array, [H, W]."""
    return (image * 255).round().clamp(0, 255).to(torch.uint8).numpy()


def pic_prediction(
    model: nn.Module, target: int, accuracy_curve: bool
) -> Callable[[np.ndarray], list[float]]:
    """PAIR's ``pred_func``: uint8 images [B, H, W] -> softmax of ``target`` (SIC) or whether
    ``target`` is the predicted class (AIC)."""

    def pred_func(images: np.ndarray) -> list[float]:
        x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
        with torch.no_grad():
            logits = model(x)
        if accuracy_curve:
            return (logits.argmax(dim=1) == target).double().tolist()
        return torch.softmax(logits, dim=1)[:, target].double().tolist()

    return pred_func


def skip_reason(error: Exception) -> str:
    """A short name for the reason PAIR's ``compute_pic_metric`` rejected an image."""
    message = str(error)
    if "min_pred_value" in message:
        return f"prediction on the digit below {PIC_MIN_PRED}"
    if "entropy" in message:
        return "blurred start image not less compressible than the digit"
    return "prediction on the blurred start image not lower than on the digit"


@dataclass
class PicRun:
    """PIC results of every method for one curve kind (SIC or AIC).

    Attributes
    ----------
    results : dict[str, list]
        Method -> per image, PAIR's ``PicMetricResult``, or None where PAIR rejected the image.
    skipped : Counter
        Why images were rejected (the reasons do not depend on the saliency map).
    """

    results: dict[str, list[Any]] = field(default_factory=dict)
    skipped: Counter[str] = field(default_factory=Counter)


def pic_run(
    pic: types.ModuleType,
    model: nn.Module,
    x: Tensor,
    target: Tensor,
    ranks: dict[str, Tensor],
    random_masks: list[np.ndarray],
    pic_points: int,
    accuracy_curve: bool,
) -> PicRun:
    """PAIR's ``compute_pic_metric`` for every image and method (SIC, or AIC), with
    ``pic_points`` points per curve (PAIR's ``num_data_points``)."""
    thresholds = pic_thresholds(SIZE * SIZE)
    run = PicRun()
    for name, rank in ranks.items():
        per_image: list[Any] = []
        for i in range(len(x)):
            try:
                result = pic.compute_pic_metric(
                    img=to_uint8(x[i, 0]),
                    saliency_map=rank[i].reshape(SIZE, SIZE).double().numpy(),
                    random_mask=random_masks[i],
                    pred_func=pic_prediction(model, int(target[i]), accuracy_curve),
                    saliency_thresholds=thresholds,
                    min_pred_value=PIC_MIN_PRED,
                    num_data_points=pic_points,
                )
            except pic.ComputePicMetricError as error:
                result = None
                if name == RANDOM:  # count each image once
                    run.skipped[skip_reason(error)] += 1
            per_image.append(result)
        run.results[name] = per_image
    return run


def pic_metric(pic: types.ModuleType, run: PicRun, key: str, column: str) -> Metric:
    """Per-image AUCs of one PIC run on the images every method kept, and PAIR's aggregate."""
    kept = [
        i
        for i in range(len(run.results[RANDOM]))
        if all(run.results[m][i] is not None for m in run.results)
    ]
    values = {m: np.asarray([float(r[i].auc) for i in kept]) for m, r in run.results.items()}
    aggregate = None
    if kept:
        aggregate = {
            m: float(pic.aggregate_individual_pic_results([r[i] for i in kept], "median").auc)
            for m, r in run.results.items()
        }
    return Metric(key, column, True, values, aggregate)


def compressed_size_diagnostics(pic: types.ModuleType, run: PicRun) -> dict[str, float]:
    """How well the webp size, PIC's information axis, behaves on 8 x 8 digits.

    Along each curve the images reveal ever more pixels; a sound information measure would
    never fall. Counts the steps where the size fell, and the intermediate images at least as
    large as the digit itself (their normalised information is clipped to 1).
    """
    falls = steps = saturated = intermediate = 0
    sizes_seen: list[int] = []
    for results in run.results.values():
        for result in results:
            if result is None:
                continue
            sizes = [pic.estimate_image_entropy(image) for image in result.blurred_images]
            sizes_seen += sizes
            falls += sum(b < a for a, b in itertools.pairwise(sizes))
            steps += len(sizes) - 1
            saturated += sum(s >= sizes[-1] for s in sizes[1:-1])
            intermediate += len(sizes) - 2
    blank = pic.estimate_image_entropy(np.zeros((SIZE, SIZE), dtype=np.uint8))
    if not steps:
        return {"blank_image_bytes": float(blank)}
    return {
        "share_of_steps_where_size_fell": falls / steps,
        "share_of_intermediate_images_saturated": saturated / intermediate,
        "min_bytes": float(min(sizes_seen)),
        "max_bytes": float(max(sizes_seen)),
        "blank_image_bytes": float(blank),
    }


def pic_metrics(
    model: nn.Module, x: Tensor, target: Tensor, ranks: dict[str, Tensor], pic_points: int
) -> tuple[list[Metric], dict[str, Any]]:
    """SIC and AIC of every method, with the adaptation made, skips and diagnostics;
    ``pic_points`` points per curve (PAIR's ``num_data_points``)."""
    with pair_pic_module() as (pic, adaptation), limited_threads(1):
        # One mask per image, shared by every method, as PAIR prescribes.
        random_masks = [
            pic.generate_random_mask(SIZE, SIZE, fraction=PIC_RANDOM_FRACTION)
            for _ in range(len(x))
        ]
        sic = pic_run(pic, model, x, target, ranks, random_masks, pic_points, accuracy_curve=False)
        aic = pic_run(pic, model, x, target, ranks, random_masks, pic_points, accuracy_curve=True)
        metrics = [pic_metric(pic, sic, "sic", "SIC ↑"), pic_metric(pic, aic, "aic", "AIC ↑")]
        diagnostics = compressed_size_diagnostics(pic, sic)
    info = {
        "np_trapz_adaptation": adaptation,
        "thresholds_in_pixels": [round(t * SIZE * SIZE) for t in pic_thresholds(SIZE * SIZE)],
        "random_mask_pixels": int(sum(m.sum() for m in random_masks)),
        "skipped_sic": dict(sic.skipped),
        "skipped_aic": dict(aic.skipped),
        "compressed_size": diagnostics,
    }
    return metrics, info
