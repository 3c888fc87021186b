"""Every Python block of the README and of docs/*.md runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
BLOCKS = [
    (page, block)
    for page in PAGES
    for block in re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
]
IDS = [f"{page.relative_to(ROOT)}:block{i}" for i, (page, _) in enumerate(BLOCKS)]


def test_the_readme_has_examples() -> None:
    assert sum(page == README for page, _ in BLOCKS) >= 4


def test_the_readme_is_short() -> None:
    assert len(README.read_text().splitlines()) <= 300


@pytest.mark.parametrize(("page", "code"), BLOCKS, ids=IDS)
def test_readme_example_runs(page: Path, code: str) -> None:
    exec(compile(code, str(page), "exec"), {"__name__": "readme_example"})
