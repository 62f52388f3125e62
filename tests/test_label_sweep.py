"""Smoke test of experiments/studies/label_sweep.py (issue 11's NVS label sweep): rows, gates, figure, resume."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "studies" / "label_sweep.py"


@pytest.fixture(scope="module")
def label_sweep():
    spec = importlib.util.spec_from_file_location("label_sweep", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_sweep_writes_every_row_and_resumes(label_sweep, tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    argv = ["--quick", "--subjects", "1", "--out", str(out), "--work-dir", str(work), "--threads", "1"]
    label_sweep.main(argv)
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    kinds = {(r["regime"], r["subjects"]) for r in rows}
    # --quick trains on 4 subjects, so the upper bound is supervised at k = 4.
    assert kinds == {
        ("stage1", 0),
        ("mean_pose", 1),
        ("supervised", 1),
        ("pretrained", 1),
        ("semi", 1),
        ("mean_pose", 4),
        ("supervised", 4),
    }
    pretrained = next(r for r in rows if r["regime"] == "pretrained")
    stage1 = next(r for r in rows if r["regime"] == "stage1")
    assert pretrained["total_wall_s"] == pytest.approx(stage1["wall_s"] + pretrained["wall_s"], abs=1e-3)
    assert all(0 < r["n_mpjpe"] < 1000 and 0 < r["mpjpe"] < 1000 for r in rows if r["regime"] != "stage1")
    gates = (out / "gates.md").read_text()
    assert "semi / supervised N-MPJPE, 1 subject(s)" in gates
    assert "pretrained / supervised N-MPJPE, 1 subject(s)" in gates
    assert (out / "label_sweep.png").stat().st_size > 10_000
    assert {p.name for p in work.glob("*.ckpt")} >= {"stage1.ckpt", "semi_1.ckpt", "supervised_4.ckpt"}

    label_sweep.main(argv)  # every row is there: nothing retrains, nothing is appended
    assert len((out / "rows.jsonl").read_text().splitlines()) == len(rows)
