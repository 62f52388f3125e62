"""Exact mid-epoch resume: a run stopped at a checkpoint and resumed ends where the uninterrupted run ends."""

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from conftest import quiet_trainer
from pytorch_lightning.callbacks import ModelCheckpoint

from handssl.data import SupervisedDataModule, SynthHands, SynthHandsWorld
from handssl.data.datamodules import ResumableDataLoader, ResumableSampler
from handssl.models import SupervisedModule
from handssl.models.options import Optimization


def synth(split: str, frames: int) -> SynthHands:
    return SynthHands(
        split=split,
        world=SynthHandsWorld(image_size=32),
        num_subjects=1,
        sequences_per_subject=1,
        frames_per_sequence=frames,
        chunk_size=frames,
    )


def make_run(tmp_path, name: str, every: int, max_steps: int = 10):
    pl.seed_everything(0)
    # 24 training items, batch 4: 6 batches an epoch; the runs cross an epoch boundary (with a validation).
    data = SupervisedDataModule(train=synth("train", 24), val=synth("val", 4), image_size=32, batch_size=4)
    # Dropout in the head draws from torch's global generator: its state must come back too.
    model = SupervisedModule(
        backbone_widths=[8, 8, 8, 8],
        head_hidden=[16],
        dropout=0.3,
        optimizer=Optimization(lr=2e-3, warmup_steps=2),
    )
    ckpt = ModelCheckpoint(
        dirpath=tmp_path / name, every_n_train_steps=every, save_top_k=-1, filename="{step}"
    )
    trainer = quiet_trainer(
        max_steps=max_steps,
        devices=1,
        callbacks=[ckpt],
        enable_checkpointing=True,
        num_sanity_val_steps=0,
        limit_val_batches=1,
    )
    return trainer, model, data


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    ("every", "step", "position"),
    [(4, 4, (0, 0, 4)), (3, 6, (0, 0, 6))],
    ids=["mid-epoch", "last-batch-of-epoch"],
)
def test_resume_is_exact(tmp_path, recwarn, every, step, position):
    trainer, straight, data = make_run(tmp_path, "straight", every)
    trainer.fit(straight, datamodule=data)
    expected = weights(straight)
    ckpt = tmp_path / "straight" / f"step={step}.ckpt"
    state = torch.load(ckpt, weights_only=True)["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert [(s["epoch"], s["pass"], s["batches"]) for s in state] == [position]

    trainer, resumed, data = make_run(tmp_path, "resumed", every)
    trainer.fit(resumed, datamodule=data, ckpt_path=ckpt)
    assert not [w for w in recwarn if "not resumable" in str(w.message)]
    assert trainer.global_step == 10
    got = weights(resumed)
    diffs = {k: (got[k].double() - expected[k].double()).abs().max().item() for k in expected}
    assert max(diffs.values()) <= 1e-6, {k: d for k, d in diffs.items() if d > 1e-6}


def test_sampler_order_is_a_function_of_seed_epoch_and_pass():
    data = list(range(10))
    a = ResumableSampler(data, shuffle=True, seed=3)
    first = list(a)
    a.set_epoch(1)
    second = list(a)
    assert sorted(first) == data and sorted(second) == data and first != second
    b = ResumableSampler(data, shuffle=True, seed=3)
    b.set_epoch(1)
    assert list(b) == second  # no history needed: epoch 1 is the same without epoch 0 first
    # Two ranks split one permutation between them.
    ranks = [ResumableSampler(data, shuffle=True, seed=3, num_replicas=2, rank=r) for r in (0, 1)]
    assert sorted(list(ranks[0]) + list(ranks[1])) == data
    assert list(ResumableSampler(data, shuffle=False)) == data


def test_loader_state_skips_consumed_batches():
    data = list(range(12))

    def loader():
        return ResumableDataLoader(data, batch_size=3, sampler=ResumableSampler(data, shuffle=True, seed=1))

    a = loader()
    first_pass = [b.tolist() for b in a]
    it = iter(a)  # a second pass in the same epoch: another order
    consumed = next(it).tolist()
    state = a.state_dict()
    assert (state["epoch"], state["pass"], state["batches"]) == (0, 1, 1)
    rest = [b.tolist() for b in it]
    assert [consumed, *rest] != first_pass

    b = loader()
    b.load_state_dict(state)
    assert [x.tolist() for x in b] == rest
    assert b.state_dict()["batches"] == 4


class BatchRecorder(pl.LightningModule):
    """Records a fingerprint of every training batch and one global-RNG draw (as dropout would make)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.seen: dict[int, tuple[float, ...]] = {}

    def training_step(self, batch, batch_idx):
        prints = [
            float(batch["labeled"]["image"].double().sum()),
            float(batch["unlabeled"]["image"].double().sum()),
        ]
        prints.append(
            float(batch["unlabeled"]["image_strong"].double().sum())
        )  # augmented in the main process
        self.seen[self.global_step] = (*prints, torch.rand(()).item())
        return (self.w - 1) ** 2

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def semi_run(tmp_path, name: str, ckpt_path=None) -> BatchRecorder:
    from handssl.data import SemiSupervisedDataModule

    pl.seed_everything(0)
    # 8 labelled items (4 a batch: 2 batches a pass) cycle under 12 unlabelled ones (3 batches an epoch):
    # the labelled loader starts a second pass inside every epoch.
    data = SemiSupervisedDataModule(
        labeled=[synth("train", 8)], unlabeled=[synth("val", 12)], image_size=32, batch_size=8
    )
    model = BatchRecorder()
    trainer = quiet_trainer(
        max_steps=8,
        devices=1,
        limit_val_batches=0,
        callbacks=[
            ModelCheckpoint(dirpath=tmp_path / name, every_n_train_steps=2, save_top_k=-1, filename="{step}")
        ],
        enable_checkpointing=True,
    )
    trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
    return model


@pytest.mark.parametrize("step", [2, 4])
def test_semi_supervised_resume_sees_the_same_batches(tmp_path, step):
    straight = semi_run(tmp_path, "straight")
    assert sorted(straight.seen) == list(range(8))
    ckpt = tmp_path / "straight" / f"step={step}.ckpt"
    state = torch.load(ckpt, weights_only=True)["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    # step 2: the labelled pass just ended (the next batch starts pass 1), the unlabelled one is at 2 of 3;
    # step 4: epoch 1, one batch into each.
    expected = {2: [(0, 0, 2), (0, 0, 2)], 4: [(1, 0, 1), (1, 0, 1)]}[step]
    assert [(s["epoch"], s["pass"], s["batches"]) for s in state] == expected
    resumed = semi_run(tmp_path, "resumed", ckpt_path=ckpt)
    assert sorted(resumed.seen) == list(range(step, 8))
    assert {k: straight.seen[k] for k in resumed.seen} == resumed.seen


# ------------------------------------------------------------------------------------ through the CLI
CONF = Path(__file__).parent / "conf"
# max_epochs set (as the shipped model configs do): with it, configure_optimizers' estimated_stepping_batches
# makes Lightning build the training loaders before it reads the checkpoint, and drop their saved states.
EPOCHS = "--trainer.max_epochs=10"
SUPERVISED = [
    EPOCHS,
    "--model.init_args.dropout=0.3",
    # 24 training crops, batch 4: 6 batches an epoch
    "--data.init_args.train.init_args.frames_per_sequence=24",
    "--data.init_args.train.init_args.chunk_size=24",
]


def cli_fit(tmp_path, config: str, options: list[str], every: int, name: str, ckpt=None) -> Path:
    """``handssl fit`` with a checkpoint every ``every`` steps and one at every validation; the run folder."""
    from handssl.cli import main

    args = [
        "fit",
        "-c",
        str(CONF / config),
        *options,
        "--runs_dir",
        str(tmp_path / "runs"),
        "--wandb",
        "disabled",
        "--run_name",
        name,
        "--trainer.callbacks+=pytorch_lightning.callbacks.ModelCheckpoint",
        f"--trainer.callbacks.every_n_train_steps={every}",
        "--trainer.callbacks.save_top_k=-1",
        "--trainer.callbacks.filename=s-{step}",
        "--trainer.callbacks+=pytorch_lightning.callbacks.ModelCheckpoint",
        "--trainer.callbacks.monitor=val/mpjpe",
        "--trainer.callbacks.save_top_k=-1",
        "--trainer.callbacks.filename=v-{step}",
    ]
    main([*args, "--ckpt_path", str(ckpt)] if ckpt else args)
    (run,) = (tmp_path / "runs" / name).glob("version_*")
    return run / "checkpoints"


@pytest.mark.parametrize(
    ("config", "options", "every", "steps", "resume_from"),
    [
        # validation after batch 4 of every epoch (steps 4, 10), checkpoints at steps 3, 6, 9, 12
        (
            "supervised_tiny.yaml",
            ["--trainer.val_check_interval=4", *SUPERVISED],
            3,
            12,
            ["s-step=3", "v-step=4"],
        ),
        # validation twice an epoch, every second epoch; saved at the validation step
        (
            "supervised_tiny.yaml",
            ["--trainer.val_check_interval=0.5", "--trainer.check_val_every_n_epoch=2", *SUPERVISED],
            3,
            15,
            ["s-step=9", "s-step=6"],
        ),
        # validation every 5 steps across epochs (check_val_every_n_epoch null), checkpoints at the same steps
        (
            "supervised_tiny.yaml",
            ["--trainer.val_check_interval=5", "--trainer.check_val_every_n_epoch=null", *SUPERVISED],
            5,
            15,
            ["s-step=5", "v-step=10"],
        ),
        # SemiHand: EMA teacher, labelled loader cycling under the unlabelled one, validation at step 4
        ("semihand_tiny.yaml", ["--trainer.val_check_interval=4", EPOCHS], 2, 8, ["s-step=2", "s-step=4"]),
        # NVS: labelled-share batch sampler, validation every 3 steps
        (
            "nvs_tiny.yaml",
            ["--trainer.val_check_interval=3", "--model.init_args.optimizer.scheduler=cosine", EPOCHS],
            2,
            8,
            ["s-step=2", "v-step=3"],
        ),
    ],
    ids=[
        "supervised-val-int",
        "supervised-val-fraction-every-2-epochs",
        "supervised-val-by-step",
        "semihand",
        "nvs",
    ],
)
def test_cli_resume_with_validation_inside_the_epoch_is_exact(
    tmp_path, config, options, every, steps, resume_from
):
    options = [*options, f"--trainer.max_steps={steps}"]
    straight = cli_fit(tmp_path, config, options, every, "straight")
    expected = torch.load(straight / f"s-step={steps}.ckpt", weights_only=False)["state_dict"]
    for i, start in enumerate(resume_from):
        # a copy, as a pre-empted job would hand it over (the original run folder stays untouched)
        ckpt = tmp_path / f"{start}.ckpt"
        ckpt.write_bytes((straight / f"{start}.ckpt").read_bytes())
        resumed = cli_fit(tmp_path, config, options, every, f"resumed{i}", ckpt=ckpt)
        got = torch.load(resumed / f"s-step={steps}.ckpt", weights_only=False)["state_dict"]
        diffs = {k: (got[k].double() - v.double()).abs().max().item() for k, v in expected.items()}
        assert max(diffs.values()) == 0.0, (start, {k: d for k, d in diffs.items() if d > 0})
