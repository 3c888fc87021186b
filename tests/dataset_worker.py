"""A small data set, model and explainer for the tests of ``captum_ig2.dataset``, and a worker
that the tests start as a separate process: under ``torchrun``, or to be killed mid-run.

    python tests/dataset_worker.py OUT_DIR [--kill-after-shards K] [--kill-mid-shard K]
                                   [--distributed]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

N_EXAMPLES, BATCH_SIZE, N_FEATURES, N_CLASSES = 29, 4, 6, 3


class CountingDataset(Dataset):
    """Seeded inputs and labels; counts which examples were read."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(7)
        self.x = torch.rand(N_EXAMPLES, N_FEATURES, generator=generator)
        self.y = torch.randint(0, N_CLASSES, (N_EXAMPLES,), generator=generator)
        self.read: list[int] = []

    def __len__(self) -> int:
        return N_EXAMPLES

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.read.append(i)
        return self.x[i], self.y[i]


def model() -> torch.nn.Module:
    generator = torch.Generator().manual_seed(3)
    net = torch.nn.Sequential(
        torch.nn.Linear(N_FEATURES, 8), torch.nn.Tanh(), torch.nn.Linear(8, N_CLASSES)
    )
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=generator))
    return net.eval()


def references() -> torch.Tensor:
    """A reference set shared by every input: IG2's N x R paths."""
    return torch.rand(2, N_FEATURES, generator=torch.Generator().manual_seed(11))


def setup() -> tuple[Any, DataLoader, torch.Tensor]:
    from captum_ig2 import IterativeGradientIG

    return IterativeGradientIG(model()), DataLoader(CountingDataset(), BATCH_SIZE), references()


KWARGS = {"n_steps": 8}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir")
    parser.add_argument("--kill-after-shards", type=int, default=None)
    parser.add_argument("--kill-mid-shard", type=int, default=None)
    parser.add_argument("--distributed", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    import captum_ig2.dataset as dataset

    if args.kill_after_shards is not None:  # killed between two shards
        append, written = dataset._Folder._append, []

        def append_then_die(self: Any, entry: dict[str, Any]) -> None:
            append(self, entry)
            written.append(entry)
            if len(written) == args.kill_after_shards:
                os.kill(os.getpid(), signal.SIGKILL)

        dataset._Folder._append = append_then_die  # type: ignore[method-assign]
    if args.kill_mid_shard is not None:  # killed with a shard written but not renamed
        replace, renames = os.replace, []

        def die_before_rename(src: Any, dst: Any) -> None:
            if "batch-" in str(dst):
                renames.append(dst)
                if len(renames) == args.kill_mid_shard:
                    os.kill(os.getpid(), signal.SIGKILL)
            replace(src, dst)

        dataset.os.replace = die_before_rename  # type: ignore[assignment]
    if args.distributed:
        torch.distributed.init_process_group("gloo")
    explainer, loader, refs = setup()
    try:
        summary = dataset.explain_dataset(
            explainer, loader, args.out_dir, baselines=refs, attribute_kwargs=KWARGS,
            show_progress=False,
        )  # fmt: skip
        print(summary, flush=True)
    finally:
        if args.distributed:
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
