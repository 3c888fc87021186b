"""How stable an attribution map is: the same attribution computed twice, with a difference far
below any visible one, on EfficientNet-Lite0 and photo crops.

For IG2 (the package's default, more and fewer walks, the paper's walk), Guided IG and Captum's
Integrated Gradients, every map is computed again with one difference, and the cosine between
the two maps (all pixels and channels flattened) is reported, worst and median over the crops:

- **batch**: each crop attributed alone instead of in the batch of all crops;
- **1e-6**: every input value moved by a uniform random amount in [-1e-6, 1e-6] (``--eps``),
  far below an 8-bit image's step of 1/255;
- **f64**: model and inputs in float64 instead of float32;
- **again**: the same call once more, on a GPU only (cuDNN's kernels are not deterministic; on
  the CPU the same call gives the same map).

For IG2 with several walks it also reports the stability the call predicts for itself
(``path(...).stability``, from the agreement of its walks), next to the measured worst cosine.
Each row states the completeness error (median and max of abs(delta) / abs(gap)), the gradient
evaluations per example and the seconds per example of the float32 batch call, and on a GPU its
peak memory. Captum's IG is the named reference, measured in the same run.

Then it looks inside the walk. For the first ``--trace`` crops, IG2's walk (the paper's fixed
steps and the adaptive ones) from the crop and from the crop moved by ``--eps``: the distance
between the two walks step by step, the representation distance along each, the cosine between
consecutive steps and the step lengths (papers' estimator; the integral does not change the walk),
and the paper's walk with ten times as many steps, each ten times shorter.

The case: EfficientNet-Lite0 with its ImageNet weights (``common.photos``) on ``--crops`` crops
of each of the ``--photos`` at ``--size`` pixels, each explained for its predicted class; IG2's
reference is the whole photo of another class (``common.photos.other_photo_references``),
representation ``model.representation_layer``, clamp (0, 1), 50 steps; Guided IG and Captum's
IG from a black baseline (Guided IG 200 steps, Captum's IG 256 Gauss-Legendre steps).

Run:  python benchmarks/stability.py [--device cuda] [--size 112] [--json out.json] [--smoke]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
import warnings
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch
from captum.attr import IntegratedGradients
from common.photos import load_photo_set, other_photo_references
from torch import Tensor

from captum_ig2 import ConvergenceWarning, GuidedIG, IterativeGradientIG, StabilityWarning
from captum_ig2.pretrained import PHOTOS

#: The papers' estimator: one left-rule gradient per path step, no refinement.
PAPERS = {"method": "riemann_left", "nodes": 1, "epsrel": None}

#: name -> (method, keyword arguments of its call)
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "IG2, default (8 walks)": ("ig2", {}),
    "IG2, 4 walks": ("ig2", {"n_walks": 4}),
    "IG2, one adaptive walk": ("ig2", {"n_walks": 1}),
    "IG2, paper's walk, converged": ("ig2", {"n_walks": 1, "walk": "fixed"}),
    "IG2, papers' estimator": ("ig2", {"n_walks": 1, "walk": "fixed", **PAPERS}),
    "Guided IG, default": ("guided", {}),
    "IG (Captum), 256 steps": ("captum", {}),
}
CONDITIONS = ("batch", "1e-6", "f64", "again")


@dataclass
class Row:
    """One method's measurements."""

    method: str
    cosines: dict[str, list[float]] = field(default_factory=dict)  # condition -> per crop
    predicted: list[float] | None = None  # IG2 with several walks: path(...).stability
    relative_error: list[float] = field(default_factory=list)
    evaluations: list[int] = field(default_factory=list)
    seconds_per_example: float = 0.0
    peak_memory_gb: float | None = None


def cosine(a: Tensor, b: Tensor) -> np.ndarray:
    """Per example, the cosine between two maps (all features flattened), in float64."""
    a, b = a.double().flatten(1).cpu(), b.double().flatten(1).cpu()
    return ((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).numpy()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Case:
    """The model (float32 and float64), crops, targets and IG2's references on one device."""

    def __init__(
        self,
        size: int,
        crops: int,
        photos: tuple[str, ...],
        device: torch.device,
        steps: dict[str, int],
    ) -> None:
        photo_set = load_photo_set(size=size, crops=crops, names=photos)
        self.steps = steps  # method kind -> n_steps
        self.device = device
        self.labels = photo_set.labels
        self.model = photo_set.model.to(device)
        self.model64 = copy.deepcopy(photo_set.model).double().to(device)
        self.x = photo_set.x.to(device)
        self.target = photo_set.target.to(device)
        self.references = other_photo_references(photo_set, 1)[:, 0].to(device)

    def call(self, kind: str, options: dict[str, Any], x: Tensor, rows: slice | None = None,
             batch: int | None = None, dtype: torch.dtype = torch.float32,
             ) -> tuple[Tensor, Any]:  # fmt: skip
        """The map of ``kind`` for ``x`` (rows ``rows`` of the crops), and the package's path
        record (None for Captum's IG), with model and inputs in ``dtype``."""
        rows = rows if rows is not None else slice(None)
        x = x.to(dtype)
        model = self.model64 if dtype == torch.float64 else self.model
        target = self.target[rows]
        if kind == "captum":
            ig = IntegratedGradients(model)
            attributions = ig.attribute(
                x, target=target, n_steps=self.steps["captum"], internal_batch_size=batch or 256
            )
            return attributions, None
        if kind == "guided":
            record = GuidedIG(model).path(
                x, baselines=0.0, target=target, n_steps=self.steps["guided"],
                internal_batch_size=batch,
                keep_points=False, **options,
            )  # fmt: skip
            return record.attributions, record
        ig2 = IterativeGradientIG(model, representation_layer=model.representation_layer)
        record = ig2.path(
            x, baselines=self.references[rows].to(x.dtype), target=target,
            n_steps=self.steps["ig2"], clamp=(0.0, 1.0), internal_batch_size=batch,
            keep_points=False, **options,
        )  # fmt: skip
        return record.attributions, record


class TextCase:
    """all-MiniLM-L6-v2 (offline) and sentence pairs of ``benchmarks/text_deletion.py``: the
    methods explain cos(A, B) with respect to A's word embeddings (``Layer*`` classes), a token's
    attribution the sum over the embedding dimension; IG2 against two other sentences, the
    sentence embedding as representation; Guided IG and Captum's IG from A's ``[PAD]``
    sentence. The layer classes report no path record, so the rows show cosines and seconds."""

    def __init__(self, pairs: int, device: torch.device, steps: dict[str, int]) -> None:
        from text_deletion import PAIRS, load_minilm, make_batch

        tokenizer, f = load_minilm()
        self.batch = make_batch(tokenizer, f, PAIRS[:pairs], 2)
        for name in ("ids", "mask", "target", "baseline", "references"):
            setattr(self.batch, name, getattr(self.batch, name).to(device))
        self.model, self.model64 = f.to(device), copy.deepcopy(f).double().to(device)
        self.device, self.steps = device, steps
        self.x = self.batch.ids
        self.labels = [f"pair {i}" for i in range(pairs)]

    def call(self, kind: str, options: dict[str, Any], x: Tensor, rows: slice | None = None,
             batch: int | None = None, dtype: torch.dtype = torch.float32,
             ) -> tuple[Tensor, Any]:  # fmt: skip
        from captum.attr import LayerIntegratedGradients

        from captum_ig2 import LayerGuidedIG, LayerIterativeGradientIG

        rows = rows if rows is not None else slice(None)
        model = self.model64 if dtype == torch.float64 else self.model
        layer = model.bert.embeddings.word_embeddings
        b = self.batch
        common = dict(additional_forward_args=(b.mask[rows], b.target[rows].to(dtype)),
                      internal_batch_size=batch or 256)  # fmt: skip
        if kind == "captum":
            attributions = LayerIntegratedGradients(model, layer).attribute(
                b.ids[rows], baselines=b.baseline[rows], n_steps=self.steps["captum"], **common
            )
        elif kind == "guided":
            attributions = LayerGuidedIG(model, layer).attribute(
                b.ids[rows], baselines=b.baseline[rows], n_steps=self.steps["guided"],
                **options, **common,
            )  # fmt: skip
        else:
            attributions = LayerIterativeGradientIG(
                model, layer, representation_layer=model.sentence_embedding
            ).attribute(
                b.ids[rows], baselines=b.references[rows], n_steps=self.steps["ig2"],
                **options, **common,
            )  # fmt: skip
        return attributions.sum(-1), None


def measure(case: Case | TextCase, name: str, eps: float, batch: int | None) -> Row:
    """Every condition of one method."""
    kind, options = METHODS[name]
    row = Row(name)
    device = case.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    start = time.perf_counter()
    base, record = case.call(kind, options, case.x, batch=batch)
    sync(device)
    row.seconds_per_example = (time.perf_counter() - start) / len(case.x)
    if device.type == "cuda":
        row.peak_memory_gb = torch.cuda.max_memory_allocated(device) / 2**30
    if record is not None:
        row.relative_error = record.relative_error.tolist()
        row.evaluations = record.evaluations.tolist()
        if record.stability is not None:
            row.predicted = record.stability.tolist()
    elif kind == "captum":
        row.evaluations = [case.steps["captum"]] * len(case.x)
    alone = torch.cat(
        [case.call(kind, options, case.x[i : i + 1], slice(i, i + 1), batch)[0]
         for i in range(len(case.x))]
    )  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    noise = (torch.rand(case.x.shape, generator=generator, dtype=torch.float64) * 2 - 1) * eps
    moved = (case.x.double().cpu() + noise).clamp(0, 1).to(device=device, dtype=case.x.dtype)
    if not case.x.is_floating_point():
        moved = case.x
    again = {"batch": alone}
    if case.x.is_floating_point():  # not for token ids
        again["1e-6"] = case.call(kind, options, moved, batch=batch)[0]
    again["f64"] = case.call(kind, options, case.x, batch=batch, dtype=torch.float64)[0]
    if device.type == "cuda":
        again["again"] = case.call(kind, options, case.x, batch=batch)[0]
    row.cosines = {c: cosine(base, m).tolist() for c, m in again.items()}
    return row


# -- inside the walk ----------------------------------------------------------------------------
@dataclass
class Trace:
    """Two walks of one crop, from the crop and from the crop moved by eps."""

    crop: str
    walk: str
    separation: list[float]  # ||x_k - x'_k||, per step
    distance: list[float]  # the representation distance (MSE) along the unmoved walk
    turn: list[float]  # cosine between consecutive steps of the unmoved walk
    step_length: list[float]
    output: list[float]  # the explained output f along the unmoved walk
    finer: int = 1  # steps per step of the coarse walk (the same path length)


def trace(case: Case, i: int, walk: str, eps: float, finer: int = 1) -> Trace:
    """The walks of crop ``i`` and of the crop moved by ``eps``; ``finer`` > 1: the paper's walk
    with ``finer`` times as many steps, each ``finer`` times shorter (the same length)."""
    model = case.model
    ig2 = IterativeGradientIG(model, representation_layer=model.representation_layer)
    generator = torch.Generator().manual_seed(1)
    x = case.x[i : i + 1]
    noise = (torch.rand(x.shape, generator=generator, dtype=torch.float64) * 2 - 1) * eps
    moved = (x.double().cpu() + noise).clamp(0, 1).to(device=x.device, dtype=x.dtype)
    both = torch.cat([x, moved])
    reference = case.references[i : i + 1]
    n_steps = case.steps["ig2"] * finer
    step_size = float((x - reference).flatten().norm()) / n_steps
    path = ig2.path(
        both, baselines=reference, target=case.target[i].repeat(2), n_steps=n_steps,
        step_size=step_size, clamp=(0.0, 1.0), n_walks=1, walk=walk, **PAPERS,
    )  # fmt: skip
    points = path.points[:, :, 0]  # (T + 1, 2, C, H, W)
    separation = (points[:, 0] - points[:, 1]).flatten(1).norm(dim=1)
    steps = (points[1:, 0] - points[:-1, 0]).flatten(1)
    lengths = steps.norm(dim=1)
    turn = (steps[1:] * steps[:-1]).sum(1) / (lengths[1:] * lengths[:-1]).clamp_min(1e-30)
    captured: list[Tensor] = []
    handle = model.representation_layer.register_forward_hook(
        lambda module, inputs, output: captured.append(output.flatten(1))
    )
    try:
        with torch.no_grad():
            model(case.references[i : i + 1])
            reference = captured.pop()
            model(points[:, 0])
            distance = (captured.pop() - reference).pow(2).mean(dim=1)
    finally:
        handle.remove()
    name = walk if finer == 1 else f"{walk}, {finer}x shorter steps"
    return Trace(
        case.labels[i], name, separation.tolist(), distance.tolist(), turn.tolist(),
        lengths.tolist(), path.outputs[:, 0, 0].tolist(), finer,
    )  # fmt: skip


# -- report --------------------------------------------------------------------------------------
def table(rows: list[Row]) -> str:
    """The table of docs/benchmarks.md: worst (median) cosine per condition, and the cost."""
    head = "| method | " + " | ".join(f"{c}: worst (median)" for c in CONDITIONS)
    head += " | predicted, worst | completeness error, median (max) | gradients / example"
    head += " | s / example |"
    lines = [head, "| --- " * (len(CONDITIONS) + 5) + "|"]
    for row in rows:
        cells = [
            f"{min(row.cosines[c]):.3f} ({np.median(row.cosines[c]):.3f})"
            if c in row.cosines
            else "-"
            for c in CONDITIONS
        ]
        cells.append("" if row.predicted is None else f"{min(row.predicted):.3f}")
        if row.relative_error:
            cells.append(f"{np.median(row.relative_error):.2%} ({max(row.relative_error):.2%})")
        else:
            cells.append("")
        cells.append(f"{np.median(row.evaluations):.0f}" if row.evaluations else "")
        cells.append(f"{row.seconds_per_example:.2f}")
        lines.append(f"| {row.method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def print_trace(t: Trace) -> None:
    last = len(t.separation) - 1
    # A finer walk is shown at the path lengths of the coarse walk's steps.
    at = sorted({k * t.finer for k in (0, 1, 2, 3, 5, 10, 20, 30, 40) if k * t.finer < last})
    at.append(last)
    travelled = np.concatenate([[0.0], np.cumsum(t.step_length)])
    turns = np.array(t.turn)
    print(
        f"  {t.crop}, {t.walk} walk: consecutive steps' cosine median {np.median(turns):.2f} "
        f"(range {turns.min():.2f} to {turns.max():.2f}); step length {t.step_length[0]:.3g} "
        f"at first, median {np.median(t.step_length):.3g}; path length "
        f"{sum(t.step_length):.3g}"
    )
    print("    step        " + "".join(f"{k:>8d}" for k in at))
    print("    travelled   " + "".join(f"{travelled[k]:8.3g}" for k in at))
    print("    separation  " + "".join(f"{t.separation[k]:8.2g}" for k in at))
    print("    rep. dist.  " + "".join(f"{t.distance[k]:8.3g}" for k in at))
    print("    output f    " + "".join(f"{t.output[k]:8.3g}" for k in at))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=112, help="crop size in pixels (112)")
    parser.add_argument("--crops", type=int, default=1, help="crops per photo (1)")
    parser.add_argument("--photos", default=",".join(PHOTOS), help="comma-separated photo names")
    parser.add_argument("--methods", default=";".join(METHODS),
                        help="the rows, separated by ';' (default: all)")  # fmt: skip
    parser.add_argument("--eps", type=float, default=1e-6, help="the input change (1e-6)")
    parser.add_argument("--ig2-steps", type=int, default=50, help="IG2's n_steps (50)")
    parser.add_argument("--guided-steps", type=int, default=200, help="Guided IG's (200)")
    parser.add_argument("--ig-steps", type=int, default=256, help="Captum's IG's (256)")
    parser.add_argument("--trace", type=int, default=2, help="crops whose walks are traced (2)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--batch",
        type=int,
        default=None,
        help="internal_batch_size of every call (default: the package's)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads on the CPU")
    parser.add_argument("--text", type=int, default=0, metavar="PAIRS",
                        help="instead of photos: MiniLM on this many sentence pairs (no 1e-6 "
                        "condition for token ids, no traces)")  # fmt: skip
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for CI")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    photos = tuple(args.photos.split(","))
    names = [name for name in args.methods.split(";") if name]  # "" runs the traces only
    unknown = [name for name in names if name not in METHODS]
    if unknown:
        parser.error(f"unknown --methods {unknown}; the rows are {list(METHODS)}")
    if args.smoke:
        args.size, args.crops, photos, args.trace = 32, 1, photos[:2], 1
        args.ig2_steps, args.guided_steps, args.ig_steps = 3, 10, 16
        if len(names) == len(METHODS):  # the default rows: three of them
            names = [names[0], "IG2, papers' estimator", "IG (Captum), 256 steps"]
        # 32 px crops at 3 steps miss 2 % and refine up to the limit; a smoke run checks that
        # the rows run, not what they cost: no refinement.
        for name in names:
            kind, options = METHODS[name]
            if kind in ("ig2", "guided"):
                METHODS[name] = (kind, {"epsrel": None, **options})
    device = torch.device(args.device)
    steps = {"ig2": args.ig2_steps, "guided": args.guided_steps, "captum": args.ig_steps}
    case: Case | TextCase
    if args.text:
        case, args.trace = TextCase(args.text, device, steps), 0
    else:
        case = Case(args.size, args.crops, photos, device, steps)
    where = (
        f"{device.type} ({torch.cuda.get_device_name(device)})" if device.type == "cuda"
        else f"cpu, {torch.get_num_threads()} threads"
    )  # fmt: skip
    what = (
        f"all-MiniLM-L6-v2, {len(case.x)} sentence pairs"
        if args.text
        else f"EfficientNet-Lite0, {len(case.x)} crops at {args.size} px ({', '.join(case.labels)})"
    )
    print(
        f"{what}, {where}, torch {torch.__version__}; cosine between two maps that differ only "
        "in the condition, worst (median) over the examples",
        flush=True,
    )
    rows: list[Row] = []
    traces: list[Trace] = []
    output: dict[str, Any] = {
        "date": date.today().isoformat(), "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "size": args.size,
        "crops": case.labels, "eps": args.eps, "batch": args.batch, "rows": [], "traces": [],
        "model": "all-MiniLM-L6-v2" if args.text else "EfficientNet-Lite0",
    }  # fmt: skip

    def save() -> None:
        if args.json is not None:
            output["rows"] = [asdict(r) for r in rows]
            output["traces"] = [asdict(t) for t in traces]
            args.json.write_text(json.dumps(output, indent=1) + "\n")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", StabilityWarning)
        for name in names:
            start = time.perf_counter()
            rows.append(measure(case, name, args.eps, args.batch))
            row = rows[-1]
            cells = "  ".join(
                f"{c} {min(values):.3f} ({np.median(values):.3f})"
                for c, values in row.cosines.items()
            )
            predicted = "" if row.predicted is None else f"  predicted {min(row.predicted):.3f}"
            memory = "" if row.peak_memory_gb is None else f", {row.peak_memory_gb:.1f} GB"
            gradients = f"{np.median(row.evaluations):.0f} gradients, " if row.evaluations else ""
            print(
                f"{name:30s} {cells}{predicted}  [{gradients}"
                f"{row.seconds_per_example:.2f} s per example{memory}; "
                f"{time.perf_counter() - start:.0f} s]",
                flush=True,
            )
            save()
        if args.trace:
            print(f"\nInside the walk (papers' estimator, {args.ig2_steps} steps; separation "
                  f"from the walk of the crop moved by {args.eps:g})")  # fmt: skip
        for i in range(min(args.trace, len(case.x))):
            for walk, finer in (("fixed", 1), ("fixed", 10), ("adaptive", 1)):
                traces.append(trace(case, i, walk, args.eps, finer))
                print_trace(traces[-1])
                save()
    print("\n" + table(rows))
    save()


if __name__ == "__main__":
    main()
