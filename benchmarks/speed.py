"""Speed and memory of IG2 and Guided IG against their references, measured in one run.

Whole-call wall time (median of ``--repeats`` calls, contenders measured alternately so that they
share any drift) and peak memory (CUDA: ``max_memory_allocated``; CPU: the growth of the peak
resident set of a fresh child process over one call). Every ratio is taken between two
measurements of this run:

- IG2 (N inputs x R references, T steps) / Captum's ``IntegratedGradients`` over the same
  number of path points (N x R inputs, ``n_steps=T``): the cost floor, IG2 taking one forward
  and two backward passes per point and IG one and one;
- Guided IG (N, T) / Captum's ``IntegratedGradients`` (N, ``n_steps=T``);
- PAIR's ``saliency.core.GuidedIG`` (per example, NumPy) / Guided IG (N, T);
- the authors' IG2 procedure (per explicand a NumPy round trip per model call, the GradPath
  searched first and the gradients integrated in a second pass, as their ``IG2.GetMask``) /
  IG2 (N, R, T);
- the engine's overhead per path step beyond the model's own forward and backward passes
  (measured on the same batch in the same run).

IG2 and Guided IG run the papers' estimator here (``method="riemann_left", nodes=1,
epsrel=None``: one gradient per step, no refinement), the same work as the published procedures
and as Captum's left Riemann sum, so that the ratios compare engines, not quadratures;
``convergence.py`` measures what a converged integral costs.

Sizes: a small CNN on 3 x 32 x 32 (``--model small``, the CPU default) and a ResNet-50-sized
network on 3 x 224 x 224 (``--model resnet50``, random weights, for a GPU); N in {1, 8, 32},
R in {1, 8}, T in {50, 200}. ``--smoke`` runs tiny sizes in seconds (CI).

``--model efficientnet``: EfficientNet-Lite0 with its ImageNet weights on 3 x 224 x 224 (needs
the ``pretrained`` extra), a real network that a CPU can still run: N = 1, R in {1, 4}, T = 50
(``--ns`` widens N, e.g. ``--ns 1,4``), ``--repeats 1`` by default, each contender warmed up by
a 2-step call instead of a whole one, Captum's IG with ``internal_batch_size=16`` (its whole
line at once, up to 800 points at 224 px, does not fit a CPU machine's memory; IG2's batches
are N x R points), the authors' IG2 for R = 1 only.

Run:  python benchmarks/speed.py [--device cuda] [--model resnet50] [--json out.json]
      python benchmarks/speed.py --model efficientnet --threads 1 --no-memory
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import date
from typing import Any

import numpy as np
import torch
from captum.attr import IntegratedGradients
from torch import nn

from captum_ig2 import GuidedIG, IterativeGradientIG


class SmallCNN(nn.Module):
    """A small CNN on 3 x 32 x 32 images."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * 8 * 8, 64), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * 4
        self.body = nn.Sequential(
            nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )  # fmt: skip
        self.skip = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


class ResNet50Sized(nn.Module):
    """ResNet-50's architecture (bottleneck stages of 3, 4, 6, 3 blocks), random weights."""

    def __init__(self, n_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            nn.MaxPool2d(3, 2, 1),
        ]  # fmt: skip
        cin = 64
        for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            for i in range(blocks):
                layers.append(Bottleneck(cin, width, stride if i == 0 else 1))
                cin = width * 4
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(cin, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _efficientnet() -> nn.Module:
    from captum_ig2.pretrained import efficientnet_lite0

    return efficientnet_lite0()


MODELS = {"small": (SmallCNN, 32), "resnet50": (ResNet50Sized, 224),
          "efficientnet": (_efficientnet, 224)}  # fmt: skip
#: Captum IG's internal_batch_size per model (None: its whole line in one batch).
IG_BATCH = {"efficientnet": 16}


def make_model(name: str, device: torch.device) -> tuple[nn.Module, int]:
    torch.manual_seed(0)
    cls, size = MODELS[name]
    model = cls().eval().to(device)
    model.ig_batch = IG_BATCH.get(name)  # type: ignore[assignment]
    return model, size


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def compare(fns: list[Callable[[], object]], repeats: int, device: torch.device,
            warm_up: bool = True) -> list[float]:  # fmt: skip
    """Median wall time of each function, measured alternately after one warm-up each."""
    for fn in fns if warm_up else ():
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, record in zip(fns, times):
            record.append(timed(fn, device))
    return [statistics.median(t) for t in times]


# -- the references --------------------------------------------------------------------------
def authors_ig2(model: nn.Module, x: torch.Tensor, refs: torch.Tensor, target: int, steps: int,
                step_size: float) -> np.ndarray:  # fmt: skip
    """Zhuo & Ge's published procedure (``IG2.GetMask``) for one explicand: a NumPy round trip
    per model call, the GradPath searched first, then integrated in a second pass."""
    device = next(model.parameters()).device

    def call(points: np.ndarray, key: str, ref_rep: torch.Tensor | None = None) -> Any:
        t = torch.tensor(points, dtype=torch.float32, device=device, requires_grad=True)
        out = model(t)
        if key == "rep":
            return out.detach()
        if key == "dist":
            (-((out - ref_rep) ** 2).mean()).backward()
        else:
            out[:, target].sum().backward()
        return t.grad.cpu().numpy()

    xs = np.repeat(x.cpu().numpy()[None], len(refs), axis=0)
    ref_rep = call(refs.cpu().numpy(), "rep")
    delta = np.zeros_like(xs)
    path = [xs]
    for _ in range(steps):
        g = call(xs + delta, "dist", ref_rep)
        norm = np.sqrt((g.reshape(len(g), -1) ** 2).sum(1)).reshape(-1, *([1] * (g.ndim - 1)))
        delta = np.clip(xs + delta + g / norm * step_size, 0, 1) - xs
        path.append(xs + delta)
    attr = np.zeros_like(xs)
    for before, after in itertools.pairwise(path):
        attr += (before - after) * call(before, "grad")
    return attr.mean(0)


def pair_guided_ig() -> Any:
    """PAIR's per-example Guided IG, with its one NumPy-2 incompatibility adapted."""
    import saliency.core.guided_ig as module

    if np.lib.NumpyVersion(np.__version__) >= "2.0.0":
        # saliency 0.2.1 calls np.quantile(interpolation=...), removed in NumPy 2.
        class _Numpy:
            def __getattr__(self, name: str) -> Any:
                return getattr(np, name)

            @staticmethod
            def quantile(a: Any, q: Any, interpolation: str = "linear", **kw: Any) -> Any:
                return np.quantile(a, q, method=interpolation, **kw)

        module.np = _Numpy()
    return module.GuidedIG()


def pair_call_model(model: nn.Module) -> Callable[..., dict[str, np.ndarray]]:
    from saliency.core.base import INPUT_OUTPUT_GRADIENTS

    device = next(model.parameters()).device

    def call(points: np.ndarray, call_model_args: Any = None, expected_keys: Any = None):  # type: ignore[no-untyped-def]
        t = torch.tensor(points, dtype=torch.float32, device=device, requires_grad=True)
        model(t)[:, 0].sum().backward()
        return {INPUT_OUTPUT_GRADIENTS: t.grad.cpu().numpy()}

    return call


# -- the runs ----------------------------------------------------------------------------------
def runner(name: str, model: nn.Module, n: int, r: int, steps: int, size: int,
           device: torch.device) -> Callable[[], object]:  # fmt: skip
    """One contender as a function of no arguments, with its inputs made here (seeded)."""
    g = torch.Generator().manual_seed(n * 1000 + r * 10 + steps)
    x = torch.rand(n, 3, size, size, generator=g).to(device)
    refs = torch.rand(r, 3, size, size, generator=g).to(device) if r > 1 else None
    if name == "ig":  # Captum's IG over the same number of points as IG2's N x R paths
        xs = x.repeat_interleave(r, 0) if r > 1 else x
        ig = IntegratedGradients(model)
        batch = getattr(model, "ig_batch", None)
        return lambda: ig.attribute(xs, target=0, n_steps=steps, method="riemann_left",
                                    internal_batch_size=batch)  # fmt: skip
    if name == "ig2":
        ig2 = IterativeGradientIG(model)
        # (1, R, ...): one shared set, also when R happens to equal N.
        ref_set = refs.unsqueeze(0) if refs is not None else None
        return lambda: ig2.attribute(x, ref_set, target=0, n_steps=steps, clamp=(0, 1),
                                     method="riemann_left", nodes=1, epsrel=None,
                                     walk="fixed", n_walks=1)  # fmt: skip
    if name == "guided_ig":
        gig = GuidedIG(model)
        return lambda: gig.attribute(
            x, target=0, n_steps=steps, method="riemann_left", nodes=1, epsrel=None
        )
    if name == "pair_guided_ig":
        pair, call = pair_guided_ig(), pair_call_model(model)
        xs_np = [xi.cpu().numpy() for xi in x]
        return lambda: [pair.GetMask(xi, call, x_steps=steps) for xi in xs_np]
    if name == "authors_ig2":
        refs_ = refs if refs is not None else torch.zeros(1, 3, size, size, device=device)
        eta = float((x[0] - refs_[0]).norm()) / steps
        return lambda: [authors_ig2(model, xi, refs_, 0, steps, eta) for xi in x]
    if name == "model_floor":  # IG2's model work alone: T + 1 forwards, 2 T backwards
        xs = x.repeat_interleave(r, 0) if r > 1 else x

        def floor() -> None:
            for _ in range(steps):
                t = xs.detach().requires_grad_(True)
                out = model(t)
                torch.autograd.grad(out[:, 0].sum(), t, retain_graph=True)
                torch.autograd.grad(out.pow(2).mean(), t)
            with torch.no_grad():
                model(xs)

        return floor
    raise ValueError(name)


def peak_memory_mb(args: argparse.Namespace, name: str, n: int, r: int, steps: int) -> float:
    """Peak memory of one call: CUDA allocator peak, or a child process's peak RSS growth."""
    device = torch.device(args.device)
    if device.type == "cuda":
        model, size = make_model(args.model, device)
        fn = runner(name, model, n, r, steps, size, device)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    child = subprocess.run(
        [sys.executable, __file__, "--child", f"{name},{n},{r},{steps}", "--model", args.model],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return float(child.stdout.strip().splitlines()[-1])


def peak_rss_kb() -> int:
    """This process's peak resident set in kB. Linux's VmHWM belongs to the process's own
    memory map; ``ru_maxrss`` would also count the parent's peak, inherited through fork."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child_main(spec: str, model_name: str) -> None:
    name, n, r, steps = spec.split(",")
    model, size = make_model(model_name, torch.device("cpu"))
    fn = runner(name, model, int(n), int(r), int(steps), size, torch.device("cpu"))
    before = peak_rss_kb()
    fn()
    print((peak_rss_kb() - before) / 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", choices=sorted(MODELS), default=None)
    parser.add_argument("--repeats", type=int, default=None, help="3; efficientnet: 1")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--ns", default="1", help="efficientnet's N grid")
    parser.add_argument("--json", default=None, help="write every measurement here")
    parser.add_argument("--no-memory", action="store_true", help="skip peak memory")
    parser.add_argument("--no-references", action="store_true", help="skip PAIR and authors")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to check it runs")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.model is None:
        args.model = "resnet50" if args.device.startswith("cuda") else "small"
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.child:
        child_main(args.child, args.model)
        return
    device = torch.device(args.device)
    big = args.model == "efficientnet"  # a real network: a smaller grid, cheap warm-ups
    if args.repeats is None:
        args.repeats = 1 if big else 3
    if args.smoke:
        ns, rs, ts, repeats = (2,), (1, 2), (3,), 1
    elif big:
        ns, rs, ts, repeats = tuple(int(n) for n in args.ns.split(",")), (1, 4), (50,), args.repeats
    else:
        ns, rs, ts, repeats = (1, 8, 32), (1, 8), (50, 200), args.repeats
    model, size = make_model(args.model, device)
    records: list[dict[str, Any]] = []

    def record(kind: str, n: int, r: int, steps: int, contenders: list[str]) -> None:
        fns = [runner(c, model, n, r, steps, size, device) for c in contenders]
        if big:
            for c in contenders:
                runner(c, model, n, r, 2, size, device)()
        times = compare(fns, repeats, device, warm_up=not big)
        row: dict[str, Any] = {"ratio": kind, "N": n, "R": r, "T": steps}
        for c, t in zip(contenders, times):
            row[f"{c}_s"] = t
        row["ratio_value"] = times[0] / times[1]
        if not args.no_memory and kind.startswith(("IG2 / IG", "Guided IG / IG")):
            for c in contenders:
                row[f"{c}_peak_mb"] = peak_memory_mb(args, c, n, r, steps)
        if kind == "IG2 / IG":
            floor_fn = runner("model_floor", model, n, r, steps, size, device)
            if big:
                runner("model_floor", model, n, r, 2, size, device)()
            floor = compare([floor_fn], repeats, device, warm_up=not big)
            row["ig2_overhead_ms_per_step"] = 1e3 * (times[0] - floor[0]) / (steps + 1)
        records.append(row)
        print_row(row, contenders)

    print(f"device {device}, model {args.model} on 3x{size}x{size}, torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"{date.today()}; median of {repeats} call(s), contenders alternated")  # fmt: skip
    if model.ig_batch is not None:
        print(f"Captum IG with internal_batch_size={model.ig_batch}")
    print(f"{'ratio':28s} {'N':>3s} {'R':>2s} {'T':>4s} {'numer. s':>9s} {'denom. s':>9s} "
          f"{'ratio':>6s}  notes")  # fmt: skip
    for n, r, steps in itertools.product(ns, rs, ts):
        record("IG2 / IG", n, r, steps, ["ig2", "ig"])
    for n, steps in itertools.product(ns, ts):
        record("Guided IG / IG", n, 1, steps, ["guided_ig", "ig"])
    if not args.no_references:
        for n, steps in itertools.product(ns, ts):
            if n <= 16 or args.smoke or steps <= 50:
                record("PAIR Guided IG / Guided IG", n, 1, steps, ["pair_guided_ig", "guided_ig"])
        for n, r in itertools.product(ns if args.smoke else (1,) if big else (1, 8), rs):
            if big and r > 1:
                continue
            record("authors' IG2 / IG2", n, r, ts[0], ["authors_ig2", "ig2"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": str(device), "model": args.model, "date": str(date.today()),
                       "torch": torch.__version__, "threads": torch.get_num_threads(),
                       "repeats": repeats, "ig_internal_batch_size": model.ig_batch,
                       "records": records}, f, indent=1)  # fmt: skip


def print_row(row: dict[str, Any], contenders: list[str]) -> None:
    notes = []
    for c in contenders:
        if f"{c}_peak_mb" in row:
            notes.append(f"{c} peak {row[f'{c}_peak_mb']:.0f} MB")
    if "ig2_overhead_ms_per_step" in row:
        notes.append(f"IG2 overhead {row['ig2_overhead_ms_per_step']:.2f} ms/step")
    a, b = (row[f"{c}_s"] for c in contenders)
    print(f"{row['ratio']:28s} {row['N']:3d} {row['R']:2d} {row['T']:4d} {a:9.3f} {b:9.3f} "
          f"{row['ratio_value']:6.2f}  {'; '.join(notes)}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
