"""Per-example metrics, their summaries and winners, printed tables and JSON; seeding, timing."""

from __future__ import annotations

import math
import random
import textwrap
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

#: The name of the random-scores control: reported in every table, never a winner.
RANDOM = "random (control)"


def seed_everything(seed: int) -> None:
    """Seeds Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (PAIR's generate_random_mask draws from it)
    torch.manual_seed(seed)


@dataclass
class Stopwatch:
    """Wall time of the stages of a run, in seconds, in the order they ran."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Times the ``with`` block as stage ``name``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = time.perf_counter() - start


@dataclass
class Metric:
    """Per-example values of one score for every method.

    Attributes
    ----------
    key : str
        Identifier, used in the JSON output.
    column : str
        Column header in the printed table.
    higher_is_better : bool
        The score's direction.
    values : dict[str, numpy.ndarray]
        Method name -> per-example values; every method is scored on the same examples. The
        order of the keys is the order of the table's rows; :data:`RANDOM` never wins.
    aggregate : dict[str, float] or None
        An optional second summary per method (PIC: PAIR's AUC of the median curve).
    """

    key: str
    column: str
    higher_is_better: bool
    values: dict[str, np.ndarray]
    aggregate: dict[str, float] | None = None

    @property
    def n(self) -> int:
        """The number of examples scored."""
        return len(next(iter(self.values.values())))

    @property
    def methods(self) -> list[str]:
        """The methods that may win: every row but the random control."""
        return [name for name in self.values if name != RANDOM]

    def mean(self, method: str) -> float:
        """The mean score of ``method`` (NaN without examples)."""
        v = self.values[method]
        return float(v.mean()) if len(v) else math.nan

    def sem(self, method: str) -> float:
        """The standard error of the mean score of ``method``."""
        return standard_error(self.values[method])


@dataclass
class Winner:
    """The best method on a metric and how clearly it beats the runner-up."""

    method: str
    runner_up: str
    difference: float  # mean of (winner - runner-up), per example, in the metric's units
    standard_error: float  # of that paired difference
    clear: bool  # |difference| >= 2 standard errors


def standard_error(values: np.ndarray) -> float:
    """The standard error of the mean (NaN for fewer than two values)."""
    if len(values) < 2:
        return math.nan
    return float(values.std(ddof=1) / math.sqrt(len(values)))


def ranked_methods(metric: Metric) -> list[str]:
    """The metric's methods (not the control) ordered best first by their mean score."""
    sign = -1.0 if metric.higher_is_better else 1.0
    return sorted(metric.methods, key=lambda m: sign * metric.mean(m))


def find_winner(metric: Metric) -> Winner | None:
    """The best method, with a paired comparison to the runner-up (None without examples)."""
    if metric.n == 0 or len(metric.methods) < 2:
        return None
    best, second = ranked_methods(metric)[:2]
    diff = metric.values[best] - metric.values[second]
    se = standard_error(diff)
    mean_diff = float(diff.mean())
    clear = bool(se > 0 and abs(mean_diff) >= 2 * se) or bool(se == 0 and mean_diff != 0)
    return Winner(best, second, mean_diff, se, clear)


def rank_of(metric: Metric, method: str) -> int:
    """The 1-based rank of ``method`` among the metric's methods."""
    return ranked_methods(metric).index(method) + 1


def format_cell(metric: Metric, method: str, digits: int = 3) -> str:
    """``mean ± sem``, and the aggregate in brackets where the metric has one."""
    if metric.n == 0:
        return "n/a"
    cell = f"{metric.mean(method):.{digits}f} ± {metric.sem(method):.{digits}f}"
    if metric.aggregate is not None:
        cell += f" [{metric.aggregate[method]:.{digits}f}]"
    return cell


def format_winner(metric: Metric, short: Mapping[str, str] | None = None) -> str:
    """The winner's (short) name, ``*`` if clear, ``~`` if within two standard errors."""
    winner = find_winner(metric)
    if winner is None:
        return "n/a"
    name = (short or {}).get(winner.method, winner.method)
    return name + (" *" if winner.clear else " ~")


def print_table(
    title: str,
    metrics: Sequence[Metric],
    note: str = "",
    short: Mapping[str, str] | None = None,
    digits: int = 3,
) -> None:
    """Prints one table: methods as rows, metrics as columns, then n and the winner."""
    rows = list(metrics[0].values)
    width = max(16, *(len(m.column) + 2 for m in metrics))
    if any(m.aggregate is not None for m in metrics):
        width = max(width, 26)
    name_width = max(24, *(len(row) + 2 for row in rows))
    print("\n" + textwrap.fill(title, width=100, break_on_hyphens=False))
    if note:
        print(textwrap.fill(note, width=100, break_on_hyphens=False))
    print(f"{'method':{name_width}s}" + "".join(f"{m.column:>{width}s}" for m in metrics))
    for method in rows:
        cells = "".join(f"{format_cell(m, method, digits):>{width}s}" for m in metrics)
        print(f"{method:{name_width}s}" + cells)
    print(f"{'n (examples)':{name_width}s}" + "".join(f"{m.n:>{width}d}" for m in metrics))
    winners = "".join(f"{format_winner(m, short):>{width}s}" for m in metrics)
    print(f"{'winner':{name_width}s}" + winners)


def markdown_table(metrics: Sequence[Metric], digits: int = 3) -> str:
    """The table of :func:`print_table` in Markdown, the clear winner of a column in bold."""
    rows = list(metrics[0].values)
    lines = [
        "| method | " + " | ".join(m.column for m in metrics) + " |",
        "|---|" + "---:|" * len(metrics),
    ]
    winners = [find_winner(m) for m in metrics]
    for method in rows:
        cells = []
        for metric, winner in zip(metrics, winners, strict=True):
            cell = format_cell(metric, method, digits)
            if winner is not None and winner.clear and winner.method == method:
                cell = f"**{cell}**"
            cells.append(cell)
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def print_paragraph(text: str) -> None:
    """Prints ``text`` wrapped to 100 columns, as a bullet."""
    print(
        textwrap.fill(
            text, width=100, initial_indent="- ", subsequent_indent="  ", break_on_hyphens=False
        )
    )


def metric_to_json(metric: Metric) -> dict[str, Any]:
    """A metric with every per-example value, its summaries and its winner."""
    winner = find_winner(metric)
    return {
        "key": metric.key,
        "higher_is_better": metric.higher_is_better,
        "n": metric.n,
        "winner": None if winner is None else winner.method,
        "winner_clear": None if winner is None else winner.clear,
        "methods": {
            name: {
                "mean": metric.mean(name),
                "sem": metric.sem(name),
                "aggregate": None if metric.aggregate is None else metric.aggregate[name],
                "values": metric.values[name].tolist(),
            }
            for name in metric.values
        },
    }
