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
