"""tutorials/execute.py --check: which output changes make a committed notebook stale (the
comparison only; no notebook is executed here)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")

_SCRIPT = Path(__file__).resolve().parents[1] / "tutorials" / "execute.py"
_spec = importlib.util.spec_from_file_location("tutorials_execute", _SCRIPT)
assert _spec is not None and _spec.loader is not None
execute = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(execute)


def _notebook(*cells: list[dict]) -> nbformat.NotebookNode:
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_markdown_cell("# a tutorial")]
    for outputs in cells:
        cell = nbformat.v4.new_code_cell("print(...)")
        cell.outputs = [nbformat.from_dict(o) for o in outputs]
        notebook.cells.append(cell)
    return notebook


def _stdout(text: str) -> dict:
    return {"output_type": "stream", "name": "stdout", "text": text}


def _result(plain: str, png: str = "iVBORw0KGgo=") -> dict:
    data = {"text/plain": plain, "image/png": png}
    return {"output_type": "execute_result", "execution_count": 1, "data": data, "metadata": {}}


COMMITTED = _notebook(
    [_stdout("test accuracy: 0.975\nIG         mean |delta| 6.17e-04   0.65 s\n")],
    [_result("<Figure size 880x300 with 6 Axes>")],
)


def test_changed_numbers_timings_and_column_widths_are_not_stale() -> None:
    executed = _notebook(
        [_stdout("test accuracy: 0.969\nIG         mean |delta| 1.2e-3     12.40 s\n")],
        [_result("<Figure size 880x300 with 6 Axes>", png="AAAA")],  # another picture
    )
    assert execute.compare(COMMITTED, executed) == []


@pytest.mark.parametrize(
    "stdout",
    [
        "test accuracy: 0.975\nIG2        mean |delta| 6.17e-04   0.65 s\n",  # a name changed
        "test precision: 0.975\nIG         mean |delta| 6.17e-04   0.65 s\n",  # a word changed
        "test accuracy: 0.975\n",  # a line gone
        "test accuracy: 0.975\nIG         mean |delta| 6.17e-04   0.65 s\nwarning\n",
    ],
    ids=["name", "word", "line-gone", "line-added"],
)
def test_changed_words_or_lines_are_stale(stdout: str) -> None:
    executed = _notebook([_stdout(stdout)], [_result("<Figure size 880x300 with 6 Axes>")])
    (diff,) = execute.compare(COMMITTED, executed)
    assert diff.startswith("code cell 1 ")
    assert "--- committed" in diff and "+++ executed" in diff


def test_a_new_output_or_cell_is_stale() -> None:
    executed = _notebook(
        [_stdout("test accuracy: 0.975\nIG         mean |delta| 6.17e-04   0.65 s\n")],
        [_stdout("hello\n"), _result("<Figure size 880x300 with 6 Axes>")],
    )
    (diff,) = execute.compare(COMMITTED, executed)
    assert diff.startswith("code cell 2 ") and "+hello" in diff
    one_more = _notebook(*[c.outputs for c in COMMITTED.cells[1:]], [])
    assert execute.compare(COMMITTED, one_more) == ["2 code cells committed, 3 executed"]


def test_mask_keeps_names_with_digits_and_hides_standalone_numbers() -> None:
    assert execute.mask("conv1 and IG2 of all-MiniLM-L6-v2: -1.5e+03, 1,437 digits, 2.00%") == (
        "conv1 and IG2 of all-MiniLM-L6-v2: #, # digits, #%"
    )
    assert execute.mask("object at 0x7f3a2b\r\n  a    b  \n") == "object at 0x#\n a b"


def test_a_stream_chunked_differently_is_not_stale() -> None:
    lines = "test accuracy: 0.975\nIG         mean |delta| 6.17e-04   0.65 s\n"
    chunked = _notebook(
        [_stdout(lines[:10]), _stdout(lines[10:])],
        [_result("<Figure size 880x300 with 6 Axes>")],
    )
    assert execute.compare(COMMITTED, chunked) == []
    as_stderr = {"output_type": "stream", "name": "stderr", "text": lines[10:]}
    figure = [_result("<Figure size 880x300 with 6 Axes>")]
    (diff,) = execute.compare(COMMITTED, _notebook([_stdout(lines[:10]), as_stderr], figure))
    assert "+[stderr]" in diff


def test_paths_in_warnings_do_not_make_a_notebook_stale() -> None:
    def warning(prefix: str) -> dict:
        text = f"{prefix}/site-packages/tqdm/auto.py:21: TqdmWarning: IProgress not found\n"
        return {"output_type": "stream", "name": "stderr", "text": text}

    here = _notebook([warning("/work/main/.venv/lib/python3.11")])
    there = _notebook([warning("/home/ci/.venv-ci/lib/python3.12")])
    assert execute.compare(here, there) == []
