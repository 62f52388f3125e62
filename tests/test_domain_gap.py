"""The domain-gap benchmark script runs end to end in its smoke mode and reports every gate."""

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "studies" / "domain_gap.py"


def test_domain_gap_smoke_run_writes_every_stage_and_gate(tmp_path, capsys, monkeypatch):
    # In this process: a subprocess per run paid the Lightning import (about 5 CPU seconds) twice.
    spec = importlib.util.spec_from_file_location("domain_gap", SCRIPT)
    domain_gap = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(domain_gap)
    monkeypatch.chdir(tmp_path)
    # seed_everything sets these: restored after the test.
    for variable in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS"):
        monkeypatch.delenv(variable, raising=False)
    argv = ["--quick", "--out", str(tmp_path / "gap"), "--threads", "1"]  # the other xdist worker has a core
    domain_gap.main(argv)
    assert "[domain_gap] oracle ..." in capsys.readouterr().out
    folder = tmp_path / "gap_quick"
    stages = ("world", "leak", "speed", "mean_pose", "source_only", "oracle")
    results = {name: json.loads((folder / f"{name}.json").read_text()) for name in stages}
    for style in ("synthetic", "real", "real_object"):
        for row in (results["source_only"][style], results["oracle"][style]):
            assert 0 < row["mpjpe"] < 300 and 0 <= row["auc_20_50"] <= 1
    # The training stages ran the supervised recipe (handssl fit -c ...), each with its own run folder.
    recipe = "handssl fit -c experiments/model/supervised.yaml -c experiments/data/synthhands.yaml "
    for name, style in (("source_only", "synthetic"), ("oracle", "real")):
        assert results[name]["command"].startswith(recipe)
        assert f"--data.init_args.train.init_args.world.init_args.style={style} " in results[name]["command"]
        assert results[name]["steps"] == 10
        assert (Path(results[name]["run_dir"]) / "config.yaml").is_file()
    # The appearance frame comes from another sequence: its pose is further from t than a same-sequence frame.
    leak = results["leak"]
    assert leak["appearance_frame"]["mpjpe"] > leak["same_sequence_frame"]["mpjpe"]
    report = (folder / "domain_gap.md").read_text()
    assert report.count("| yes |") + report.count("| **no** |") == 8
    # A second run loads the saved stages instead of recomputing them.
    domain_gap.main(argv)
    again = capsys.readouterr().out
    assert "[domain_gap]" not in again and "| gate | value | bound | holds |" in again
