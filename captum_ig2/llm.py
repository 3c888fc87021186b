"""The layer variants inside :class:`captum.attr.LLMGradientAttribution`.

Captum's LLM wrapper accepts only the classes on its own list
(``LLMGradientAttribution.SUPPORTED_METHODS``). :func:`register` adds
:class:`~captum_ig2.LayerIterativeGradientIG` and :class:`~captum_ig2.LayerGuidedIG` to it, as
:func:`captum_ig2.insights.register` does for Captum Insights::

    >>> import captum_ig2.llm
    >>> from captum.attr import LLMGradientAttribution, TextTokenInput
    >>> captum_ig2.llm.register()
    >>> llm = LLMGradientAttribution(LayerGuidedIG(model, model.transformer.wte), tokenizer)
    >>> result = llm.attribute(TextTokenInput("the cat sat on the", tokenizer), target="mat")

The wrapper explains the log-probability of each target token with the wrapped method along a
path in the embedding layer's space; ``**kwargs`` of its ``attribute`` reach ours (``n_steps``,
``baselines``, ``epsrel``, ...). The baselines are in the wrapper's interpretable space: a
tensor of 0 and 1 per prompt token, 0 where the token is replaced by the
``TextTokenInput``'s baseline token; Captum's default, 0, replaces all of them. For IG2 such a
tensor, of shape (R, number of tokens), is a reference set of R partly replaced prompts.
"""

from __future__ import annotations

from captum_ig2.layer import LayerGuidedIG, LayerIterativeGradientIG

__all__ = ["register"]

_CLASSES = (LayerIterativeGradientIG, LayerGuidedIG)


def register() -> None:
    """Adds the layer variants to ``captum.attr.LLMGradientAttribution``'s supported methods.

    Calling it again changes nothing. It changes Captum's class for the whole process, as a
    plugin registration does; nothing else of Captum is touched.
    """
    from captum.attr import LLMGradientAttribution

    supported = tuple(LLMGradientAttribution.SUPPORTED_METHODS)
    missing = tuple(cls for cls in _CLASSES if cls not in supported)
    LLMGradientAttribution.SUPPORTED_METHODS = supported + missing
