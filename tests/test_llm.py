"""The layer variants inside Captum's LLMGradientAttribution, on a small causal LM built here."""

from __future__ import annotations

import pytest
import tokenizers
import torch
import transformers
from captum.attr import LayerIntegratedGradients, LLMGradientAttribution, TextTokenInput

import captum_ig2.llm
from captum_ig2 import LayerGuidedIG, LayerIterativeGradientIG

WORDS = "<unk> <pad> the cat sat on mat a dog ran in park".split()
PROMPT = "the cat sat on the"
TARGET = "mat a dog"


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    word_level = tokenizers.Tokenizer(
        tokenizers.models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>")
    )
    word_level.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=word_level, unk_token="<unk>", pad_token="<pad>"
    )


@pytest.fixture(scope="module")
def model():  # type: ignore[no-untyped-def]
    """A 2-layer GPT-2 with random weights, in float64 so that tolerances can be tight."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=len(WORDS), n_positions=16, n_embd=16, n_layer=2, n_head=2,
        bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(config).double().eval()


@pytest.fixture
def registered(monkeypatch):  # type: ignore[no-untyped-def]
    """register(), undone after the test, so that tests do not depend on their order."""
    monkeypatch.setattr(
        LLMGradientAttribution, "SUPPORTED_METHODS", LLMGradientAttribution.SUPPORTED_METHODS
    )
    captum_ig2.llm.register()


@pytest.mark.parametrize("cls", [LayerIterativeGradientIG, LayerGuidedIG])
def test_llm_gradient_attribution_refuses_the_layer_variants_until_registered(
    cls, model, tokenizer, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(
        LLMGradientAttribution, "SUPPORTED_METHODS", LLMGradientAttribution.SUPPORTED_METHODS
    )
    with pytest.raises(AssertionError, match="does not support"):
        LLMGradientAttribution(cls(model, model.transformer.wte), tokenizer)
    captum_ig2.llm.register()
    captum_ig2.llm.register()  # a second call changes nothing
    assert LLMGradientAttribution.SUPPORTED_METHODS.count(cls) == 1
    assert LayerIntegratedGradients in LLMGradientAttribution.SUPPORTED_METHODS
    LLMGradientAttribution(cls(model, model.transformer.wte), tokenizer)


def test_layer_guided_ig_on_the_straight_line_equals_captum_layer_ig_in_the_llm_wrapper(
    registered, model, tokenizer
) -> None:  # type: ignore[no-untyped-def]
    inp = TextTokenInput(PROMPT, tokenizer)
    rule = {"n_steps": 12, "method": "riemann_left"}
    captum = LLMGradientAttribution(
        LayerIntegratedGradients(model, model.transformer.wte), tokenizer
    ).attribute(inp, target=TARGET, **rule)
    ours = LLMGradientAttribution(LayerGuidedIG(model, model.transformer.wte), tokenizer).attribute(
        inp, target=TARGET, max_dist=0.0, nodes=1, epsrel=None, **rule
    )
    assert ours.token_attr.shape == (3, 5)  # target tokens x prompt tokens
    assert ours.output_tokens == captum.output_tokens
    torch.testing.assert_close(ours.token_attr, captum.token_attr, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(ours.seq_attr, captum.seq_attr, rtol=1e-5, atol=1e-8)


def _log_prob_of(model, prefix: torch.Tensor, token: int):  # type: ignore[no-untyped-def]
    """log p(token | ids + prefix): what the wrapper explains, written out independently."""

    def forward(ids: torch.Tensor) -> torch.Tensor:
        ids = torch.cat([ids, prefix.expand(ids.shape[0], -1)], dim=1)
        return torch.log_softmax(model(ids).logits[:, -1], dim=-1)[:, token]

    return forward


@pytest.mark.parametrize("cls", [LayerIterativeGradientIG, LayerGuidedIG])
def test_the_wrapper_explains_each_target_token_as_a_direct_call_does(
    cls, registered, model, tokenizer
) -> None:  # type: ignore[no-untyped-def]
    inp = TextTokenInput(PROMPT, tokenizer, baselines="<pad>")
    ids = inp.to_model_input()
    target_ids = tokenizer.encode(TARGET, add_special_tokens=False)
    # One IG2 walk: its walks' offsets are drawn per shape of the layer, which the wrapper's
    # sequences and the direct call's differ in; the wiring is what is compared here.
    options = {"n_walks": 1} if cls is LayerIterativeGradientIG else {}
    result = LLMGradientAttribution(cls(model, model.transformer.wte), tokenizer).attribute(
        inp, target=TARGET, n_steps=8, **options
    )
    pad = tokenizer.convert_tokens_to_ids("<pad>")
    for j, token in enumerate(target_ids):
        prefix = torch.tensor([target_ids[:j]], dtype=torch.long)
        direct = cls(_log_prob_of(model, prefix, token), model.transformer.wte)
        attr, delta = direct.attribute(
            ids, torch.full_like(ids, pad), n_steps=8, return_convergence_delta=True, **options
        )
        # The direct call's path integral is complete to its tolerance ...
        gap = attr.sum() - delta
        assert delta.abs().item() <= 0.02 * gap.abs().item() + 1e-12
        # ... and the wrapper's row for this token is the same attribution.
        torch.testing.assert_close(result.token_attr[j], attr.sum(-1)[0, : ids.shape[1]])
