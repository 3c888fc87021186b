"""Memory stays flat in n_steps: the engine keeps one segment, never the whole path."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Runs one call in a fresh process and prints how much its peak resident memory (Linux's
# VmHWM) grew during the call, in MB. A first short call takes the one-off allocations.
CHILD = """
import sys, torch
from torch import nn
from captum_ig2 import GuidedIG, IterativeGradientIG

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
name, n_steps = sys.argv[1], int(sys.argv[2])
method = IterativeGradientIG(net) if name == "ig2" else GuidedIG(net)
run = lambda steps: method.attribute(x, refs, target=0, n_steps=steps, epsrel=0.02, limit=4)
run(2)
before = peak_mb()
run(n_steps)
print(peak_mb() - before)
"""


def peak_growth_mb(name: str, n_steps: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, name, str(n_steps)], stdout=subprocess.PIPE, text=True
    )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
@pytest.mark.parametrize("name", ["ig2", "guided_ig"])
def test_peak_memory_is_flat_in_n_steps(name: str) -> None:
    # A path of 300 points of 2 x 3 x 64 x 64 floats would hold 28 MB per input tensor.
    short, long = peak_growth_mb(name, 10), peak_growth_mb(name, 300)
    growth = [float(child.communicate(timeout=300)[0].split()[-1]) for child in (short, long)]
    assert long.returncode == 0 and short.returncode == 0
    assert growth[1] - growth[0] < 8.0, growth


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
