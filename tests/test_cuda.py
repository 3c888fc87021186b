"""The same attributions on a CUDA device as on the CPU (skipped where no GPU is present)."""

from __future__ import annotations

import pytest
import torch
from conftest import SmallCNN

from captum_ig2 import GuidedIG, IterativeGradientIG

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
@pytest.mark.parametrize("cls", [IterativeGradientIG, GuidedIG], ids=lambda c: c.__name__)
def test_cuda_matches_cpu(cls) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = SmallCNN().double().eval()
    x = torch.rand(4, 1, 8, 8, dtype=torch.float64)
    kwargs = dict(target=[0, 1, 2, 3], n_steps=12, return_convergence_delta=True)
    if cls is IterativeGradientIG:
        kwargs.update(baselines=torch.rand(3, 1, 8, 8, dtype=torch.float64), clamp=(0.0, 1.0))
    cpu, cpu_delta = cls(model).attribute(x, **kwargs)
    if "baselines" in kwargs:
        kwargs["baselines"] = kwargs["baselines"].cuda()
    gpu, gpu_delta = cls(model.cuda()).attribute(x.cuda(), **kwargs)
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(gpu_delta.cpu(), cpu_delta, rtol=1e-7, atol=1e-9)
