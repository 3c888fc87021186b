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
