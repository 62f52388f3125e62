"""The model zoo: ``handssl models`` describes every shipped network from its metadata (``<name>.json``).

For each name of :func:`handssl.pretrained.available`: the task, what it was trained on, the input size, the
test metrics with their seed, the recipe (a file under ``experiments/``) and the command that reproduces it,
the file's size and SHA-256. A field the metadata lacks is shown as "—".

    handssl models                         # one block per network
    handssl models --markdown              # the README's "Model zoo" table (a test keeps them equal)
    handssl models --update_readme README.md   # rewrite that table in place, between its markers
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, NoReturn

__all__ = ["MARKERS", "describe", "main", "markdown_table", "text_listing", "update_readme"]

#: The lines around the generated table in the README.
MARKERS = ("<!-- models:start -->", "<!-- models:end -->")
MISSING = "—"

TASKS = {
    "SemiHandModule": "3D pose from 2.5D heatmaps (SemiHand)",
    "NVSModule": "3D pose + novel views (NVS)",
    "SupervisedModule": "3D pose (supervised)",
}
#: Metrics shown, in this order, with their label and format; the NVS baselines' L1 (copy input, background
#: only) describe the test set, not the network, and are left out.
METRICS = {
    "mpjpe": ("MPJPE", "{:.1f} mm"),
    "pa_mpjpe": ("PA-MPJPE", "{:.1f} mm"),
    "n_mpjpe": ("N-MPJPE", "{:.1f} mm"),
    "auc_20_50": ("AUC 20–50 mm", "{:.3f}"),
    "synthesis_l1_hand": ("synthesized hand L1", "{:.3f}"),
}
COLUMNS = ("name", "task", "trained on", "input", "test metrics", "recipe", "command", "size", "SHA-256")


def describe(name: str, weights_dir: str | Path | None = None) -> dict[str, str]:
    """One shipped network's row: :data:`COLUMNS` -> text (:data:`MISSING` where the metadata says nothing)."""
    from handssl.pretrained import info

    meta = info(name, weights_dir)
    task = TASKS.get(meta.get("class", ""), meta.get("class") or MISSING)
    size = meta.get("image_size")
    size_bytes = meta.get("bytes")
    return {
        "name": name,
        "task": task,
        "trained on": _text(meta.get("trained_on")),
        "input": f"{size}×{size} RGB crop" if size else MISSING,
        "test metrics": _metrics(meta),
        "recipe": _text(meta.get("recipe")),
        "command": _text(meta.get("command")),
        "size": f"{size_bytes / 2**20:.1f} MB" if isinstance(size_bytes, (int, float)) else MISSING,
        "SHA-256": _text(meta.get("sha256")),
    }


def _text(value: Any) -> str:
    return str(value) if value not in (None, "") else MISSING


def _metrics(meta: dict[str, Any]) -> str:
    metrics = meta.get("metrics")
    shown = []
    if isinstance(metrics, dict):
        for key, (label, fmt) in METRICS.items():
            value = metrics.get(key)
            if isinstance(value, (int, float)):
                shown.append(f"{label} {fmt.format(value)}")
    if not shown:
        return MISSING
    seed = meta.get("seed")
    where = f"seed {seed if seed is not None else MISSING}"
    if meta.get("metrics_note"):
        where += f"; {meta['metrics_note']}"
    return f"{', '.join(shown)} ({where})"


def markdown_table(weights_dir: str | Path | None = None) -> str:
    """The zoo as a markdown table (what ``handssl models --markdown`` prints and the README holds)."""
    from handssl.pretrained import available

    code = {"name", "recipe", "command", "SHA-256"}

    def cell(column: str, value: str) -> str:
        value = value.replace("|", "\\|")
        return f"`{value}`" if column in code and value != MISSING else value

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for name in available(weights_dir):
        row = describe(name, weights_dir)
        lines.append("| " + " | ".join(cell(c, row[c]) for c in COLUMNS) + " |")
    return "\n".join(lines)


def text_listing(weights_dir: str | Path | None = None) -> str:
    """The zoo for a terminal: one block per network."""
    from handssl.pretrained import WEIGHTS_DIR, available

    names = available(weights_dir)
    if not names:
        return f"no shipped networks in {weights_dir or WEIGHTS_DIR}"
    blocks = []
    for name in names:
        row = describe(name, weights_dir)
        head = f"{name}  ({row['task']}; {row['input']}; {row['size']})"
        body = [f"  {c:<13}{row[c]}" for c in ("trained on", "test metrics", "recipe", "command", "SHA-256")]
        blocks.append("\n".join([head, *body]))
    footer = (
        "Use a name as --ckpt_path (handssl predict/test/validate/fit/export) or in handssl.infer(model=...)."
    )
    return "\n\n".join([*blocks, footer])


def update_readme(path: str | Path, weights_dir: str | Path | None = None) -> bool:
    """Replace the table between :data:`MARKERS` in ``path`` by :func:`markdown_table`; True when it changed.

    Raises:
        ValueError: ``path`` does not hold both markers, in order.
    """
    path = Path(path)
    text = path.read_text()
    start, end = (text.find(marker) for marker in MARKERS)
    if start < 0 or end < start:
        raise ValueError(f"{path} has no {MARKERS[0]} ... {MARKERS[1]} block")
    new = text[: start + len(MARKERS[0])] + "\n" + markdown_table(weights_dir) + "\n" + text[end:]
    if new != text:
        path.write_text(new)
    return new != text


def readme_table(path: str | Path) -> str:
    """The text between :data:`MARKERS` in ``path``, without its surrounding newlines."""
    text = Path(path).read_text()
    start, end = (text.find(marker) for marker in MARKERS)
    if start < 0 or end < start:
        raise ValueError(f"{path} has no {MARKERS[0]} ... {MARKERS[1]} block")
    return text[start + len(MARKERS[0]) : end].strip("\n")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"handssl: error: models: {message}", file=sys.stderr)
        sys.exit(2)


def main(argv: list[str] | None = None) -> int:
    """``handssl models [--markdown] [--update_readme README.md] [--weights_dir DIR]``; returns the exit code."""
    from handssl.pretrained import PretrainedError

    parser = _Parser(prog="handssl models", description=__doc__.split("\n\n")[0])
    parser.add_argument("--markdown", action="store_true", help="print the README's markdown table")
    parser.add_argument(
        "--update_readme", metavar="PATH", help="rewrite the table between the markers of PATH"
    )
    parser.add_argument(
        "--weights_dir", default=None, help="folder of <name>.pt/<name>.json (default: shipped)"
    )
    args = parser.parse_args(argv)
    if args.weights_dir is not None and not Path(args.weights_dir).is_dir():
        parser.error(f"--weights_dir {args.weights_dir!r} is not a folder")
    try:
        if args.update_readme:
            changed = update_readme(args.update_readme, args.weights_dir)
            print(
                f"handssl: {'updated' if changed else 'unchanged'}: the model table of {args.update_readme}"
            )
        elif args.markdown:
            print(markdown_table(args.weights_dir))
        else:
            print(text_listing(args.weights_dir))
    except (PretrainedError, ValueError, OSError) as err:
        print(f"handssl: error: {err}", file=sys.stderr)
        return 2
    return 0
