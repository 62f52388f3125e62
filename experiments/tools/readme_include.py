"""Copy results tables into the README: every ``<!-- include: PATH -->`` block gets the file's current text.

A study writes its tables as markdown (``experiments/results/<study>/table.md``, ``gates.md``); the README shows
them between two markers, so a number in the README is the one in its results file::

    <!-- include: experiments/results/nvs_sweep/table.md -->
    ...replaced by the file's text...
    <!-- include:end -->

    python experiments/tools/readme_include.py            # rewrite the blocks of README.md
    python experiments/tools/readme_include.py --check    # exit 1 naming the blocks that differ from their files

Paths are relative to the repository root. ``tests/test_readme_include.py`` runs ``--check`` on the README.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"(<!-- include: (?P<path>\S+) -->\n)(?P<body>.*?)(<!-- include:end -->)", re.DOTALL)


def included(text: str, root: Path = ROOT) -> tuple[str, list[str]]:
    """``text`` with every include block's body replaced by its file, and the paths whose body changed.

    Raises:
        SystemExit: A block names a file that does not exist, or a start marker has no end marker.
    """
    stale: list[str] = []

    def replace(match: re.Match[str]) -> str:
        path = root / match["path"]
        if not path.is_file():
            raise SystemExit(f"README include not found: {match['path']} (relative to {root})")
        body = path.read_text()
        body = body if body.endswith("\n") else body + "\n"
        if body != match["body"]:
            stale.append(match["path"])
        return f"{match.group(1)}{body}{match.group(4)}"

    result = BLOCK.sub(replace, text)
    if result.count("<!-- include: ") != result.count("<!-- include:end -->"):
        raise SystemExit("README include: a '<!-- include: PATH -->' marker has no '<!-- include:end -->'")
    return result, stale


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    parser.add_argument(
        "--check", action="store_true", help="change nothing; exit 1 if a block differs from its file"
    )
    args = parser.parse_args(argv)
    if not args.readme.is_file():
        raise SystemExit(f"README not found: {args.readme}")
    text = args.readme.read_text()
    result, stale = included(text, args.readme.resolve().parent)
    if args.check:
        if stale:
            raise SystemExit(
                f"{args.readme}: stale include blocks {', '.join(stale)} "
                "(run python experiments/tools/readme_include.py)"
            )
        return
    if result != text:
        args.readme.write_text(result)
    print(f"{args.readme}: {len(stale)} block(s) updated" + (f" ({', '.join(stale)})" if stale else ""))


if __name__ == "__main__":
    main()
