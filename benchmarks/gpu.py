"""The package on a GPU, in one run: throughput, the cost of 2 % against Captum's IG, memory, and
explain_dataset, on EfficientNet-Lite0 and photo crops.

Run::

    python benchmarks/gpu.py --json out.json              # on a CUDA device, 224 px
    python benchmarks/gpu.py --device cpu --smoke         # tiny sizes on the CPU (CI)

Every row is measured in this run, on the same crops, against Captum's ``IntegratedGradients``:

1. **Points per second** of the papers' estimators (one gradient per step, ``n_steps=50``, N
   crops in one call): IG2 (the paper's walk, one reference), Guided IG, and Captum's IG with
   its N x 50 points in batches of ``--ig-batch``.
2. **Cost of 2 %**: each method's default call (IG2: 8 adaptive walks, one reference, the
   complete trapezoid, complete by construction, whose row adds the worst estimated map error;
   Guided IG: 200 steps) and, with ``--earlier``, IG2 with ``method="gausslegendre"`` (5 nodes
   refined by residuals, the default before the complete trapezoid), its completeness error
   (worst over the crops), gradient evaluations per crop and seconds, against Captum's IG
   (Gauss-Legendre) at the fewest ``n_steps`` of ``--ig-steps`` that reach 2 % on every crop;
   the ratios are the package's to Captum's. ``--accuracy`` compares the maps of the first
   crops with 32 Gauss-Legendre nodes per segment along the same paths.
3. **Peak memory** of each call of (2) and of the papers' estimators of (1), from
   ``torch.cuda.max_memory_allocated`` (not on the CPU).
4. **explain_dataset**: examples per second of IG2's default over the crops in batches of
   ``--dataset-batch``, against a plain loop of ``attribute`` calls over the same batches.

The case: EfficientNet-Lite0 with its ImageNet weights (``common.photos``), ``--crops`` crops of
each of the six photos at ``--size`` px, each explained for its predicted class; IG2's reference
is the whole photo of another class (``common.photos.other_photo_references``), representation
``model.representation_layer``, clamp (0, 1), 50 steps; Guided IG and Captum's IG from a black
image.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
import warnings
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import torch
from captum.attr import IntegratedGradients
from common.photos import load_photo_set, other_photo_references

from captum_ig2 import ConvergenceWarning, GuidedIG, IterativeGradientIG, StabilityWarning
from captum_ig2.dataset import explain_dataset
from captum_ig2.pretrained import PHOTOS

PAPERS = {"method": "riemann_left", "nodes": 1, "epsrel": None}
#: IG2's rule before the complete trapezoid: 5 Gauss-Legendre nodes, refined by residuals
EARLIER = {"method": "gausslegendre"}


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float, float | None]:
    """``fn()``, its seconds and, on a GPU, its peak memory in GB."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return out, seconds, peak


def _flat(value: Any) -> tuple[torch.Tensor, ...]:
    return value if isinstance(value, tuple) else (value,)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--size", type=int, default=224, help="crop size in pixels (224)")
    parser.add_argument("--crops", type=int, default=3, help="crops per photo (3: 18 crops)")
    parser.add_argument("--photos", type=int, default=len(PHOTOS),
                        help=f"the first of the {len(PHOTOS)} photos ({len(PHOTOS)})")  # fmt: skip
    parser.add_argument("--ig-steps", default="64,128,256,512,1024",
                        help="Captum IG's n_steps, tried in this order")  # fmt: skip
    parser.add_argument("--ig-batch", type=int, default=256, help="Captum IG's batch (256)")
    parser.add_argument("--dataset-batch", type=int, default=6,
                        help="explain_dataset's (6; 0: skip it)")  # fmt: skip
    parser.add_argument("--accuracy", type=int, default=2,
                        help="crops whose default maps are compared with a 32-node integral "
                        "along the same paths (2; 0: none)")  # fmt: skip
    parser.add_argument("--earlier", action="store_true",
                        help="also IG2 with its earlier default rule, gausslegendre (slow)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for CI")
    args = parser.parse_args(argv)
    ig2_steps, guided_steps = 50, 200
    names, smoke = PHOTOS[: args.photos], {}
    if args.smoke:  # it runs; refinement capped at 2 pieces per segment
        smoke = {"limit": 2}
        args.size, args.crops, args.ig_steps, args.dataset_batch = 32, 1, "8,16", 1
        args.accuracy = min(args.accuracy, 1)
        ig2_steps, guided_steps, names = 3, 6, PHOTOS[:2]
    device = torch.device(args.device)
    photos = load_photo_set(size=args.size, crops=args.crops, names=names)
    model = photos.model.to(device)
    x, target = photos.x.to(device), photos.target.to(device)
    references = other_photo_references(photos, 1)[:, 0].to(device)
    n = len(x)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine()
    print(f"EfficientNet-Lite0, {n} crops at {args.size} px, {device.type} ({where}), "
          f"torch {torch.__version__}", flush=True)  # fmt: skip
    ig2 = IterativeGradientIG(model, representation_layer=model.representation_layer)
    gig = GuidedIG(model)
    ig = IntegratedGradients(model)
    results: dict[str, Any] = {
        "date": date.today().isoformat(), "device": device.type, "device_name": where,
        "torch": torch.__version__, "size": args.size, "crops": photos.labels,
    }  # fmt: skip

    # 1. Points per second, the papers' estimators.
    throughput = {}
    calls = {
        "IG2, paper's walk and sum": lambda: ig2.attribute(
            x, references, target=target, n_steps=ig2_steps, clamp=(0.0, 1.0), walk="fixed",
            n_walks=1, **PAPERS),
        "Guided IG, papers' sum": lambda: gig.attribute(
            x, target=target, n_steps=ig2_steps, **PAPERS),
        "Captum's IG": lambda: ig.attribute(
            x, target=target, n_steps=ig2_steps, internal_batch_size=args.ig_batch),
    }  # fmt: skip
    print(f"\n1. points per second, {ig2_steps} steps, {n} crops in one call")
    for name, call in calls.items():
        call()  # warm-up
        _, seconds, peak = timed(call, device)
        points = n * (ig2_steps + 1 if "IG2" in name or "Guided" in name else ig2_steps)
        throughput[name] = {"points_per_second": points / seconds, "peak_gb": peak}
        memory = "" if peak is None else f", peak {peak:.2f} GB"
        print(f"  {name:28s} {points / seconds:8.0f} points/s{memory}", flush=True)
    results["throughput"] = throughput

    # 2. and 3. The cost of 2 % and the memory of the default calls.
    print("\n2. the cost of 2 % completeness, worst over the crops")
    cost: dict[str, dict[str, Any]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", StabilityWarning)
        for steps in [int(s) for s in args.ig_steps.split(",")]:
            (_, delta), seconds, peak = timed(lambda steps=steps: ig.attribute(
                x, target=target, n_steps=steps, internal_batch_size=args.ig_batch,
                return_convergence_delta=True), device)  # fmt: skip
            with torch.no_grad():
                gap = model(x).gather(1, target[:, None]) - model(torch.zeros_like(x)).gather(
                    1, target[:, None]
                )
            error = float((delta.abs() / gap[:, 0].abs()).max())
            cost[f"Captum's IG, n_steps={steps}"] = {
                "error": error, "gradients": steps, "seconds": seconds / n, "peak_gb": peak,
            }  # fmt: skip
            if error <= 0.02:
                break
        reference_row = next((k for k, v in cost.items() if v["error"] <= 0.02), list(cost)[-1])
        calls = {
            "IG2, default (8 walks)": lambda: ig2.path(
                x, references, target=target, n_steps=ig2_steps, clamp=(0.0, 1.0),
                keep_points=False, **smoke),
            "Guided IG, default": lambda: gig.path(
                x, target=target, n_steps=guided_steps, keep_points=False, **smoke),
        }  # fmt: skip
        if args.earlier or args.smoke:
            calls["IG2, Gauss-Legendre (earlier)"] = lambda: ig2.path(
                x, references, target=target, n_steps=ig2_steps, clamp=(0.0, 1.0),
                keep_points=False, **{**EARLIER, **smoke})  # fmt: skip
        for name, call in calls.items():
            record, seconds, peak = timed(call, device)
            cost[name] = {
                "error": float(record.relative_error.max()),
                "gradients": float(record.evaluations.double().mean()),
                "most_gradients": int(record.evaluations.max()),
                "seconds": seconds / n, "peak_gb": peak,
                "stability": None if record.stability is None else float(record.stability.min()),
                "map_error": None if record.map_error is None else float(record.map_error.max()),
            }  # fmt: skip
    base = cost[reference_row]
    for name, row in cost.items():
        memory = "" if row["peak_gb"] is None else f", peak {row['peak_gb']:.2f} GB"
        if row.get("most_gradients") is not None:
            memory += f", at most {row['most_gradients']} gradients"
        if row.get("map_error") is not None:
            memory += f", estimated map error {row['map_error']:.1%}"
        print(
            f"  {name:30s} error {row['error']:7.2%}  {row['gradients']:7.0f} gradients "
            f"({row['gradients'] / base['gradients']:5.1f}x)  {row['seconds']:7.3f} s per crop "
            f"({row['seconds'] / base['seconds']:5.1f}x){memory}",
            flush=True,
        )
    reached = base["error"] <= 0.02
    print(f"  (ratios to {reference_row}, " + ("the fewest of --ig-steps within 2 % on every crop)"
          if reached else "the last of --ig-steps: none reached 2 % on every crop)"))  # fmt: skip
    results["cost"] = cost
    results["reference"] = reference_row

    # The accuracy of the default maps: the cosine to a 32-node Gauss-Legendre integral along the
    # same paths (the first crops, in a batch of their own on both sides, so the paths agree).
    if args.accuracy > 0:
        k = args.accuracy
        print(f"\n2b. the default maps against 32 Gauss-Legendre nodes per segment along the "
              f"same paths, {k} crops")  # fmt: skip
        fine = {"method": "gausslegendre", "nodes": 4 if args.smoke else 32, "epsrel": None}
        accuracy = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            warnings.simplefilter("ignore", StabilityWarning)
            for name, call in {
                "IG2, default (8 walks)": lambda kw: ig2.path(
                    x[:k], references[:k], target=target[:k], n_steps=ig2_steps,
                    clamp=(0.0, 1.0), keep_points=False, **kw),
                "Guided IG, default": lambda kw: gig.path(
                    x[:k], target=target[:k], n_steps=guided_steps, keep_points=False, **kw),
            }.items():  # fmt: skip
                default, reference = call(smoke), call(fine)
                same = all(
                    torch.equal(a, b)
                    for a, b in zip(_flat(default.ends[1]), _flat(reference.ends[1]))
                )
                a = default.attributions.flatten(1).double()
                b = reference.attributions.flatten(1).double()
                cosines = ((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).tolist()
                map_error = ((a - b).norm(dim=1) / b.norm(dim=1)).tolist()
                estimate = None if default.map_error is None else default.map_error.tolist()
                accuracy[name] = {
                    "cosine": cosines, "same_paths": same,
                    "reference_error": reference.relative_error.tolist(),
                    "default_error": default.relative_error.tolist(),
                    "map_error": map_error, "map_error_estimate": estimate,
                }  # fmt: skip
                print(f"  {name:30s} cosine {min(cosines):.4f} (worst of {k}), same paths: "
                      f"{same}; the 32-node integral's own completeness error "
                      f"{float(reference.relative_error.max()):.2%}")  # fmt: skip
                print("    per crop: cosine " + ", ".join(f"{c:.4f}" for c in cosines)
                      + "; map error " + ", ".join(f"{e:.1%}" for e in map_error)
                      + ("" if estimate is None else
                         "; estimated " + ", ".join(f"{e:.1%}" for e in estimate)))  # fmt: skip
        results["accuracy"] = accuracy

    # 4. explain_dataset against a plain loop.
    if args.dataset_batch <= 0:
        _save(args.json, results)
        return
    size = args.dataset_batch
    batches = [  # (inputs, target, references) on the CPU, as a data loader gives them
        (x[i : i + size].cpu(), target[i : i + size].cpu(), references[i : i + size].cpu())
        for i in range(0, n, size)
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", StabilityWarning)
        kwargs = dict(n_steps=ig2_steps, clamp=(0.0, 1.0), **smoke)
        _, loop_seconds, _ = timed(lambda: [
            ig2.attribute(b.to(device), r.to(device), target=t.to(device), **kwargs)
            for b, t, r in batches
        ], device)  # fmt: skip
        with tempfile.TemporaryDirectory() as out:
            _, dataset_seconds, _ = timed(lambda: explain_dataset(
                ig2, batches, out, attribute_kwargs=kwargs, show_progress=False, device=device,
            ), device)  # fmt: skip
    print(f"\n4. explain_dataset, IG2 default, batches of {args.dataset_batch}: "
          f"{n / dataset_seconds:.2f} examples/s, a plain loop {n / loop_seconds:.2f} "
          f"({loop_seconds / dataset_seconds:.2f}x)")  # fmt: skip
    results["dataset"] = {"examples_per_second": n / dataset_seconds,
                          "loop_examples_per_second": n / loop_seconds}  # fmt: skip
    _save(args.json, results)


def _save(path: Path | None, results: dict[str, Any]) -> None:
    if path is not None:
        path.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
