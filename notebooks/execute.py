"""Re-execute the notebooks in place, top to bottom, keeping their outputs; save the README's picture of each.

    python notebooks/execute.py            # all four, default mode (the shipped networks); about 2 min on 2 cores
    python notebooks/execute.py 02 03      # the notebooks whose names start so
    python notebooks/execute.py --figures /tmp/figures   # also keep every figure (100 dpi PNGs)

Each notebook runs in a fresh ``python3`` kernel from ``notebooks/`` in its default mode: the
``HANDSSL_NOTEBOOK_FAST`` / ``HANDSSL_NOTEBOOK_TRAIN`` switches and the checkpoint variables
(``HANDSSL_NVS_CHECKPOINT``, ``HANDSSL_SOURCE_CHECKPOINT``, ``HANDSSL_SEMIHAND_CHECKPOINT``) are cleared, so
notebooks 02 and 03 show the shipped networks; ``HANDSSL_DATA`` is left as it is (notebook 04 falls back to
fake copies for datasets not on disk). A cell that raises stops the run with its traceback and writes nothing.
The executed notebook replaces the file (no timing metadata, so a rerun changes only what its outputs
changed), and one figure per notebook (:data:`PICTURES`) is written, shrunk, to ``docs/notebooks/`` for the
README's notebook table. tests/test_notebooks.py runs the same :func:`execute` with ``fast=True`` on a copy in
memory and checks that the committed files hold these outputs.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from PIL import Image

NOTEBOOKS = Path(__file__).resolve().parent
REPO = NOTEBOOKS.parent
PICTURES_DIR = REPO / "docs" / "notebooks"
PICTURES = {
    "01_synthhands_tour.ipynb": ("overlays", 1.0),
    "02_novel_view_synthesis.ipynb": ("synthesis", 0.5),
    "03_semihand_pseudo_labels.ipynb": ("pseudo_labels", 1.0),
    "04_real_datasets.ipynb": ("crops", 1.0),
}
"""The figure (``show(fig, name)``'s name) the README shows for each notebook, and the share of its height
kept from the top (the first 3 of the 6 rows of input, real and synthesized views)."""

PICTURE_WIDTH = 480
"""Width (px) of a README picture."""

MAX_PICTURE_BYTES = 150_000
MAX_NOTEBOOK_BYTES = 1_000_000

CLEARED = (
    "HANDSSL_NOTEBOOK_FAST",
    "HANDSSL_NOTEBOOK_TRAIN",
    "HANDSSL_NOTEBOOK_FIGURES",
    "HANDSSL_NVS_CHECKPOINT",
    "HANDSSL_SOURCE_CHECKPOINT",
    "HANDSSL_SEMIHAND_CHECKPOINT",
)
"""Variables that switch a notebook out of its default mode (or would save its figures elsewhere)."""


@contextlib.contextmanager
def environment(**values: str | None) -> Iterator[None]:
    """Set (a string) or unset (``None``) environment variables for the kernels started inside; restore after."""
    saved = {name: os.environ.get(name) for name in values}
    try:
        for name, value in values.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def execute(
    notebook: nbformat.NotebookNode,
    *,
    fast: bool,
    figures: Path | None = None,
    cwd: Path = NOTEBOOKS,
    timeout: int = 1200,
) -> nbformat.NotebookNode:
    """Run ``notebook`` top to bottom in a fresh kernel, in place (its cells get the new outputs).

    Args:
        notebook: The notebook, as ``nbformat.read`` returns it.
        fast: ``HANDSSL_NOTEBOOK_FAST=1`` (the tests' small settings) instead of the default mode.
        figures: Folder for ``HANDSSL_NOTEBOOK_FIGURES`` (every shown figure saved as a PNG), or none.
        cwd: The kernel's working directory.
        timeout: Seconds one cell may take.

    Raises:
        nbclient.exceptions.CellExecutionError: A cell raised (also one tagged ``raises-exception``).
    """
    values: dict[str, str | None] = dict.fromkeys(CLEARED)
    values.update(WANDB_MODE="disabled", HANDSSL_PROGRESS="0")
    if fast:
        values["HANDSSL_NOTEBOOK_FAST"] = "1"
    if figures is not None:
        values["HANDSSL_NOTEBOOK_FIGURES"] = str(figures)
    client = NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=timeout,
        allow_errors=False,
        force_raise_errors=True,
        record_timing=False,
        resources={"metadata": {"path": str(cwd)}},
    )
    with environment(**values):
        client.execute()
    return notebook


def save_picture(source: Path, target: Path, keep_height: float = 1.0) -> int:
    """Shrink the PNG ``source`` to :data:`PICTURE_WIDTH` px wide into ``target``; returns its size in bytes.

    Only the top ``keep_height`` of the picture is kept, cut at the blank row nearest to that height (within 5 %
    of it), so that a grid loses whole rows. Saved as an optimised RGB PNG, or with a 256-colour palette when
    that is over :data:`MAX_PICTURE_BYTES`.
    """
    image = Image.open(source).convert("RGB")
    if keep_height < 1.0:
        cut = round(image.height * keep_height)
        grey = image.convert("L")
        blank = [
            row
            for row in range(max(1, cut - image.height // 20), min(image.height, cut + image.height // 20))
            if grey.crop((0, row, image.width, row + 1)).getextrema()[0] > 250
        ]
        cut = min(blank, key=lambda row: abs(row - cut), default=cut)
        image = image.crop((0, 0, image.width, cut))
    if image.width > PICTURE_WIDTH:
        height = round(image.height * PICTURE_WIDTH / image.width)
        image = image.resize((PICTURE_WIDTH, height), Image.Resampling.LANCZOS)
    for candidate in (image, image.quantize(colors=256, method=Image.Quantize.MEDIANCUT)):
        buffer = io.BytesIO()
        candidate.save(buffer, format="PNG", optimize=True)
        if buffer.tell() <= MAX_PICTURE_BYTES:
            break
    else:
        raise SystemExit(f"{target}: {buffer.tell()} bytes even with 256 colours (limit {MAX_PICTURE_BYTES})")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(buffer.getvalue())
    return buffer.tell()


def picture_path(name: str) -> Path:
    """Where the README picture of notebook ``name`` (e.g. ``01_synthhands_tour.ipynb``) is written."""
    return PICTURES_DIR / f"{name[:2]}_{PICTURES[name][0]}.png"


def main(argv: list[str] | None = None) -> int:
    """Execute the notebooks named on the command line (all by default); 1 when one would be too large."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("prefixes", nargs="*", help="run only the notebooks whose names start so (e.g. 02)")
    parser.add_argument("--timeout", type=int, default=1200, help="seconds one cell may take")
    parser.add_argument("--figures", type=Path, default=None, help="also keep every figure as a PNG here")
    args = parser.parse_args(argv)
    paths = sorted(NOTEBOOKS.glob("*.ipynb"))
    if args.prefixes:
        paths = [p for p in paths if p.name.startswith(tuple(args.prefixes))]
        if not paths:
            parser.error(f"no notebook in {NOTEBOOKS} starts with {' or '.join(args.prefixes)}")
    for path in paths:
        notebook = nbformat.read(path, as_version=4)
        start = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="handssl_figures_") as folder:
            figures = (args.figures or Path(folder)).resolve()
            execute(notebook, fast=False, figures=figures, timeout=args.timeout)
            picture = picture_path(path.name)
            figure, keep_height = PICTURES[path.name]
            picture_bytes = save_picture(figures / f"{path.name[:2]}_{figure}.png", picture, keep_height)
        notebook.metadata["handssl"] = {"executed_by": "notebooks/execute.py", "mode": "default"}
        nbformat.validate(notebook)
        text = nbformat.writes(notebook) + "\n"
        size = len(text.encode())
        print(
            f"{path.name}: {time.monotonic() - start:.0f} s, {size / 1e6:.2f} MB; "
            f"{picture.relative_to(REPO)} {picture_bytes / 1e3:.0f} kB",
            flush=True,
        )
        if size > MAX_NOTEBOOK_BYTES:
            print(
                f"{path.name}: over {MAX_NOTEBOOK_BYTES / 1e6:.0f} MB, not written: keep its figures smaller",
                file=sys.stderr,
            )
            return 1
        path.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
