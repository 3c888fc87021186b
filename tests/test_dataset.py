"""explain_dataset: shards equal direct attribute calls, resume after a crash, ranks and torchrun,
bad batches recorded, and the Ray Data callable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients, Saliency
from dataset_worker import BATCH_SIZE, KWARGS, N_EXAMPLES, CountingDataset, model, references
from torch.utils.data import DataLoader

from captum_ig2 import GuidedIG, IterativeGradientIG, LayerIterativeGradientIG
from captum_ig2.dataset import BatchExplainer, explain_dataset, load_results, read_manifest

WORKER = Path(__file__).with_name("dataset_worker.py")
ROOT = Path(__file__).parents[1]
N_BATCHES = -(-N_EXAMPLES // BATCH_SIZE)
#: The papers' estimator (one left gradient per step) with a tolerance it misses.
PAPER = {"n_steps": 4, "method": "riemann_left", "nodes": 1, "epsrel": 1e-3, "limit": 1}


def _loader() -> DataLoader:
    return DataLoader(CountingDataset(), BATCH_SIZE)


def _run(out: Path, **kwargs: object) -> object:
    kwargs.setdefault("baselines", references())
    kwargs.setdefault("attribute_kwargs", KWARGS)
    return explain_dataset(
        IterativeGradientIG(model()), _loader(), out, show_progress=False, **kwargs
    )


def _direct(explainer: object, baselines: object = None, **kwargs: object) -> dict:
    """Each batch attributed by a direct call, concatenated."""
    parts = []
    for x, y in _loader():
        args = {} if baselines is None else {"baselines": baselines}
        parts.append(explainer.attribute(x, target=y, **args, **kwargs))
    return torch.cat(parts).numpy()


def _assert_same_results(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=2e-6, atol=1e-7, err_msg=name)


# --- what the shards hold -------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, baselines, kwargs",
    [
        (lambda m: IterativeGradientIG(m), references(), KWARGS),
        (lambda m: GuidedIG(m), None, {"n_steps": 16}),
        (lambda m: IntegratedGradients(m), None, {"n_steps": 32}),
        (lambda m: Saliency(m), None, {}),
    ],
    ids=["IterativeGradientIG", "GuidedIG", "captum IntegratedGradients", "captum Saliency"],
)
@pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")
def test_shards_hold_what_direct_attribute_calls_return(tmp_path, make, baselines, kwargs):
    net = model()
    summary = explain_dataset(
        make(net), _loader(), tmp_path, baselines=baselines, attribute_kwargs=kwargs,
        show_progress=False,
    )  # fmt: skip
    results = load_results(tmp_path)
    expected = _direct(make(net), baselines, **kwargs)
    np.testing.assert_allclose(results["attributions"], expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(results["index"], np.arange(N_EXAMPLES))
    np.testing.assert_array_equal(results["target"], CountingDataset().y.numpy())
    assert summary.examples == N_EXAMPLES and summary.batches == N_BATCHES
    assert ("delta" in results) == (not isinstance(make(net), Saliency))


def _batch_records(**kwargs):  # type: ignore[no-untyped-def]
    """IG2's ``path`` on every batch of the data set, called directly."""
    x, y = CountingDataset().x, CountingDataset().y
    return [
        IterativeGradientIG(model()).path(
            x[i : i + BATCH_SIZE], references(), y[i : i + BATCH_SIZE], **kwargs
        )
        for i in range(0, N_EXAMPLES, BATCH_SIZE)
    ]


@pytest.mark.filterwarnings("ignore::captum_ig2.ConvergenceWarning")  # the direct calls warn
@pytest.mark.filterwarnings("ignore::captum_ig2.StabilityWarning")
def test_completeness_columns_match_the_path_record(tmp_path):
    summary = explain_dataset(
        IterativeGradientIG(model()), _loader(), tmp_path, baselines=references(),
        attribute_kwargs=PAPER, show_progress=False,
        save=["attributions", "delta", "relative_error", "converged", "evaluations", "gradcf",
              "stability"],
    )  # fmt: skip
    results = load_results(tmp_path)
    x, y = CountingDataset().x, CountingDataset().y
    records = _batch_records(**PAPER)
    for name, of in [
        ("delta", lambda r: r.delta),
        ("relative_error", lambda r: r.relative_error),
        ("converged", lambda r: r.converged),
        ("evaluations", lambda r: r.evaluations),
        ("gradcf", lambda r: r.end),
        ("stability", lambda r: r.stability),
    ]:
        expected = torch.cat([of(r) for r in records]).numpy()
        np.testing.assert_allclose(results[name], expected, rtol=1e-6, err_msg=name)
    paths = 2 * 8  # 2 references, 8 walks each
    assert results["gradcf"].shape == (N_EXAMPLES, paths, x.shape[1])
    assert summary.stable == (results["stability"] >= 0.9).sum()
    # An independent check of relative_error: abs(delta) / abs(f(input) - mean f(GradCF)).
    net = model()
    with torch.no_grad():
        f_x = net(x).gather(1, y[:, None])[:, 0]
        f_end = net(torch.as_tensor(results["gradcf"]).flatten(0, 1))
        f_end = f_end.reshape(N_EXAMPLES, paths, -1)
        f_end = f_end.gather(2, y[:, None, None].expand(-1, paths, 1))[..., 0].mean(1)
    gap = (f_x - f_end).numpy()
    np.testing.assert_allclose(
        results["relative_error"], np.abs(results["delta"]) / np.abs(gap), rtol=1e-4
    )
    # The papers' sum with 4 steps misses 0.1 %: counted, not warned per batch.
    assert not results["converged"].all()
    assert summary.converged == results["converged"].sum() < N_EXAMPLES


@pytest.mark.filterwarnings("ignore::captum_ig2.ConvergenceWarning")
@pytest.mark.filterwarnings("ignore::captum_ig2.StabilityWarning")
def test_converged_is_the_path_records_own_with_igs_default_rule(tmp_path):
    # IG2's default rule is complete by construction (delta is rounding), so "converged" must
    # come from the record: whether the map's estimated error is within sqrt(epsrel). One
    # piece per segment (limit=1) leaves it above.
    kwargs = {"n_steps": 4, "limit": 1}
    summary = explain_dataset(
        IterativeGradientIG(model()), _loader(), tmp_path, baselines=references(),
        attribute_kwargs=kwargs, show_progress=False,
    )  # fmt: skip
    results = load_results(tmp_path)
    records = _batch_records(**kwargs)
    expected = torch.cat([r.converged for r in records]).numpy()
    assert all(r.map_error is not None for r in records)
    assert (np.abs(results["delta"]) <= 1e-4).all()  # complete ...
    assert not expected.all()  # ... yet some maps are not within their tolerance
    np.testing.assert_array_equal(results["converged"], expected)
    assert summary.converged == expected.sum()


def test_captum_relative_error_is_delta_over_the_output_difference(tmp_path):
    net = model()
    explain_dataset(
        IntegratedGradients(net), _loader(), tmp_path, attribute_kwargs={"n_steps": 5},
        show_progress=False,
    )  # fmt: skip
    results = load_results(tmp_path)
    x, y = CountingDataset().x, CountingDataset().y
    with torch.no_grad():
        gap = (net(x) - net(torch.zeros_like(x))).gather(1, y[:, None])[:, 0].numpy()
    np.testing.assert_allclose(results["attributions"].sum(1) - gap, results["delta"], atol=1e-5)
    np.testing.assert_allclose(results["relative_error"], np.abs(results["delta"] / gap), rtol=1e-3)
    np.testing.assert_array_equal(results["converged"], results["relative_error"] <= 0.02)


def test_layer_variant_and_reference_sampler(tmp_path):
    net = model()
    seen = []

    def sampler(inputs, target):  # one reference per input, of another class
        seen.append(len(inputs))
        return torch.flip(inputs, dims=[0])

    explain_dataset(
        LayerIterativeGradientIG(net, net[1]), _loader(), tmp_path, baselines=sampler,
        attribute_kwargs=KWARGS, show_progress=False,
    )  # fmt: skip
    expected = []
    for x, y in _loader():
        expected.append(
            LayerIterativeGradientIG(net, net[1]).attribute(x, torch.flip(x, [0]), y, **KWARGS)
        )
    np.testing.assert_allclose(
        load_results(tmp_path)["attributions"], torch.cat(expected).numpy(), rtol=1e-6, atol=1e-7
    )
    assert sum(seen) == N_EXAMPLES


# --- resume ---------------------------------------------------------------------------------


def test_second_call_skips_finished_shards_without_loading_them(tmp_path):
    _run(tmp_path)
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "shards").rglob("*.npy")}
    loader = _loader()
    summary = explain_dataset(
        IterativeGradientIG(model()), loader, tmp_path, baselines=references(),
        attribute_kwargs=KWARGS, show_progress=False,
    )  # fmt: skip
    assert summary.resumed == N_BATCHES and summary.batches == 0
    assert loader.dataset.read == []  # no example of a finished shard was read
    assert stamps == {p: p.stat().st_mtime_ns for p in (tmp_path / "shards").rglob("*.npy")}


def _crash(out: Path, flag: str, k: int) -> None:
    run = subprocess.run(
        [sys.executable, str(WORKER), str(out), flag, str(k)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert run.returncode == -9, run.stdout + run.stderr  # killed by SIGKILL, as planned


@pytest.mark.parametrize(
    "flag, k", [("--kill-after-shards", 3), ("--kill-mid-shard", 4)], ids=["between", "mid-shard"]
)
def test_resume_after_a_kill_equals_an_uninterrupted_run(tmp_path, flag, k):
    _crash(tmp_path / "resumed", flag, k)
    shards = sorted(p.name for p in (tmp_path / "resumed" / "shards").iterdir())
    finished = [s for s in shards if s.startswith("batch-")]
    assert len(finished) == 3  # what was there when the process died; no half shard
    if flag == "--kill-mid-shard":
        assert any(s.startswith(".tmp-") for s in shards)  # the unrenamed shard
    summary = _run(tmp_path / "resumed")
    assert summary.resumed == 3 and summary.batches == N_BATCHES - 3
    assert not any(p.name.startswith(".tmp-") for p in (tmp_path / "resumed/shards").iterdir())
    _run(tmp_path / "whole")
    resumed, whole = load_results(tmp_path / "resumed"), load_results(tmp_path / "whole")
    np.testing.assert_array_equal(resumed["index"], np.arange(N_EXAMPLES))  # none lost, none twice
    _assert_same_results(resumed, whole)
    entries = read_manifest(tmp_path / "resumed")
    assert [e["batch"] for e in entries] == list(range(N_BATCHES))


def test_a_folder_of_another_run_or_order_is_refused(tmp_path):
    _run(tmp_path)
    with pytest.raises(ValueError, match="attribute_kwargs"):
        _run(tmp_path, attribute_kwargs={"n_steps": 9})
    explainer = IterativeGradientIG(model())
    # The same data in another order: batch 0 now holds other examples.
    loader = DataLoader(CountingDataset(), BATCH_SIZE, sampler=list(reversed(range(N_EXAMPLES))))
    with pytest.raises(ValueError, match="order changed"):
        explain_dataset(
            explainer, loader, tmp_path, baselines=references(), attribute_kwargs=KWARGS,
            show_progress=False,
        )  # fmt: skip


# --- processes --------------------------------------------------------------------------------


def test_ranks_split_the_batches_and_their_union_is_the_whole(tmp_path):
    summaries = [_run(tmp_path / "split", rank=r, world_size=3) for r in range(3)]
    assert sum(s.batches for s in summaries) == N_BATCHES
    assert all(s.batches in (N_BATCHES // 3, N_BATCHES // 3 + 1) for s in summaries)
    _run(tmp_path / "whole")
    _assert_same_results(load_results(tmp_path / "split"), load_results(tmp_path / "whole"))
    ranks = {e["batch"]: e["rank"] for e in read_manifest(tmp_path / "split")}
    assert all(rank == batch % 3 for batch, rank in ranks.items())


def test_torchrun_with_two_gloo_processes_equals_one_process(tmp_path):
    run = subprocess.run(
        [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
            "2", str(WORKER), str(tmp_path / "torchrun"), "--distributed",
        ],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    ranks = {e["rank"] for e in read_manifest(tmp_path / "torchrun")}
    assert ranks == {0, 1}
    _run(tmp_path / "whole")
    _assert_same_results(load_results(tmp_path / "torchrun"), load_results(tmp_path / "whole"))


def test_a_shuffling_loader_is_refused_with_several_processes(tmp_path):
    loader = DataLoader(CountingDataset(), BATCH_SIZE, shuffle=True)
    with pytest.raises(ValueError, match="shuffles"):
        explain_dataset(
            IterativeGradientIG(model()), loader, tmp_path, baselines=references(), rank=0,
            world_size=2, show_progress=False,
        )  # fmt: skip


# --- bad batches and bad arguments ----------------------------------------------------------------


def test_bad_batches_are_recorded_and_the_run_goes_on(tmp_path, capsys):
    x, y = CountingDataset().x, CountingDataset().y
    nan = x[:4].clone()
    nan[1, 2] = float("nan")
    batches = [(x[:4], y[:4]), (nan, y[:4]), (x[4:7, :5], y[4:7]), (x[7:9], y[7:9])]
    caller = [b[0].clone() for b in batches]
    summary = explain_dataset(
        IterativeGradientIG(model()), batches, tmp_path, baselines=references()[:1],
        attribute_kwargs=KWARGS,
    )  # fmt: skip
    assert summary.batches == 2 and summary.failed_batches == 2 and summary.failed_examples == 7
    entries = read_manifest(tmp_path)
    assert [e["status"] for e in entries] == ["done", "failed", "failed", "done"]
    assert "NaN" in entries[1]["error"] and entries[1]["examples"] == 4
    assert entries[2]["error"].startswith(("ValueError", "RuntimeError"))
    printed = capsys.readouterr().out
    assert "7 examples in 2 batches failed" in printed and "NaN" in printed
    np.testing.assert_array_equal(load_results(tmp_path)["index"], [0, 1, 2, 3, 11, 12])
    for before, (after, _) in zip(caller, batches, strict=True):  # the caller's, untouched
        torch.testing.assert_close(after, before, rtol=0, atol=0, equal_nan=True)
    again = explain_dataset(
        IterativeGradientIG(model()), batches, tmp_path, baselines=references()[:1],
        attribute_kwargs=KWARGS, show_progress=False,
    )  # fmt: skip
    assert again.resumed == 2 and again.failed_batches == 2  # failures are retried


def test_nan_attributions_of_a_captum_explainer_are_a_failure_not_a_result(tmp_path):
    class NanNet(torch.nn.Module):
        def forward(self, x):
            return torch.sqrt(x - 0.5).sum(1, keepdim=True)  # NaN below 0.5

    batches = [torch.rand(3, 4) * 0.4]
    summary = explain_dataset(IntegratedGradients(NanNet()), batches, tmp_path, show_progress=False)
    assert summary.failed_batches == 1 and "NaN" in read_manifest(tmp_path)[0]["error"]


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"attribute_kwargs": {"n_stepz": 3}}, TypeError, "no argument 'n_stepz'"),
        ({"attribute_kwargs": {"target": 1}}, ValueError, "may not set 'target'"),
        ({"save": ["attributions", "saliency"]}, ValueError, "unknown 'saliency'"),
        ({"save": "attributions"}, TypeError, "sequence"),
        ({"rank": 1}, ValueError, "together"),
        ({"rank": 2, "world_size": 2}, ValueError, "rank < world_size"),
        ({"show_progress": 1}, TypeError, "show_progress"),
    ],
)
def test_bad_arguments_are_named_before_any_batch_is_read(tmp_path, kwargs, error, match):
    loader = _loader()
    with pytest.raises(error, match=match):
        explain_dataset(IterativeGradientIG(model()), loader, tmp_path, **kwargs)
    assert loader.dataset.read == []


@pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")
def test_saving_what_an_explainer_cannot_report_is_refused(tmp_path):
    with pytest.raises(ValueError, match="GradCF"):
        explain_dataset(GuidedIG(model()), _loader(), tmp_path, save=["gradcf"])
    with pytest.raises(ValueError, match="no convergence delta"):
        explain_dataset(Saliency(model()), _loader(), tmp_path, save=["delta"])
    with pytest.raises(ValueError, match="local"):
        explain_dataset(
            IntegratedGradients(model(), multiply_by_inputs=False), _loader(), tmp_path,
            save=["relative_error"],
        )  # fmt: skip
    with pytest.raises(TypeError, match="explainer"):
        explain_dataset(model(), _loader(), tmp_path)


def test_folder_layout_reads_without_this_package(tmp_path):
    _run(tmp_path, save=["attributions", "delta"])
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["explainer"].endswith("IterativeGradientIG") and run["save"] == [
        "attributions",
        "delta",
    ]
    lines = []
    for manifest in sorted(tmp_path.glob("manifest-rank*.jsonl")):
        lines += [json.loads(line) for line in manifest.read_text().splitlines()]
    attributions = np.concatenate(
        [np.load(tmp_path / e["shard"] / "attributions.npy", mmap_mode="r") for e in lines]
    )
    assert attributions.shape == (N_EXAMPLES, 6) and attributions.dtype == np.float32
    assert torch.from_numpy(np.load(tmp_path / lines[0]["shard"] / "delta.npy")).shape == (4,)


# --- Ray Data -----------------------------------------------------------------------------------


def _columns() -> dict[str, np.ndarray]:
    data = CountingDataset()
    return {"image": data.x.numpy(), "label": data.y.numpy()}


def test_batch_explainer_adds_the_columns_of_a_direct_call():
    explain = BatchExplainer(
        lambda: IterativeGradientIG(model()), input_column="image", target_column="label",
        baselines=references(), attribute_kwargs=KWARGS,
    )  # fmt: skip
    columns = _columns()
    out = explain(columns)
    direct = IterativeGradientIG(model()).attribute(
        torch.as_tensor(columns["image"]), references(), torch.as_tensor(columns["label"]),
        **KWARGS,
    )  # fmt: skip
    np.testing.assert_allclose(out["attributions"], direct.numpy(), rtol=1e-6, atol=1e-7)
    assert (out["error"] == "").all() and out["converged"].dtype == bool
    np.testing.assert_array_equal(out["label"], columns["label"])
    columns["image"][3, 1] = np.nan
    bad = explain(columns)
    assert np.isnan(bad["attributions"]).all() and "NaN" in bad["error"][0]
    assert not bad["converged"].any()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray's own, inside Ray
def test_ray_data_with_two_workers_equals_a_direct_call():
    if os.environ.get("CAPTUM_IG2_REQUIRE_RAY"):  # CI: a skip would hide a missing test
        import ray
    else:
        ray = pytest.importorskip("ray")
    path = os.pathsep.join([str(WORKER.parent), str(ROOT)])  # the workers import this module
    ray.init(
        num_cpus=2, include_dashboard=False, log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": path, "OMP_NUM_THREADS": "1"}},
    )  # fmt: skip
    try:
        columns = _columns()
        ds = ray.data.from_items(
            [{"image": x, "label": y} for x, y in zip(*columns.values(), strict=True)]
        )
        out = ds.map_batches(
            BatchExplainer,
            fn_constructor_kwargs={
                "factory": lambda: IterativeGradientIG(model()),
                "target_column": "label",
                "baselines": references(),
                "attribute_kwargs": KWARGS,
            },
            batch_size=BATCH_SIZE, concurrency=2, num_cpus=1,
        ).to_pandas()  # fmt: skip
    finally:
        ray.shutdown()
    got = np.stack(out["attributions"].to_numpy())
    direct = IterativeGradientIG(model()).attribute(
        torch.as_tensor(columns["image"]), references(), torch.as_tensor(columns["label"]),
        **KWARGS,
    )  # fmt: skip
    order = np.lexsort(np.stack(out["image"].to_numpy()).T)
    expected_order = np.lexsort(columns["image"].T)
    np.testing.assert_allclose(got[order], direct.numpy()[expected_order], rtol=1e-5, atol=1e-6)
    assert (out["error"] == "").all()


def test_a_batch_of_the_wrong_form_stops_the_run_at_once(tmp_path):
    batches = [{"image": torch.rand(2, 6), "label": torch.tensor([0, 1])}]
    with pytest.raises(TypeError, match=r"batch 0.*'inputs'.*\['image', 'label'\]"):
        explain_dataset(IterativeGradientIG(model()), batches, tmp_path, show_progress=False)
    with pytest.raises(TypeError, match="tensor of inputs first"):
        explain_dataset(GuidedIG(model()), [([1.0, 2.0], 0)], tmp_path / "b", show_progress=False)
    assert not list((tmp_path / "shards").iterdir())


def test_a_loader_with_worker_processes_gives_the_same_shards(tmp_path):
    _run(tmp_path / "whole")
    loader = DataLoader(CountingDataset(), BATCH_SIZE, num_workers=2)
    first = explain_dataset(
        IterativeGradientIG(model()), loader, tmp_path / "workers", baselines=references(),
        attribute_kwargs=KWARGS, show_progress=False, rank=0, world_size=2,
    )  # fmt: skip
    rest = explain_dataset(
        IterativeGradientIG(model()), loader, tmp_path / "workers", baselines=references(),
        attribute_kwargs=KWARGS, show_progress=False,
    )  # fmt: skip
    assert first.batches == 4 and rest.resumed == 4 and rest.batches == N_BATCHES - 4
    _assert_same_results(load_results(tmp_path / "workers"), load_results(tmp_path / "whole"))


def test_every_captum_target_form_is_saved_per_example(tmp_path):
    x, y = CountingDataset().x, CountingDataset().y
    batches = [(x[:3], torch.tensor([1])), (x[3:5], 2), {"inputs": x[5:8], "target": y[5:8]}]
    explain_dataset(
        IntegratedGradients(model()), batches, tmp_path, show_progress=False,
        attribute_kwargs={"n_steps": 8},
    )  # fmt: skip
    np.testing.assert_array_equal(load_results(tmp_path)["target"], [1, 1, 1, 2, 2, *y[5:8]])


def test_noise_tunnel_gives_its_attributions_and_refuses_a_per_example_delta(tmp_path):
    from captum.attr import NoiseTunnel

    nt = {"nt_type": "smoothgrad", "nt_samples": 3, "stdevs": 0.05, "n_steps": 4}
    torch.manual_seed(0)
    explain_dataset(
        NoiseTunnel(IterativeGradientIG(model())), _loader(), tmp_path, show_progress=False,
        baselines=references()[None], attribute_kwargs=nt,
    )  # fmt: skip
    torch.manual_seed(0)
    expected = _direct(NoiseTunnel(IterativeGradientIG(model())), references()[None], **nt)
    results = load_results(tmp_path)
    assert sorted(results) == ["attributions", "index", "target"]
    np.testing.assert_allclose(results["attributions"], expected, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="one per noisy sample"):
        explain_dataset(NoiseTunnel(GuidedIG(model())), _loader(), tmp_path / "b", save=["delta"])


def test_a_resume_with_other_references_is_refused(tmp_path):
    _run(tmp_path)
    with pytest.raises(ValueError, match="baselines"):
        _run(tmp_path, baselines=references() + 0.01)
    assert json.loads((tmp_path / "run.json").read_text())["baselines"].startswith("sha256")


def test_max_failures_stops_the_run_with_the_summary(tmp_path):
    x = CountingDataset().x
    batches = [(x[:2], 0), (x[2:4, :5], 0), (x[4:6], 0)]  # the second has the wrong shape
    with pytest.raises(RuntimeError, match=r"more than 0 batches failed[\s\S]*1 batches failed"):
        explain_dataset(GuidedIG(model()), batches, tmp_path, max_failures=0, show_progress=False)
    assert [e["status"] for e in read_manifest(tmp_path)] == ["done", "failed"]
    with pytest.raises(ValueError, match="max_failures"):
        explain_dataset(GuidedIG(model()), batches, tmp_path, max_failures=-1)


def test_other_class_references_are_the_farthest_images_of_another_class():
    from captum_ig2.pretrained import OtherClassReferences

    generator = torch.Generator().manual_seed(2)
    pool, inputs = torch.rand(7, 3, 4, 4, generator=generator), torch.rand(3, 3, 4, 4)
    pool_classes, target = torch.tensor([0, 1, 1, 2, 0, 2, 1]), torch.tensor([1, 0, 2])
    chosen = OtherClassReferences(pool, pool_classes, per_input=2)(inputs, target)
    assert chosen.shape == (3, 2, 3, 4, 4)
    for i in range(3):  # brute force: the two farthest of another class, in order
        others = [j for j in range(7) if pool_classes[j] != target[i]]
        far = sorted(others, key=lambda j: -float((inputs[i] - pool[j]).pow(2).mean()))[:2]
        assert torch.equal(chosen[i], pool[far])
    with pytest.raises(ValueError, match="fewer than 5"):  # 4 images are not of class 1
        OtherClassReferences(pool, pool_classes, per_input=5)(inputs, torch.tensor([1, 1, 1]))


def test_a_resumed_run_counts_only_its_own_batches_in_the_progress_rate(tmp_path, monkeypatch):
    import captum_ig2.dataset as dataset

    bars = []
    make = dataset._progress_bar

    def keep(*args, **kwargs):  # type: ignore[no-untyped-def]
        bars.append(make(*args, **kwargs))
        return bars[-1]

    monkeypatch.setattr(dataset, "_progress_bar", keep)
    first = list(_loader())[:3]  # a first call that does 3 of the batches
    explain_dataset(IterativeGradientIG(model()), first, tmp_path, baselines=references(),
                    attribute_kwargs=KWARGS, show_progress=True)  # fmt: skip
    explain_dataset(IterativeGradientIG(model()), _loader(), tmp_path, baselines=references(),
                    attribute_kwargs=KWARGS, show_progress=True)  # fmt: skip
    resumed_bar = bars[-1]
    # The bar's total and count are this call's work: its rate is not inflated by the 3 skipped.
    assert resumed_bar.total == N_BATCHES - 3 and resumed_bar.n == N_BATCHES - 3
