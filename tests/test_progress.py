"""Progress bars on long data operations outside the trainer: shown when asked (or on a TTY), quiet otherwise."""

import pytest
import torch

from handssl.callbacks.pseudo_label_pass import label_unlabeled_set
from handssl.data.fakes import make_fake_panoptic
from handssl.data.panoptic import PanopticMultiView


@pytest.mark.parametrize("setting, shown", [("1", True), ("0", False), ("", False)])  # "": not a TTY here
def test_panoptic_backgrounds_show_progress(tmp_path, monkeypatch, capsys, setting, shown):
    monkeypatch.setenv("HANDSSL_PROGRESS", setting)
    root = make_fake_panoptic(tmp_path / "data", num_frames=3, nodes=(0, 3))
    ds = PanopticMultiView(
        root, multiview=True, crop_size=16, require_in_view=False, cache_dir=tmp_path / "c"
    )
    capsys.readouterr()
    assert len(ds.compute_backgrounds()) == 2
    assert ("Panoptic backgrounds" in capsys.readouterr().err) == shown


class _Labels:
    def __init__(self, n: int) -> None:
        self.n = n

    def to_dict(self):
        return {"uv": torch.zeros(self.n, 21, 2)}


class _Module:
    device = torch.device("cpu")

    def compute_pseudo_labels(self, batch, network):
        return _Labels(batch["index"].shape[0]), None


class _Data:
    num_unlabeled = 6

    def pseudo_label_dataloader(self, rank, world_size):
        return [{"index": torch.arange(i, i + 2)} for i in range(0, 6, 2)]


@pytest.mark.parametrize("rank, shown", [(0, True), (1, False)])
def test_pseudo_label_pass_shows_progress_on_rank_zero(monkeypatch, capsys, rank, shown):
    monkeypatch.setenv("HANDSSL_PROGRESS", "1")
    table = label_unlabeled_set(_Module(), _Data(), rank=rank)
    assert table["index"].tolist() == list(range(6))
    err = capsys.readouterr().err
    assert ("pseudo-labels" in err) == shown
    if shown:
        assert "0/3" in err  # the bar knows the number of batches
