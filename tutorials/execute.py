"""Execute the tutorials, and check that their committed outputs are not stale.

    python tutorials/execute.py --write [NOTEBOOK ...]   # run and save them with their outputs
    python tutorials/execute.py --check [NOTEBOOK ...]   # run them; fail if a text output changed

Without NOTEBOOK, every ``tutorials/*.ipynb``. Each notebook runs top to bottom in a fresh
kernel on this interpreter (``sys.executable -m ipykernel_launcher``, whatever kernels Jupyter
knows of), with ``HF_HUB_OFFLINE=1`` and its own folder as the working directory. ``--write``
also copies the figures the README shows to ``docs/`` (:data:`README_PICTURES`).

``--check`` runs the notebooks in a temporary copy of their folder (the figures in the tree stay
as they are) and compares every code cell's text outputs (streams and ``text/plain``; images are
not compared) with the committed ones, after :func:`mask`: numbers (timings, float digits) vary
from run to run and machine to machine, words and the structure of the output must not. It
exits with status 1 and a diff per stale cell.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
CELL_TIMEOUT_S = 600
# The figures the README shows, copied to docs/ (tracked; tutorials/figures/ is not) by --write.
README_PICTURES = {
    "1_images.ipynb": {"1_attributions_0.png": "tutorial_1_images.png"},
    "2_text_similarity.ipynb": {"2_text_similarity.png": "tutorial_2_text.png"},
    "3_inside_the_network.ipynb": {"3_channel_shares.png": "tutorial_3_inside.png"},
    "4_choosing_parameters.ipynb": {"4_n_steps.png": "tutorial_4_parameters.png"},
    "5_real_imagenet_classifier.ipynb": {"5_maps.png": "tutorial_5_imagenet.png"},
}

# A number standing alone (not the digit of a name such as conv1, IG2 or L6): integers,
# decimals, exponents, signs (ASCII or Unicode minus), thousands separators; hex addresses.
_HEX = re.compile(r"\b0x[0-9a-fA-F]+\b")
_NUMBER = re.compile(
    r"(?<![A-Za-z_\d.])[-+\u2212]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?<=\d)"
    r"(?:[eE][-+]?\d+)?(?![A-Za-z_\d])"
)
_SPACES = re.compile(r"[ \t]+")
# The folders of an absolute path (a warning's site-packages differ between environments).
_FOLDERS = re.compile(r"(?<![\w.~])/(?:[\w.+-]+/)+")


def mask(text: str) -> str:
    """``text`` with every standalone number replaced by ``#``, the folders of absolute paths
    by ``.../``, runs of spaces collapsed (a column of numbers may widen) and trailing spaces
    dropped; what is left are the words and the layout that must not change.

    >>> mask("IG2   mean |delta| 1.25e-03   0.41 s, conv1 shape (4, 18, 1, 8, 8)")
    'IG2 mean |delta| # # s, conv1 shape (#, #, #, #, #)'
    """
    text = _FOLDERS.sub(".../", text.replace("\r\n", "\n"))
    text = _NUMBER.sub("#", _HEX.sub("0x#", text))
    return "\n".join(_SPACES.sub(" ", line).rstrip() for line in text.split("\n")).strip("\n")


def coalesce_streams(outputs: Sequence[dict]) -> list[dict]:
    """``outputs`` with each run of consecutive outputs to one stream (stdout or stderr) joined
    into one, as a notebook shows them: how the kernel chunks a stream varies from run to run."""
    merged: list[dict] = []
    for output in outputs:
        previous = merged[-1] if merged else None
        if (
            output.get("output_type") == "stream"
            and previous is not None
            and previous.get("output_type") == "stream"
            and previous.get("name") == output.get("name")
        ):
            merged[-1] = nbformat.from_dict({**previous, "text": previous["text"] + output["text"]})
        else:
            merged.append(output)
    return merged


def text_outputs(cell: nbformat.NotebookNode) -> str:
    """A code cell's text outputs in order: streams (stdout and stderr, marked) and the
    ``text/plain`` of results and displays; errors as their name and value. Images left out."""
    parts = []
    for output in coalesce_streams(cell.get("outputs", [])):
        kind = output.get("output_type")
        if kind == "stream":
            parts.append(f"[{output.get('name', 'stream')}]\n{output.get('text', '')}")
        elif kind in ("execute_result", "display_data"):
            plain = output.get("data", {}).get("text/plain")
            if plain is not None:
                parts.append(f"[{kind}]\n{plain}")
        elif kind == "error":
            parts.append(f"[error]\n{output.get('ename')}: {output.get('evalue')}")
    return "\n".join(parts)


def compare(committed: nbformat.NotebookNode, executed: nbformat.NotebookNode) -> list[str]:
    """A diff for every code cell whose masked text outputs differ between the committed
    notebook and the freshly executed one; empty when none does."""
    old_cells = [c for c in committed.cells if c.cell_type == "code"]
    new_cells = [c for c in executed.cells if c.cell_type == "code"]
    if len(old_cells) != len(new_cells):
        return [f"{len(old_cells)} code cells committed, {len(new_cells)} executed"]
    diffs = []
    for number, (old, new) in enumerate(zip(old_cells, new_cells), start=1):
        before, after = mask(text_outputs(old)), mask(text_outputs(new))
        if before != after:
            first_line = (old.source.strip().splitlines() or [""])[0]
            diff = difflib.unified_diff(
                before.splitlines(), after.splitlines(), "committed", "executed", lineterm=""
            )
            diffs.append(f"code cell {number} ({first_line[:60]!r}):\n" + "\n".join(diff))
    return diffs


def execute(notebook: nbformat.NotebookNode, folder: Path) -> nbformat.NotebookNode:
    """Runs ``notebook`` in a fresh kernel of this interpreter, in ``folder``; returns it with
    its outputs (an error in a cell raises ``nbclient``'s ``CellExecutionError``)."""
    from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    class ThisInterpreter(KernelSpecManager):  # the kernel "python3" is always sys.executable
        def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
            return KernelSpec(
                argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                display_name="Python 3 (ipykernel)",
                language="python",
                name="python3",
            )

    os.environ["HF_HUB_OFFLINE"] = "1"  # inherited by the kernel: nothing is downloaded
    # tqdm (imported by Captum) warns that Jupyter's progress widgets are missing: a fact about
    # the kernel's environment, not the tutorial's.
    os.environ["PYTHONWARNINGS"] = "ignore:IProgress not found"
    manager = KernelManager(kernel_name="python3", kernel_spec_manager=ThisInterpreter())
    client = NotebookClient(
        notebook,
        km=manager,
        kernel_name="python3",
        timeout=CELL_TIMEOUT_S,
        record_timing=False,  # no timestamps in the saved cells' metadata
        resources={"metadata": {"path": str(folder)}},
    )
    try:
        client.execute()
    finally:
        if manager.has_kernel:  # the client leaves a kernel it was handed running
            manager.shutdown_kernel(now=True)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = coalesce_streams(cell.outputs)
    return notebook


def _children_cpu_seconds() -> float:
    """User and system time of the finished child processes (the kernels) so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="save the notebooks with outputs")
    mode.add_argument("--check", action="store_true", help="fail if a text output is stale")
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: tutorials/*.ipynb")
    args = parser.parse_args(argv)
    paths = [p.resolve() for p in args.notebooks] or sorted(HERE.glob("*.ipynb"))

    stale = []
    for path in paths:
        committed = nbformat.read(path, as_version=4)
        start, cpu_start = time.perf_counter(), _children_cpu_seconds()
        if args.write:
            executed = execute(nbformat.read(path, as_version=4), path.parent)
            nbformat.write(executed, path)
            for figure, picture in README_PICTURES.get(path.name, {}).items():
                shutil.copyfile(path.parent / "figures" / figure, HERE.parent / "docs" / picture)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                # A copy of the notebook's folder, under its own name (a notebook may ask
                # whether it runs in "tutorials"), so that the figures in the tree stay.
                folder = Path(tmp, path.parent.name)
                shutil.copytree(path.parent, folder, ignore=shutil.ignore_patterns(".*"))
                executed = execute(nbformat.read(path, as_version=4), folder)
            diffs = compare(committed, executed)
            if diffs:
                stale.append(path)
                print(f"STALE {path.name}: text outputs differ from the committed ones")
                print("\n\n".join(diffs) + "\n")
        seconds, cpu = time.perf_counter() - start, _children_cpu_seconds() - cpu_start
        action = "wrote" if args.write else ("stale" if path in stale else "up to date")
        print(f"{path.name}: {action}, executed in {seconds:.0f} s ({cpu:.0f} s of CPU time)",
              flush=True)  # fmt: skip
    if stale:
        names = " ".join(os.path.relpath(p) for p in stale)
        print(f"\n{len(stale)} notebook(s) stale; refresh with:\n"
              f"    HF_HUB_OFFLINE=1 python tutorials/execute.py --write {names}")  # fmt: skip
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
