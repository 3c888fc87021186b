"""Throughput and memory of ``explain_dataset``, against a hand-written loop in the same run.

a) **Throughput against the number of processes.** ``explain_dataset`` over the same data with
   P worker processes (``--processes 1 2``), each a separate OS process running this script in
   a worker mode with ``RANK`` and ``WORLD_SIZE`` set (``explain_dataset`` reads them, as under
   ``torchrun``) and ``cores // P`` torch threads. The processes load their model, wait for each
   other at a file barrier, then time their ``explain_dataset`` call; throughput is the total
   examples / the wall time of the slowest process. The reference, measured in the same run:
   a plain loop ``for x, y, r in loader: explainer.attribute(x, r, y, ...)`` in one process with
   ``cores`` threads that writes nothing. Its ratio shows what ``explain_dataset`` adds (the
   completeness record: delta, relative error, converged, gradient evaluations; the ``.npy``
   shards, ``fsync``-ed, and the manifest), the ratio to P = 1 shows the scaling. Each setting
   is run ``--repeats`` times, the settings alternated so that they share any drift; the table
   gives the median. Every ``explain_dataset`` run is checked to have written every example
   once.

   Default: EfficientNet-Lite0 with its ImageNet weights (``captum_ig2.pretrained``) on the
   square crops of the six photos at 64 px and their mirror images (84 examples, batches of 6),
   the class the network predicts for each; ``IterativeGradientIG`` with one reference per
   input (the whole photo of another class, ``common.photos.other_photo_references``), the
   paper's procedure with 8 steps (one walk of equal steps, ``walk="fixed", n_walks=1``, and
   ``method="riemann_left", nodes=1, epsrel=None``: one gradient per step, no refinement, so
   every call costs the same). ``--smoke``: a small random CNN on
   48 random 3 x 8 x 8 inputs, 4 steps, one repeat, ``--cores 1`` unless given (see below).

b) **Memory of a long run.** One process runs ``explain_dataset`` over ``--long-batches``
   batches (default 200 of 8 examples; ``--smoke``: 40) of a small random CNN on random
   3 x 32 x 32 inputs generated per example, IG2 with two shared references, 8 steps, saving
   the GradCF too. A wrapper around the batches reads the process's resident set size
   (``/proc/self/statm``) after every shard. Printed: the RSS at 10 %, 50 % and 100 % of the
   run (each the median of the readings of the last 5 % of the batches up to there: single
   readings jitter by a MiB or two with the allocator) and its growth from 10 % to 100 % (the
   first batches fill the allocator's caches), in MiB and per 100 batches; the run is called
   flat when that growth is below :data:`FLAT_MIB` (4 MiB).

The full run takes about 3 minutes on 2 idle CPU cores (estimated from partial runs; smoke:
about 20 s). Run it on a quiet machine: a thread that another process keeps off its core stalls
its partner at every operation (2-thread runs of the smoke model were 100 times slower while a
second job kept one of 2 cores busy). Linux only (RSS from ``/proc``).

Run:  python benchmarks/dataset_throughput.py [--processes 1 2] [--json out.json]
      python benchmarks/dataset_throughput.py --smoke
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common.report import Stopwatch, print_paragraph, seed_everything
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from captum_ig2 import IterativeGradientIG
from captum_ig2.dataset import explain_dataset, load_results

#: A long run whose RSS grows less than this from 10 % to 100 % of its batches is called flat.
FLAT_MIB = 4.0
#: The classes of the small CNN.
N_CLASSES = 10
SCRIPT = Path(__file__).resolve()
REFERENCE = "reference loop"


# -- models and data ---------------------------------------------------------------------------


class SmallCNN(nn.Module):
    """Two 3 x 3 convolutions and a linear head on 3 x ``size`` x ``size`` inputs; seeded."""

    def __init__(self, size: int, seed: int = 0) -> None:
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(seed)  # the same weights in every process
            self.features = nn.Sequential(
                nn.Conv2d(3, 8, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(8, 8, 3, padding=1, stride=2),
                nn.ReLU(),
                nn.Flatten(),
            )
            self.head = nn.Linear(8 * ((size + 1) // 2) ** 2, N_CLASSES)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_model(name: str, size: int) -> nn.Module:
    """``"efficientnet"``: EfficientNet-Lite0 with its ImageNet weights; ``"small"``: the CNN."""
    if name == "efficientnet":
        from captum_ig2.pretrained import efficientnet_lite0

        return efficientnet_lite0()
    return SmallCNN(size)


def photo_data(size: int, crops: int) -> dict[str, torch.Tensor]:
    """The photo crops and their mirror images, the predicted class of each, and one reference
    per input: the whole photo of another class (mirrored with its input)."""
    from common.photos import load_photo_set, other_photo_references

    photos = load_photo_set(size=size, crops=crops)
    references = other_photo_references(photos, per_input=1)
    mirrored = photos.x.flip(-1)
    with torch.no_grad():
        mirrored_target = photos.model(mirrored).argmax(dim=1)
    return {
        "x": torch.cat([photos.x, mirrored]),
        "target": torch.cat([photos.target, mirrored_target]),
        "references": torch.cat([references, references.flip(-1)]),
    }


def random_data(n: int, size: int) -> dict[str, torch.Tensor]:
    """Random inputs, the small CNN's predicted class of each, one random reference each."""
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(n, 3, size, size, generator=generator)
    with torch.no_grad():
        target = SmallCNN(size)(x).argmax(dim=1)
    references = torch.rand(n, 1, 3, size, size, generator=generator)
    return {"x": x, "target": target, "references": references}


class RandomImages(Dataset):
    """``n`` random 3 x ``size`` x ``size`` images, each generated when read, with a label."""

    def __init__(self, n: int, size: int) -> None:
        self.n, self.size = n, size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        generator = torch.Generator().manual_seed(i)
        return torch.rand(3, self.size, self.size, generator=generator), i % N_CLASSES


# -- resident set size -------------------------------------------------------------------------


def rss_mib() -> float:
    """This process's resident set size in MiB, from ``/proc/self/statm``."""
    with open("/proc/self/statm") as f:
        resident_pages = int(f.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class RssAfterEachShard:
    """Yields the batches of ``batches``; reads the RSS each time the next batch is asked for
    (``explain_dataset`` asks once the previous shard is written) and once after the last."""

    def __init__(self, batches: Iterable[Any]) -> None:
        self.batches = batches
        self.rss: list[float] = []

    def __iter__(self) -> Iterator[Any]:
        iterator = iter(self.batches)
        first = True
        while True:
            if not first:
                self.rss.append(rss_mib())
            first = False
            try:
                batch = next(iterator)
            except StopIteration:
                return
            yield batch


# -- the worker processes ----------------------------------------------------------------------


def wait_for_all(barrier: Path, rank: int, world_size: int, timeout: float = 600.0) -> None:
    """A file barrier: returns when every rank has touched its file in ``barrier``."""
    (barrier / f"ready-{rank}").touch()
    deadline = time.monotonic() + timeout
    while len(list(barrier.glob("ready-*"))) < world_size:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only some of {world_size} processes reached the barrier")
        time.sleep(0.002)


def worker(role: str, plan: dict[str, Any]) -> dict[str, Any]:
    """One measured process: ``"loop"`` (the reference), ``"explain"`` (``explain_dataset``,
    rank and world size from the environment) or ``"memory"`` (the long run)."""
    torch.set_num_threads(plan["threads"])
    model = build_model(plan["model"], plan["size"])
    explainer = IterativeGradientIG(model)
    kwargs = plan["attribute_kwargs"]
    watch = Stopwatch()
    result: dict[str, Any] = {"threads": torch.get_num_threads()}
    if role == "memory":
        loader = DataLoader(RandomImages(plan["examples"], plan["size"]), plan["batch_size"])
        batches = RssAfterEachShard(loader)
        generator = torch.Generator().manual_seed(2)
        references = torch.rand(2, 3, plan["size"], plan["size"], generator=generator)
        result["rss_before_mib"] = rss_mib()
        with watch.stage("run"):
            summary = explain_dataset(
                explainer,
                batches,
                plan["out_dir"],
                baselines=references,
                attribute_kwargs=kwargs,
                save=[*plan["save"]],
                show_progress=False,
            )
        result.update(rss_mib=batches.rss, examples=summary.examples, batches=summary.batches)
        result["seconds"] = watch.seconds["run"]
        return result
    data = torch.load(plan["data"], weights_only=True)
    dataset = TensorDataset(data["x"], data["target"], data["references"])
    loader = DataLoader(dataset, batch_size=plan["batch_size"])
    warm_up = {**kwargs, "n_steps": 2}
    explainer.attribute(data["x"][:1], data["references"][:1], data["target"][:1], **warm_up)
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    wait_for_all(Path(plan["barrier"]), rank, world_size)
    result["start"] = time.time()
    if role == "loop":
        with watch.stage("run"):
            examples = 0
            for x, y, r in loader:
                explainer.attribute(x, r, y, **kwargs)
                examples += len(x)
    else:
        with watch.stage("run"):
            summary = explain_dataset(
                explainer, loader, plan["out_dir"], attribute_kwargs=kwargs, show_progress=False
            )
        examples = summary.examples
        if summary.failed_batches:
            raise RuntimeError(f"explain_dataset failed on some batches: {summary}")
    result.update(end=time.time(), seconds=watch.seconds["run"], examples=examples, rank=rank)
    return result


def launch(role: str, plan: dict[str, Any], processes: int, work: Path) -> list[dict[str, Any]]:
    """Runs ``processes`` workers of ``role`` at once; returns their results in rank order.
    Where one fails, the others are stopped and its error output is raised."""
    folder = Path(tempfile.mkdtemp(prefix=f"{role}-", dir=work))
    plan_path = folder / "plan.json"
    plan_path.write_text(json.dumps({**plan, "barrier": str(folder)}))
    threads = str(plan["threads"])
    children = []
    for rank in range(processes):
        env = {
            **os.environ,
            "RANK": str(rank),
            "WORLD_SIZE": str(processes),
            "OMP_NUM_THREADS": threads,
            "MKL_NUM_THREADS": threads,
        }
        command = [
            sys.executable,
            str(SCRIPT),
            "--worker",
            role,
            "--plan",
            str(plan_path),
            "--result",
            str(folder / f"result-{rank}.json"),
        ]
        with open(folder / f"stderr-{rank}.txt", "wb") as stderr:
            children.append(subprocess.Popen(command, env=env, stderr=stderr))
    try:
        while any(child.poll() is None for child in children):
            failed = [c for c in children if c.returncode not in (None, 0)]
            if failed:
                break
            time.sleep(0.05)
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    for rank, child in enumerate(children):
        if child.returncode != 0:
            error = (folder / f"stderr-{rank}.txt").read_text()
            raise RuntimeError(f"the {role} worker of rank {rank} failed:\n{error}")
    return [json.loads((folder / f"result-{r}.json").read_text()) for r in range(processes)]


# -- part a: throughput ------------------------------------------------------------------------


@dataclass
class Setting:
    """One row of the throughput table and its measurements."""

    name: str
    role: str  # "loop" or "explain"
    processes: int
    threads: int
    runs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def throughputs(self) -> list[float]:
        """Examples per second of every repeat: total examples / the slowest process's time."""
        return [run["examples"] / run["slowest_seconds"] for run in self.runs]

    @property
    def median(self) -> float:
        """The median throughput over the repeats, examples per second."""
        return statistics.median(self.throughputs)


def measure_throughput(
    args: argparse.Namespace, plan: dict[str, Any], n_examples: int, work: Path
) -> list[Setting]:
    """Runs the reference loop and explain_dataset with every P, ``args.repeats`` times each,
    the settings alternated; checks that every run attributed (and wrote) every example."""
    settings = [Setting(REFERENCE, "loop", 1, args.cores)]
    for p in args.processes:
        settings.append(Setting(f"explain_dataset, P={p}", "explain", p, max(1, args.cores // p)))
    for repeat in range(args.repeats):
        for setting in settings:
            out_dir = work / f"out-{setting.role}-{setting.processes}-{repeat}"
            results = launch(
                setting.role,
                {**plan, "threads": setting.threads, "out_dir": str(out_dir)},
                setting.processes,
                work,
            )
            examples = sum(r["examples"] for r in results)
            if examples != n_examples:
                raise RuntimeError(f"{setting.name}: {examples} of {n_examples} examples")
            if setting.role == "explain":  # every example written once, by some process
                index = load_results(out_dir, ["index"])["index"]
                if not np.array_equal(np.sort(index), np.arange(n_examples)):
                    raise RuntimeError(f"{setting.name}: the shards do not hold every example")
            setting.runs.append(
                {
                    "examples": examples,
                    "slowest_seconds": max(r["seconds"] for r in results),
                    "span_seconds": max(r["end"] for r in results)
                    - min(r["start"] for r in results),
                    "processes": results,
                }
            )
    return settings


def print_throughput(settings: list[Setting], description: str) -> dict[str, dict[str, float]]:
    """Prints the table; returns each setting's median and its ratios to the reference and to
    P = 1."""
    reference = settings[0].median
    one = next((s.median for s in settings if s.role == "explain" and s.processes == 1), None)
    print("\n" + description)
    header = f"{'setting':34s}{'processes x threads':>21s}{'examples/s':>12s}"
    print(header + f"{'/ reference':>13s}{'/ P=1':>9s}")
    ratios = {}
    for s in settings:
        to_one = s.median / one if one else math.nan
        ratios[s.name] = {
            "examples_per_second": s.median,
            "to_reference": s.median / reference,
            "to_p1": to_one,
        }
        shape = f"{s.processes} x {s.threads}"
        print(f"{s.name:34s}{shape:>21s}{s.median:12.3g}{s.median / reference:13.2f}{to_one:9.2f}")
    return ratios


# -- part b: memory ----------------------------------------------------------------------------


def measure_memory(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Runs the long run in a fresh process, prints its RSS at 10, 50 and 100 % and the
    verdict; returns every reading."""
    plan = {
        "model": "small",
        "size": 32,
        "threads": args.cores,
        "examples": args.long_batches * args.long_batch_size,
        "batch_size": args.long_batch_size,
        "attribute_kwargs": {"n_steps": 8, "method": "riemann_left", "nodes": 1, "epsrel": None,
                             "walk": "fixed", "n_walks": 1},
        "save": ["attributions", "delta", "relative_error", "converged", "gradcf"],
        "out_dir": str(work / "out-memory"),
    }
    (result,) = launch("memory", plan, 1, work)
    rss = result["rss_mib"]
    n = len(rss)
    marks = {f"{p}%": math.ceil(n * p / 100) for p in (10, 50, 100)}  # batch numbers, 1-based
    window = max(1, n // 20)  # single readings jitter by a MiB or two with the allocator
    at = {m: statistics.median(rss[max(0, b - window) : b]) for m, b in marks.items()}
    growth = at["100%"] - at["10%"]
    per_100 = growth / max(1, marks["100%"] - marks["10%"]) * 100
    flat = growth < FLAT_MIB
    print(
        f"\nMemory of a long run: explain_dataset over {n} batches of {args.long_batch_size} "
        f"random 3 x 32 x 32 inputs, a small CNN, IG2 (2 shared references, 8 steps, GradCF "
        f"saved), {args.cores} threads, {result['seconds']:.1f} s; RSS after the shard, "
        f"median of the last {window} readings (before the run: "
        f"{result['rss_before_mib']:.1f} MiB):"
    )
    print("  " + "; ".join(f"{m} (batch {marks[m]}): {at[m]:.1f} MiB" for m in marks))
    print(
        f"  growth from 10 % to 100 %: {growth:+.2f} MiB ({per_100:+.2f} MiB per 100 batches); "
        f"peak {max(rss):.1f} MiB"
    )
    verdict = "flat" if flat else "GROWS"
    print(f"verdict: {verdict} (flat: growth below {FLAT_MIB:g} MiB from 10 % to 100 %)")
    return {
        "plan": plan,
        "batches": n,
        "seconds": result["seconds"],
        "rss_before_mib": result["rss_before_mib"],
        "rss_after_each_shard_mib": rss,
        "marks": marks,
        "median_window": window,
        "rss_at_mib": at,
        "growth_mib": growth,
        "growth_per_100_batches_mib": per_100,
        "flat_below_mib": FLAT_MIB,
        "flat": flat,
    }


# -- main --------------------------------------------------------------------------------------


def available_cores() -> int:
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (the machine's otherwise)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to check it runs")
    parser.add_argument("--json", type=Path, default=None, help="write every number here")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="P values")
    parser.add_argument(
        "--cores",
        type=int,
        default=None,
        help="cores shared out, P processes getting cores // P threads each; default: all this "
        "process may use (smoke: 1, so that a busy CI machine cannot stall 2-thread runs)",
    )
    parser.add_argument("--repeats", type=int, default=None, help="default 3 (smoke 1)")
    parser.add_argument("--size", type=int, default=None, help="image side; default 64 (smoke 8)")
    parser.add_argument("--crops", type=int, default=7, help="crops per photo (mirrored too)")
    parser.add_argument("--steps", type=int, default=None, help="IG2 steps; default 8 (smoke 4)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 6 (smoke 4)")
    parser.add_argument("--long-batches", type=int, default=None, help="default 200 (smoke 40)")
    parser.add_argument("--long-batch-size", type=int, default=8)
    parser.add_argument("--worker", choices=["loop", "explain", "memory"], help=argparse.SUPPRESS)
    parser.add_argument("--plan", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    smoke = args.smoke
    args.repeats = args.repeats or (1 if smoke else 3)
    args.size = args.size or (8 if smoke else 64)
    args.steps = args.steps or (4 if smoke else 8)
    args.batch_size = args.batch_size or (4 if smoke else 6)
    args.long_batches = args.long_batches or (40 if smoke else 200)
    args.cores = args.cores or (1 if smoke else available_cores())
    if min(args.processes) < 1 or args.cores < 1:
        parser.error("--processes and --cores must be positive")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker is not None:  # a measured process, started by the run below
        result = worker(args.worker, json.loads(args.plan.read_text()))
        args.result.write_text(json.dumps(result))
        return
    seed_everything(0)
    watch = Stopwatch()
    kwargs = {"n_steps": args.steps, "method": "riemann_left", "nodes": 1, "epsrel": None,
              "walk": "fixed", "n_walks": 1}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="dataset-throughput-") as tmp:
        work = Path(tmp)
        with watch.stage("data"):
            if args.smoke:
                model_name, data = "small", random_data(48, args.size)
                side = f"{args.size} x {args.size}"
                what = f"a small random CNN on {len(data['x'])} random 3 x {side} inputs"
            else:
                model_name, data = "efficientnet", photo_data(args.size, args.crops)
                what = (
                    f"EfficientNet-Lite0 (ImageNet weights) on {len(data['x'])} photo crops and "
                    f"their mirror images at {args.size} px"
                )
            torch.save(data, work / "data.pt")
        plan = {
            "model": model_name,
            "size": args.size,
            "data": str(work / "data.pt"),
            "batch_size": args.batch_size,
            "attribute_kwargs": kwargs,
        }
        description = (
            f"Throughput of explain_dataset: {what}, batches of {args.batch_size}; "
            f"IterativeGradientIG, 1 reference per input, {args.steps} steps, one gradient per "
            f"step (riemann_left, nodes=1, epsrel=None); {args.cores} core(s) shared out, P "
            f"processes with {args.cores} // P threads each; median of {args.repeats} repeat(s); "
            f"{platform.machine()}, torch {torch.__version__}, {date.today()}"
        )
        with watch.stage("throughput"):
            settings = measure_throughput(args, plan, len(data["x"]), work)
        ratios = print_throughput(settings, description)
        print_paragraph(
            "reference: `for x, y, r in loader: explainer.attribute(x, r, y, ...)` in one process, "
            "writing nothing; explain_dataset also records delta, relative error, converged and "
            "evaluations, writes fsync-ed .npy shards and a manifest (progress bar off). "
            "Throughput: all examples / wall time of the slowest process (from a common start)."
        )
        with watch.stage("memory"):
            memory = measure_memory(args, work)
    total = sum(watch.seconds.values())
    print(
        f"\nwall time: {total:.0f} s ("
        + ", ".join(f"{k} {v:.0f} s" for k, v in watch.seconds.items())
        + ")"
    )
    if args.json is not None:
        report = {
            "date": str(date.today()),
            "smoke": args.smoke,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
            "machine": {
                "nproc": os.cpu_count(),
                "cpu": cpu_model(),
                "cores_used": args.cores,
                "platform": platform.platform(),
                "processor": platform.processor() or platform.machine(),
            },
            "throughput": {
                "description": description,
                "model": model_name,
                "examples": len(data["x"]),
                "batch_size": args.batch_size,
                "attribute_kwargs": kwargs,
                "repeats": args.repeats,
                "threads": {s.name: s.threads for s in settings},
                "settings": [asdict(s) | {"throughputs": s.throughputs} for s in settings],
                "ratios": ratios,
            },
            "memory": memory,
            "stage_seconds": watch.seconds,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
