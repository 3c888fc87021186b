"""What the complete trapezoid's memory budget costs: IG2's default call within budgets of rows.

IG2's default rule refines after the walk and keeps, for that, the path points and the output's
gradients there on the CPU: 2 x (n_steps + 1) input-sized rows per path, and one more per
bisection (``captum_ig2.set_refinement_memory``). Within a budget, the pieces of least error are
frozen as they are. For each budget in ``--budgets`` (MB; ``none``: unbounded, the named
reference), every crop is attributed alone with the default call, and the script prints per
crop the gradient evaluations, the estimated map error (``path(...).map_error``), the cosine to
the unbounded map and whether the call warned (``ConvergenceWarning``).

The case: EfficientNet-Lite0 with its ImageNet weights (``common.photos``), the first crop of
``--photos`` photos at ``--size`` px, each explained for its predicted class, against the whole
photo of another class (``common.photos.other_photo_references``), representation
``model.representation_layer``, clamp (0, 1), 50 steps, 8 walks.

Run:  python benchmarks/refinement_memory.py [--size 112] [--budgets none,30,15,8] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import platform
import warnings
from datetime import date
from pathlib import Path
from typing import Any

import torch
from common.photos import load_photo_set, other_photo_references

from captum_ig2 import (
    ConvergenceWarning,
    IterativeGradientIG,
    StabilityWarning,
    set_refinement_memory,
)
from captum_ig2.pretrained import PHOTOS


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=112, help="crop size in pixels (112)")
    parser.add_argument("--photos", type=int, default=2, help="photos, one crop each (2)")
    parser.add_argument("--budgets", default="none,30,15,8", help="MB, or none (unbounded)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for CI")
    args = parser.parse_args(argv)
    n_steps = 50
    if args.smoke:
        args.size, args.photos, args.budgets, n_steps = 32, 2, "none,0.2", 4
    photos = load_photo_set(size=args.size, crops=1, names=PHOTOS[: args.photos])
    model, x, target = photos.model, photos.x, photos.target
    references = other_photo_references(photos, 1)
    ig2 = IterativeGradientIG(model, representation_layer=model.representation_layer)
    rows = 2 * (n_steps + 1) * 8 * x[0].numel() * x.element_size() / 2**20
    print(f"EfficientNet-Lite0, {len(x)} crops at {args.size} px, {platform.machine()}, torch "
          f"{torch.__version__}; the walk's rows of one crop: {rows:.0f} MB")  # fmt: skip
    results: dict[str, Any] = {
        "date": date.today().isoformat(), "size": args.size, "crops": photos.labels,
        "walk_rows_mb": rows, "budgets": {},
    }  # fmt: skip
    unbounded: list[torch.Tensor] = []
    previous = set_refinement_memory(None)
    try:
        for budget in args.budgets.split(","):
            nbytes = None if budget == "none" else int(float(budget) * 2**20)
            set_refinement_memory(nbytes)
            row: dict[str, list[Any]] = {"gradients": [], "map_error": [], "cosine": [],
                                         "warned": []}  # fmt: skip
            for i in range(len(x)):
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", ConvergenceWarning)
                    warnings.simplefilter("ignore", StabilityWarning)
                    path = ig2.path(
                        x[i : i + 1], references[i], target=int(target[i]), n_steps=n_steps,
                        clamp=(0.0, 1.0), keep_points=False,
                    )  # fmt: skip
                a = path.attributions.flatten().double()
                if nbytes is None:
                    unbounded.append(a)
                b = unbounded[i] if unbounded else a
                assert path.map_error is not None
                row["gradients"].append(int(path.evaluations.item()))
                row["map_error"].append(float(path.map_error.item()))
                row["cosine"].append(float(a @ b / (a.norm() * b.norm())))
                row["warned"].append(any(w.category is ConvergenceWarning for w in caught))
            results["budgets"][budget] = row
            print(f"  budget {budget:>5s} MB: gradients {row['gradients']}, estimated map error "
                  + ", ".join(f"{e:.1%}" for e in row["map_error"]) + ", cosine to unbounded "
                  + ", ".join(f"{c:.4f}" for c in row["cosine"]) + f", warned {row['warned']}",
                  flush=True)  # fmt: skip
    finally:
        set_refinement_memory(previous)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
