"""Attribution quality on a real ImageNet network: deletion and insertion on photo crops.

Run::

    python benchmarks/quality_photos.py                    # 42 crops at 160 px (see below)
    python benchmarks/quality_photos.py --size 224         # the network's own size, slower
    python benchmarks/quality_photos.py --smoke            # 2 crops at 64 px: it runs (CI)
    python benchmarks/quality_photos.py --json out.json    # every number, per example

Model and data (``common.photos``): EfficientNet-Lite0 with its ImageNet weights, on the seven
square crops of ``captum_ig2.pretrained.CROPS`` of each of the six photos of
``captum_ig2.pretrained.PHOTOS`` (scikit-image's chelsea, coffee, astronaut, rocket;
scikit-learn's china and flower): 42 inputs. Each is explained for the class the network
predicts for it.

Methods, each with the package's converged default ("default": every segment integrated to a
2 % completeness tolerance), with the paper's estimator ("paper": one left-rule gradient per
step; for IG, Captum's default ``n_steps=50`` Gauss-Legendre) and with IDGI (Yang et al., CVPR
2023) on the same path:

- **IG (black)** and **IG (blurred)**: IG's straight line from a black image or from the
  input blurred by a Gaussian of ``--blur-sigma`` pixels; converged and IDGI on
  ``GuidedIG(max_dist=0)``, which is IG's straight line, the paper's on Captum's
  ``IntegratedGradients``.
- **Guided IG**: black baseline, 200 steps, fraction 0.25, max_dist 0.02 (the paper's).
- **IG2**: ``--refs`` references per input, the whole photos (crop 0) of other photos whose
  predicted class differs, in the order of ``PHOTOS``; the representation is ``_conv_head``
  (1280 channels, before pooling); 50 GradPath steps clamped to [0, 1]. The default and IDGI
  average the package's 8 adaptive walks per reference; "paper" is the paper's procedure, one
  walk of equal steps and its sum.
- **GradCF difference**: input - GradCF (the end of IG2's GradPaths), averaged over the
  references and walks; no gradient is integrated.
- **random (control)**: i.i.d. uniform scores.

The runner-up class's GradCF is not here: IG2 descends the distance to a *sample's*
representation, and a class has no representation without a sample of it. Descending the
runner-up's logit margin instead would be a different path method, not IG2.

Metrics: pixels ranked by their attribution summed over the colour channels, most positive
first (ties broken by one fixed random permutation per image, shared by all methods);
*deletion* replaces the first k pixels by the fill, *insertion* puts them from the image into
the fill, and the score is the area under the class probability over the fraction of pixels
changed (``--points`` evenly spaced fractions). Fills: **blur** (the image blurred by
``--fill-sigma`` pixels: removes detail and keeps colours, the fill of Petsiuk et al.'s
insertion metric, RISE, BMVC 2018) and **noise** (U(0, 1) noise, one fixed image per input).
Not the zero fill: a black pixel is exactly where IG (black) and Guided IG start their paths,
so a black fill re-measures those methods' own path ends and favours them by construction; the
blur fill has the same bias towards IG (blurred) when ``--fill-sigma`` equals ``--blur-sigma``,
so the two differ by default. The noise fill is no method's baseline.

Every table gives mean +- standard error over the crops; a winner is marked ``*`` only when
ahead of the runner-up by two standard errors of their paired difference, ``~`` otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import textwrap
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from captum.attr import IntegratedGradients
from common.metrics import (
    curve_auc,
    gaussian_blur,
    importance_order,
    perturbation_curves,
    pixel_scores,
    tie_break_permutations,
)
from common.photos import PhotoSet, load_photo_set, other_photo_references
from common.report import (
    RANDOM,
    Metric,
    Stopwatch,
    markdown_table,
    metric_to_json,
    print_table,
    seed_everything,
)
from torch import Tensor

from captum_ig2 import ConvergenceWarning, GuidedIG, IterativeGradientIG

PAPER = dict(method="riemann_left", nodes=1, epsrel=None)
IDGI = dict(method="idgi", epsrel=None)
#: The paper's IG2: one walk of equal steps, and its sum.
IG2_PAPER = dict(walk="fixed", n_walks=1, **PAPER)
ESTIMATORS = ("default", "paper", "IDGI")
PATH_METHODS = ("IG (black)", "IG (blurred)", "Guided IG", "IG2")
GRADCF = "GradCF difference"
#: Short names of the rows, for the winner line of the printed tables.
SHORT = {
    f"{method}, {estimator}": f"{abbreviation}/{estimator[:3]}"
    for method, abbreviation in zip(
        PATH_METHODS, ("IG-black", "IG-blur", "GIG", "IG2"), strict=True
    )
    for estimator in ESTIMATORS
} | {GRADCF: "GradCF"}


@dataclass(frozen=True)
class Config:
    """The sizes of one run (see the module docstring)."""

    smoke: bool
    size: int
    crops: int
    photos: tuple[str, ...]
    refs: int
    ig2_steps: int
    guided_steps: int
    blur_sigma: float
    fill_sigma: float
    points: int
    chunk: int
    seed: int


@dataclass
class Run:
    """One method with one estimator on every crop."""

    attributions: Tensor
    relative_error: np.ndarray  # per crop; NaN where not defined (GradCF difference)
    evaluations: np.ndarray  # gradient evaluations per crop
    seconds: float
    warnings: int  # ConvergenceWarnings raised


def name_of(method: str, estimator: str) -> str:
    """The row name of ``method`` with ``estimator``."""
    return f"{method}, {estimator}"


def straight_line(
    model: torch.nn.Module, x: Tensor, target: Tensor, baseline: Tensor, estimator: str
) -> tuple[Tensor, Tensor, Tensor]:
    """IG on the straight line: attributions, relative completeness error, evaluations."""
    if estimator == "paper":  # Captum's own default
        ig = IntegratedGradients(model)
        attributions, delta = ig.attribute(
            x, baselines=baseline, target=target, return_convergence_delta=True
        )
        with torch.no_grad():
            gap = model(x).gather(1, target[:, None]) - model(baseline).gather(1, target[:, None])
        return attributions, delta.abs() / gap.squeeze(1).abs(), torch.full((len(x),), 50)
    kwargs = dict(n_steps=1, nodes=50, **IDGI) if estimator == "IDGI" else dict(n_steps=16)
    path = GuidedIG(model).path(x, baselines=baseline, target=target, max_dist=0.0, **kwargs)
    return path.attributions, path.relative_error, path.evaluations


def guided(
    model: torch.nn.Module, x: Tensor, target: Tensor, steps: int, estimator: str
) -> tuple[Tensor, Tensor, Tensor]:
    """Guided IG from a black image."""
    kwargs = {"paper": PAPER, "IDGI": IDGI, "default": {}}[estimator]
    path = GuidedIG(model).path(x, baselines=0.0, target=target, n_steps=steps, **kwargs)
    return path.attributions, path.relative_error, path.evaluations


def ig2(
    model: torch.nn.Module,
    x: Tensor,
    target: Tensor,
    references: Tensor,
    steps: int,
    estimator: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """IG2 and the GradCF difference (from the same GradPaths)."""
    kwargs = {"paper": IG2_PAPER, "IDGI": IDGI, "default": {}}[estimator]
    explainer = IterativeGradientIG(model, representation_layer=model.representation_layer)
    path = explainer.path(x, references, target=target, n_steps=steps, clamp=(0.0, 1.0), **kwargs)
    difference = x - path.end.mean(dim=1)
    return path.attributions, path.relative_error, path.evaluations, difference


def run_in_chunks(
    fn: Callable[[slice], tuple[Tensor, ...]], n: int, chunk: int
) -> tuple[list[Tensor], float, int]:
    """``fn`` on slices of ``chunk`` crops: the concatenated results, seconds and warnings."""
    parts: list[list[Tensor]] = []
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        for i in range(0, n, chunk):
            parts.append([t.detach() for t in fn(slice(i, i + chunk))])
    seconds = time.perf_counter() - start
    n_warnings = sum(issubclass(w.category, ConvergenceWarning) for w in caught)
    return [torch.cat(column) for column in zip(*parts, strict=True)], seconds, n_warnings


def attribute_all(photos: PhotoSet, references: Tensor, config: Config) -> dict[str, Run]:
    """Every method with every estimator, the GradCF difference and the random control."""
    model, x, target = photos.model, photos.x, photos.target
    blurred = gaussian_blur(x, config.blur_sigma).clamp(0.0, 1.0)
    runs: dict[str, Run] = {}
    n = len(x)
    for estimator in ESTIMATORS:
        calls: dict[str, Callable[[slice], tuple[Tensor, ...]]] = {
            "IG (black)": lambda s, e=estimator: straight_line(
                model, x[s], target[s], torch.zeros_like(x[s]), e
            ),
            "IG (blurred)": lambda s, e=estimator: straight_line(
                model, x[s], target[s], blurred[s], e
            ),
            "Guided IG": lambda s, e=estimator: guided(
                model, x[s], target[s], config.guided_steps, e
            ),
            "IG2": lambda s, e=estimator: ig2(
                model, x[s], target[s], references[s], config.ig2_steps, e
            ),
        }
        for method, call in calls.items():
            results, seconds, n_warnings = run_in_chunks(call, n, config.chunk)
            print(f"    {name_of(method, estimator)}: {seconds:.0f} s", flush=True)
            runs[name_of(method, estimator)] = Run(
                results[0],
                results[1].double().numpy(),
                results[2].double().numpy(),
                seconds,
                n_warnings,
            )
            if method == "IG2" and estimator == "default":
                runs[GRADCF] = Run(
                    results[3], np.full(n, np.nan), results[2].double().numpy(), seconds, 0
                )
    generator = torch.Generator().manual_seed(config.seed + 1 + int(photos.target.sum()))
    runs[RANDOM] = Run(
        torch.rand(x.shape, generator=generator), np.full(n, np.nan), np.zeros(n), 0.0, 0
    )
    ordered = [name_of(m, e) for m in PATH_METHODS for e in ESTIMATORS] + [GRADCF, RANDOM]
    return {name: runs[name] for name in ordered}


def quality_metrics(
    photos: PhotoSet, runs: dict[str, Run], config: Config
) -> tuple[list[Metric], dict[str, Tensor]]:
    """Deletion and insertion AUC with the blur and the noise fill, and the fills."""
    x, target = photos.x, photos.target
    generator = torch.Generator().manual_seed(config.seed + 2)
    fills = {
        "blur": gaussian_blur(x, config.fill_sigma).clamp(0.0, 1.0),
        "noise": torch.rand(x.shape, generator=generator),
    }
    tie_break = tie_break_permutations(len(x), x.shape[2] * x.shape[3], config.seed + 3)
    orders = {
        name: importance_order(pixel_scores(run.attributions), tie_break)
        for name, run in runs.items()
    }
    metrics = []
    for insert in (False, True):
        for fill_name, fill in fills.items():
            values = {
                name: curve_auc(
                    perturbation_curves(
                        photos.model, x, target, order, fill, insert, points=config.points
                    )
                )
                for name, order in orders.items()
            }
            kind = "insertion" if insert else "deletion"
            column = f"{kind[:3]}. {fill_name} " + ("↑" if insert else "↓")
            metrics.append(Metric(f"{kind}/{fill_name}", column, insert, values))
    return metrics, fills


def merge_runs(runs: dict[str, Run], more: dict[str, Run]) -> dict[str, Run]:
    """The runs of two sets of crops as one (attributions are not kept)."""
    if not runs:
        return {
            name: dataclasses.replace(run, attributions=torch.empty(0))
            for name, run in more.items()
        }
    return {
        name: Run(
            torch.empty(0),
            np.concatenate([run.relative_error, more[name].relative_error]),
            np.concatenate([run.evaluations, more[name].evaluations]),
            run.seconds + more[name].seconds,
            run.warnings + more[name].warnings,
        )
        for name, run in runs.items()
    }


def merge_metrics(metrics: list[Metric], more: list[Metric]) -> list[Metric]:
    """The metrics of two sets of crops as one."""
    if not metrics:
        return more
    return [
        dataclasses.replace(
            metric,
            values={k: np.concatenate([v, other.values[k]]) for k, v in metric.values.items()},
        )
        for metric, other in zip(metrics, more, strict=True)
    ]


def print_cost(runs: dict[str, Run], n: int) -> dict[str, dict[str, float]]:
    """Prints and returns each run's completeness error, gradients and seconds per crop."""
    print(
        "\nCost per crop: completeness error |sum(attributions) - gap| / |gap| (median and "
        "max over the crops), gradient evaluations (mean), seconds (mean), ConvergenceWarnings"
    )
    print(f"{'method':28s}{'median error':>14s}{'max error':>12s}{'gradients':>11s}"
          f"{'seconds':>9s}{'warnings':>10s}")  # fmt: skip
    cost = {}
    for name, run in runs.items():
        if name == RANDOM:
            continue
        defined = not np.isnan(run.relative_error).all()
        row = {
            "median_error": float(np.nanmedian(run.relative_error)) if defined else None,
            "max_error": float(np.nanmax(run.relative_error)) if defined else None,
            "gradients": float(run.evaluations.mean()),
            "seconds": run.seconds / n,
            "warnings": run.warnings,
        }
        cost[name] = row
        median = f"{row['median_error']:.2%}" if defined else "-"
        worst = f"{row['max_error']:.2%}" if defined else "-"
        print(f"{name:28s}{median:>14s}{worst:>12s}{row['gradients']:>11.0f}"
              f"{row['seconds']:>9.2f}{run.warnings:>10d}")  # fmt: skip
    return cost


def parse_config(argv: list[str] | None = None) -> tuple[Config, Path | None]:
    """The command line (``--smoke`` shrinks every size not given)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to check that it runs")
    parser.add_argument("--size", type=int, default=None, help="crop side; default 160 (smoke 64)")
    parser.add_argument("--crops", type=int, default=None, help="crops per photo; default 7")
    parser.add_argument("--refs", type=int, default=1, help="IG2 references per input")
    parser.add_argument("--ig2-steps", type=int, default=50)
    parser.add_argument("--guided-steps", type=int, default=None, help="default 200 (smoke 20)")
    parser.add_argument("--blur-sigma", type=float, default=None, help="IG's; default size / 16")
    parser.add_argument("--fill-sigma", type=float, default=None, help="default size / 10")
    parser.add_argument("--points", type=int, default=17, help="points of each curve")
    parser.add_argument("--chunk", type=int, default=7, help="crops attributed at once")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    size = args.size or (64 if args.smoke else 160)
    config = Config(
        smoke=args.smoke,
        size=size,
        crops=args.crops or (1 if args.smoke else 7),
        photos=("chelsea", "coffee") if args.smoke else ("chelsea", "coffee", "astronaut",
                                                         "rocket", "china", "flower"),
        refs=args.refs,
        ig2_steps=8 if args.smoke else args.ig2_steps,
        guided_steps=args.guided_steps or (20 if args.smoke else 200),
        blur_sigma=args.blur_sigma or size / 16,
        fill_sigma=args.fill_sigma or size / 10,
        points=5 if args.smoke else args.points,
        chunk=args.chunk,
        seed=args.seed,
    )  # fmt: skip
    return config, args.json


def write_report(
    path: Path,
    config: Config,
    photos: PhotoSet,
    scored: list[int],
    metrics: list[Metric],
    runs: dict[str, Run],
    started: float,
) -> None:
    """Writes every number of the crops ``scored`` so far as JSON."""
    n = len(scored)
    cost = {
        name: {
            "median_error": float(np.nanmedian(run.relative_error))
            if not np.isnan(run.relative_error).all()
            else None,
            "gradients": float(run.evaluations.mean()),
            "seconds": run.seconds / n,
            "warnings": run.warnings,
        }
        for name, run in runs.items()
        if name != RANDOM
    }
    report: dict[str, Any] = {
        "config": asdict(config),
        "complete": n == len(photos.x),
        "crops": [photos.labels[i] for i in scored],
        "target": photos.target[scored].tolist(),
        "probability": photos.probability[scored].tolist(),
        "metrics": [metric_to_json(m) for m in metrics],
        "cost": cost,
        "relative_error": {k: r.relative_error.tolist() for k, r in runs.items()},
        "wall_seconds": time.perf_counter() - started,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    path.write_text(json.dumps(report, indent=1))
    print(f"wrote {path}", flush=True)


def main(argv: list[str] | None = None) -> None:
    config, json_path = parse_config(argv)
    seed_everything(config.seed)
    clock = Stopwatch()
    started = time.perf_counter()
    with clock.stage("data"):
        photos = load_photo_set(config.size, config.crops, config.photos)
    print(
        f"Attribution quality on EfficientNet-Lite0 ({'smoke' if config.smoke else 'full'} "
        f"run): {len(photos.x)} crops of {len(config.photos)} photos at {config.size} px, "
        f"{config.refs} IG2 reference(s) per crop, torch {torch.__version__}, "
        f"torch threads: {torch.get_num_threads()}"
    )
    classes = sorted({int(t) for t in photos.target})
    print(
        f"predicted classes: {classes}; median probability {float(photos.probability.median()):.2f}"
    )
    references = other_photo_references(photos, config.refs)
    runs: dict[str, Run] = {}
    metrics: list[Metric] = []
    # One crop of every photo at a time (crop k of each), so that every part of the run spans
    # all photos; each part is attributed, then scored.
    parts = [
        [i for i, label in enumerate(photos.labels) if label.endswith(f"/{k}")]
        for k in range(config.crops)
    ]
    for done, rows in enumerate(parts, start=1):
        part = PhotoSet(
            photos.model, photos.x[rows], [photos.labels[i] for i in rows],
            photos.target[rows], photos.probability[rows],
        )  # fmt: skip
        with clock.stage(f"part {done} attributions"):
            part_runs = attribute_all(part, references[rows], config)
        with clock.stage(f"part {done} deletion and insertion"):
            part_metrics, _ = quality_metrics(part, part_runs, config)
        runs = merge_runs(runs, part_runs)
        metrics = merge_metrics(metrics, part_metrics)
        print(
            f"  part {done}/{len(parts)}: {sum(len(r) for r in parts[:done])} crops, "
            f"{time.perf_counter() - started:.0f} s",
            flush=True,
        )
        if json_path is not None:  # what is done so far, should the run be stopped
            scored = [i for rows in parts[:done] for i in rows]
            write_report(json_path, config, photos, scored, metrics, runs, started)
    order = [i for rows in parts for i in rows]
    photos = PhotoSet(
        photos.model, photos.x[order], [photos.labels[i] for i in order], photos.target[order],
        photos.probability[order],
    )  # fmt: skip
    header = (
        f"{len(photos.x)} crops at {config.size} px, EfficientNet-Lite0; pixels ranked by signed "
        f"attribution; {config.points} points per curve"
    )
    print_table(f"Deletion (lower is better) and insertion (higher is better) AUC: {header}",
                metrics, short=SHORT)  # fmt: skip
    print_cost(runs, len(photos.x))
    total = time.perf_counter() - started
    stages = "; ".join(f"{k}: {v:.0f} s" for k, v in clock.seconds.items())
    print("\n" + textwrap.fill(f"Wall time: {total:.0f} s ({stages}).", width=100,
                               break_on_hyphens=False))  # fmt: skip
    print("\nThe table in Markdown (clear winners in bold):\n" + markdown_table(metrics))
    if json_path is not None:
        write_report(json_path, config, photos, list(range(len(photos.x))), metrics, runs, started)


if __name__ == "__main__":
    main()
