"""Explaining a whole data set: attributions streamed to disk in shards that a second call
resumes, shared out over the processes of ``torchrun`` or the workers of Ray Data.

:func:`explain_dataset` walks an iterable of batches (a ``torch.utils.data.DataLoader`` or any
iterable of inputs with their targets), attributes each batch with any explainer (the
package's classes, Captum's ``IntegratedGradients`` and its other attribution classes) and
writes one **shard** per batch: a folder of ``.npy`` files (NumPy's own format: ``np.load``
reads it, memory-mapped if wished, and ``torch.from_numpy`` turns it into a tensor; no pickle,
no extra package) with a ``meta.json``. A shard is written under a temporary name and renamed
when complete, so a folder is never left with half a shard; each process appends what it did
(done or failed, with the error) to its own ``manifest-rank*.jsonl``. :func:`read_manifest`
and :func:`load_results` read a finished folder back.

:class:`BatchExplainer` is the same per-batch step as a callable class for
``ray.data.Dataset.map_batches``: it builds the explainer once per worker from the user's
factory and returns the attributions as columns.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import shutil
import time
import uuid
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from captum_ig2._attribution import (
    EPSREL,
    MIN_STABILITY,
    N_WALKS,
    StabilityWarning,
    per_example_sum,
)
from captum_ig2._quadrature import ConvergenceWarning

__all__ = ["BatchExplainer", "DatasetSummary", "explain_dataset", "load_results", "read_manifest"]

#: The layout version written to ``run.json``; a folder of another version is not resumed.
FORMAT_VERSION = 1
#: What a shard may hold besides ``index`` (and ``target`` when the batches have targets).
SAVE_CHOICES = (
    "attributions", "delta", "relative_error", "converged", "evaluations", "gradcf", "stability",
)  # fmt: skip

Baselines = Any  # None, a number, a tensor (tuple), or a callable (inputs, target) -> those


@dataclass
class DatasetSummary:
    """What a call of :func:`explain_dataset` did, as its last line says it.

    Attributes:
        out_dir: the output folder.
        rank, world_size: this process's share (``rank`` of ``world_size``).
        examples: the examples attributed and written by this call.
        batches: the shards written by this call.
        resumed: the shards found finished from an earlier call and skipped.
        failed_batches, failed_examples: the batches (and their examples) that raised; each is
            recorded in the manifest and retried by the next call.
        failures: per error message, how many examples failed with it.
        converged: of the examples written, how many are within the completeness tolerance
            (for IG2's default rule, complete by construction: the map's estimated error
            within its tolerance; None when the explainer has no convergence delta).
        stable: of the examples written, how many have a stability of at least 0.9 (None
            where the explainer reports no stability: IG2 with one walk, other classes).
        seconds: wall-clock time of the call.
    """

    out_dir: Path
    rank: int
    world_size: int
    examples: int = 0
    batches: int = 0
    resumed: int = 0
    failed_batches: int = 0
    failed_examples: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    converged: int | None = None
    stable: int | None = None
    seconds: float = 0.0

    @property
    def examples_per_second(self) -> float:
        """Throughput of this call: examples written per second."""
        return self.examples / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        share = f" (rank {self.rank} of {self.world_size})" if self.world_size > 1 else ""
        text = (
            f"{self.out_dir}{share}: {self.examples} examples in {self.batches} shards, "
            f"{self.examples_per_second:.3g} examples/s; {self.resumed} shards already done"
        )
        if self.converged is not None and self.examples:
            text += f"; {self.converged / self.examples:.1%} within the completeness tolerance"
        if self.stable is not None and self.examples:
            text += f", {self.stable / self.examples:.1%} stable to {MIN_STABILITY}"
        if self.failed_batches:
            text += f"; {self.failed_examples} examples in {self.failed_batches} batches failed:"
            for message, count in self.failures.items():
                text += f"\n  {count} examples: {message}"
        else:
            text += "; none failed"
        return text


@dataclass
class _Batch:
    inputs: Tensor | tuple[Tensor, ...]
    target: Any = None
    baselines: Any = None
    additional_forward_args: Any = None


def explain_dataset(
    explainer: Any,
    batches: Iterable[Any],
    out_dir: str | os.PathLike[str],
    *,
    baselines: Baselines = None,
    attribute_kwargs: Mapping[str, Any] | None = None,
    save: Sequence[str] | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    device: str | torch.device | None = None,
    max_failures: int | None = None,
    show_progress: bool = True,
) -> DatasetSummary:
    r"""
    Attributes every batch of a data set and writes the results to ``out_dir`` in shards,
    skipping the shards an earlier call finished.

    Memory stays that of one batch whatever the data set's size: each batch is attributed,
    written and dropped. Under ``torchrun`` every process calls this with the same arguments
    and takes batch i when i % world_size == rank; nothing else is shared between processes.

    Args:
        explainer: An attribution object with Captum's ``attribute(inputs, baselines, target,
                    additional_forward_args, ...)``: one of this package's classes, Captum's
                    ``IntegratedGradients``, ``LayerIntegratedGradients``, ``Saliency``, ...
        batches (Iterable): The data, one batch at a time, each item one of

                    - a tensor of inputs;
                    - a tuple or list ``(inputs, target)`` or ``(inputs, target, baselines)``,
                      as a ``DataLoader`` over ``(x, y)`` pairs gives;
                    - a mapping with the key ``"inputs"`` (a tensor or a tuple of tensors) and
                      optionally ``"target"``, ``"baselines"`` (or ``"references"``) and
                      ``"additional_forward_args"``.

                    Batches must come in the same order in every call and every process. For a
                    ``DataLoader`` over a map-style data set, only the batches this call
                    attributes are loaded: the finished ones and other processes' ones are
                    skipped before their examples are read, and each shard records the data
                    set indices of its examples (``index``); a shuffling sampler is refused
                    with more than one process. Any other iterable is read in full and its
                    examples are numbered by their position in it.
        out_dir (str or PathLike): The output folder; created if missing. A folder written
                    by a call with another explainer class, `attribute_kwargs` or `save` is
                    refused.
        baselines (optional): The baselines (for IG2: the references) of batches that bring
                    none: anything the explainer's ``attribute`` takes as `baselines` (e.g.
                    IG2's shared reference set of shape (R, \*F)), or a callable
                    ``baselines(inputs, target)`` that returns them for a batch (a reference
                    sampler). Default: None, the explainer's default.
        attribute_kwargs (Mapping, optional): More keyword arguments of ``attribute``
                    (``n_steps``, ``method``, ``internal_batch_size``, ``epsrel``, ...); checked
                    against its signature before any batch is read. Default: None
        save (Sequence[str], optional): What each shard holds besides ``index`` (and
                    ``target``): any of ``"attributions"``, ``"delta"`` (the convergence
                    delta), ``"relative_error"`` (abs(delta) / abs(f(input) - f(path end))),
                    ``"converged"`` (whether that error is within the tolerance: the
                    explainer's own, ``epsabs + epsrel * abs(gap)``, or 2 % for Captum's
                    classes; for this package's input classes ``path(...).converged``, which
                    with IG2's default rule, complete by construction, is whether the map's
                    estimated error is within sqrt(epsrel)), ``"evaluations"`` (gradients
                    spent per example; this package's input classes), ``"gradcf"`` (IG2's
                    GradCF per reference and walk, shape (N, R W, \*F), walk w of reference r
                    at r W + w) and ``"stability"`` (IG2's predicted cosine to a repeated
                    call, see :attr:`~captum_ig2.AttributionPath.stability`). Default: None,
                    the attributions and, where the explainer has a convergence delta,
                    ``delta``, ``relative_error`` and ``converged``, and ``evaluations`` and
                    ``stability`` where it reports them.
        rank, world_size (int, optional): This process's share. Default: None, from
                    ``torch.distributed`` when it is initialised, else from the ``RANK`` and
                    ``WORLD_SIZE`` environment variables that ``torchrun`` sets, else 0 of 1.
        device (str or torch.device, optional): Where each batch's tensors (inputs, target,
                    baselines, a sampler's references) go before attribution. Default: None,
                    the device of the explainer's model parameters (the CPU for a model
                    without any).
        max_failures (int, optional): Stop with a RuntimeError (the summary in its message)
                    once more than this many batches failed in this call; 0 stops at the first
                    failure. Default: None, never stop: failures are recorded and the run goes
                    on.
        show_progress (bool, optional): Show a progress bar with the throughput and the
                    running share of converged examples, and print the summary at the end.
                    Default: True

    Returns:
        :class:`DatasetSummary`: what this call wrote, skipped and failed on. A batch that
        raises (a wrong shape, NaN or infinite inputs or attributions, ...) is recorded in the
        manifest with its error and the run goes on; the next call retries it.

    Raises:
        TypeError, ValueError: for bad arguments, before any batch is attributed; ValueError
                    also where `out_dir` holds shards of a different run or data order.

    Examples::

        >>> loader = DataLoader(dataset, batch_size=32)         # (image, label) pairs
        >>> ig2 = IterativeGradientIG(model)
        >>> summary = explain_dataset(ig2, loader, "attributions/",
        ...                           baselines=lambda x, y: references_for(y))
        >>> results = load_results("attributions/")             # dict of NumPy arrays
    """
    kwargs = _check_attribute_kwargs(explainer, attribute_kwargs)
    capabilities = _Capabilities.of(explainer, kwargs)
    save = capabilities.check_save(save)
    rank, world_size = _rank_and_world_size(rank, world_size)
    if not isinstance(show_progress, bool):
        raise TypeError(f"`show_progress` must be a bool, got {type(show_progress).__name__}.")
    if max_failures is not None and (
        isinstance(max_failures, bool) or not isinstance(max_failures, int) or max_failures < 0
    ):
        raise ValueError(f"`max_failures` must be None or an int >= 0, got {max_failures!r}.")
    device = torch.device(device) if device is not None else _model_device(explainer)
    if baselines is not None and not callable(baselines):
        baselines = _to(_detached(baselines), device)
    folder = _Folder(Path(out_dir), rank)
    folder.open(_run_record(explainer, kwargs, save, baselines))
    summary = DatasetSummary(folder.path, rank, world_size)
    if capabilities.delta:
        summary.converged = 0
    if capabilities.stability:
        summary.stable = 0
    started = time.perf_counter()
    bar = _progress_bar(batches, rank, world_size) if show_progress else None
    try:
        for index, example_index, item in _own_batches(batches, rank, world_size, folder):
            if item is None:
                summary.resumed += 1
                if bar is not None:  # not counted as work done: the rate is of this call's work
                    if bar.total is not None:
                        bar.total -= 1
                    bar.set_postfix_str(f"resumed {summary.resumed}")
                continue
            # A batch of the wrong form is the caller's mistake, the same for every batch:
            # raised at once, not recorded.
            batch = _as_batch(item, index)
            batch_started = time.perf_counter()
            try:
                batch = _on(batch, device)
                if batch.baselines is None and baselines is not None:
                    batch.baselines = (
                        _to(_detached(baselines(batch.inputs, batch.target)), device)
                        if callable(baselines)
                        else baselines
                    )
                n = _examples(batch.inputs)
                if len(example_index) != n:
                    raise ValueError(
                        f"the batch has {n} examples but its sampler gave {len(example_index)} "
                        "indices"
                    )
                arrays, converged, stability = _explain(
                    explainer, batch, kwargs, save, capabilities
                )
                if batch.target is not None:
                    arrays["target"] = _target_array(batch.target, n)
            except Exception as error:  # recorded, the run goes on
                n = _examples_or_none(item)
                message = f"{type(error).__name__}: {error}"
                folder.record_failure(index, n, message)
                summary.failed_batches += 1
                summary.failed_examples += n or 0
                summary.failures[message] = summary.failures.get(message, 0) + (n or 0)
                if max_failures is not None and summary.failed_batches > max_failures:
                    summary.seconds = time.perf_counter() - started
                    raise RuntimeError(
                        f"explain_dataset stopped: more than {max_failures} batches failed "
                        f"(`max_failures`).\n{summary}"
                    ) from error
            else:
                arrays["index"] = example_index
                folder.write_shard(index, arrays, time.perf_counter() - batch_started)
                summary.batches += 1
                summary.examples += len(example_index)
                if summary.converged is not None and converged is not None:
                    summary.converged += int(converged.sum())
                if summary.stable is not None and stability is not None:
                    summary.stable += int((stability >= MIN_STABILITY).sum())
            if bar is not None:
                bar.update(1)
                elapsed = time.perf_counter() - started
                postfix = f"{summary.examples / max(elapsed, 1e-9):.3g} ex/s"
                if summary.resumed:
                    postfix += f", resumed {summary.resumed}"
                if summary.converged is not None and summary.examples:
                    postfix += f", converged {summary.converged / summary.examples:.1%}"
                if summary.failed_batches:
                    postfix += f", failed {summary.failed_examples}"
                bar.set_postfix_str(postfix)
    finally:
        if bar is not None:
            bar.close()
        summary.seconds = time.perf_counter() - started
    if show_progress:
        print(summary, flush=True)
    return summary


def read_manifest(out_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The manifest of a folder written by :func:`explain_dataset`: one entry per batch, in
    batch order, the latest of every process's ``manifest-rank*.jsonl`` (a finished shard wins
    over an earlier failure).

    Each entry has ``batch``, ``status`` (``"done"`` or ``"failed"``), ``examples`` and, when
    done, ``shard`` (the folder, relative to `out_dir`), ``arrays`` (name -> shape and dtype)
    and ``seconds`` (the batch's attribution time), when failed, ``error``.
    """
    path = Path(out_dir)
    if not (path / "run.json").is_file():
        raise ValueError(f"`out_dir` {str(path)!r} holds no explain_dataset run (no run.json).")
    entries: dict[int, dict[str, Any]] = {}
    for manifest in sorted(path.glob("manifest-rank*.jsonl")):
        for entry in _read_lines(manifest):
            old = entries.get(entry["batch"])
            if old is None or not (old["status"] == "done" and entry["status"] == "failed"):
                entries[entry["batch"]] = entry
    # A shard renamed into place just before a crash may miss its manifest line.
    for shard in sorted((path / "shards").glob("batch-*")):
        meta = json.loads((shard / "meta.json").read_text())
        entries[meta["batch"]] = meta
    return [entries[k] for k in sorted(entries)]


def load_results(
    out_dir: str | os.PathLike[str], names: Sequence[str] | None = None
) -> dict[str, np.ndarray]:
    """The finished shards of a folder, concatenated in batch order, as NumPy arrays.

    Args:
        out_dir: a folder written by :func:`explain_dataset`.
        names: the arrays to load (e.g. ``["attributions", "index"]``). Default: all.

    Returns:
        dict: name -> array; ``index`` holds each row's example index. Failed batches are
        left out (see :func:`read_manifest`).
    """
    done = [e for e in read_manifest(out_dir) if e["status"] == "done"]
    if not done:
        return {}
    wanted = list(done[0]["arrays"]) if names is None else list(names)
    result = {}
    for name in wanted:
        missing = [e["batch"] for e in done if name not in e["arrays"]]
        if missing:
            raise ValueError(f"`names`: the shards of batches {missing[:5]} hold no {name!r}.")
        result[name] = np.concatenate(
            [np.load(Path(out_dir) / e["shard"] / f"{name}.npy") for e in done]
        )
    return result


class BatchExplainer:
    r"""
    The per-batch step of :func:`explain_dataset` as a callable class for Ray Data::

        ds.map_batches(BatchExplainer, fn_constructor_kwargs={"factory": make_explainer},
                       batch_size=32, concurrency=4, num_gpus=1)

    Each worker builds its explainer once, from `factory`, and maps a batch (a dict of NumPy
    arrays, Ray Data's ``"numpy"`` format) to the same batch with the saved arrays as new
    columns. A batch that raises gets the column ``"error"`` (its message, per row; empty
    where none) and NaN attributions, instead of failing the job.

    Args:
        factory (Callable): ``factory()`` returns the explainer; it builds the model (and moves
                    it to ``device``) on the worker.
        input_column (str): The column of the inputs. Default: ``"image"``
        target_column (str, optional): The column of the targets. Default: None
        baselines_column (str, optional): The column of per-row baselines (IG2: one
                    reference per row, or (R, \*F) per row). Default: None
        baselines (optional): Baselines for every batch, or a callable ``(inputs, target)``
                    that returns them, as in :func:`explain_dataset`. Default: None
        attribute_kwargs, save: as in :func:`explain_dataset`.
        device (str or torch.device, optional): Where the inputs go. Default: None, the
                    device of the explainer's model parameters (CPU without any).
        dtype (torch.dtype): The dtype of the inputs. Default: torch.float32
    """

    def __init__(
        self,
        factory: Callable[[], Any],
        input_column: str = "image",
        target_column: str | None = None,
        baselines_column: str | None = None,
        baselines: Baselines = None,
        attribute_kwargs: Mapping[str, Any] | None = None,
        save: Sequence[str] | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if not callable(factory):
            raise TypeError(f"`factory` must be callable, got {type(factory).__name__}.")
        self.explainer = factory()
        self.kwargs = _check_attribute_kwargs(self.explainer, attribute_kwargs)
        self.capabilities = _Capabilities.of(self.explainer, self.kwargs)
        self.save = self.capabilities.check_save(save)
        self.input_column, self.target_column = input_column, target_column
        self.baselines_column, self.baselines = baselines_column, baselines
        self.device = torch.device(device) if device is not None else _model_device(self.explainer)
        self.dtype = dtype

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Attributes one batch; returns it with the saved arrays (and ``"error"``) added."""
        if self.input_column not in batch:
            raise KeyError(
                f"`input_column` {self.input_column!r} is not a column of the batch "
                f"({sorted(batch)})."
            )
        n = len(batch[self.input_column])
        out = dict(batch)
        try:
            # Ray's arrays are read-only: copy them rather than share their memory.
            inputs = torch.tensor(np.asarray(batch[self.input_column]), dtype=self.dtype)
            target = None
            if self.target_column is not None:
                target = torch.tensor(np.asarray(batch[self.target_column])).to(self.device)
            item = _Batch(inputs.to(self.device), target)
            if self.baselines_column is not None:
                item.baselines = torch.tensor(
                    np.asarray(batch[self.baselines_column]), dtype=self.dtype
                ).to(self.device)
            elif callable(self.baselines):
                item.baselines = _to(_detached(self.baselines(item.inputs, target)), self.device)
            elif self.baselines is not None:
                item.baselines = _to(self.baselines, self.device)
            arrays, _, _ = _explain(self.explainer, item, self.kwargs, self.save, self.capabilities)
            out.update(arrays)
            out["error"] = np.array([""] * n, dtype=object)
        except Exception as error:  # reported per row, the job goes on
            shape = np.asarray(batch[self.input_column]).shape
            if "attributions" in self.save:
                out["attributions"] = np.full(shape, np.nan, dtype=np.float32)
            for name in ("delta", "relative_error", "stability"):
                if name in self.save:
                    out[name] = np.full(n, np.nan, dtype=np.float32)
            if "converged" in self.save:
                out["converged"] = np.zeros(n, dtype=bool)
            out["error"] = np.array([f"{type(error).__name__}: {error}"] * n, dtype=object)
        return out


# --- what an explainer can report --------------------------------------------------------


@dataclass
class _Capabilities:
    delta: bool  # has a convergence delta
    global_: bool  # attributions sum to the output difference (multiply_by_inputs)
    path: bool  # this package's input class: path(keep_points=False) reports everything
    gradcf: bool  # IG2 input attribution
    stability: bool  # IG2 input attribution with several walks
    epsrel: float | None
    epsabs: float
    no_delta: str = "the explainer has no convergence delta"

    @classmethod
    def of(cls, explainer: Any, kwargs: Mapping[str, Any]) -> _Capabilities:
        from captum.attr import NoiseTunnel
        from captum.attr._utils.attribution import Attribution, LayerAttribution, NeuronAttribution

        from captum_ig2._attribution import PathAttribution
        from captum_ig2.ig2 import IterativeGradientIG

        # `explainer` has an `attribute` method: _check_attribute_kwargs checked it first.
        delta = (
            bool(explainer.has_convergence_delta()) if isinstance(explainer, Attribution) else False
        )
        no_delta = cls.no_delta
        if isinstance(explainer, NoiseTunnel):  # its delta: one per noisy sample
            delta = False
            no_delta = "NoiseTunnel's convergence delta is one per noisy sample, not per example"
        ours = isinstance(explainer, PathAttribution)
        input_space = not isinstance(explainer, (LayerAttribution, NeuronAttribution))
        ig2 = ours and input_space and isinstance(explainer, IterativeGradientIG)
        return cls(
            delta=delta,
            global_=bool(getattr(explainer, "multiplies_by_inputs", False)),
            path=ours and input_space and hasattr(explainer, "path"),
            gradcf=ig2,
            stability=ig2 and kwargs.get("n_walks", N_WALKS) > 1,
            epsrel=kwargs.get("epsrel", EPSREL) if ours else EPSREL,
            epsabs=float(kwargs.get("epsabs", 0.0)) if ours else 0.0,
            no_delta=no_delta,
        )

    def available(self) -> dict[str, str | None]:
        """Each choice of `save`, with why it is not available (None where it is)."""
        no_delta = self.no_delta if not self.delta else None
        local = "the explainer's attributions are local (multiply_by_inputs=False)"
        return {
            "attributions": None,
            "delta": no_delta,
            "relative_error": no_delta or (None if self.global_ or self.path else local),
            "converged": no_delta or (None if self.global_ or self.path else local),
            "evaluations": None if self.path else "only this package's input classes count them",
            "gradcf": None if self.gradcf else "only IterativeGradientIG has a GradCF",
            "stability": None
            if self.stability
            else "only IterativeGradientIG with n_walks > 1 reports a stability",
        }

    def check_save(self, save: Sequence[str] | None) -> tuple[str, ...]:
        available = self.available()
        if save is None:
            return tuple(k for k, why in available.items() if why is None and k != "gradcf")
        if isinstance(save, str) or not isinstance(save, Sequence):
            raise TypeError(
                f"`save` must be a sequence of names from {SAVE_CHOICES}, got {save!r}."
            )
        for name in save:
            if name not in available:
                raise ValueError(f"`save`: unknown {name!r}; choose from {SAVE_CHOICES}.")
            if available[name] is not None:
                raise ValueError(f"`save` asks for {name!r}, but {available[name]}.")
        return tuple(dict.fromkeys(save))


def _explain(
    explainer: Any,
    batch: _Batch,
    kwargs: Mapping[str, Any],
    save: tuple[str, ...],
    capabilities: _Capabilities,
) -> tuple[dict[str, np.ndarray], np.ndarray | None, np.ndarray | None]:
    """Attributes one batch; returns the arrays to save, where the explainer has a convergence
    delta which examples are within the tolerance, and where it reports one every example's
    stability. Raises where the batch is bad. The explainer's ConvergenceWarning and
    StabilityWarning are not raised per batch: the examples that missed are counted (and saved
    in ``converged`` and ``stability``) instead."""
    inputs = batch.inputs
    for i, t in enumerate(inputs if isinstance(inputs, tuple) else (inputs,)):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            which = "inputs" if not isinstance(inputs, tuple) else f"inputs[{i}]"
            raise ValueError(f"`{which}` holds NaN or infinite values")
    args = dict(
        baselines=batch.baselines,
        target=batch.target,
        additional_forward_args=batch.additional_forward_args,
    )
    parameters = _parameters(explainer)
    if "baselines" not in parameters and not any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()
    ):
        if batch.baselines is not None:
            raise ValueError(f"{type(explainer).__name__}.attribute takes no `baselines`")
        del args["baselines"]
    gradcf = None
    evaluations = None
    stability = None
    within = None  # a path record's own verdict
    if capabilities.path:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            warnings.simplefilter("ignore", StabilityWarning)
            record = explainer.path(inputs, **args, **kwargs, keep_points=False)
        attributions, delta, gap = record.attributions, record.delta, record.gap
        tolerance, evaluations = record.tolerance, record.evaluations
        within = record.converged  # the complete trapezoid's: the map's estimated error
        if record.stability is not None:
            stability = _numpy(record.stability)
        if "gradcf" in save:
            gradcf = record.end
    elif capabilities.delta:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            attributions, delta = explainer.attribute(
                inputs, **args, **kwargs, return_convergence_delta=True
            )
        parts = attributions if isinstance(attributions, (tuple, list)) else (attributions,)
        gap = per_example_sum(tuple(parts)) - delta
        tolerance = capabilities.epsabs + (capabilities.epsrel or math.inf) * gap.abs()
    else:
        attributions = explainer.attribute(inputs, **args, **kwargs)
        delta = gap = tolerance = None
    parts = list(attributions) if isinstance(attributions, (tuple, list)) else [attributions]
    for i, part in enumerate(parts):
        if not bool(torch.isfinite(part).all()):
            where = "" if len(parts) == 1 else f" (tensor {i})"
            raise ValueError(f"the attributions{where} hold NaN or infinite values")
    arrays: dict[str, np.ndarray] = {}
    converged = None
    if within is not None:
        converged = _numpy(within)
    elif delta is not None and tolerance is not None:
        converged = _numpy(delta.abs() <= tolerance)
    if "attributions" in save:
        if len(parts) == 1 and not isinstance(attributions, (tuple, list)):
            arrays["attributions"] = _numpy(parts[0])
        else:
            for i, part in enumerate(parts):
                arrays[f"attributions_{i}"] = _numpy(part)
    if delta is not None and gap is not None and tolerance is not None:
        if "delta" in save:
            arrays["delta"] = _numpy(delta)
        if "relative_error" in save:
            arrays["relative_error"] = _numpy(delta.abs() / gap.abs())
        if "converged" in save:
            arrays["converged"] = converged
    if "evaluations" in save and evaluations is not None:
        arrays["evaluations"] = _numpy(evaluations)
    if "stability" in save and stability is not None:
        arrays["stability"] = stability
    if gradcf is not None:
        ends = list(gradcf) if isinstance(gradcf, tuple) else [gradcf]
        if len(ends) == 1 and not isinstance(gradcf, tuple):
            arrays["gradcf"] = _numpy(ends[0])
        else:
            for i, end in enumerate(ends):
                arrays[f"gradcf_{i}"] = _numpy(end)
    return arrays, converged, stability


def _numpy(t: Tensor) -> np.ndarray:
    t = t.detach().cpu()
    if t.dtype in (torch.bfloat16,):  # NumPy has no bfloat16
        t = t.float()
    return t.numpy()


# --- batches ------------------------------------------------------------------------------


def _as_batch(item: Any, index: int | None = None) -> _Batch:
    """The batch ``item`` in explain_dataset's form; raises TypeError where its form is not
    one of those `batches` takes."""
    try:
        return _parse_batch(item)
    except (TypeError, ValueError) as error:
        where = "" if index is None else f" (batch {index})"
        raise TypeError(f"`batches`{where}: {error}") from None


def _parse_batch(item: Any) -> _Batch:
    if isinstance(item, _Batch):
        return item
    if isinstance(item, Tensor):
        return _Batch(_detached(item))
    if isinstance(item, Mapping):
        if "inputs" not in item:
            raise ValueError(f"a mapping batch needs the key 'inputs'; it has {sorted(item)}")
        unknown = set(item) - {"inputs", "target", "baselines", "references",
                               "additional_forward_args"}  # fmt: skip
        if unknown:
            raise ValueError(f"a mapping batch has unknown keys {sorted(unknown)}")
        if "baselines" in item and "references" in item:
            raise ValueError("a mapping batch has both 'baselines' and 'references'")
        inputs = item["inputs"]
        if isinstance(inputs, list):
            inputs = tuple(inputs)
        return _Batch(
            _detached(inputs),
            item.get("target"),
            _detached(item.get("baselines", item.get("references"))),
            item.get("additional_forward_args"),
        )
    if isinstance(item, (tuple, list)) and 1 <= len(item) <= 3:
        if not isinstance(item[0], Tensor):
            raise TypeError(
                "a tuple batch is (inputs, target) or (inputs, target, baselines) with a tensor "
                f"of inputs first, got {type(item[0]).__name__}; give several input tensors as "
                "a mapping {'inputs': (a, b), 'target': ...}"
            )
        return _Batch(_detached(item[0]), *(item[1:]))
    raise TypeError(
        "a batch must be a tensor, a tuple (inputs, target[, baselines]) or a mapping with "
        f"'inputs', got {type(item).__name__}"
    )


def _examples(inputs: Any) -> int:
    first = inputs[0] if isinstance(inputs, tuple) else inputs
    if not isinstance(first, Tensor) or first.dim() == 0:
        raise ValueError("the inputs must be tensors with a batch dimension")
    return int(first.shape[0])


def _examples_or_none(item: Any) -> int | None:
    try:
        return _examples(_as_batch(item).inputs)
    except Exception:  # only for the failure record
        return None


def _detached(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.detach()
    if isinstance(value, tuple):
        return tuple(_detached(v) for v in value)
    return value


def _on(batch: _Batch, device: torch.device) -> _Batch:
    """The batch with its tensors on ``device`` (the caller's tensors are not moved)."""
    return _Batch(
        _to(batch.inputs, device),
        _to(batch.target, device),
        _to(batch.baselines, device),
        _to(batch.additional_forward_args, device),
    )


def _to(value: Any, device: torch.device) -> Any:
    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(_to(v, device) for v in value)
    return value


def _target_array(target: Any, n: int) -> np.ndarray:
    """The targets of N examples as an (N,) or (N, k) array, in any of Captum's forms: an int, a
    tuple (one index for all), a tensor of 1 or N, a list of ints or of tuples."""
    if isinstance(target, Tensor):
        array = target.detach().cpu().numpy()
    elif isinstance(target, (int, np.integer)):
        array = np.asarray(target, dtype=np.int64)
    elif isinstance(target, tuple):
        array = np.asarray(target, dtype=np.int64)[None]
    elif isinstance(target, list):
        array = np.asarray(target, dtype=np.int64)
    else:
        raise TypeError(f"`target` of type {type(target).__name__} is not one of Captum's forms")
    if array.ndim == 0 or (array.ndim >= 1 and array.shape[0] == 1 and n != 1):
        array = np.broadcast_to(array.reshape(1, *array.shape[1:]), (n, *array.shape[1:]))
    if array.shape[0] != n:
        raise ValueError(f"`target` has {array.shape[0]} entries for {n} examples")
    return np.ascontiguousarray(array)


def _own_batches(
    batches: Iterable[Any], rank: int, world_size: int, folder: _Folder
) -> Iterator[tuple[int, np.ndarray, Any]]:
    """This process's batches as (batch index, example indices, item); item None where the
    shard is finished (its examples are not loaded when the loader allows it)."""
    from torch.utils.data import DataLoader, IterableDataset

    if isinstance(batches, DataLoader) and not isinstance(batches.dataset, IterableDataset):
        if batches.batch_sampler is None:
            raise ValueError("`batches`: a DataLoader with batch_size=None is not supported")
        if world_size > 1 and _shuffles(batches):
            raise ValueError(
                "`batches`: the DataLoader shuffles, so processes would disagree on batch i; "
                "use shuffle=False (or a seeded sampler that gives the same order everywhere)"
            )
        # The loader's sampler yields only this process's unfinished batches, lazily (memory
        # stays flat in the data set's size); the finished batches it passed over wait in it.
        selected = _SelectedBatches(batches.batch_sampler, rank, world_size, folder)
        for item in _loader_over(batches, selected):
            i, indices = selected.pending.popleft()
            yield from selected.take_finished()
            yield i, indices, item
        yield from selected.take_finished()
        return
    position = 0
    for i, item in enumerate(batches):
        n = _examples_or_none(item) or 0
        indices = np.arange(position, position + n, dtype=np.int64)
        position += n
        if i % world_size != rank:
            continue
        if folder.is_done(i):
            folder.check_index(i, indices)
            yield i, indices, None
        else:
            yield i, indices, item


class _SelectedBatches:
    """A batch sampler over this process's unfinished batches of ``batch_sampler``; the
    finished ones it skips (after checking their indices) are kept for the caller to report,
    and the batches it yielded wait in ``pending`` until the loader delivers them."""

    def __init__(self, batch_sampler: Any, rank: int, world_size: int, folder: _Folder) -> None:
        self.batch_sampler, self.rank, self.world_size = batch_sampler, rank, world_size
        self.folder = folder
        self.pending: deque[tuple[int, np.ndarray]] = deque()
        self.finished: deque[tuple[int, np.ndarray, None]] = deque()

    def __iter__(self) -> Iterator[list[int]]:
        for i, indices in enumerate(self.batch_sampler):
            if i % self.world_size != self.rank:
                continue
            indices = np.asarray(list(indices), dtype=np.int64)
            if self.folder.is_done(i):
                self.folder.check_index(i, indices)
                self.finished.append((i, indices, None))
            else:
                self.pending.append((i, indices))
                yield indices.tolist()

    def take_finished(self) -> Iterator[tuple[int, np.ndarray, None]]:
        while self.finished:
            yield self.finished.popleft()


def _shuffles(loader: Any) -> bool:
    from torch.utils.data import RandomSampler, SubsetRandomSampler, WeightedRandomSampler

    return isinstance(loader.sampler, (RandomSampler, SubsetRandomSampler, WeightedRandomSampler))


def _loader_over(loader: Any, index_batches: Iterable[list[int]]) -> Any:
    """A DataLoader like ``loader`` that loads only the given batches of data set indices."""
    from torch.utils.data import DataLoader

    options: dict[str, Any] = dict(
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context,
        generator=loader.generator,
        persistent_workers=loader.persistent_workers,
    )
    if loader.num_workers > 0:
        options["prefetch_factor"] = loader.prefetch_factor
    return DataLoader(loader.dataset, batch_sampler=index_batches, **options)


def _progress_bar(batches: Any, rank: int, world_size: int) -> Any:
    from tqdm.auto import tqdm

    try:
        total = len(batches)
    except TypeError:
        total = None
    if total is not None:
        total = len(range(rank, total, world_size))
    desc = "explain_dataset" + (f" rank {rank}" if world_size > 1 else "")
    return tqdm(total=total, desc=desc, unit="batch", position=rank if world_size > 1 else None)


# --- arguments ----------------------------------------------------------------------------


def _parameters(explainer: Any) -> Mapping[str, inspect.Parameter]:
    return inspect.signature(explainer.attribute).parameters


def _check_attribute_kwargs(explainer: Any, kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    if not hasattr(explainer, "attribute") or not callable(explainer.attribute):
        raise TypeError(
            "`explainer` must be an attribution object with an `attribute` method (e.g. "
            f"captum_ig2.IterativeGradientIG or captum.attr.IntegratedGradients), got "
            f"{type(explainer).__name__}."
        )
    if kwargs is None:
        return {}
    if not isinstance(kwargs, Mapping):
        raise TypeError(f"`attribute_kwargs` must be a mapping, got {type(kwargs).__name__}.")
    parameters = _parameters(explainer)
    reserved = {"inputs", "baselines", "target", "additional_forward_args",
                "return_convergence_delta", "keep_points"}  # fmt: skip
    for name in kwargs:
        if name in reserved:
            raise ValueError(
                f"`attribute_kwargs` may not set {name!r}: explain_dataset passes it per batch."
            )
        if name not in parameters and not any(
            p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()
        ):
            raise TypeError(
                f"`attribute_kwargs`: {type(explainer).__name__}.attribute has no argument "
                f"{name!r}."
            )
    return dict(kwargs)


def _rank_and_world_size(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is None and world_size is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        rank = int(os.environ.get("RANK", 0))
        world_size = int(os.environ.get("WORLD_SIZE", 1))
    elif rank is None or world_size is None:
        raise ValueError("`rank` and `world_size` must be given together.")
    for name, value in (("rank", rank), ("world_size", world_size)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"`{name}` must be an int, got {type(value).__name__}.")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(
            f"need world_size >= 1 and 0 <= rank < world_size, got {rank}, {world_size}."
        )
    return rank, world_size


def _run_record(
    explainer: Any, kwargs: Mapping[str, Any], save: tuple[str, ...], baselines: Any = None
) -> dict[str, Any]:
    """What a resume must match: the explainer's class, `attribute_kwargs`, `save` and the
    `baselines` (a digest of fixed ones, the name of a sampler)."""
    return {
        "format": FORMAT_VERSION,
        "explainer": f"{type(explainer).__module__}.{type(explainer).__qualname__}",
        "attribute_kwargs": {k: _jsonable(v) for k, v in sorted(kwargs.items())},
        "save": list(save),
        "baselines": _fingerprint(baselines),
    }


def _fingerprint(baselines: Any) -> Any:
    if baselines is None or isinstance(baselines, (bool, int, float)):
        return baselines
    if callable(baselines):
        name = getattr(baselines, "__qualname__", type(baselines).__qualname__)
        return f"callable {getattr(baselines, '__module__', '?')}.{name}"
    parts = baselines if isinstance(baselines, tuple) else (baselines,)
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, Tensor):
            array = part.detach().cpu()
            array = (array.float() if array.dtype == torch.bfloat16 else array).numpy()
            digest.update(f"{array.dtype}{array.shape}".encode())
            digest.update(np.ascontiguousarray(array).tobytes())
        else:
            digest.update(repr(part).encode())
    return f"sha256 {digest.hexdigest()[:16]}"


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return repr(value)


def _model_device(explainer: Any) -> torch.device:
    forward = getattr(explainer, "forward_func", None)
    if isinstance(forward, torch.nn.Module):
        for parameter in forward.parameters():
            return parameter.device
    return torch.device("cpu")


# --- the folder ---------------------------------------------------------------------------


class _Folder:
    """The output folder of one process: run.json, shards/, manifest-rank<r>.jsonl."""

    def __init__(self, path: Path, rank: int) -> None:
        self.path = path
        self.rank = rank
        self.shards = path / "shards"
        self.manifest = path / f"manifest-rank{rank:05d}.jsonl"

    def open(self, run: dict[str, Any]) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"`out_dir` {str(self.path)!r} is a file, not a folder.")
        self.shards.mkdir(parents=True, exist_ok=True)
        record = self.path / "run.json"
        if record.is_file():
            old = json.loads(record.read_text())
            differs = [k for k in run if old.get(k) != run[k]]
            if differs:
                raise ValueError(
                    f"`out_dir` {str(self.path)!r} holds a run with other "
                    + ", ".join(f"{k} ({old.get(k)!r}, now {run[k]!r})" for k in differs)
                    + "; use another folder or delete it."
                )
        else:
            _write_atomic(record, json.dumps(run, indent=1))
        # What this process left half-written when it was stopped.
        for stale in self.shards.glob(f".tmp-rank{self.rank:05d}-*"):
            shutil.rmtree(stale, ignore_errors=True)

    def shard(self, index: int) -> Path:
        return self.shards / f"batch-{index:08d}"

    def is_done(self, index: int) -> bool:
        return (self.shard(index) / "meta.json").is_file()

    def check_index(self, index: int, indices: np.ndarray) -> None:
        stored = np.load(self.shard(index) / "index.npy")
        if not np.array_equal(stored, indices):
            raise ValueError(
                f"`batches`: batch {index} now holds other examples than its shard in "
                f"{str(self.path)!r}; the data's order changed since that run (use the same "
                "order, e.g. shuffle=False, or another folder)."
            )

    def write_shard(self, index: int, arrays: dict[str, np.ndarray], seconds: float) -> None:
        final = self.shard(index)
        tmp = self.shards / f".tmp-rank{self.rank:05d}-{index:08d}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        for name, array in arrays.items():
            with open(tmp / f"{name}.npy", "wb") as f:
                np.save(f, array, allow_pickle=False)
                f.flush()
                os.fsync(f.fileno())
        meta = {
            "batch": index,
            "status": "done",
            "examples": len(arrays["index"]),
            "shard": str(final.relative_to(self.path)),
            "arrays": {
                k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in arrays.items()
            },
            "rank": self.rank,
            "seconds": round(seconds, 3),
        }
        (tmp / "meta.json").write_text(json.dumps(meta))
        os.replace(tmp, final)  # atomic: a shard is there in full or not at all
        self._append(meta)

    def record_failure(self, index: int, n: int | None, message: str) -> None:
        self._append(
            {"batch": index, "status": "failed", "examples": n, "error": message, "rank": self.rank}
        )

    def _append(self, entry: dict[str, Any]) -> None:
        with open(self.manifest, "a") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _read_lines(path: Path) -> list[dict[str, Any]]:
    entries = []
    for line in path.read_text().splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a crash
            continue
    return entries
