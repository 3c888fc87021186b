"""Memory stays flat in n_steps: the engine keeps one segment, never the whole path, except for
the complete trapezoid's refinement after the walk, which keeps within its budget."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Runs one call in a fresh process and prints how much its peak resident memory (Linux's
# VmHWM) grew during the call, in MB. A first short call takes the one-off allocations.
CHILD = """
import sys, torch
from torch import nn
from captum_ig2 import GuidedIG, IterativeGradientIG, set_refinement_memory

def peak_mb():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024

torch.manual_seed(0)
torch.set_num_threads(1)
net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.AdaptiveAvgPool2d(2),
                    nn.Flatten(), nn.Linear(16, 2))
x, refs = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
name, n_steps, rule, budget = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
set_refinement_memory(None if budget == "none" else int(budget))
method = IterativeGradientIG(net) if name == "ig2" else GuidedIG(net)
kwargs = {} if rule == "default" else dict(method=rule)
run = lambda steps: method.attribute(x, refs, target=0, n_steps=steps, epsrel=0.02, **kwargs)
run(2)
before = peak_mb()
run(n_steps)
print(peak_mb() - before)
"""


def peak_growth_mb(
    name: str, n_steps: int, rule: str = "default", budget: int | None = None
) -> subprocess.Popen[str]:
    arguments = [name, str(n_steps), rule, "none" if budget is None else str(budget)]
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, *arguments], stdout=subprocess.PIPE, text=True
    )


def growths(*children: subprocess.Popen[str]) -> list[float]:
    out = [float(child.communicate(timeout=300)[0].split()[-1]) for child in children]
    assert all(child.returncode == 0 for child in children)
    return out


linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")


@linux
@pytest.mark.parametrize(("name", "rule"), [("ig2", "gausslegendre"), ("guided_ig", "default")])
def test_peak_memory_is_flat_in_n_steps(name: str, rule: str) -> None:
    # A path of 300 points of 2 x 3 x 64 x 64 floats would hold 28 MB per input tensor.
    growth = growths(peak_growth_mb(name, 10, rule), peak_growth_mb(name, 300, rule))
    assert growth[1] - growth[0] < 8.0, growth


@linux
def test_ig2s_default_keeps_within_its_refinement_memory() -> None:
    # The complete trapezoid keeps path points and gradients for its refinement after the
    # walk: 2 x 2 x 8 paths (examples, references, walks) of 3 x 64 x 64 floats, two rows per
    # point, 3.1 MB per point: unbounded, 300 points hold 940 MB; within a 16 MB budget, the
    # call's peak grows by the budget at most (and the walk's own memory stays flat).
    budget = 16 * 2**20
    short, long, unbounded = growths(
        peak_growth_mb("ig2", 10, budget=budget),
        peak_growth_mb("ig2", 300, budget=budget),
        peak_growth_mb("ig2", 300, budget=None),
    )
    assert long - short < budget / 2**20 + 8.0, (short, long)
    assert unbounded - short > 500.0, (short, unbounded)  # what the budget bounds


@pytest.mark.parametrize("name", ["ig2", "guided_ig"])
def test_the_default_evaluates_no_more_points_at_once_than_the_papers_estimator(name) -> None:  # type: ignore[no-untyped-def]
    # The model's activations, what a call's memory is made of, grow with the points of one
    # model call. The papers' estimator evaluates one point per path at a time; the default's
    # refinement (5 nodes x up to 8 pieces per segment) does not evaluate more at once.
    import torch
    from torch import nn

    from captum_ig2 import GuidedIG, IterativeGradientIG

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                        nn.Linear(32, 2)).double().eval()  # fmt: skip
    rows: list[int] = []

    def counting(t: torch.Tensor) -> torch.Tensor:
        rows.append(t.shape[0])
        return net(t)

    x, refs = torch.rand(4, 6, dtype=torch.float64), torch.rand(3, 6, dtype=torch.float64)
    method = IterativeGradientIG(counting) if name == "ig2" else GuidedIG(counting)
    baselines = refs if name == "ig2" else refs[:1]
    method.attribute(x, baselines, target=0, n_steps=10, method="riemann_left", nodes=1,
                     epsrel=None)  # fmt: skip
    papers, papers_total = max(rows), sum(rows)
    rows.clear()
    method.attribute(x, baselines, target=0, n_steps=10)
    assert sum(rows) > papers_total  # more points in all ...
    assert max(rows) <= papers  # ... but never more at once
    rows.clear()
    method.attribute(x, baselines, target=0, n_steps=10, internal_batch_size=5)
    assert max(rows) <= 5  # the caller's bound, as in Captum
