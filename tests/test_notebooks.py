"""Execute every notebook in notebooks/ headless, with the small settings of HANDSSL_NOTEBOOK_FAST=1.

Each notebook must run top to bottom without an error, show the figures it promises (checked by the names of
the PNGs it saves into HANDSSL_NOTEBOOK_FIGURES), and be committed without outputs.
"""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient
from PIL import Image

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

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


@pytest.mark.parametrize("name", sorted(EXPECTED_FIGURES))
def test_notebook_is_committed_without_outputs(name):
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata["kernelspec"]["name"] == "python3"
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{name}: a code cell holds outputs"


@pytest.mark.parametrize("name", sorted(EXPECTED_FIGURES))
def test_notebook_runs_and_shows_its_figures(name, tmp_path, monkeypatch):
    figures = tmp_path / "figures"
    monkeypatch.setenv("HANDSSL_NOTEBOOK_FAST", "1")
    monkeypatch.setenv("HANDSSL_NOTEBOOK_FIGURES", str(figures))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    for variable in (
        "HANDSSL_DATA",
        "HANDSSL_NVS_CHECKPOINT",
        "HANDSSL_SOURCE_CHECKPOINT",
        "HANDSSL_SEMIHAND_CHECKPOINT",
    ):
        monkeypatch.delenv(variable, raising=False)
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(
        notebook, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError with the failing cell and traceback

    shown = sum(
        1
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type in ("display_data", "execute_result") and "image/png" in output.get("data", {})
    )
    expected = EXPECTED_FIGURES[name]
    assert shown >= len(expected), f"{name}: {shown} figures displayed, expected {len(expected)}"
    prefix = name[:2]
    saved = sorted(p.stem for p in figures.glob(f"{prefix}_*.png"))
    assert saved == sorted(f"{prefix}_{figure}" for figure in expected)
    for path in figures.glob("*.png"):
        pixels = np.asarray(Image.open(path).convert("L"), dtype=np.float32)
        assert pixels.shape[0] >= 200 and pixels.shape[1] >= 200, path.name
        assert pixels.std() > 5.0, f"{path.name} is blank"  # something was drawn
