"""experiments/tools/readme_include.py keeps the README's results tables equal to their files."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import load_script

ROOT = Path(__file__).parents[1]


def tool():
    return load_script("experiments/tools/readme_include.py")


def test_blocks_get_their_files_text_and_check_names_stale_ones(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "table.md").write_text("| a |\n|---|\n| 1 |")
    readme = tmp_path / "README.md"
    start, end = "<!-- include: results/table.md -->\n", "<!-- include:end -->"
    readme.write_text(f"intro\n{start}old rows\n{end}\noutro\n")
    with pytest.raises(SystemExit, match=r"stale include blocks results/table\.md \(run python"):
        tool().main(["--readme", str(readme), "--check"])
    tool().main(["--readme", str(readme)])
    assert readme.read_text() == f"intro\n{start}| a |\n|---|\n| 1 |\n{end}\noutro\n"
    tool().main(["--readme", str(readme), "--check"])  # now current: no exit
    (tmp_path / "results" / "table.md").write_text("| a |\n|---|\n| 2 |\n")
    assert tool().included(readme.read_text(), tmp_path)[1] == ["results/table.md"]


def test_bad_blocks_are_one_line(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("<!-- include: nope.md -->\nx\n<!-- include:end -->\n")
    with pytest.raises(SystemExit, match=r"^README include not found: nope\.md \(relative to "):
        tool().main(["--readme", str(readme)])
    (tmp_path / "a.md").write_text("a\n")
    readme.write_text("<!-- include: a.md -->\nx\n")
    with pytest.raises(SystemExit, match="has no '<!-- include:end -->'"):
        tool().main(["--readme", str(readme)])
    with pytest.raises(SystemExit, match="README not found"):
        tool().main(["--readme", str(tmp_path / "missing.md")])


def test_the_readme_shows_its_results_files_as_they_are():
    text = (ROOT / "README.md").read_text()
    assert "<!-- include: experiments/results/nvs_sweep/table.md -->" in text
    assert tool().included(text, ROOT)[1] == [], "run python experiments/tools/readme_include.py"
