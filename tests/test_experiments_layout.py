"""experiments/ is recipes at the top, studies/ and tools/ for scripts (issue 24): every path the docs give exists."""

import re
from pathlib import Path

import handssl.pretrained as pretrained
from handssl.zoo import MARKERS

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"
SCRIPT = re.compile(r"experiments/[\w/]+\.py\b")
#: Old paths named on purpose: the ship command that weights shipped before the move record, still accepted.
HISTORIC = {("tests/test_pretrained.py", "experiments/ship_weights.py")}


def _readme_outside_the_model_table() -> str:
    # The model table is generated from the shipped weights' metadata, which records the commands of its time.
    text = (REPO / "README.md").read_text()
    return text[: text.index(MARKERS[0])] + text[text.index(MARKERS[1]) :]


def test_the_top_level_holds_recipes_and_the_scripts_live_in_studies_and_tools():
    assert not list(EXPERIMENTS.glob("*.py")), "scripts go to experiments/studies/ or experiments/tools/"
    assert list(EXPERIMENTS.glob("*.yaml")) and list((EXPERIMENTS / "studies").glob("*.py"))
    listing = (EXPERIMENTS / "README.md").read_text()
    studies = listing[listing.index("## Studies") : listing.index("## Tools")]
    tools = listing[listing.index("## Tools") : listing.index("## Results")]
    for folder, section in (("studies", studies), ("tools", tools)):
        for script in sorted((EXPERIMENTS / folder).glob("*.py")):
            assert f"`{script.name}`" in section, (
                f"experiments/README.md does not list {folder}/{script.name}"
            )


def test_every_script_path_in_the_docs_code_and_tests_exists():
    sources = {
        "README.md": _readme_outside_the_model_table(),
        "experiments/README.md": (EXPERIMENTS / "README.md").read_text(),
    }
    for pattern in (
        "handssl/**/*.py",
        "tests/*.py",
        "notebooks/*",
        "experiments/studies/*.py",
        "experiments/tools/*.py",
    ):
        for path in REPO.glob(pattern):
            if path.is_file() and path.name != Path(__file__).name:
                sources[str(path.relative_to(REPO))] = path.read_text()
    sources["experiments/results/bench_throughput/run_cpu.sh"] = (
        EXPERIMENTS / "results" / "bench_throughput" / "run_cpu.sh"
    ).read_text()
    missing = {
        (name, path)
        for name, text in sources.items()
        for path in SCRIPT.findall(text)
        if not (REPO / path).is_file()
    }
    assert not missing - HISTORIC, sorted(missing - HISTORIC)
    for command in pretrained.NAMES.values():
        assert (REPO / command.split()[1]).is_file(), command
