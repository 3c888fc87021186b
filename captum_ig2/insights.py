"""Captum Insights support: IG2 and Guided IG in the Insights web app.

``register()`` adds both methods, with their main parameters, to Captum Insights' method lists
(``captum.insights.attr_vis.config``), in place, which is what makes them appear in the app.
Insights creates a method with the model alone and passes its baselines to methods whose
``attribute`` takes them: for IG2 these are the references (one per input, or a reference set
if a baseline transform returns one).

Captum Insights ships with captum <= 0.8.0 (which needs NumPy < 2); install the ``insights``
extra: ``pip install "captum-ig2[insights]"``.

Run ``python -m captum_ig2.insights`` for an example: it trains the digits CNN of the demo in
seconds and serves Insights on 127.0.0.1 with IG2, Guided IG and Integrated Gradients.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from torch import Tensor

from captum_ig2._attribution import EPSREL, GUIDED_IG_METHOD, IG2_METHOD
from captum_ig2._quadrature import DEFAULT_LIMIT, METHODS
from captum_ig2.guided_ig import GuidedIG
from captum_ig2.ig2 import IterativeGradientIG


def _insights_config() -> Any:
    try:
        from captum.insights.attr_vis import config
    except ImportError as error:
        import captum

        raise ImportError(
            f"Captum Insights is not available in the installed captum {captum.__version__}: "
            "captum 0.9 removed it, and captum 0.8.0 is the last release that ships it (it "
            "needs numpy<2, flask and flask-compress). Install the `insights` extra: "
            'pip install "captum-ig2[insights]".'
        ) from error
    return config


# Insights post-processes the same argument dict once per example, so these are idempotent.


def _positive_float_or_auto(value: Any) -> float | None:
    """IG2's step size from the UI: empty, 'auto' or 0 means automatic (None)."""
    if value is None:
        return None
    text = str(value).strip().lower()
    if text in ("", "auto", "none", "0", "0.0"):
        return None
    return float(text)


def _nodes(value: Any) -> int | None:
    """Nodes per segment from the UI: empty or 'auto' means the method's default (None)."""
    if value is None or isinstance(value, int):
        return value
    text = str(value).strip().lower()
    return None if text in ("", "auto", "none") else int(text)


def _epsrel(value: Any) -> float | None:
    """The completeness tolerance from the UI: 'none' turns refinement off."""
    if value is None or isinstance(value, float):
        return value
    text = str(value).strip().lower()
    return None if text in ("", "none") else float(text)


#: The quadrature fields that both methods show, and how their text is read.
_QUADRATURE_HELP = (
    " method and nodes: the quadrature rule on every path segment; epsrel: the completeness "
    "tolerance segments are refined to ('none': no refinement); limit: the most pieces a "
    "segment is split into."
)


def _clamp(value: Any) -> tuple[float, float] | None:
    """``"low high"`` from the UI as a clamp pair; empty means no clamp."""
    if value is None or isinstance(value, tuple):
        return value
    text = str(value).replace(",", " ").split()
    if not text:
        return None
    if len(text) != 2:
        raise ValueError(f"`clamp` must be two numbers 'low high', got {value!r}.")
    return float(text[0]), float(text[1])


def register() -> None:
    """Makes IG2 and Guided IG available in Captum Insights, next to its own methods.

    Safe to call more than once. Float parameters are text fields in the UI, since Insights'
    number fields only take integers.

    Raises:
        ImportError: the installed captum has no Insights (captum >= 0.9).
    """
    config = _insights_config()
    params = config.ConfigParameters
    number, choice, text = config.NumberConfig, config.StrEnumConfig, config.StrConfig
    config.ATTRIBUTION_NAMES_TO_METHODS[IterativeGradientIG.get_name()] = IterativeGradientIG
    config.ATTRIBUTION_NAMES_TO_METHODS[GuidedIG.get_name()] = GuidedIG

    def quadrature(method: str) -> dict[str, Any]:
        return {
            "method": choice(value=method, limit=list(METHODS)),
            "nodes": text(value="auto"),
            "epsrel": text(value=str(EPSREL)),
            "limit": number(value=DEFAULT_LIMIT[method], limit=(1, None)),
        }

    read_quadrature = {"nodes": _nodes, "epsrel": _epsrel, "limit": int}
    config.ATTRIBUTION_METHOD_CONFIG[IterativeGradientIG.get_name()] = params(
        params={
            "n_steps": number(value=50, limit=(1, None)),
            "step_size": text(value="auto"),
            "clamp": text(value=""),
            **quadrature(IG2_METHOD),
        },
        help_info=(
            "IG2 walks from the input down the gradient of the distance to the reference's "
            "representation (the Insights baseline). step_size: the L2 length of a step, "
            "'auto' = ||input - reference|| / n_steps. clamp: 'low high' bounds of the input "
            "domain, empty for none." + _QUADRATURE_HELP
        ),
        post_process={
            "n_steps": int,
            "step_size": _positive_float_or_auto,
            "clamp": _clamp,
            **read_quadrature,
        },
    )
    config.ATTRIBUTION_METHOD_CONFIG[GuidedIG.get_name()] = params(
        params={
            "n_steps": number(value=200, limit=(1, None)),
            "fraction": text(value="0.25"),
            "max_dist": text(value="0.02"),
            **quadrature(GUIDED_IG_METHOD),
        },
        help_info=(
            "Guided IG moves the `fraction` of features with the smallest gradient at each "
            "step, within `max_dist` of the straight line from the baseline." + _QUADRATURE_HELP
        ),
        post_process={"n_steps": int, "fraction": float, "max_dist": float, **read_quadrature},
    )


class RGBDigits(torch.nn.Module):
    """The digits CNN seen through RGB images: Insights' ImageFeature can only show images with
    three channels, so the example feeds grey digits as RGB and averages them back."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x.mean(dim=1, keepdim=True))


def other_class_reference(model: torch.nn.Module, class_means: Tensor):  # type: ignore[no-untyped-def]
    """A baseline transform for Insights: the mean image of the classes other than the one the
    model predicts for the input, a counterfactual reference for IG2 (and a valid baseline for
    IG and Guided IG). Insights applies transforms to one example without its batch dimension;
    a transform could also return a set of R references, shape (R, *F), for IG2 alone."""

    def transform(x: Tensor) -> Tensor:
        with torch.no_grad():
            predicted = int(model(x.unsqueeze(0)).argmax(dim=1))
        total = class_means.sum(dim=0)
        return (total - class_means[predicted]) / (len(class_means) - 1)

    return transform


def build_visualizer(n_examples: int = 32, epochs: int = 8, seed: int = 0):  # type: ignore[no-untyped-def]
    """Trains the demo's digits CNN and returns an Insights ``AttributionVisualizer`` for it."""
    _insights_config()
    from captum.insights import AttributionVisualizer, Batch
    from captum.insights.attr_vis.features import ImageFeature

    from captum_ig2.demo import load_digits_data, train_digits_cnn

    data = load_digits_data(seed)
    model = RGBDigits(train_digits_cnn(data, epochs=epochs, seed=seed)).eval()
    rgb = lambda t: t.expand(-1, 3, -1, -1)  # noqa: E731
    class_means = torch.stack([rgb(data.x_train[data.y_train == c]).mean(0) for c in range(10)])
    x, y = rgb(data.x_test[:n_examples]), data.y_test[:n_examples]
    # One tensor per Insights feature, as a tuple: a bare tensor would be split per example.
    batches = [Batch(inputs=(xb,), labels=yb) for xb, yb in zip(x.split(4), y.split(4))]
    return AttributionVisualizer(
        models=[model],
        score_func=lambda out: torch.softmax(out, dim=1),
        classes=[str(c) for c in range(10)],
        features=[
            ImageFeature(
                "Digit",
                baseline_transforms=[other_class_reference(model, class_means)],
                input_transforms=[],
            )
        ],
        dataset=batches,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve Captum Insights with IG2 and Guided IG.")
    parser.add_argument("--port", type=int, default=6080)
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args(argv)
    register()
    visualizer = build_visualizer(epochs=args.epochs)
    print(f"Captum Insights with IG2 and Guided IG: http://127.0.0.1:{args.port}", flush=True)
    visualizer.serve(blocking=True, port=args.port)


if __name__ == "__main__":
    main()
