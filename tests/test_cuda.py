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


@cuda
def test_explain_dataset_moves_cpu_batches_to_the_models_device(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from captum_ig2.dataset import explain_dataset, load_results

    torch.manual_seed(0)
    model = SmallCNN().double().eval()
    x, y = torch.rand(6, 1, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 0, 1])
    references = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    batches = [(x[:3], y[:3]), (x[3:], y[3:])]  # on the CPU
    kwargs = dict(baselines=references, attribute_kwargs={"n_steps": 8}, show_progress=False)
    cpu = explain_dataset(IterativeGradientIG(model), batches, tmp_path / "cpu", **kwargs)
    gpu = explain_dataset(IterativeGradientIG(model.cuda()), batches, tmp_path / "gpu", **kwargs)
    assert cpu.failed_batches == gpu.failed_batches == 0
    a, b = load_results(tmp_path / "cpu"), load_results(tmp_path / "gpu")
    torch.testing.assert_close(
        torch.from_numpy(b["attributions"]), torch.from_numpy(a["attributions"])
    )
