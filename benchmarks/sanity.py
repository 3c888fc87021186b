"""Sanity check by cascading model randomisation (Adebayo et al., NeurIPS 2018).

Run::

    python benchmarks/sanity.py --figure benchmarks/results/sanity.png   # the full run
    python benchmarks/sanity.py --smoke            # 2 crops at 64 px, 3 stages: it runs (CI)
    python benchmarks/sanity.py --json out.json    # every number, per image
    python benchmarks/sanity.py --estimator default  # converged path integrals (slow on a CPU)

A map that explains the network should change when the network's weights are destroyed. The
layers of EfficientNet-Lite0 (ImageNet weights, ``common.photos``) are re-initialised from the
top, cumulatively: the classifier ``_fc``; then ``_conv_head`` with its BatchNorm ``_bn1``;
then the MBConv blocks 15-11, 10-5 and 4-0 (EfficientNet's stages 6-7, 4-5 and 1-3); finally the
stem (``_conv_stem``, ``_bn0``), after which no trained weight is left. At every stage the maps
of each method are compared with the trained network's maps of the same images, for the same
class: the class the trained network predicts.

**Re-initialisation.** Each convolution and linear layer gets its own PyTorch default
initialiser (``reset_parameters``: Kaiming-uniform weights with a = sqrt(5), uniform biases), as
Adebayo et al. re-initialise with the layer's default initialiser. Each BatchNorm is reset to its
state at construction (scale 1, shift 0), and then the running statistics of every re-initialised
BatchNorm are re-estimated from one batch: all seven crops of every photo at the run's size (42
images in the full run; they include the explained ones). Without that step the freshly
initialised layers shrink the activations' variance about threefold each, and once every layer is
random the network's output varies with its input by about 1e-8 (measured), float32 rounding:
the path methods' completeness could not even be measured. Trained BatchNorms keep their
statistics (their inputs never change: the cascade goes from the top). The draws are seeded
(``--seed`` plus the stage's index).

**Methods** (the class is the trained network's prediction at every stage):

- **Gradient** (Captum's ``Saliency``, signed, ``abs=False``): the reference whose behaviour in
  this test is known to be good (Adebayo et al., Fig. 2).
- **IG** (Captum's ``IntegratedGradients``), black baseline, ``--ig-steps`` Gauss-Legendre steps
  (32; Captum's default is 50).
- **Guided IG** (``captum_ig2.GuidedIG``), black baseline, ``--guided-steps`` steps (64; the
  paper's 200), fraction 0.25, max_dist 0.02.
- **IG2** (``captum_ig2.IterativeGradientIG``), reference: the whole of another photo whose
  predicted class (by the trained network) differs, the same at every stage; representation
  ``model.representation_layer`` (``_conv_head``, 1280 channels); ``--ig2-steps`` steps (24) clamped
  to [0, 1]. The representation is part of the network under test: from the ``_conv_head`` stage on,
  IG2's GradPath follows a randomised representation, so its path changes with the randomisation as
  well as its integrand (randomising ``_fc`` alone leaves the path unchanged).

The full run's sizes (six crops, one per photo, at 128 px; the step counts above, below the papers')
are what fits about 20 minutes on the shared 2-core CI machine: 7 networks x 4 methods. Estimators:
``--estimator paper`` (the full run's, for the same reason) takes the papers' own sums for the two
path methods, one left-rule gradient per step without refinement (``method="riemann_left", nodes=1,
epsrel=None``), and IG2's own walk of equal steps (``walk="fixed", n_walks=1``);
``--estimator default`` takes the package's converged defaults (each segment refined
to a 2 % completeness tolerance), 3-15 times the gradients. Every stage records each method's
completeness error |delta| / |gap| per image and any ``ConvergenceWarning``.

**Scores.** Per method, stage and image: Spearman's rank correlation between the trained
network's map and the randomised network's map, of |attribution| summed over the colour channels
(Adebayo et al.'s "absolute" maps) and of the signed attribution summed over the channels; mean
+- standard error over the images. **Verdict** (fixed before the run): a method passes when its
mean correlation after randomising every layer is below ``THRESHOLD`` = 0.3 (weak or no rank
agreement with the trained map), separately for the two kinds of map.

The figure (``--figure``): (a) the correlations against the stage, one line per method, error
bars one standard error; (b) one image's maps at every stage, |attribution| summed over the
channels in Captum's colour convention for ``sign="absolute_value"`` (``Blues`` from 0, values
above Captum's 2 % outlier threshold clipped), each map with its colour bar.
"""

from __future__ import annotations

import argparse
import copy
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
from captum.attr import IntegratedGradients, Saliency
from common.metrics import spearman
from common.photos import PhotoSet, load_photo_set, other_photo_references
from common.report import Metric, markdown_table, metric_to_json, print_table, seed_everything
from torch import Tensor, nn

from captum_ig2 import ConvergenceWarning, GuidedIG, IterativeGradientIG
from captum_ig2.pretrained import CROPS, NormalizedEfficientNet, photo_crops
from captum_ig2.visualization import attribution_cmap, attribution_scale

PAPER = dict(method="riemann_left", nodes=1, epsrel=None)
METHODS = ("Gradient", "IG (black)", "Guided IG (black)", "IG2")
SHORT = {"Gradient": "Grad", "IG (black)": "IG", "Guided IG (black)": "GIG", "IG2": "IG2"}
#: A method passes when its mean correlation after randomising every layer is below this.
THRESHOLD = 0.3
TRAINED = "trained"


@dataclass(frozen=True)
class Config:
    """The sizes of one run (see the module docstring)."""

    smoke: bool
    size: int
    crops: int
    photos: tuple[str, ...]
    ig_steps: int
    guided_steps: int
    ig2_steps: int
    estimator: str
    seed: int


@dataclass
class Maps:
    """One method's attributions of every image on one network."""

    attributions: Tensor
    relative_error: np.ndarray  # |delta| / |gap| per image; NaN for the gradient
    seconds: float
    warnings: int  # ConvergenceWarnings raised


def stage_groups(smoke: bool) -> list[tuple[str, list[str]]]:
    """The layers re-initialised at each stage, top first, by their names in
    ``EfficientNet``; cumulative when applied in order. The smoke run merges everything below
    ``_fc`` into one last stage."""

    def blocks(first: int, last: int) -> list[str]:
        return [f"_blocks.{i}" for i in range(first, last - 1, -1)]

    groups = [
        ("_fc", ["_fc"]),
        ("_conv_head", ["_conv_head", "_bn1"]),
        ("blocks 15-11", blocks(15, 11)),
        ("blocks 10-5", blocks(10, 5)),
        ("blocks 4-0", blocks(4, 0)),
        ("stem", ["_conv_stem", "_bn0"]),
    ]
    if smoke:
        groups = [groups[0], ("all the rest", [n for _, names in groups[1:] for n in names])]
    return groups


def reinitialise(modules: list[nn.Module], seed: int) -> int:
    """Resets every convolution, linear and BatchNorm layer in ``modules`` to its default
    initialisation (see the module docstring); returns the number of parameters reset."""
    torch.manual_seed(seed)  # reset_parameters draws from the global generator
    count = 0
    for module in modules:
        for layer in module.modules():
            if isinstance(layer, nn.Conv2d | nn.Linear | nn.BatchNorm2d):
                layer.reset_parameters()
                count += sum(p.numel() for p in layer.parameters(recurse=False))
    return count


def recalibrate(model: NormalizedEfficientNet, modules: list[nn.Module], images: Tensor) -> None:
    """Re-estimates the running statistics of the BatchNorm layers in ``modules`` from one
    batch of ``images`` (the others keep their trained statistics): without it a randomised
    network's activations shrink by about 1/3 in variance per layer, and after the last stage
    its output varies with the input by 1e-8, float32 rounding."""
    norms = [m for module in modules for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average: after one batch, that batch's statistics
        norm.train()
    with torch.no_grad():
        model(images)
    for norm in norms:
        norm.eval()


def cascade(
    model: NormalizedEfficientNet, smoke: bool, seed: int, calibration: Tensor
) -> list[tuple[str, NormalizedEfficientNet, int]]:
    """The trained network and a copy per stage, each with one more group re-initialised and
    the statistics of every re-initialised BatchNorm re-estimated on ``calibration``:
    (stage name, network, parameters re-initialised so far)."""
    networks = [(TRAINED, model, 0)]
    current, total, random_layers = model, 0, []
    for index, (name, layers) in enumerate(stage_groups(smoke), start=1):
        current = copy.deepcopy(current)
        random_layers += layers
        total += reinitialise([current.net.get_submodule(n) for n in layers], seed + index)
        recalibrate(current, [current.net.get_submodule(n) for n in random_layers], calibration)
        networks.append((name, current.eval(), total))
    n_parameters = sum(p.numel() for p in model.parameters())
    if networks[-1][2] != n_parameters:  # every weight of the last network must be random
        raise RuntimeError(f"re-initialised {networks[-1][2]} of {n_parameters} parameters")
    return networks


def recorded(run: Callable[[], tuple[Tensor, Tensor | None]]) -> Maps:
    """``run()``'s attributions and relative errors, its seconds and ConvergenceWarnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        start = time.perf_counter()
        attributions, error = run()
        seconds = time.perf_counter() - start
    n_warnings = sum(issubclass(w.category, ConvergenceWarning) for w in caught)
    error_np = np.full(len(attributions), np.nan) if error is None else error.double().numpy()
    return Maps(attributions.detach(), error_np, seconds, n_warnings)


def attribute_all(
    model: NormalizedEfficientNet, photos: PhotoSet, references: Tensor, config: Config
) -> dict[str, Maps]:
    """Every method's maps of every image on ``model``, for the trained network's classes."""
    x, target = photos.x, photos.target
    kwargs: dict[str, Any] = PAPER if config.estimator == "paper" else {}

    def gradient() -> tuple[Tensor, None]:
        return Saliency(model).attribute(x, target=target, abs=False), None

    def ig() -> tuple[Tensor, Tensor]:
        attributions, delta = IntegratedGradients(model).attribute(
            x, baselines=0.0, target=target, n_steps=config.ig_steps, internal_batch_size=64,
            return_convergence_delta=True,
        )  # fmt: skip
        with torch.no_grad():
            gap = (model(x) - model(torch.zeros_like(x))).gather(1, target[:, None]).squeeze(1)
        return attributions, delta.abs() / gap.abs()

    def guided() -> tuple[Tensor, Tensor]:
        path = GuidedIG(model).path(
            x, 0.0, target=target, n_steps=config.guided_steps, internal_batch_size=64, **kwargs
        )
        return path.attributions, path.relative_error

    def ig2() -> tuple[Tensor, Tensor]:
        explainer = IterativeGradientIG(model, representation_layer=model.representation_layer)
        # The paper's IG2 with its estimator: one walk of equal steps.
        walks = dict(walk="fixed", n_walks=1) if config.estimator == "paper" else {}
        path = explainer.path(
            x, references, target=target, n_steps=config.ig2_steps, clamp=(0.0, 1.0),
            internal_batch_size=64, **kwargs, **walks,
        )  # fmt: skip
        return path.attributions, path.relative_error

    calls = dict(zip(METHODS, (gradient, ig, guided, ig2), strict=True))
    return {name: recorded(call) for name, call in calls.items()}


def absolute_map(attributions: Tensor) -> Tensor:
    """|attribution| summed over the channels, (N, H, W)."""
    return attributions.abs().sum(dim=1)


def signed_map(attributions: Tensor) -> Tensor:
    """The attribution summed over the channels, (N, H, W)."""
    return attributions.sum(dim=1)


def correlations(
    trained: dict[str, Maps], stages: dict[str, dict[str, Maps]]
) -> dict[str, list[Metric]]:
    """Per kind of map, one metric per randomised stage: each method's Spearman correlation
    with its trained map, per image. Lower is more sensitive to the randomisation."""
    out = {}
    for kind, reduce in (("absolute", absolute_map), ("signed", signed_map)):
        out[kind] = [
            Metric(
                f"spearman_{kind}/{stage}",
                stage,
                False,
                {
                    method: spearman(
                        reduce(trained[method].attributions),
                        reduce(stage_maps[method].attributions),
                    )
                    for method in METHODS
                },
            )
            for stage, stage_maps in stages.items()
        ]
    return out


def verdicts(metrics: dict[str, list[Metric]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per kind of map and method: the correlation after the first and the last stage, the
    first stage whose mean is below THRESHOLD, and whether the last one is (the verdict)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for kind, stage_metrics in metrics.items():
        out[kind] = {}
        for method in METHODS:
            means = [m.mean(method) for m in stage_metrics]
            below = [m.column for m in stage_metrics if m.mean(method) < THRESHOLD]
            out[kind][method] = {
                "first_stage": means[0],
                "last_stage": means[-1],
                "last_stage_sem": stage_metrics[-1].sem(method),
                "first_stage_below_threshold": below[0] if below else None,
                "passes": bool(means[-1] < THRESHOLD),
            }
    return out


def plot(
    path: Path,
    metrics: dict[str, list[Metric]],
    trained: dict[str, Maps],
    stages: dict[str, dict[str, Maps]],
    photos: PhotoSet,
    image: int,
) -> None:
    """The figure: (a) correlation against the stage, (b) one image's maps at every stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [TRAINED, *stages]
    columns = 1 + len(names)
    fig = plt.figure(figsize=(2.45 * columns, 4.2 + 2.1 * len(METHODS)), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[4.2, 2.1 * len(METHODS)])
    axes = top.subplots(1, 2)
    for ax, label, (kind, stage_metrics) in zip(axes, "12", metrics.items(), strict=True):
        for method in METHODS:
            means = [1.0] + [m.mean(method) for m in stage_metrics]
            sems = [0.0] + [m.sem(method) for m in stage_metrics]
            ax.errorbar(range(len(names)), means, yerr=sems, marker="o", capsize=3, label=method)
        ax.axhline(THRESHOLD, color="grey", linestyle="--", linewidth=1)
        ax.axhline(0.0, color="black", linewidth=0.5)
        ax.set_xticks(range(len(names)), ["trained", *(f"+ {s}" for s in stages)], rotation=20)
        ax.set_ylim(-0.3, 1.05)
        ax.set_ylabel(f"Spearman with the trained map\n(mean ± s.e., {len(photos.x)} images)")
        what = "|attribution|" if kind == "absolute" else "signed attribution"
        ax.set_title(f"(a{label}) {what} summed over channels", fontsize=10)
        if kind == "absolute":
            ax.legend(fontsize=8, loc="lower left")
        ax.text(len(names) - 1, THRESHOLD + 0.02, f"pass: < {THRESHOLD}", ha="right", fontsize=8)
    grid = bottom.subplots(len(METHODS), columns)
    bottom.suptitle(
        f"(b) {photos.labels[image]}, class {int(photos.target[image])}: "
        "|attribution| summed over channels (Captum's Blues, 2 % outliers clipped)",
        fontsize=10,
    )
    for row, method in enumerate(METHODS):
        for col in range(columns):
            ax = grid[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                if row == 0:
                    ax.imshow(photos.x[image].permute(1, 2, 0).numpy())
                    ax.set_title("input", fontsize=9)
                else:
                    ax.axis("off")
                continue
            stage = names[col - 1]
            maps = trained if stage == TRAINED else stages[stage]
            values = absolute_map(maps[method].attributions[image : image + 1])[0].numpy()
            vmax = attribution_scale(values, sign="absolute_value") or 1.0
            shown = ax.imshow(values, cmap=attribution_cmap("absolute_value"), vmin=0.0, vmax=vmax)
            bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.03)
            bar.ax.tick_params(labelsize=6)
            bar.formatter.set_powerlimits((-2, 3))
            bar.ax.yaxis.get_offset_text().set_fontsize(6)
            if row == 0:
                ax.set_title(stage if stage == TRAINED else f"+ {stage}", fontsize=9)
            if col == 1:
                ax.set_ylabel(method, fontsize=9)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def parse_config(argv: list[str] | None = None) -> tuple[Config, Path | None, Path | None]:
    """The command line (``--smoke`` shrinks every size not given)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to check that it runs")
    parser.add_argument("--size", type=int, default=None, help="crop side; default 128 (smoke 64)")
    parser.add_argument("--crops", type=int, default=1, help="crops per photo (default 1)")
    parser.add_argument("--ig-steps", type=int, default=None, help="default 32 (smoke 8)")
    parser.add_argument("--guided-steps", type=int, default=None, help="default 64 (smoke 10)")
    parser.add_argument("--ig2-steps", type=int, default=None, help="default 24 (smoke 5)")
    parser.add_argument("--estimator", choices=("paper", "default"), default="paper")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--figure", type=Path, default=None, help="write the figure here (PNG)")
    args = parser.parse_args(argv)
    config = Config(
        smoke=args.smoke,
        size=args.size or (64 if args.smoke else 128),
        crops=args.crops,
        photos=("chelsea", "coffee") if args.smoke else ("chelsea", "coffee", "astronaut",
                                                         "rocket", "china", "flower"),
        ig_steps=args.ig_steps or (8 if args.smoke else 32),
        guided_steps=args.guided_steps or (10 if args.smoke else 64),
        ig2_steps=args.ig2_steps or (5 if args.smoke else 24),
        estimator=args.estimator,
        seed=args.seed,
    )  # fmt: skip
    return config, args.json, args.figure


def print_cost(
    trained: dict[str, Maps], stages: dict[str, dict[str, Maps]]
) -> dict[str, dict[str, dict[str, float]]]:
    """Prints and returns each method's median completeness error, ConvergenceWarnings and
    seconds at every stage."""
    print("\nCompleteness error |delta| / |gap| (median over the images), ConvergenceWarnings, s")
    names = [TRAINED, *stages]
    print(f"{'method':20s}" + "".join(f"{name:>16s}" for name in names))
    cost: dict[str, dict[str, dict[str, float]]] = {}
    for method in METHODS:
        cells, cost[method] = [], {}
        for name in names:
            maps = (trained if name == TRAINED else stages[name])[method]
            defined = not np.isnan(maps.relative_error).all()
            median = float(np.nanmedian(maps.relative_error)) if defined else float("nan")
            cost[method][name] = {
                "median_error": median if defined else None,
                "warnings": maps.warnings,
                "seconds": maps.seconds,
            }
            error = f"{median:.0%}" if defined else "-"
            cells.append(f"{error} {maps.warnings}w {maps.seconds:.0f}s")
        print(f"{method:20s}" + "".join(f"{cell:>16s}" for cell in cells))
    return cost


def main(argv: list[str] | None = None) -> None:
    config, json_path, figure_path = parse_config(argv)
    seed_everything(config.seed)
    started = time.perf_counter()
    photos = load_photo_set(config.size, config.crops, config.photos)
    references = other_photo_references(photos, 1)
    calibration, _ = photo_crops(config.photos, len(CROPS), config.size)
    networks = cascade(photos.model, config.smoke, config.seed, calibration)
    print(
        f"Sanity check, cascading randomisation of EfficientNet-Lite0 "
        f"({'smoke' if config.smoke else 'full'} run): {len(photos.x)} crops of "
        f"{len(config.photos)} photos at {config.size} px; estimator {config.estimator!r}; "
        f"steps IG {config.ig_steps}, Guided IG {config.guided_steps}, IG2 {config.ig2_steps}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(f"classes explained (trained network's): {photos.target.tolist()}")
    trained: dict[str, Maps] = {}
    stages: dict[str, dict[str, Maps]] = {}
    agreement: dict[str, float] = {}
    for name, network, n_reset in networks:
        start = time.perf_counter()
        maps = attribute_all(network, photos, references, config)
        with torch.no_grad():
            top1 = network(photos.x).argmax(dim=1)
        agreement[name] = float((top1 == photos.target).double().mean())
        if name == TRAINED:
            trained = maps
        else:
            stages[name] = maps
        print(
            f"  {name:14s} {n_reset:>9d} parameters random, top-1 = trained class for "
            f"{agreement[name]:.0%}, {time.perf_counter() - start:6.0f} s",
            flush=True,
        )
    metrics = correlations(trained, stages)
    note = (
        "Stages cumulative from the top ('+': also re-initialised). Lower is better (the map "
        "depends on the weights); winner: the lowest correlation."
    )
    for kind, what in (("absolute", "|attribution|"), ("signed", "signed attribution")):
        print_table(
            f"Spearman rank correlation with the trained network's map, {what} summed over "
            f"channels (mean ± s.e. over {len(photos.x)} images)",
            metrics[kind],
            note=note,
            short=SHORT,
        )
    verdict = verdicts(metrics)
    print(
        f"\nVerdict: passes when the mean correlation after randomising every layer < {THRESHOLD}"
    )
    print(f"{'method':20s}{'|attribution|':>34s}{'signed':>34s}")
    for method in METHODS:
        cells = []
        for kind in ("absolute", "signed"):
            v = verdict[kind][method]
            result = "pass" if v["passes"] else "FAIL"
            cells.append(
                f"{v['first_stage']:.2f} -> {v['last_stage']:.2f} ± "
                f"{v['last_stage_sem']:.2f} {result}"
            )
        print(f"{method:20s}" + "".join(f"{cell:>34s}" for cell in cells))
    cost = print_cost(trained, stages)
    total = time.perf_counter() - started
    print("\n" + textwrap.fill(f"Wall time: {total:.0f} s.", width=100))
    for kind in ("absolute", "signed"):
        print(f"\nMarkdown, {kind}:\n" + markdown_table(metrics[kind], digits=2))
    if figure_path is not None:
        plot(figure_path, metrics, trained, stages, photos, image=0)
        print(f"wrote {figure_path}")
    if json_path is not None:
        groups = dict(stage_groups(config.smoke))
        report: dict[str, Any] = {
            "config": asdict(config),
            "threshold": THRESHOLD,
            "crops": photos.labels,
            "target": photos.target.tolist(),
            "probability": photos.probability.tolist(),
            "stages": [
                {
                    "name": name,
                    "reinitialised": groups.get(name, []),
                    "parameters_random": n_reset,
                    "top1_agreement": agreement[name],
                }
                for name, _, n_reset in networks
            ],
            "metrics": {kind: [metric_to_json(m) for m in ms] for kind, ms in metrics.items()},
            "verdict": verdict,
            "cost": cost,
            "relative_error": {
                method: {
                    name: [None if np.isnan(e) else e for e in maps[method].relative_error.tolist()]
                    for name, maps in [(TRAINED, trained), *stages.items()]
                }
                for method in METHODS
            },
            "wall_seconds": total,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        }
        json_path.write_text(json.dumps(report, indent=1))
        print(f"wrote {json_path}")


if __name__ == "__main__":
    main()
