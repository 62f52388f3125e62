"""experiments/tools/bench_throughput.py in its CI-sized form (a smoke test: no speed is asserted here)."""

import csv
import importlib.util
import math
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "tools" / "bench_throughput.py"


@pytest.fixture(scope="module")
def bench():
    # Registered under its own name: `handssl fit` imports the script's EpochTimer callback by class path.
    spec = importlib.util.spec_from_file_location("bench_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_throughput"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("bench_throughput", None)


def test_quick_run_measures_every_task(bench, tmp_path, capsys):
    out = tmp_path / "rows.csv"
    assert bench.main(["--quick", "--out", str(out)]) == 0
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["task"] for r in rows] == ["supervised", "nvs", "semihand"]
    for r in rows:
        assert r["size"] == "32" and r["device"] == "cpu" and r["precision"] == "32-true"
        for key in (
            "step_samples_s",
            "fit_first_samples_s",
            "fit_later_samples_s",
            "gflop_per_step",
            "tflops",
        ):
            assert math.isfinite(float(r[key])) and float(r[key]) > 0, (r["task"], key)
        ratio = float(r["fit_later_samples_s"]) / float(r["step_samples_s"])
        assert float(r["ratio_later"]) == pytest.approx(ratio)
        assert r["peak_fraction"] == ""  # no peak for a CPU
    by_task = {r["task"]: r for r in rows}
    # 16 frames in batches of 4: every training frame once per epoch (drop_last keeps all 4 batches).
    assert by_task["supervised"]["fit_epoch_samples"] == "16"
    assert int(by_task["supervised"]["batch"]) == 4
    # A SemiHand batch holds labelled and unlabelled rows; the NVS step encodes four images per row.
    assert float(by_task["nvs"]["gflop_per_step"]) > float(by_task["supervised"]["gflop_per_step"])
    table = capsys.readouterr().out
    assert table.count("\n| supervised | 32 | 4 | 32-true | workers |") == 1
    assert "| semihand | 32 |" in table and "| nvs | 32 |" in table


def test_quick_run_with_rendering_in_the_step(bench, tmp_path):
    out = tmp_path / "rows.csv"
    argv = ["--quick", "--tasks", "nvs", "semihand", "--render-on", "device", "--no-fit"]
    assert bench.main([*argv, "--out", str(out)]) == 0
    with out.open() as handle:
        rows = {r["task"]: r for r in csv.DictReader(handle)}
    assert rows["nvs"]["render_on"] == rows["semihand"]["render_on"] == "device"
    assert all(float(r["step_samples_s"]) > 0 for r in rows.values())
    # One `handssl fit` through the CLI with the requests rendered in on_after_batch_transfer.
    argv = ["--quick", "--tasks", "supervised", "semihand", "--render-on", "device", "--out", str(out)]
    assert bench.main(argv) == 0
    with out.open() as handle:
        rows = {r["task"]: r for r in csv.DictReader(handle)}
    for row in rows.values():
        assert row["render_on"] == "device" and float(row["fit_first_samples_s"]) > 0
    assert rows["supervised"]["fit_epoch_samples"] == "16"
    assert rows["semihand"]["fit_epoch_samples"] == "32"  # 16 labelled and 16 unlabelled items


def test_markdown_table_and_target(bench):
    row = {key: 1.0 for key in bench.COLUMNS}
    row.update(task="nvs", size=64, batch=32, device="cuda", precision="bf16-mixed", peak_fraction=0.25)
    row.update(render_on="device")
    row.update(ratio_first=0.5, ratio_later=float("nan"), peak_tflops=None)
    table = bench.markdown_table([row])
    assert (
        "| nvs | 64 | 32 | bf16-mixed | device |" in table and "| 25.0% |" in table and "0.50, n/a" in table
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--sizes", "40"], "multiples of 16"),
        (["--steps", "0"], "--steps must be >= 1"),
        (["--device", "cuda:0"], "CUDA is not available"),
        (["--tasks", "gan"], "invalid choice"),
    ],
)
def test_bad_arguments_stop_with_one_line(bench, argv, message, capsys):
    if message == "CUDA is not available" and bench.torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


def test_peak_table(bench):
    cpu = bench.torch.device("cpu")
    assert bench.peak_tflops(cpu, "bf16-mixed", None) is None
    assert bench.peak_tflops(cpu, "bf16-mixed", 100.0) == 100.0
    assert bench.PEAK_TFLOPS["H200"]["bf16-mixed"] == pytest.approx(989.4)
