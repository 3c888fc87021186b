"""Explains EfficientNet-Lite0's predictions on photo crops with Ray Data, on one machine or a
cluster.

The driver builds a ``ray.data.Dataset`` of the square crops of the colour photos that
scikit-image and scikit-learn ship (``captum_ig2.pretrained``), one row per crop: ``id``
(``"photo/k"``), ``image`` (3 x H x W in [0, 1]), ``label`` (the ImageNet class the network
predicts, the class explained) and, for IG2, ``reference``: the whole photos of another
predicted class that differ most from the crop (R x 3 x H x W). ``map_batches`` runs
``captum_ig2.dataset.BatchExplainer`` on ``--concurrency`` workers (Ray actors), each of which
builds EfficientNet-Lite0 and the explainer once, on its GPU when it has one, and adds the
columns ``attributions``, ``delta``, ``relative_error``, ``converged``, ``evaluations`` and
``error`` (empty, or the message of a batch that raised; its attributions are then NaN). The
rows, without the references, are written to OUT_DIR as Parquet files; OUT_DIR must be new or
empty, since Ray adds files to a folder (a second run would double every row). Ray 2.51 and
later prefer ``compute=ray.data.ActorPoolStrategy(size=N)`` to ``concurrency=N``; both work.

On this machine (a local Ray instance that lives as long as the script)::

    python examples/explain_with_ray.py --concurrency 2 OUT_DIR

On a cluster (every node needs this package with its ``pretrained`` and ``ray`` extras,
``pip install "captum-ig2[pretrained,ray]"``, and OUT_DIR must be a folder every node sees, or
a URI such as ``s3://bucket/out``)::

    ray start --head                         # on the head node
    ray start --address HEAD:6379            # on every other node
    python examples/explain_with_ray.py --address auto --concurrency 8 --num-gpus 1 OUT_DIR

or, from any machine, as a Ray job::

    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python examples/explain_with_ray.py --address auto --concurrency 8 --num-gpus 1 OUT_DIR

``--smoke`` (CI): four crops at 32 px, 4 steps, a local Ray instance whose workers run one
thread each. The full run (42 crops at 224 px, IG2's 20-step GradPath to 2 references
with its default quadrature) takes about 100 s an example on one CPU thread, so it wants GPUs.

Reading the results back, with Ray::

    rows = ray.data.read_parquet("OUT_DIR").to_pandas()   # one row per crop, in any order
    attributions = np.stack(rows["attributions"])          # (N, 3, H, W)
    rows[rows["error"] != ""]                              # the rows whose batch failed

or with pandas alone, which reads Ray's tensor columns as flat arrays::

    rows = pandas.read_parquet("OUT_DIR")
    attributions = np.stack(rows["attributions"]).reshape(len(rows), 3, H, W)
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from captum_ig2 import GuidedIG, IterativeGradientIG
from captum_ig2.dataset import BatchExplainer
from captum_ig2.pretrained import (
    PHOTOS,
    OtherClassReferences,
    efficientnet_lite0,
    photo_crops,
    predicted_classes,
)


def build_explainer(explainer: str) -> Any:
    """The explainer of one worker: EfficientNet-Lite0 on the worker's GPU when it has one,
    with IG2 (``"ig2"``, its GradPath in the network's last convolution) or Guided IG."""
    model = efficientnet_lite0()
    if torch.cuda.is_available():
        model = model.cuda()
    if explainer == "ig2":
        return IterativeGradientIG(model, model.representation_layer)
    return GuidedIG(model)


def build_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The rows of the data set: id, image, label (the predicted class) and, for IG2,
    reference."""
    model = efficientnet_lite0()
    images, ids = photo_crops(args.photos, crops=args.crops, size=args.size)
    labels = predicted_classes(model, images)
    columns: dict[str, Any] = {"id": ids, "image": images.numpy(), "label": labels.numpy()}
    if args.explainer == "ig2":
        pool, _ = photo_crops(PHOTOS, crops=1, size=args.size)  # the whole photos
        sampler = OtherClassReferences(pool, predicted_classes(model, pool), args.refs)
        references = sampler(images, labels)
        columns["reference"] = references.numpy()
    return [dict(zip(columns, row)) for row in zip(*columns.values(), strict=True)]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("out_dir", help="the output folder (or URI) of the Parquet files")
    parser.add_argument(
        "--address", default=None, help='the Ray cluster: "auto", HOST:6379; default: a local one'
    )
    parser.add_argument("--concurrency", type=int, default=2, help="workers (actors); default 2")
    parser.add_argument("--num-gpus", type=float, default=0, help="GPUs per worker; default 0")
    parser.add_argument("--num-cpus", type=float, default=1, help="CPUs per worker; default 1")
    parser.add_argument("--explainer", choices=["ig2", "guided"], default="ig2")
    parser.add_argument("--size", type=int, default=None, help="crop side; default 224 (smoke 32)")
    parser.add_argument("--crops", type=int, default=None, help="per photo; default 7 (smoke 2)")
    parser.add_argument("--steps", type=int, default=None, help="path steps; default 20 (smoke 4)")
    parser.add_argument(
        "--refs", type=int, default=None, help="IG2 references; default 2 (smoke 1)"
    )
    parser.add_argument("--batch-size", type=int, default=None, help="default 4 (smoke 2)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a local instance (CI)")
    args = parser.parse_args(argv)
    args.size = args.size or (32 if args.smoke else 224)
    args.crops = args.crops or (2 if args.smoke else 7)
    args.steps = args.steps or (4 if args.smoke else 20)
    args.refs = args.refs or (1 if args.smoke else 2)
    args.batch_size = args.batch_size or (2 if args.smoke else 4)
    args.photos = ("chelsea", "coffee") if args.smoke else PHOTOS
    return args


def main(argv: Sequence[str] | None = None) -> None:
    import pyarrow.parquet as pq
    import ray

    args = parse_args(argv)
    out = Path(args.out_dir)
    if "://" not in args.out_dir and out.is_dir() and any(out.iterdir()):
        # write_parquet adds files to a folder: a second run would double every row.
        raise SystemExit(f"{args.out_dir} is not empty; Ray would add to it. Give a new folder.")
    if args.address is None and args.smoke:  # a small local instance, one thread per worker
        ray.init(
            num_cpus=args.concurrency + 1,  # one left for the Parquet writes
            include_dashboard=False,
            runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}},
        )
    else:
        ray.init(address=args.address)
    try:
        ds = ray.data.from_items(build_rows(args))
        ig2 = args.explainer == "ig2"
        attribute_kwargs = {"n_steps": args.steps, **({"clamp": (0.0, 1.0)} if ig2 else {})}
        explained = ds.map_batches(
            BatchExplainer,
            fn_constructor_kwargs={
                "factory": functools.partial(build_explainer, args.explainer),
                "input_column": "image",
                "target_column": "label",
                "baselines_column": "reference" if ig2 else None,
                "attribute_kwargs": attribute_kwargs,
            },
            batch_size=args.batch_size,
            concurrency=args.concurrency,
            num_gpus=args.num_gpus,
            num_cpus=args.num_cpus,
        )
        if ig2:
            explained = explained.drop_columns(["reference"])
        explained.write_parquet(args.out_dir)
    finally:
        ray.shutdown()
    table = pq.read_table(args.out_dir, columns=["error", "converged"]).to_pydict()
    failed = sum(error != "" for error in table["error"])
    converged = np.mean(table["converged"])
    print(
        f"{args.out_dir}: {len(table['error'])} rows, {failed} failed, {converged:.1%} within "
        "the completeness tolerance"
    )


if __name__ == "__main__":
    main()
