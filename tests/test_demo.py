"""The README's main job runs end to end and writes its figure."""

from __future__ import annotations

from pathlib import Path

from captum_ig2 import demo


def test_demo_trains_attributes_and_writes_a_png(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "demo.png"
    demo.main(["--out", str(out), "--n-examples", "2", "--n-steps", "10", "--epochs", "1"])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    for name in ("IG (zero baseline)", "Guided IG", "IG2"):
        assert name in printed


def test_demo_figure_uses_captums_colours_with_a_colour_bar_per_map() -> None:
    import torch
    from matplotlib.text import Text

    x = torch.rand(2, 1, 8, 8)
    results = {name: (torch.randn(2, 1, 8, 8), torch.zeros(2)) for name in ("IG", "IG2")}
    fig = demo.attribution_figure(x, torch.tensor([3, 5]), results, gradcf=torch.rand(2, 1, 8, 8))
    maps = [image for ax in fig.axes for image in ax.images if image.cmap.name == "RdWhGn"]
    assert len(maps) == 2 * 2  # every digit, every method
    assert all(image.colorbar is not None for image in maps)
    text = "\n".join(t.get_text() for t in fig.findobj(Text))
    assert "green: positive attribution, red: negative" in text and "Captum's colours" in text
