"""Cost of a converged attribution on EfficientNet-Lite0: the seconds to reach 1, 2 and 5 %.

For Captum's Integrated Gradients, Guided IG and IG2 (1 and 4 references) on a pretrained
ImageNet network, every setting of a grid is run on every photo and reports the completeness
error reached, abs(delta) / abs(gap) (gap: the output difference the attributions must add up
to; for IG2 the package's, delta and gap averaged over the references), the gradient
evaluations spent and the seconds of the call. From these, per method and per error level
(1, 2, 5 %): the cheapest setting whose error is within the level on *every* photo, its mean
seconds, and their ratio to Captum's IG at 2 % (the aim: at most 2).

The case: EfficientNet-Lite0 with its ImageNet weights (``common.photos``) on whole photos of
``captum_ig2.pretrained.PHOTOS`` (``--photos``, default chelsea and coffee), each explained for
its predicted class.

- **IG (Captum)**: ``IntegratedGradients``, black baseline, Gauss-Legendre, ``n_steps`` on
  ``--ig-steps``.
- **Guided IG**: black baseline, the paper's 200 steps, the package's default rule (trapezoid,
  3 nodes) refined to each ``--tolerances`` epsrel.
- **IG2 (R refs)**: the first R whole photos of other predicted classes (``common.photos``),
  representation ``model.representation_layer`` (``_conv_head``), clamp (0, 1), 50 steps of the
  paper's walk, one per reference (``walk="fixed", n_walks=1``; the default averages 8
  adaptive walks, whose cost ``benchmarks/stability.py`` states), the package's default rule
  (Gauss-Legendre, 5 nodes) refined to each epsrel.
- **papers' estimator** of each path method: ``method="riemann_left", nodes=1, epsrel=None``,
  one gradient per step (not for IG2 with more than one reference).

The default grids are small because the run they were chosen for shared 2 CPU cores with four
other jobs (about 0.3 s per gradient at 224 px): IG ``n_steps`` 128, 256, 512 (64 measured
6 % on chelsea, so it is no level's cheapest), Guided IG and IG2 with 1 reference at epsrel
0.05 on both photos, IG2 with 4 references at epsrel 0.1 on ``--many-photos`` (chelsea) only.
Widen them with ``--ig-steps``, ``--tolerances``, ``--many-tolerances``, ``--many-photos``.

Gradients are split into *path* gradients, those the step rule needs to choose the path (IG2:
one gradient of the representation distance per GradPath step and reference; Guided IG: one
gradient of the output per step) and *integration* gradients (the quadrature's own nodes and,
for Guided IG's trapezoid, the path's end). The papers' estimator spends path gradients only
(its integral reuses them), so its seconds bound the cost of building the path.

Timing: one call per setting and photo, all methods measured in rounds (IG's i-th setting,
then Guided IG's, IG2's, ... on each photo) so that they share the machine's drift; the
ratios are between measurements of this run. ``--threads`` (default 1: on a shared 2-core
machine more threads only contend) and ``--batch`` (at most this many points per model call,
default 4, the fastest per gradient that we measured on this CPU for EfficientNet-Lite0 at
224 px; the same for all methods) are stated in the output. A method stops once its error is
within 1 % on every photo (the looser levels are then known: its settings run from the
cheapest up); a round does not start after ``--budget`` seconds.

Run:  python benchmarks/cost.py [--json out.json] [--figure out.png] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path
from typing import Any

import torch
from captum.attr import IntegratedGradients
from common.photos import load_photo_set, other_photo_references
from convergence import timed

from captum_ig2 import GuidedIG, IterativeGradientIG
from captum_ig2.pretrained import PHOTOS

LEVELS = (0.01, 0.02, 0.05)
PAPERS = "papers' estimator"


@dataclass
class Run:
    """One call: a method's setting on one photo."""

    method: str
    setting: str
    photo: str
    error: float  # abs(delta) / abs(gap)
    evaluations: float  # gradient evaluations (all references)
    path_evaluations: float  # of these, the ones the step rule spent choosing the path
    seconds: float
    warned: bool  # the call emitted a ConvergenceWarning


@dataclass
class Method:
    """A contender: its settings, cheapest first, and how to run one on one photo."""

    name: str
    settings: list[tuple[str, dict[str, Any]]]
    run: Callable[[int, dict[str, Any]], tuple[float, float, float]]  # error, evals, path evals
    explained: list[int]  # the photos it runs on (indices into the photo set)
    done: bool = False


def make_methods(
    args: argparse.Namespace, photos: Any, explained: list[int], many: list[int]
) -> list[Method]:
    model = photos.model
    gig_steps, ig2_steps = (8, 4) if args.smoke else (200, 50)
    refs = other_photo_references(photos, max(args.references))
    ig = IntegratedGradients(model)
    gig = GuidedIG(model)
    ig2 = IterativeGradientIG(model, representation_layer=model.representation_layer)

    def run_ig(i: int, kw: dict[str, Any]) -> tuple[float, float, float]:
        x, target = photos.x[i : i + 1], int(photos.target[i])
        _, delta = ig.attribute(
            x, target=target, method="gausslegendre", internal_batch_size=args.batch,
            return_convergence_delta=True, **kw,
        )  # fmt: skip
        with torch.no_grad():
            gap = (model(x)[0, target] - model(torch.zeros_like(x))[0, target]).item()
        return abs(delta.item() / gap), kw["n_steps"], 0

    def run_gig(i: int, kw: dict[str, Any]) -> tuple[float, float, float]:
        kw = {"n_steps": gig_steps, **kw}  # a warm-up call takes fewer
        path = gig.path(
            photos.x[i : i + 1], 0.0, target=int(photos.target[i]),
            internal_batch_size=args.batch, **kw,
        )  # fmt: skip
        return path.relative_error.item(), path.evaluations.item(), kw["n_steps"]

    def run_ig2(r: int) -> Callable[[int, dict[str, Any]], tuple[float, float, float]]:
        def run(i: int, kw: dict[str, Any]) -> tuple[float, float, float]:
            kw = {"n_steps": ig2_steps, **kw}
            # The paper's walk: the cost of integrating one GradPath per reference (the
            # default averages 8 adaptive walks; benchmarks/stability.py states its cost).
            path = ig2.path(
                photos.x[i : i + 1], refs[i : i + 1, :r], target=int(photos.target[i]),
                clamp=(0.0, 1.0), internal_batch_size=args.batch, walk="fixed", n_walks=1,
                **kw,
            )  # fmt: skip
            return path.relative_error.item(), path.evaluations.item(), r * kw["n_steps"]

        return run

    papers = (PAPERS, dict(method="riemann_left", nodes=1, epsrel=None))

    def tolerances(grid: list[float], with_papers: bool = True) -> list[tuple[str, dict[str, Any]]]:
        return [papers] * with_papers + [
            (f"epsrel={e}" + (" (default)" if e == 0.02 else ""), dict(epsrel=e)) for e in grid
        ]

    methods = [Method("IG (Captum)", [(f"n_steps={n}", dict(n_steps=n)) for n in args.ig_steps],
                      run_ig, explained)]  # fmt: skip
    methods.append(Method("Guided IG", tolerances(args.tolerances), run_gig, explained))
    for r in args.references:
        grid, on = (args.tolerances, explained) if r == 1 else (args.many_tolerances, many)
        methods.append(
            Method(f"IG2 ({r} ref{'s' if r > 1 else ''})", tolerances(grid, r == 1), run_ig2(r), on)
        )
    return methods


def measure(methods: list[Method], photos: Any, budget: float) -> list[Run]:
    """Every method's settings in rounds, each method stopping once within 1 % everywhere."""
    runs: list[Run] = []
    start = time.perf_counter()
    for k in range(max(len(m.settings) for m in methods)):
        if time.perf_counter() - start > budget:
            print(f"budget of {budget:.0f} s spent: no round {k} and later", flush=True)
            break
        for method in methods:
            if method.done or k >= len(method.settings):
                continue
            label, kw = method.settings[k]
            errors = []
            for i in method.explained:
                (error, evals, path_evals), seconds, warned = timed(
                    lambda i=i, kw=kw, method=method: method.run(i, kw)
                )
                run = Run(method.name, label, photos.labels[i].split("/")[0], error, evals,
                          path_evals, seconds, warned)  # fmt: skip
                runs.append(run)
                errors.append(error)
                print(f"  {run.method:14s} {run.setting:26s} {run.photo:9s} "
                      f"error {error:9.2%}  {evals:6.0f} gradients  {seconds:7.1f} s",
                      flush=True)  # fmt: skip
            # Its settings run from the cheapest up: once within the tightest level on every
            # photo, the cheapest setting for every level is known. The papers' estimator is
            # a separate estimator, not a rung of the ladder.
            if label != PAPERS and max(errors) <= min(LEVELS):
                method.done = True
    return runs


@dataclass
class Summary:
    """A setting's runs over the photos: worst error, mean gradients and seconds."""

    method: str
    setting: str
    error: float  # the worst over the photos
    evaluations: float
    path_evaluations: float
    seconds: float
    warned: bool


def summarise(runs: list[Run]) -> list[Summary]:
    keys = list(dict.fromkeys((r.method, r.setting) for r in runs))
    out = []
    for method, setting in keys:
        rs = [r for r in runs if (r.method, r.setting) == (method, setting)]
        out.append(Summary(
            method, setting, max(r.error for r in rs),
            sum(r.evaluations for r in rs) / len(rs),
            sum(r.path_evaluations for r in rs) / len(rs),
            sum(r.seconds for r in rs) / len(rs), any(r.warned for r in rs),
        ))  # fmt: skip
    return out


def cheapest(summaries: list[Summary], method: str, level: float) -> Summary | None:
    """The setting of ``method`` with the fewest gradients that is within ``level`` on every
    photo (for IG, the smallest ``n_steps``); the papers' estimator counts as a setting."""
    within = [s for s in summaries if s.method == method and s.error <= level]
    return min(within, key=lambda s: s.evaluations, default=None)


def report(summaries: list[Summary], methods: list[str]) -> tuple[str, list[dict[str, Any]]]:
    lines = [
        "| method | setting | worst abs(delta)/abs(gap) | gradients (path + integration) "
        "| seconds |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for s in summaries:
        flag = " (warned)" if s.warned else ""
        split = f"{s.evaluations:.0f}"
        if s.path_evaluations:
            split += f" ({s.path_evaluations:.0f} + {s.evaluations - s.path_evaluations:.0f})"
        lines.append(f"| {s.method} | {s.setting} | {s.error:.2%}{flag} | {split} "
                     f"| {s.seconds:.1f} |")  # fmt: skip
    ig_2 = cheapest(summaries, methods[0], 0.02)
    lines += [
        "",
        "Time to reach each level on every photo (the cheapest setting that does; seconds: "
        "mean over the photos; ratio: to Captum's IG at 2 %, the goal being <= 2):",
        "",
        "| method | "
        + " | ".join(f"{level:.0%}" for level in LEVELS)
        + " | ratio to IG at 2 % | papers' estimator: error, seconds |",
        "| --- | " + " | ".join("---" for _ in LEVELS) + " | ---: | ---: |",
    ]
    reach: list[dict[str, Any]] = []
    for method in methods:
        cells = []
        for level in LEVELS:
            s = cheapest(summaries, method, level)
            cells.append("not reached" if s is None else f"{s.seconds:.1f} s ({s.setting})")
            reach.append({"method": method, "level": level,
                          "setting": None if s is None else s.setting,
                          "seconds": None if s is None else s.seconds,
                          "evaluations": None if s is None else s.evaluations})  # fmt: skip
        s2 = cheapest(summaries, method, 0.02)
        ratio = "n/a" if s2 is None or ig_2 is None else f"{s2.seconds / ig_2.seconds:.2f}"
        papers = [s for s in summaries if s.method == method and s.setting == PAPERS]
        paper = f"{papers[0].error:.1%}, {papers[0].seconds:.1f} s" if papers else "-"
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {ratio} | {paper} |")
    return "\n".join(lines), reach


def figure(summaries: list[Summary], methods: list[str], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5), layout="constrained")
    for k, method in enumerate(methods):
        colour = f"C{k}"
        ladder = [s for s in summaries if s.method == method and s.setting != PAPERS]
        ax.plot([s.seconds for s in ladder], [100 * s.error for s in ladder], "o-",
                color=colour, label=method)  # fmt: skip
        for s in ladder:
            short = s.setting.replace(" (default)", "*").split("=")[-1]
            ax.annotate(short, (s.seconds, 100 * s.error), textcoords="offset points",
                        xytext=(4, 4), fontsize=7, color=colour)  # fmt: skip
        for s in summaries:
            if s.method == method and s.setting == PAPERS:
                ax.plot(s.seconds, 100 * s.error, "x", color=colour, markersize=9)
    ax.plot([], [], "kx", label="papers' estimator (one gradient per step)")
    ax.axhline(2.0, color="0.3", linestyle="--", linewidth=1, label="2 % (the goal's level)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("seconds per call (mean over the photos)")
    ax.set_ylabel("completeness error, worst over the photos (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="best")
    ax.grid(True, which="both", alpha=0.3)
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", default="chelsea,coffee", help="comma-separated PHOTOS")
    parser.add_argument("--many-photos", default="chelsea", help="IG2's with R > 1 (R x cost)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--ig-steps", default="128,256,512")
    parser.add_argument("--tolerances", default="0.05", help="epsrel grid")
    parser.add_argument(
        "--many-tolerances",
        default="0.1",
        help="epsrel grid of IG2 with more than one reference (R times the cost)",
    )
    parser.add_argument("--references", default="1,4", help="IG2's numbers of references")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=4, help="internal_batch_size, all methods")
    parser.add_argument("--budget", type=float, default=2400.0, help="seconds, then no new round")
    parser.add_argument("--json", default=None, help="write every run and the summary here")
    parser.add_argument("--figure", default=None, help="write error against seconds here")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to check it runs")
    args = parser.parse_args()
    if args.smoke:
        args.size, args.ig_steps, args.batch = 32, "4,8", 16
        args.tolerances = args.many_tolerances = "0.2"
        args.references, args.many_photos = "1,2", args.photos
    args.ig_steps = [int(n) for n in args.ig_steps.split(",")]
    args.tolerances = [float(e) for e in args.tolerances.split(",")]
    args.many_tolerances = [float(e) for e in args.many_tolerances.split(",")]
    args.references = [int(r) for r in args.references.split(",")]
    torch.set_num_threads(args.threads)

    photos = load_photo_set(args.size, crops=1, names=PHOTOS)
    names = args.photos.split(",")
    explained = [photos.labels.index(f"{name}/0") for name in names]
    many = [photos.labels.index(f"{name}/0") for name in args.many_photos.split(",")]
    methods = make_methods(args, photos, explained, many)
    header = (
        f"EfficientNet-Lite0 at {args.size}x{args.size}, photos "
        + ", ".join(
            f"{name} (class {int(photos.target[i])}, p = {photos.probability[i]:.2f})"
            for name, i in zip(names, explained)
        )
        + f"; IG2 with more than one reference on {args.many_photos} only"
        + f"; torch {torch.__version__}, {platform.machine()} CPU, {args.threads} thread(s), "
        f"internal_batch_size {args.batch}, {date.today()}. Seconds are one call's on a "
        "shared, loaded machine: compare them only as ratios within this run."
    )
    print(header, flush=True)
    # A short warm-up call of each method, so that no contender pays the first call's set-up.
    for method in methods:
        _, kw = method.settings[-1]
        method.run(explained[0], {**kw, "n_steps": 2})
    started = time.perf_counter()
    runs = measure(methods, photos, args.budget)
    elapsed = time.perf_counter() - started
    summaries = summarise(runs)
    names_of_methods = [m.name for m in methods]
    table, reach = report(summaries, names_of_methods)
    print()
    print(header)
    print(f"(measured in {elapsed / 60:.1f} minutes)")
    print()
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "header": header, "minutes": elapsed / 60, "levels": LEVELS,
            "runs": [asdict(r) for r in runs],
            "summary": [asdict(s) for s in summaries], "reach": reach,
        }, indent=1))  # fmt: skip
    if args.figure:
        title = (f"EfficientNet-Lite0, {args.size} px, {', '.join(names)}: completeness error "
                 "against time")  # fmt: skip
        figure(summaries, names_of_methods, args.figure, title)
    if any(math.isnan(s.error) for s in summaries):
        raise SystemExit("a completeness error is NaN")


if __name__ == "__main__":
    main()
