import shutil
from pathlib import Path

import pytest

from handssl.data.base import DatasetError
from handssl.data.check import check_dataset, inspect_dataset, main
from handssl.data.fakes.dexter_object import make_fake_dexter_object
from handssl.data.fakes.freihand import make_fake_freihand
from handssl.data.fakes.handdb import make_fake_handdb
from handssl.data.fakes.panoptic import make_fake_panoptic
from handssl.data.fakes.rhd import make_fake_rhd
from handssl.data.fakes.stb import make_fake_stb


@pytest.fixture(scope="module")
def fakes(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("check")
    return {
        "rhd": make_fake_rhd(base / "rhd", num_samples={"training": 4, "evaluation": 2}),
        "stb": make_fake_stb(base / "stb", num_frames=1),
        "dexter_object": make_fake_dexter_object(base / "do", num_frames=1),
        "panoptic": make_fake_panoptic(base / "panoptic", sequences=("seq_b", "seq_a"), num_frames=2),
        "handdb": make_fake_handdb(base / "handdb", num_images=3),
        "freihand": make_fake_freihand(
            base / "freihand", num_training=3, num_evaluation=2, versions=("gs", "auto")
        ),
    }


def test_counts_per_split_on_every_fake(fakes):
    assert check_dataset("rhd", fakes["rhd"]) == {"training": 4, "evaluation": 2}
    assert check_dataset("handdb", fakes["handdb"]) == {"panopticdb": 3, "manual_train": 3, "manual_test": 3}
    assert check_dataset("freihand", fakes["freihand"]) == {"training": 3, "evaluation": 2}
    assert check_dataset("freihand", fakes["freihand"], split="training", version="auto") == {"training": 3}
    counts = check_dataset("panoptic", fakes["panoptic"], require_in_view=False)
    assert counts == {"seq_a": 2 * 3, "seq_b": 2 * 3}  # sequences found under root, frames x HD cameras
    # STB: one frame per sequence; test = B1 (Counting, Random), train = B2..B6 (10 sequences).
    assert check_dataset("stb", fakes["stb"]) == {"train": 10, "test": 2}
    assert check_dataset("stb", fakes["stb"], camera="BB_left") == {"train": 10, "test": 2}
    # Dexter+Object: one frame in each of the six sequences, test only.
    assert check_dataset("dexter_object", fakes["dexter_object"]) == {"test": 6}
    assert check_dataset("do", fakes["dexter_object"], sequences=["Grasp1"]) == {"test": 1}


def test_three_samples_per_split_are_loaded(fakes):
    reports = inspect_dataset("handdb", fakes["handdb"])
    assert [r.checked for r in reports] == [[0, 1, 2]] * 3
    reports = inspect_dataset("freihand", fakes["freihand"])
    assert reports[1].checked == [0, 1]


def test_absent_split_is_reported_missing(tmp_path):
    root = make_fake_handdb(tmp_path, subsets=("manual_test",))
    reports = {r.split: r for r in inspect_dataset("handdb", root)}
    assert reports["manual_test"].count == 3
    assert reports["panopticdb"].count is None and "hands_v143_14817.json" in reports["panopticdb"].error
    assert "Expected layout" in reports["manual_train"].error
    assert check_dataset("handdb", root) == {"manual_test": 3}


def test_nothing_usable_raises_with_the_layout(tmp_path):
    with pytest.raises(
        DatasetError, match=r"(?s)no usable split of freihand.*training_K\.json.*Expected layout"
    ):
        check_dataset("freihand", tmp_path)
    with pytest.raises(DatasetError, match=r"(?s)no panoptic sequence found.*calibration_<seq>\.json"):
        check_dataset("panoptic", tmp_path)
    with pytest.raises(DatasetError, match=r"(?s)CMU Panoptic root folder not found: .*nowhere.*hdHand3d"):
        check_dataset("panoptic", tmp_path / "nowhere")
    with pytest.raises(ValueError, match="unknown dataset 'mpii'"):
        check_dataset("mpii", tmp_path)


def test_a_broken_sample_in_a_present_split_is_an_error(tmp_path):
    root = make_fake_freihand(tmp_path, num_training=3, num_evaluation=1, versions=("gs",))
    image = root / "training" / "rgb" / "00000001.jpg"  # the middle sample
    image.write_bytes(image.read_bytes()[:1000])
    with pytest.raises(DatasetError, match=r"freihand training sample 1: corrupt or truncated image"):
        check_dataset("freihand", root)


def test_split_option_checks_only_that_split(fakes):
    assert check_dataset("rhd", fakes["rhd"], split="evaluation") == {"evaluation": 2}
    assert check_dataset("panoptic", fakes["panoptic"], sequences="seq_a", require_in_view=False) == {
        "seq_a": 6
    }


def test_synthhands_needs_no_root():
    from handssl.data import SynthHandsWorld

    counts = check_dataset(
        "synthhands",
        None,
        split="val",
        world=SynthHandsWorld(image_size=32, num_cameras=2),
        chunk_size=1,
        frames_per_sequence=2,
        sequences_per_subject=1,
    )
    assert list(counts) == ["val"] and counts["val"] > 0


def test_cli_prints_the_table(fakes, capsys):
    assert main(["check", "handdb", "--root", str(fakes["handdb"])]) == 0
    out = capsys.readouterr().out
    lines = [line.split() for line in out.splitlines()]
    assert ["panopticdb", "3"] in lines and ["manual_train", "3"] in lines and ["manual_test", "3"] in lines
    assert main(["rhd", "--root", str(fakes["rhd"]), "--option", "split=training"]) == 0
    assert ["training", "4"] in [line.split() for line in capsys.readouterr().out.splitlines()]


def test_cli_options_are_parsed_as_yaml(fakes, capsys):
    code = main(
        ["panoptic", "--root", str(fakes["panoptic"]), "-o", "require_in_view=false", "-o", "cameras=[3]"]
    )
    assert code == 0
    lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert ["seq_a", "2"] in lines and ["seq_b", "2"] in lines


def test_cli_errors_exit_2_without_traceback(tmp_path, fakes, capsys):
    assert main(["freihand", "--root", str(tmp_path / "nowhere")]) == 2
    captured = capsys.readouterr()
    assert "missing" in captured.out and "FreiHAND root folder not found" in captured.err
    assert "Traceback" not in captured.err
    assert captured.err.count("Expected layout") == 1  # one message for both splits of the wrong root
    assert main(["nonsense", "--root", "x"]) == 2
    assert "unknown dataset 'nonsense'" in capsys.readouterr().err
    assert main(["stb", "--root", str(fakes["stb"]), "--option", "camera=XX"]) == 2
    assert "camera" in capsys.readouterr().err
    assert main(["stb", "--root", str(fakes["stb"]), "--option", "no_such_argument=1"]) == 2
    assert "no_such_argument" in capsys.readouterr().err
    assert main(["stb", "--root", str(fakes["stb"]), "--option", "camera"]) == 2
    assert "key=value" in capsys.readouterr().err


def test_cli_partial_dataset_warns_but_succeeds(tmp_path, capsys):
    root = make_fake_freihand(tmp_path, num_training=2, num_evaluation=1)
    shutil.rmtree(root / "evaluation")
    assert main(["freihand", "--root", str(root)]) == 0
    captured = capsys.readouterr()
    assert ["training", "2"] in [line.split() for line in captured.out.splitlines()]
    assert ["evaluation", "missing"] in [line.split() for line in captured.out.splitlines()]
    assert "evaluation image folder not found" in captured.err
