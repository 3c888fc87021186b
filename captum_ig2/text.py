"""References for text: token ids of other sentences, fitted to the inputs' token length.

Layer methods on a text model (Captum's ``LayerIntegratedGradients``, and here
:class:`~captum_ig2.LayerIterativeGradientIG` and :class:`~captum_ig2.LayerGuidedIG`) take their
baselines and references as token ids of the inputs' shape, and run the model on every point of
the path, the references included, with the inputs' ``additional_forward_args``: the inputs'
attention mask. A reference sentence must therefore have as many token positions as its input,
and its real tokens must sit where the input's attention mask lets the model see them.

- :func:`fit_references`: token ids of reference sentences, truncated or padded to each input's
  number of real tokens (its attention mask), the final ``[SEP]`` kept, then padded to the
  inputs' width; with their attention mask.
- :func:`tokenize_references`: the same from sentences and a Hugging Face tokenizer.

Examples::

    >>> from captum_ig2 import LayerIterativeGradientIG
    >>> from captum_ig2.text import tokenize_references
    >>> encoded = tokenizer(["A man is playing a guitar on stage."], return_tensors="pt")
    >>> ids, mask = encoded["input_ids"], encoded["attention_mask"]
    >>> references, _ = tokenize_references(
    ...     tokenizer, ["The cat is sleeping.", "Prices rose sharply in May."], ids, mask)
    >>> references.shape  # (inputs, references, tokens): one reference set per input
    torch.Size([1, 2, 11])
    >>> ig2 = LayerIterativeGradientIG(f, model.embeddings.word_embeddings)
    >>> attributions = ig2.attribute(ids, baselines=references, additional_forward_args=(mask,))
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

__all__ = ["fit_references", "tokenize_references"]


def fit_references(
    references: Tensor | Sequence[Sequence[int]],
    like: Tensor,
    attention_mask: Tensor | None = None,
    *,
    pad_id: int,
    sep_id: int | None = None,
    references_mask: Tensor | None = None,
    padding_side: Literal["right", "left"] = "right",
) -> tuple[Tensor, Tensor]:
    r"""
    Fits the token ids of R reference sentences to each of N inputs: every reference gets as
    many real tokens as the input has (its ``attention_mask``), then padding to the inputs'
    width L, so that a layer method sees each reference where it sees its input.

    A reference longer than its input is truncated as a tokenizer truncates
    (``truncation=True``): tokens are dropped from the end, and a final ``sep_id`` (BERT's
    ``[SEP]``, RoBERTa's ``</s>``) is kept as the last real token. A shorter one is padded with
    ``pad_id``. Without ``attention_mask`` every input position is real, and each fitted
    reference is what ``tokenizer(sentence, padding="max_length", truncation=True,
    max_length=L)`` gives.

    Captum's layer methods run the model on the references with the *inputs'*
    ``additional_forward_args``, so the inputs' attention mask applies to them: where a
    reference is shorter than its input, the model attends to its padding there. The returned
    mask shows where that happens (it differs from the input's mask); choose references at least
    as long as the input where it matters.

    Examples::

        >>> ids = torch.tensor([[101, 1037, 2158, 2003, 2652, 102, 0, 0]])  # 6 real tokens
        >>> mask = (ids != 0).long()
        >>> long_reference = [101, 1996, 4937, 2003, 5777, 2006, 1996, 2460, 102]
        >>> short_reference = [101, 7632, 102]
        >>> fitted, fitted_mask = fit_references(
        ...     [long_reference, short_reference], ids, mask, pad_id=0, sep_id=102)
        >>> fitted
        tensor([[[ 101, 1996, 4937, 2003, 5777,  102,    0,    0],
                 [ 101, 7632,  102,    0,    0,    0,    0,    0]]])
        >>> fitted_mask
        tensor([[[1, 1, 1, 1, 1, 1, 0, 0],
                 [1, 1, 1, 0, 0, 0, 0, 0]]])

    Args:
        references (Tensor or sequence of sequences of int): The token ids of the R reference
                    sentences, special tokens included: a tensor of shape (R, L_ref), padded
                    where ``references_mask`` is 0, or one list of ids per sentence (for
                    instance ``tokenizer(sentences)["input_ids"]``).
        like (Tensor): The inputs' token ids, shape (N, L), an integer tensor. The result has
                    its width, dtype and device. It is read, never changed.
        attention_mask (Tensor, optional): The inputs' attention mask, shape (N, L), 1 on real
                    tokens and 0 on padding, the real tokens together at the start (or, with
                    ``padding_side="left"``, at the end) of each row.
                    Default: None, every position real.
        pad_id (int): The padding token's id (``tokenizer.pad_token_id``).
        sep_id (int, optional): The token that ends a sentence and that truncation keeps
                    (``tokenizer.sep_token_id``). None: truncation keeps no token.
                    Default: None
        references_mask (Tensor, optional): With a tensor of references, their attention mask,
                    shape (R, L_ref), padded on ``padding_side``.
                    Default: None, every position real.
        padding_side (str, optional): ``"right"`` (BERT's) pads after the real tokens,
                    ``"left"`` before them, for inputs and references alike
                    (``tokenizer.padding_side``). Default: ``"right"``

    Returns:
        2-element tuple of **references**, **mask**:
        - **references** (*Tensor*): The fitted token ids, shape (N, R, L): a reference set
          per input, the form that IG2's ``baselines`` take (for Captum's
          ``LayerIntegratedGradients`` and Guided IG, which take one baseline per input, pick
          one: ``references[:, r]``).
        - **mask** (*Tensor*): Their attention mask, shape (N, R, L), of ``like``'s dtype: 1 on
          the references' real tokens, 0 on padding. It equals the input's mask wherever a
          reference has at least as many real tokens as its input.
    """
    like = _check_ids(like, "like")
    n, width = like.shape
    lengths = _real_lengths(attention_mask, like, padding_side)
    pad_id = _check_token_id(pad_id, "pad_id")
    if sep_id is not None:
        sep_id = _check_token_id(sep_id, "sep_id")
    sentences = _reference_lists(references, references_mask, padding_side)

    fitted = torch.full((n, len(sentences), width), pad_id, dtype=like.dtype)
    mask = torch.zeros((n, len(sentences), width), dtype=like.dtype)
    for i, length in enumerate(lengths):
        for r, ids in enumerate(sentences):
            tokens = _truncate(ids, length, sep_id)
            start = 0 if padding_side == "right" else width - len(tokens)
            fitted[i, r, start : start + len(tokens)] = torch.tensor(tokens, dtype=like.dtype)
            mask[i, r, start : start + len(tokens)] = 1
    return fitted.to(like.device), mask.to(like.device)


def tokenize_references(
    tokenizer: Any,
    sentences: Sequence[str],
    like: Tensor,
    attention_mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    r"""
    Tokenizes reference sentences and fits them to each input with :func:`fit_references`,
    taking the padding token, the final token that truncation keeps (``sep_token_id``, else
    ``eos_token_id``) and the padding side from the tokenizer.

    Examples::

        >>> encoded = tokenizer(["A man is playing a guitar on stage."], return_tensors="pt")
        >>> references, mask = tokenize_references(
        ...     tokenizer, ["The cat is sleeping on the warm sofa."],
        ...     encoded["input_ids"], encoded["attention_mask"])

    Args:
        tokenizer: A Hugging Face tokenizer (``transformers.PreTrainedTokenizerBase``), or
                    anything that, called on a list of strings, returns a mapping with
                    ``"input_ids"`` (one list of ids per string) and has ``pad_token_id``.
                    It must be the tokenizer of the inputs.
        sentences (sequence of str): The R reference sentences, tokenized with the special
                    tokens the tokenizer adds (``[CLS]`` ... ``[SEP]`` for BERT).
        like (Tensor): The inputs' token ids, shape (N, L).
        attention_mask (Tensor, optional): The inputs' attention mask, shape (N, L).
                    Default: None, every position real.

    Returns:
        2-element tuple of **references**, **mask**: token ids and attention mask of shape
        (N, R, L), as :func:`fit_references` returns them.
    """
    if isinstance(sentences, str) or not isinstance(sentences, Sequence):
        raise TypeError(f"`sentences` must be a list of strings, got {type(sentences).__name__}.")
    for i, sentence in enumerate(sentences):
        if not isinstance(sentence, str):
            raise TypeError(f"`sentences[{i}]` must be a str, got {type(sentence).__name__}.")
    pad_id = getattr(tokenizer, "pad_token_id", None)
    if pad_id is None:
        raise ValueError(
            f"`tokenizer` ({type(tokenizer).__name__}) has no padding token (`pad_token_id` is "
            "None); set one, e.g. `tokenizer.pad_token = tokenizer.eos_token`."
        )
    sep_id = getattr(tokenizer, "sep_token_id", None)
    if sep_id is None:
        sep_id = getattr(tokenizer, "eos_token_id", None)
    padding_side = getattr(tokenizer, "padding_side", "right")
    ids = tokenizer(list(sentences))["input_ids"]
    return fit_references(
        ids, like, attention_mask, pad_id=pad_id, sep_id=sep_id, padding_side=padding_side
    )


# --------------------------------------------------------------------------------------------
# Validation and the fitting itself
# --------------------------------------------------------------------------------------------


def _check_ids(ids: Any, name: str) -> Tensor:
    if not isinstance(ids, Tensor):
        raise TypeError(f"`{name}` must be a tensor of token ids, got {type(ids).__name__}.")
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise TypeError(f"`{name}` must hold integer token ids, got dtype {ids.dtype}.")
    if ids.dim() != 2:
        raise ValueError(
            f"`{name}` must have shape (N, L), one row of token ids per sentence, got shape "
            f"{tuple(ids.shape)}."
        )
    return ids


def _check_token_id(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be an int token id, got {type(value).__name__}.")
    if value < 0:
        raise ValueError(f"`{name}` must be a non-negative token id, got {value}.")
    return int(value)


def _real_lengths(mask: Tensor | None, like: Tensor, padding_side: str) -> list[int]:
    """The number of real tokens of every input, checking that they lie together on the side
    opposite to the padding."""
    if padding_side not in ("right", "left"):
        raise ValueError(f"`padding_side` must be 'right' or 'left', got {padding_side!r}.")
    n, width = like.shape
    if mask is None:
        return [width] * n
    lengths = _mask_lengths(mask, (n, width), "attention_mask", padding_side)
    for i, length in enumerate(lengths):
        if length == 0:
            raise ValueError(f"`attention_mask` row {i} has no real token (all zeros).")
    return lengths


def _mask_lengths(
    mask: Any, shape: tuple[int, int], name: str, padding_side: str = "right"
) -> list[int]:
    if not isinstance(mask, Tensor):
        raise TypeError(f"`{name}` must be a tensor or None, got {type(mask).__name__}.")
    if tuple(mask.shape) != shape:
        raise ValueError(f"`{name}` must have shape {shape}, got {tuple(mask.shape)}.")
    values = mask.detach().cpu()
    if not bool(((values == 0) | (values == 1)).all()):
        raise ValueError(f"`{name}` must hold only 0 (padding) and 1 (real token).")
    values = values.long()
    lengths = values.sum(dim=1)
    expected = torch.arange(shape[1]).expand(shape)
    if padding_side == "left":
        expected = expected.flip(1)
    contiguous = (values == (expected < lengths[:, None]).long()).all(dim=1)
    if not bool(contiguous.all()):
        row = int((~contiguous).nonzero()[0])
        where = "start" if padding_side == "right" else "end"
        raise ValueError(
            f"`{name}` row {row} is {values[row].tolist()}: its real tokens (1) must lie "
            f"together at the {where} of the row, the padding (0) after them "
            f"(padding_side={padding_side!r})."
        )
    return lengths.tolist()


def _reference_lists(references: Any, mask: Tensor | None, padding_side: str) -> list[list[int]]:
    """The real token ids of every reference, as lists."""
    if isinstance(references, Tensor):
        references = _check_ids(references, "references")
        rows = references.detach().cpu().tolist()
        if mask is None:
            out = rows
        else:
            shape = tuple(references.shape)
            lengths = _mask_lengths(mask, shape, "references_mask", padding_side)
            if padding_side == "right":
                out = [row[:length] for row, length in zip(rows, lengths)]
            else:
                out = [row[len(row) - length :] for row, length in zip(rows, lengths)]
    else:
        if mask is not None:
            raise ValueError(
                "`references_mask` goes with a tensor of references; lists of token ids hold "
                "only real tokens."
            )
        if isinstance(references, (str, bytes)) or not isinstance(references, Sequence):
            raise TypeError(
                "`references` must be a tensor of token ids or a list of lists of ids, got "
                f"{type(references).__name__}."
            )
        out = []
        for r, ids in enumerate(references):
            if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence):
                raise TypeError(
                    f"`references[{r}]` must be a list of token ids, got {type(ids).__name__}; "
                    "tokenize sentences first, or use `tokenize_references`."
                )
            for token in ids:
                if isinstance(token, bool) or not isinstance(token, numbers.Integral):
                    raise TypeError(
                        f"`references[{r}]` must hold int token ids, got {type(token).__name__}."
                    )
            out.append([int(token) for token in ids])
    if not out:
        raise ValueError("`references` must hold at least one reference sentence.")
    for r, ids in enumerate(out):
        if not ids:
            raise ValueError(f"`references[{r}]` has no real token.")
    return out


def _truncate(ids: list[int], length: int, sep_id: int | None) -> list[int]:
    """The first ``length`` tokens of ``ids``; a final ``sep_id`` stays the last one."""
    if len(ids) <= length:
        return ids
    if sep_id is not None and ids[-1] == sep_id:
        return [*ids[: length - 1], sep_id]
    return ids[:length]
