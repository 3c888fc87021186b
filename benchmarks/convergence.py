"""Convergence of the path integrals on EfficientNet-Lite0: completeness error and cost.

For Captum's Integrated Gradients, Guided IG and IG2 on a pretrained ImageNet network, this
measures, per setting, the completeness error |delta| / |gap| (gap: the output difference the
attributions must add up to), the gradient evaluations and the seconds of one call, and the
cosine between the attributions and a reference integral along the same path (32 Gauss-Legendre
nodes per segment, no refinement; for IG, Captum's Gauss-Legendre with 1024 steps).

The case: scikit-image's ``chelsea`` centre-cropped and resized to
224 x 224 (class 285, Egyptian cat, p = 0.41), EfficientNet-Lite0 normalising [0, 1] inputs
inside the model; IG and Guided IG from a black image (Guided IG with the paper's 200 steps);
IG2 against scikit-image's ``coffee``, representation ``_conv_head``, clamp (0, 1), 50 steps,
along one GradPath, the paper's walk of equal steps (``walk="fixed", n_walks=1``): the
quadrature along one path is what this measures (the default averages 8 adaptive walks, each
integrated the same way; ``benchmarks/stability.py`` states its cost).

Rows per method: the papers' own estimator (one left-rule gradient per step, as the authors'
code and PAIR's), a fixed rule without refinement, and the package's default at three
tolerances. ``--smoke`` runs tiny sizes in seconds (CI).

Run:  python benchmarks/convergence.py [--photo chelsea] [--reference coffee] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path
from typing import Any

import torch
from captum.attr import IntegratedGradients
from torch import Tensor

from captum_ig2 import ConvergenceWarning, GuidedIG, IterativeGradientIG
from captum_ig2.pretrained import efficientnet_lite0, photo


@dataclass
class Row:
    method: str
    setting: str
    evaluations: float  # gradient evaluations per input
    seconds: float
    error: float  # |delta| / |gap|
    cosine: float  # to the reference integral along the same path
    warned: bool  # the call emitted a ConvergenceWarning


def cosine(a: Tensor, b: Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


def timed(run: Callable[[], Any]) -> tuple[Any, float, bool]:
    """The result of ``run()``, its seconds, and whether it warned of its convergence."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        start = time.perf_counter()
        result = run()
        seconds = time.perf_counter() - start
    return result, seconds, any(issubclass(w.category, ConvergenceWarning) for w in caught)


def ig_rows(
    model: torch.nn.Module, x: Tensor, target: int, steps: list[int], reference_steps: int
) -> list[Row]:
    ig = IntegratedGradients(model)
    with torch.no_grad():
        gap = (model(x)[0, target] - model(torch.zeros_like(x))[0, target]).item()

    def run(n: int) -> tuple[Tensor, Tensor]:
        return ig.attribute(
            x, target=target, n_steps=n, internal_batch_size=64, return_convergence_delta=True
        )

    reference, _ = run(reference_steps)
    rows = []
    for n in steps:
        (attributions, delta), seconds, _ = timed(lambda n=n: run(n))
        rows.append(
            Row(
                "IG (Captum)",
                f"gausslegendre, n_steps={n}",
                n,
                seconds,
                abs(delta.item() / gap),
                cosine(attributions, reference),
                False,
            )
        )
    return rows


def path_rows(
    name: str,
    method: GuidedIG | IterativeGradientIG,
    call: Callable[..., Any],
    settings: dict[str, dict[str, Any]],
    reference_nodes: int,
) -> list[Row]:
    reference = call(
        method="gausslegendre", nodes=reference_nodes, epsrel=None, internal_batch_size=64
    )
    rows = []
    for label, kwargs in settings.items():
        path, seconds, warned = timed(lambda kwargs=kwargs: call(**kwargs))
        torch.testing.assert_close(path.end, reference.end)  # the same path
        rows.append(
            Row(
                name,
                label,
                path.evaluations.double().mean().item(),
                seconds,
                path.relative_error.max().item(),
                cosine(path.attributions, reference.attributions),
                warned,
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photo", default="chelsea")
    parser.add_argument("--reference", default="coffee", help="IG2's reference photo")
    parser.add_argument("--json", default=None, help="write the rows here")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to check it runs")
    args = parser.parse_args()

    size = 64 if args.smoke else 224
    model = efficientnet_lite0()
    x, reference_photo = photo(args.photo, size), photo(args.reference, size)
    with torch.no_grad():
        probabilities = model(x).softmax(dim=1)[0]
    target = int(probabilities.argmax())
    gig_steps, ig2_steps = (8, 4) if args.smoke else (200, 50)
    ig_steps = [8, 16] if args.smoke else [50, 100, 200, 400]
    reference_nodes = 4 if args.smoke else 32
    tolerances = [0.05, 0.02] if args.smoke else [0.05, 0.02, 0.01]

    def settings(fixed: dict[str, Any], fixed_label: str) -> dict[str, dict[str, Any]]:
        rows = {
            "papers' estimator: riemann_left, nodes=1, epsrel=None": dict(
                method="riemann_left", nodes=1, epsrel=None
            ),
            fixed_label: fixed,
        }
        for epsrel in tolerances:
            label = "default" + (" (epsrel=0.02)" if epsrel == 0.02 else f", epsrel={epsrel}")
            rows[label] = dict(epsrel=epsrel)
        return rows

    gig = GuidedIG(model)
    ig2 = IterativeGradientIG(model, representation_layer=model.representation_layer)
    rows = ig_rows(model, x, target, ig_steps, 64 if args.smoke else 1024)
    rows += path_rows(
        "Guided IG",
        gig,
        lambda **kw: gig.path(x, 0.0, target=target, n_steps=gig_steps, **kw),
        settings(dict(epsrel=None), "riemann_trapezoid, nodes=3, epsrel=None"),
        reference_nodes,
    )
    rows += path_rows(
        "IG2",
        ig2,
        # One GradPath, the paper's walk: the quadrature along one path is what is measured.
        lambda **kw: ig2.path(
            x, reference_photo, target=target, n_steps=ig2_steps, clamp=(0.0, 1.0),
            walk="fixed", n_walks=1, **kw,
        ),
        settings(dict(epsrel=None), "gausslegendre, nodes=5, epsrel=None"),
        reference_nodes,
    )

    header = (
        f"EfficientNet-Lite0, {args.photo} {size}x{size}, class {target} "
        f"(p = {probabilities[target]:.2f}); IG2 reference {args.reference}; "
        f"torch {torch.__version__}, {platform.machine()}, "
        f"{torch.get_num_threads()} threads, {date.today()}"
    )
    print(header)
    print(
        "| method | setting | gradients | seconds | abs(delta) / abs(gap) | cosine to reference |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for row in rows:
        flag = " (warned)" if row.warned else ""
        print(
            f"| {row.method} | {row.setting} | {row.evaluations:.0f} | {row.seconds:.1f} | "
            f"{row.error:.2%}{flag} | {row.cosine:.4f} |"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"header": header, "rows": [asdict(r) for r in rows]}, indent=1)
        )


if __name__ == "__main__":
    main()
