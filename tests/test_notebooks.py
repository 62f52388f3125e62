"""The notebooks: committed with the outputs of notebooks/execute.py, and executed here headless.

Each committed notebook must hold the outputs of one run top to bottom in its default mode (what GitHub shows a
reader), small, with its README picture beside it. The tests execute every notebook again, with the small
settings of HANDSSL_NOTEBOOK_FAST=1, on a copy in memory (the committed file is not touched): it must run
without an error and show the figures it promises (checked by the names of the PNGs it saves into
HANDSSL_NOTEBOOK_FIGURES).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbclient.exceptions import CellExecutionError
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"


def _load_execute():
    spec = importlib.util.spec_from_file_location("handssl_notebooks_execute", NOTEBOOKS / "execute.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


execute = _load_execute()
"""notebooks/execute.py: the same execution as the script that writes the committed outputs."""

EXPECTED_FIGURES = {
    "01_synthhands_tour.ipynb": [
        "subjects",
        "views",
        "styles",
        "masks_depth",
        "overlays",
        "sequence",
        "rig",
        "skeleton_3d",
        "multiview",
    ],
    "02_novel_view_synthesis.ipynb": ["training", "synthesis", "turntable", "latent", "poses", "pck"],
    "03_semihand_pseudo_labels.ipynb": [
        "domains",
        "correct_demo",
        "pseudo_labels",
        "pseudo_label_3d",
        "confidence",
        "pck",
    ],
    "04_real_datasets.ipynb": [
        *(f"{name}_overlay" for name in ("rhd", "stb", "dexter_object", "panoptic", "handdb", "freihand")),
        "crops",
        "skeletons_3d",
        "panoptic_rig",
        "panoptic_multiview",
    ],
}


def test_every_notebook_is_listed():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(EXPECTED_FIGURES)


def _figures_shown(notebook) -> int:
    return sum(
        1
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type in ("display_data", "execute_result") and "image/png" in output.get("data", {})
    )


def _errors(notebook) -> list[str]:
    return [
        f"{output.ename}: {output.evalue}"
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "error"
    ]


@pytest.mark.parametrize("name", sorted(EXPECTED_FIGURES))
def test_notebook_is_committed_with_the_outputs_of_one_default_run(name):
    path = NOTEBOOKS / name
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata["kernelspec"]["name"] == "python3"
    # Written by notebooks/execute.py in the default mode (the shipped networks), not a fast or edited run.
    assert notebook.metadata.get("handssl") == {"executed_by": "notebooks/execute.py", "mode": "default"}
    counts = [cell.execution_count for cell in notebook.cells if cell.cell_type == "code"]
    assert counts == list(range(1, len(counts) + 1)), f"{name}: not run top to bottom in one kernel: {counts}"
    assert not _errors(notebook)
    assert _figures_shown(notebook) >= len(EXPECTED_FIGURES[name])
    assert path.stat().st_size < execute.MAX_NOTEBOOK_BYTES, f"{name}: keep its figures small"
    # Its README picture: small, and shown in the README's notebook table with a link to the notebook.
    picture = execute.picture_path(name)
    assert picture.is_file() and picture.stat().st_size <= execute.MAX_PICTURE_BYTES
    assert Image.open(picture).width == execute.PICTURE_WIDTH
    readme = (ROOT / "README.md").read_text()
    assert f"({picture.relative_to(ROOT)})" in readme or f'src="{picture.relative_to(ROOT)}"' in readme
    assert f"(notebooks/{name})" in readme or f'href="notebooks/{name}"' in readme


@pytest.mark.parametrize("name", sorted(EXPECTED_FIGURES))
def test_notebook_runs_and_shows_its_figures(name, tmp_path):
    figures = tmp_path / "figures"
    committed = (NOTEBOOKS / name).read_bytes()
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    execute.execute(
        notebook, fast=True, figures=figures, cwd=tmp_path
    )  # a cell error raises CellExecutionError
    assert (NOTEBOOKS / name).read_bytes() == committed  # the committed outputs stay as they are

    assert not _errors(notebook)
    shown = _figures_shown(notebook)
    expected = EXPECTED_FIGURES[name]
    assert shown >= len(expected), f"{name}: {shown} figures displayed, expected {len(expected)}"
    prefix = name[:2]
    saved = sorted(p.stem for p in figures.glob(f"{prefix}_*.png"))
    assert saved == sorted(f"{prefix}_{figure}" for figure in expected)
    for path in figures.glob("*.png"):
        pixels = np.asarray(Image.open(path).convert("L"), dtype=np.float32)
        assert pixels.shape[0] >= 200 and pixels.shape[1] >= 200, path.name
        assert pixels.std() > 5.0, f"{path.name} is blank"  # something was drawn
    assert {execute.PICTURES[name][0]} <= set(expected)  # the README's picture is one of them


def test_a_cell_that_raises_fails_the_run(tmp_path):
    notebook = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell("x = 1"),
            # Even a cell tagged to be allowed to raise fails it.
            nbformat.v4.new_code_cell('raise ValueError("boom")', metadata={"tags": ["raises-exception"]}),
            nbformat.v4.new_code_cell("y = 2"),
        ],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    )
    with pytest.raises(CellExecutionError, match="boom"):
        execute.execute(notebook, fast=True, cwd=tmp_path)
    assert notebook.cells[2].execution_count is None  # stopped at the failing cell
