"""Explains EfficientNet-Lite0's predictions on photo crops with ``explain_dataset``, in one
process or in many under ``torchrun``.

The data: the square crops of the colour photos that scikit-image and scikit-learn ship
(``captum_ig2.pretrained``), each with the ImageNet class the network predicts for it, the class
explained. The explainer: ``IterativeGradientIG`` (IG2; default) with a reference sampler that
gives every crop the whole photos of another predicted class that differ most from it, or
``GuidedIG`` from a black image (``--explainer guided``). ``explain_dataset`` writes one shard
of ``.npy`` files per batch to OUT_DIR, with a manifest per process.

Every process runs this same script; ``explain_dataset`` takes process ``rank`` of
``world_size`` (from ``torch.distributed``, which this script initialises with gloo when
``WORLD_SIZE`` > 1) and attributes batches i with i % world_size == rank, so the processes share
nothing but the folder. Each prints its progress bar and its summary. A run that is stopped or
crashes is resumed by the same command: the finished shards are skipped. On a GPU machine each
process uses the GPU ``LOCAL_RANK``.

One process::

    python examples/explain_with_torchrun.py OUT_DIR

One machine, two processes::

    torchrun --standalone --nproc_per_node 2 examples/explain_with_torchrun.py OUT_DIR

Several machines (OUT_DIR on a folder every machine sees, e.g. NFS), on each of the 4::

    torchrun --nnodes 4 --nproc_per_node 8 --rdzv-backend c10d --rdzv-id explain \\
        --rdzv-endpoint HOST:29500 examples/explain_with_torchrun.py /shared/out/

``--smoke`` (CI): four crops at 32 px, 4 steps, in seconds. The full run, 42 crops at 224 px
with IG2's 20-step GradPath to 2 references and its default quadrature (refined to a 2 %
completeness error), is a GPU's job: one crop took 100 s on one CPU thread (1,220 gradients),
so the 42 take some 35 minutes with two processes on 2 CPU cores; shrink it with ``--size``,
``--crops`` or ``--steps``. On a CPU, torchrun gives every process one thread unless
``OMP_NUM_THREADS`` is set.

Reading the results back (NumPy arrays, in batch order; ``index`` is each row's position in
the data set, here the crops in the order of ``photo_crops``)::

    from captum_ig2.dataset import load_results, read_manifest

    results = load_results("OUT_DIR")
    results["attributions"]    # (N, 3, H, W)
    results["target"]          # the class explained
    results["relative_error"]  # |delta| / |f(input) - f(path end)|, and "converged"
    failed = [e for e in read_manifest("OUT_DIR") if e["status"] == "failed"]
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

from captum_ig2 import GuidedIG, IterativeGradientIG
from captum_ig2.dataset import explain_dataset
from captum_ig2.pretrained import (
    PHOTOS,
    OtherClassReferences,
    efficientnet_lite0,
    photo_crops,
    predicted_classes,
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("out_dir", help="the output folder (resumed when it exists)")
    parser.add_argument("--explainer", choices=["ig2", "guided"], default="ig2")
    parser.add_argument("--size", type=int, default=None, help="crop side; default 224 (smoke 32)")
    parser.add_argument("--crops", type=int, default=None, help="per photo; default 7 (smoke 2)")
    parser.add_argument("--steps", type=int, default=None, help="path steps; default 20 (smoke 4)")
    parser.add_argument(
        "--refs", type=int, default=None, help="IG2 references; default 2 (smoke 1)"
    )
    parser.add_argument("--batch-size", type=int, default=None, help="default 4 (smoke 2)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds (CI)")
    args = parser.parse_args(argv)
    args.size = args.size or (32 if args.smoke else 224)
    args.crops = args.crops or (2 if args.smoke else 7)
    args.steps = args.steps or (4 if args.smoke else 20)
    args.refs = args.refs or (1 if args.smoke else 2)
    args.batch_size = args.batch_size or (2 if args.smoke else 4)
    args.photos = ("chelsea", "coffee") if args.smoke else PHOTOS
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    else:
        device = torch.device("cpu")
    distributed = int(os.environ.get("WORLD_SIZE", 1)) > 1
    if distributed:
        torch.distributed.init_process_group("gloo")
    try:
        model = efficientnet_lite0().to(device)
        images, _ = photo_crops(args.photos, crops=args.crops, size=args.size)
        images = images.to(device)
        labels = predicted_classes(model, images)
        # explain_dataset hands each batch to the explainer as the loader gives it, so the data
        # lives on the model's device.
        loader = DataLoader(TensorDataset(images, labels), batch_size=args.batch_size)
        baselines: Any
        if args.explainer == "ig2":
            explainer: Any = IterativeGradientIG(model, model.representation_layer)
            pool, _ = photo_crops(PHOTOS, crops=1, size=args.size)  # the whole photos
            pool = pool.to(device)
            baselines = OtherClassReferences(pool, predicted_classes(model, pool), args.refs)
            kwargs: dict[str, Any] = {"n_steps": args.steps, "clamp": (0.0, 1.0)}
        else:
            explainer, baselines = GuidedIG(model), None  # from a black image
            kwargs = {"n_steps": args.steps}
        explain_dataset(
            explainer, loader, args.out_dir, baselines=baselines, attribute_kwargs=kwargs
        )
    finally:
        if distributed:
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
