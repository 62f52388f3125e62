"""The domain-gap benchmark script runs end to end in its smoke mode and reports every gate."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_domain_gap_smoke_run_writes_every_stage_and_gate(tmp_path):
    out = tmp_path / "gap"
    command = [sys.executable, str(ROOT / "experiments" / "domain_gap.py"), "--quick", "--out", str(out)]
    command += ["--threads", "1"]  # the other xdist worker has the second core
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    folder = tmp_path / "gap_quick"
    stages = ("world", "leak", "speed", "mean_pose", "source_only", "oracle")
    results = {name: json.loads((folder / f"{name}.json").read_text()) for name in stages}
    for style in ("synthetic", "real", "real_object"):
        for row in (results["source_only"][style], results["oracle"][style]):
            assert 0 < row["mpjpe"] < 300 and 0 <= row["auc_20_50"] <= 1
    # The appearance frame comes from another sequence: its pose is further from t than a same-sequence frame.
    leak = results["leak"]
    assert leak["appearance_frame"]["mpjpe"] > leak["same_sequence_frame"]["mpjpe"]
    report = (folder / "domain_gap.md").read_text()
    assert report.count("| yes |") + report.count("| **no** |") == 8
    # A second run loads the saved stages instead of recomputing them.
    again = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert again.returncode == 0 and "[domain_gap]" not in again.stdout
