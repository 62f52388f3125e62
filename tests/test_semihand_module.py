import copy
import csv
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from pytorch_lightning.callbacks import Callback

from handssl.callbacks.pseudo_labels import PseudoLabelExport
from handssl.geometry import project
from handssl.models.components.consistency import (
    capsule_radii,
    cross_modal_loss,
    pose_equivariance_loss,
    pose_sdf,
    render_pose_mask,
    warp_images,
)
from handssl.models.components.pose25d import (
    Pose25DNet,
    encode_25d,
    lift_25d,
    pose_distance,
    recover_root_depth,
    soft_argmax_2d,
)
from handssl.models.options import (
    ConsistencyOptions,
    CorrectionOptions,
    EMAOptions,
    Optimization,
    PoseLossOptions,
    PseudoLabelOptions,
)
from handssl.models.semihand import SemiHandModule

sys.path.insert(0, str(Path(__file__).parent))
from conftest import quiet_trainer
from test_semi_datamodule import make_datamodule

ROOT_DIR = Path(__file__).resolve().parents[1]
TINY = dict(
    backbone_widths=(8, 16, 32),
    backbone_blocks=(1, 1, 1),
    decoder_channels=16,
    optimizer=Optimization(warmup_steps=0),
)
K = torch.tensor([[150.0, 0.0, 31.5], [0.0, 150.0, 31.5], [0.0, 0.0, 1.0]])


def _joints(batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 21, 3, generator=g) * 30 + torch.tensor([10.0, -5.0, 450.0])


def _trainer(tmp_path=None, **kwargs):
    return quiet_trainer(
        **{"num_sanity_val_steps": 0, "limit_val_batches": 0, "default_root_dir": tmp_path, **kwargs}
    )


def _fake_corrector(joints, template=None):
    """Stand-in for handssl.biomech.correct: moves every pose 3 mm along x (visible, deterministic)."""
    return joints + torch.tensor([3.0, 0.0, 0.0])


NO_CORRECTION = CorrectionOptions(enabled=False)
CORRECTION = CorrectionOptions()
ACCEPT_ALL = PseudoLabelOptions(threshold=math.inf)


def _module(**kwargs):
    options = dict(TINY, correction=NO_CORRECTION)
    options.update(kwargs)
    return SemiHandModule(**options)


# ------------------------------------------------------------------------------------------ components
def test_soft_argmax_peak_maps_to_the_cell_centre():
    logits = torch.full((1, 2, 8, 8), -50.0)
    logits[0, 0, 2, 3] = 50.0
    logits[0, 1, 7, 0] = 50.0
    uv, probs = soft_argmax_2d(logits, 1.0, stride=4)
    assert torch.allclose(uv[0, 0], torch.tensor([3 * 4 + 1.5, 2 * 4 + 1.5]))
    assert torch.allclose(uv[0, 1], torch.tensor([1.5, 7 * 4 + 1.5]))
    assert torch.allclose(probs.sum((-1, -2)), torch.ones(1, 2))


def test_encode_and_lift_round_trip():
    joints = _joints()
    Kb = K.expand(2, 3, 3)
    depth, root_depth, scale = encode_25d(joints)
    assert torch.allclose(depth[:, 9], torch.zeros(2))
    assert torch.allclose(scale, (joints[:, 9] - joints[:, 10]).norm(dim=-1))
    lifted = lift_25d(project(joints, Kb), depth, Kb, root_depth, scale)
    assert torch.allclose(lifted, joints, atol=1e-3)


def test_recover_root_depth_is_exact_for_a_true_pose():
    joints = _joints(3, seed=1)
    Kb = K.expand(3, 3, 3)
    depth, root_depth, scale = encode_25d(joints)
    bone_len = (joints[:, 0] - joints[:, 9]).norm(dim=-1) / scale
    recovered = recover_root_depth(project(joints, Kb), depth, Kb, (0, 9), bone_len)
    assert torch.allclose(recovered * scale, root_depth, rtol=1e-4)


def test_pose_distance_hand_computed():
    uv_a, uv_b = torch.zeros(1, 2, 2), torch.tensor([[[3.0, 4.0], [0.0, 0.0]]])
    d_a, d_b = torch.zeros(1, 2), torch.tensor([[0.0, 0.1]])
    # joint 0: 25 px^2; joint 1: 50 * 0.01 = 0.5 -> mean 12.75
    assert pose_distance(uv_a, d_a, uv_b, d_b).item() == pytest.approx(12.75)
    assert pose_distance(uv_a, d_a, uv_b, d_b, uv_unit_px=5.0).item() == pytest.approx((1.0 + 0.5) / 2)
    weight = torch.tensor([[0.0, 1.0]])
    assert pose_distance(uv_a, d_a, uv_b, d_b, weight).item() == pytest.approx(0.5)


def test_network_shapes_and_arguments():
    net = Pose25DNet(widths=(8, 16, 32), blocks=(1, 1, 1), decoder_channels=16, output_stride=4)
    out = net(torch.rand(2, 3, 64, 64))
    assert out["uv"].shape == (2, 21, 2) and out["depth"].shape == (2, 21)
    assert out["mask_logits"].shape == (2, 1, 64, 64) and out["heatmaps"].shape == (2, 21, 16, 16)
    assert ((out["uv"] >= 0) & (out["uv"] <= 63)).all() and net.beta.item() > 0
    with pytest.raises(ValueError, match="output_stride"):
        Pose25DNet(widths=(8, 16), blocks=(1, 1), output_stride=16)


def test_capsule_signed_distance_hand_computed():
    uv = torch.zeros(1, 2, 2)
    uv[0, 0] = torch.tensor([10.0, 10.0])
    uv[0, 1] = torch.tensor([30.0, 10.0])
    sdf = pose_sdf(uv, 20, 40, torch.tensor([2.0]), capsules=((0, 1),))[0, 0]
    assert sdf[15, 20].item() == pytest.approx(3.0)  # 5 px above the segment, radius 2
    assert sdf[10, 5].item() == pytest.approx(3.0)  # 5 px beyond the end cap
    assert sdf[10, 20].item() == pytest.approx(-2.0)  # on the axis


def test_warp_images_right_angle_and_inside_mask():
    image = torch.rand(1, 1, 8, 8)
    rot90 = torch.tensor([[[0.0, 1.0, 0.0], [-1.0, 0.0, 7.0], [0.0, 0.0, 1.0]]])  # x' = y, y' = 7 - x
    warped, inside = warp_images(image, rot90)
    assert torch.allclose(warped, torch.rot90(image, k=1, dims=(2, 3)), atol=1e-5) and inside.all()
    shift = torch.tensor([[[1.0, 0.0, 3.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])
    warped, inside = warp_images(image, shift)
    assert inside[0, 0, :, :3].sum() == 0 and inside[0, 0, :, 3:].all()
    assert torch.allclose(warped[..., 3:], image[..., :5], atol=1e-5)


def test_pose_equivariance_zero_for_equivariant_prediction():
    uv = torch.rand(2, 21, 2) * 40 + 10
    depth = torch.randn(2, 21)
    angle = 0.2
    m = torch.tensor(
        [[math.cos(angle), -math.sin(angle), 2.0], [math.sin(angle), math.cos(angle), -1.0], [0, 0, 1.0]]
    )
    m = m.expand(2, 3, 3)
    moved = uv @ m[0, :2, :2].T + m[0, :2, 2]
    assert pose_equivariance_loss(moved, depth, uv, depth, m).item() == pytest.approx(0.0, abs=1e-8)
    assert pose_equivariance_loss(uv, depth, uv, depth, m).item() > 1.0


def test_cross_modal_pulls_pose_to_mask_with_stop_gradient():
    joints = _joints(1, seed=2)
    uv = project(joints, K.expand(1, 3, 3))
    radii = capsule_radii(64)
    mask = render_pose_mask(uv, 64, 64, radii).detach().requires_grad_(True)
    aligned = cross_modal_loss(uv, mask, radii)["total"]
    shifted_uv = (uv + torch.tensor([6.0, 0.0])).requires_grad_(True)
    shifted = cross_modal_loss(shifted_uv, mask, radii)
    assert shifted["total"] > aligned + 0.05
    shifted["total"].backward()
    assert mask.grad is None  # stop-gradient on the mask
    assert shifted_uv.grad.abs().sum() > 0


# --------------------------------------------------------------------------------------------- module
class _Probe(Callback):
    def __init__(self):
        self.teacher_modes = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.teacher_modes.append(pl_module.teacher.training)


def test_teacher_equals_ema_of_student_after_one_step():
    module = _module(ema=EMAOptions(decay=0.9, warmup=False))
    teacher_before = copy.deepcopy(module.teacher.module.state_dict())
    probe = _Probe()
    _trainer(max_steps=1, callbacks=[probe]).fit(module, make_datamodule())
    assert module.last_momentum == 0.9 and module.ema_updates == 1
    student = module.student.state_dict()
    changed = False
    for name, value in module.teacher.module.state_dict().items():
        if value.is_floating_point():
            expected = 0.9 * teacher_before[name] + 0.1 * student[name]
            assert torch.allclose(value, expected, atol=1e-6), name
            changed |= not torch.equal(student[name], teacher_before[name])
        else:
            assert torch.equal(value, student[name]), name
    assert changed  # the step moved the student, so the check above is not trivial
    assert probe.teacher_modes == [False]
    assert all(p.grad is None and not p.requires_grad for p in module.teacher.parameters())
    assert any(p.grad is not None for p in module.student.parameters())


def test_momentum_warmup_schedule():
    module = _module(ema=EMAOptions(decay=0.99))
    assert module.current_momentum() == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    module.ema_updates = 1000
    assert module.current_momentum() == pytest.approx(0.99)


def test_switches_select_the_losses():
    full = _module(pseudo_labels=ACCEPT_ALL)
    trainer = _trainer(max_steps=1)
    trainer.fit(full, make_datamodule())
    keys = set(trainer.callback_metrics)
    for name in (
        "sup_2d",
        "sup_depth",
        "sup_mask",
        "sup_heatmap",
        "pseudo_label",
        "pseudo_label_heatmap",
        "consistency_pose",
        "consistency_mask",
        "cross_modal",
    ):
        assert f"train/{name}" in keys, name
    assert trainer.callback_metrics["train/accept_rate"] == 1.0  # tau = inf keeps every label
    source_only = _module(
        consistency=ConsistencyOptions(enabled=False),
        pseudo_labels=PseudoLabelOptions(enabled=False),
        loss=PoseLossOptions(use_mask=False),
    )
    trainer = _trainer(max_steps=1)
    trainer.fit(source_only, make_datamodule(unlabeled_fraction=0.0))
    keys = {k for k in trainer.callback_metrics if k.startswith("train/")}
    assert keys == {"train/sup_2d", "train/sup_depth", "train/sup_heatmap", "train/loss"}


def test_gated_pseudo_label_loss_is_zero_when_everything_is_rejected():
    module = _module(
        consistency=ConsistencyOptions(enabled=False), pseudo_labels=PseudoLabelOptions(threshold=0.0)
    )
    trainer = _trainer(max_steps=1)
    trainer.fit(module, make_datamodule())
    assert trainer.callback_metrics["train/accept_rate"] == 0.0
    assert trainer.callback_metrics["train/pseudo_label"] == 0.0


def test_injected_corrector_changes_pseudo_labels():
    module = _module(correction=CorrectionOptions(enabled=False, ray_tol_px=None))
    module.pseudo_labeler.corrector = _fake_corrector
    module.pseudo_labeler.use_correction = True
    batch = next(iter(make_datamodule().pseudo_label_dataloader()))
    labels, first = module.compute_pseudo_labels(batch)
    assert labels.changed.all()
    assert torch.allclose(
        labels.correction_shift_mm, torch.full_like(labels.correction_shift_mm, 1.5), atol=0.05
    )
    assert first["mask_prob"].shape == batch["image"].shape[:1] + (1, 64, 64)


def test_lifting_params_known_and_fallback():
    module = _module()
    joints = _joints(2, seed=3)
    Kb = K.expand(2, 3, 3)
    depth, root_depth, scale = encode_25d(joints)
    uv = project(joints, Kb)
    got_root, got_scale = module.lifting_params(
        uv, depth, Kb, "known", joints, torch.ones(2, 21, dtype=torch.bool)
    )
    assert torch.allclose(got_root, root_depth) and torch.allclose(got_scale, scale)
    broken = joints.clone()
    broken[1, 9] = float("nan")
    got_root, got_scale = module.lifting_params(uv, depth, Kb, "known", broken)
    assert torch.allclose(got_root[0], root_depth[0]) and got_scale[1] == module.template_scale_mm
    with pytest.raises(ValueError, match="mode"):
        SemiHandModule(mode="student_teacher")


def test_rounds_mode_stores_pseudo_labels_for_every_unlabeled_image(tmp_path):
    module = _module(mode="rounds", pseudo_labels=ACCEPT_ALL)
    trainer = _trainer(tmp_path, max_epochs=1, limit_train_batches=2)
    dm = make_datamodule()
    trainer.fit(module, dm)
    assert module.teacher is None and module.rounds_done == 1
    table = module.round_table
    assert table["filled"].all() and table["uv"].shape == (dm.num_unlabeled, 21, 2)
    assert "train/pseudo_label" in trainer.callback_metrics
    path = tmp_path / "rounds.ckpt"
    trainer.save_checkpoint(path)
    restored = SemiHandModule.load_from_checkpoint(path)
    assert torch.equal(restored.round_table["uv"], table["uv"]) and restored.rounds_done == 1


class _TeacherAtStart(Callback):
    def on_train_start(self, trainer, pl_module):
        self.state = copy.deepcopy(pl_module.teacher.state_dict())
        self.updates = pl_module.ema_updates


def test_resume_from_checkpoint_restores_the_teacher(tmp_path):
    torch.manual_seed(0)
    module = _module(ema=EMAOptions(decay=0.5))
    trainer = _trainer(tmp_path, max_steps=2)
    trainer.fit(module, make_datamodule())
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    saved = copy.deepcopy(module.teacher.state_dict())
    torch.manual_seed(123)
    fresh = _module(ema=EMAOptions(decay=0.5))
    assert any(
        not torch.equal(fresh.teacher.state_dict()[k], v) for k, v in saved.items() if v.is_floating_point()
    )
    probe = _TeacherAtStart()
    _trainer(tmp_path, max_steps=3, callbacks=[probe]).fit(fresh, make_datamodule(), ckpt_path=path)
    for key, value in saved.items():
        assert torch.equal(probe.state[key], value), key
    assert probe.updates == 2 and fresh.ema_updates == 3
    # The teacher is part of the plain state dict as well (load_from_checkpoint restores it).
    loaded = SemiHandModule.load_from_checkpoint(path)
    for key, value in saved.items():
        assert torch.equal(loaded.teacher.state_dict()[key], value)


def test_init_checkpoint_loads_student_and_teacher_at_fit_setup(tmp_path):
    source = _module()
    with torch.no_grad():
        for p in source.student.parameters():
            p.add_(0.5)
        for p in source.teacher.parameters():
            p.add_(0.25)  # the stage-1 teacher differs from the stage-1 student
    path = tmp_path / "source.ckpt"
    torch.save({"state_dict": source.state_dict(), "semihand": {"ema_updates": 890}}, path)
    target = _module(init_checkpoint=str(path), ema=EMAOptions(decay=0.999))
    first = next(iter(target.student.state_dict()))
    assert not torch.equal(target.student.state_dict()[first], source.student.state_dict()[first])
    target.setup("fit")
    for (name, a), b in zip(target.student.state_dict().items(), source.student.state_dict().values()):
        assert torch.equal(a, b), name
    for (name, a), b in zip(target.teacher.state_dict().items(), source.teacher.state_dict().values()):
        assert torch.equal(a, b), name  # the teacher is continued, not re-copied from the student
    assert target.ema_updates == 890 and target.current_momentum() == pytest.approx(891 / 900)
    # A checkpoint without a teacher (e.g. from rounds mode) starts the teacher as a copy of the student.
    student_only = {k: v for k, v in source.state_dict().items() if k.startswith("student.")}
    torch.save({"state_dict": student_only}, tmp_path / "student.ckpt")
    other = _module(init_checkpoint=str(tmp_path / "student.ckpt"))
    other.setup("fit")
    for a, b in zip(other.teacher.module.state_dict().values(), source.student.state_dict().values()):
        assert torch.equal(a, b)
    assert other.ema_updates == 0
    with pytest.raises(FileNotFoundError, match="init_checkpoint"):
        _module(init_checkpoint=str(tmp_path / "missing.ckpt")).setup("fit")
    SemiHandModule(
        **TINY, correction=NO_CORRECTION, init_checkpoint=str(tmp_path / "missing.ckpt")
    )  # no load at init


def test_stage_two_continues_the_stage_one_teacher(tmp_path):
    torch.manual_seed(0)
    stage1 = _module(
        consistency=ConsistencyOptions(enabled=False),
        pseudo_labels=PseudoLabelOptions(enabled=False),
        ema=EMAOptions(decay=0.99),
    )
    trainer = _trainer(tmp_path, max_steps=3)
    trainer.fit(stage1, make_datamodule(unlabeled_fraction=0.0))
    path = tmp_path / "stage1.ckpt"
    trainer.save_checkpoint(path)
    saved_teacher = copy.deepcopy(stage1.teacher.state_dict())
    stage2 = _module(init_checkpoint=str(path), ema=EMAOptions(decay=0.99), pseudo_labels=ACCEPT_ALL)
    probe = _TeacherAtStart()
    _trainer(tmp_path, max_steps=1, callbacks=[probe]).fit(stage2, make_datamodule())
    assert probe.updates == 3  # the warm-up carries on from stage 1
    for key, value in saved_teacher.items():
        assert torch.equal(probe.state[key], value), key
    assert stage2.ema_updates == 4 and stage2.last_momentum == pytest.approx(4 / 13)
    # Stage 2 evaluates with the teacher, so stage 1's teacher is "the network stage 2 starts from".
    assert stage1.hparams.eval_network == stage2.hparams.eval_network == "teacher"


def test_pseudo_label_export_writes_files_and_panels(tmp_path):
    module = _module(correction=CorrectionOptions(enabled=False, ray_tol_px=None))
    module.pseudo_labeler.corrector = _fake_corrector
    module.pseudo_labeler.use_correction = True
    export = PseudoLabelExport(dirpath=str(tmp_path))
    _trainer(tmp_path, max_steps=1, callbacks=[export]).fit(module, make_datamodule())
    table = torch.load(tmp_path / "pseudo_labels.pt")
    assert table["index"].tolist() == list(range(8))
    assert table["joints3d"].shape == (8, 21, 3) and table["changed"].all()
    with open(tmp_path / "pseudo_labels.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 8 and {
        "spread",
        "confidence",
        "accepted",
        "changed",
        "error_raw_mm",
        "error_final_mm",
    } <= set(rows[0])
    assert export.last_summary["changed_rate"] == 1.0
    # Callbacks read the pseudo-labels through the task's one documented state, not its attributes.
    state = module.visualization_state()
    assert state["pseudo_labels"] is module.last_pseudo_labels and state["confidence_keep"] == "below"
    torch.testing.assert_close(state["confidence"], module.last_pseudo_labels["labels"].spread)
    assert (
        state["protocol_name"] == "synthhands" and state["protocol"] is module.eval_metrics["val"]["protocol"]
    )
    figures = export.panels(state["pseudo_labels"])
    assert set(figures) == {"correction", "confidence", "pck"}
    assert len(figures["correction"].axes) == 2  # the last unlabelled batch held 2 images (max_images 4)


def test_pseudo_label_export_is_cheap_by_default_and_skips_fast_dev_run(tmp_path):
    module = _module()
    export = PseudoLabelExport(dirpath=str(tmp_path / "few"), max_batches=1)
    _trainer(tmp_path, max_steps=1, callbacks=[export]).fit(module, make_datamodule(eval_batch_size=3))
    table = torch.load(tmp_path / "few" / "pseudo_labels.pt")
    assert table["index"].tolist() == [0, 1, 2]  # one batch of 3, not the 8 unlabelled items
    assert {"refused_rate", "accept_rate"} <= set(export.last_summary)
    calls = []
    skipped = PseudoLabelExport(dirpath=str(tmp_path / "fdr"), every_n_epochs=1, log_every_n_steps=1)
    skipped.collect = lambda *args: calls.append(args)
    _trainer(tmp_path, fast_dev_run=True, callbacks=[skipped]).fit(_module(), make_datamodule())
    assert calls == [] and not (tmp_path / "fdr").exists()
    with pytest.raises(ValueError, match="max_batches"):
        PseudoLabelExport(max_batches=0)


# -------------------------------------------------------------------------------------------- configs
CONFIGS = sorted(p.name for p in (ROOT_DIR / "experiments").glob("semihand_*.yaml"))

_SYNTH = "{{class_path: handssl.data.SynthHands, init_args: {{split: {split}, world: {{class_path: handssl.data.SynthHandsWorld, init_args: {{style: {style}}}}}, num_subjects: 1, sequences_per_subject: 1, frames_per_sequence: 4, chunk_size: 4}}}}"


def _override(name, tmp_path):
    if "rhd" not in name:
        sets = {
            "train": _SYNTH.format(split="train", style="synthetic"),
            "unlabeled": _SYNTH.format(split="train", style="real"),
            "val": _SYNTH.format(split="val", style="real"),
            "test": _SYNTH.format(split="test", style="real"),
        }
    else:
        from handssl.data.fakes import make_fake_dexter_object, make_fake_rhd, make_fake_stb

        rhd = make_fake_rhd(tmp_path / "rhd", num_samples=4)
        rhd_set = f"{{class_path: handssl.data.RHD, init_args: {{root: {rhd}, split: training, mirror_left: true}}}}"
        if "stb" in name:
            stb = make_fake_stb(tmp_path / "stb", num_frames=1)
            target = "{{class_path: handssl.data.STB, init_args: {{root: {root}, split: {split}, mirror_left: true}}}}"
            sets = {
                "train": rhd_set,
                "unlabeled": target.format(root=stb, split="train"),
                "val": target.format(root=stb, split="test"),
                "test": target.format(root=stb, split="test"),
            }
        else:
            dexter = make_fake_dexter_object(tmp_path / "do", num_frames=2)
            target = (
                f"{{class_path: handssl.data.DexterObject, init_args: {{root: {dexter}, mirror_left: true}}}}"
            )
            sets = {"train": rhd_set, "unlabeled": target, "val": target, "test": target}
    lines = ["data:", "  init_args:", "    batch_size: 4"]
    lines += [f"    {key}:\n      - {value}" for key, value in sets.items()]
    path = tmp_path / "override.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.filterwarnings("error:Total length of")  # an empty loader would make the run a no-op
@pytest.mark.parametrize("name", CONFIGS)
def test_config_fast_dev_run(name, tmp_path, monkeypatch):
    pytest.importorskip("handssl.biomech")
    from handssl.cli import main

    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.chdir(tmp_path)
    override = _override(name, tmp_path)
    main(
        [
            "fit",
            "-c",
            str(ROOT_DIR / "experiments" / name),
            "-c",
            str(override),
            "--trainer.fast_dev_run=true",
            "--trainer.accelerator=cpu",
            "--model.init_args.unsupervised.start_step=0",
            f"--runs_dir={tmp_path / 'runs'}",
        ]
    )


def test_all_configs_present():
    expected = {
        f"semihand_{kind}{suffix}.yaml"
        for kind in ("source_only", "full")
        for suffix in ("", "_rhd_stb", "_rhd_do")
    }
    assert expected <= set(CONFIGS)


# The model configs on the real-data configs, as the README composes them (-c model -c data), on the fakes
# (the data configs' data/RHD, data/STB, data/dexter_object). One runs by default, the other with -m slow.
COMPOSED = [
    ("semihand.yaml", "rhd_to_stb.yaml"),
    pytest.param("semihand_source_only.yaml", "rhd_to_dexter_object.yaml", marks=pytest.mark.slow),
]


@pytest.fixture(scope="module")
def fake_real_data(tmp_path_factory):
    from handssl.data.fakes import make_fake_dexter_object, make_fake_rhd, make_fake_stb

    root = tmp_path_factory.mktemp("semihand_composed")
    make_fake_rhd(root / "data" / "RHD", num_samples=4)
    make_fake_stb(root / "data" / "STB", num_frames=1)
    make_fake_dexter_object(root / "data" / "dexter_object", num_frames=2)
    return root


@pytest.mark.filterwarnings("error:Total length of")
@pytest.mark.parametrize("model, data", COMPOSED)
def test_composed_config_fast_dev_run(model, data, fake_real_data, tmp_path, monkeypatch):
    pytest.importorskip("handssl.biomech")
    from handssl.cli import main

    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.chdir(fake_real_data)
    experiments = ROOT_DIR / "experiments"
    main(
        [
            "fit",
            "-c",
            str(experiments / "model" / model),
            "-c",
            str(experiments / "data" / data),
            "--trainer.fast_dev_run=true",
            "--trainer.accelerator=cpu",
            "--data.init_args.batch_size=4",
            "--model.init_args.unsupervised.start_step=0",
            "--test_after_fit=true",
            f"--runs_dir={tmp_path / 'runs'}",
        ]
    )
    # Named after both files; scored with the protocol the test set's datasets name (no config writes it).
    run_dir = tmp_path / "runs" / f"{Path(model).stem}+{Path(data).stem}" / "fast_dev_run"
    metrics = json.loads((run_dir / "test_metrics.json").read_text())
    protocol = {"rhd_to_stb.yaml": "stb", "rhd_to_dexter_object.yaml": "dexter_object"}[data]
    assert f"test/{protocol}/auc" in metrics


# ------------------------------------------------------------------------------------------------ DDP
DDP_SCRIPT = textwrap.dedent(
    """
    import os, sys, json
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, {tests!r})
    import pytorch_lightning as pl
    from test_semi_datamodule import make_datamodule
    from handssl.models.options import CorrectionOptions, Optimization, PseudoLabelOptions
    from handssl.models.semihand import SemiHandModule

    class Check(pl.Callback):
        def on_train_end(self, trainer, pl_module):
            flat = torch.cat([v.flatten().double() for v in pl_module.teacher.state_dict().values()])
            gathered = pl_module.all_gather(flat)
            student = torch.cat([p.flatten().double() for p in pl_module.student.parameters()])
            students = pl_module.all_gather(student)
            if trainer.is_global_zero:
                json.dump({{
                    "world": trainer.world_size,
                    "teacher_max_diff": float((gathered[0] - gathered[1]).abs().max()),
                    "student_max_diff": float((students[0] - students[1]).abs().max()),
                    "updates": pl_module.ema_updates,
                }}, open({out!r}, "w"))

    module = SemiHandModule(backbone_widths=(8, 16, 32), backbone_blocks=(1, 1, 1), decoder_channels=16,
                            correction=CorrectionOptions(enabled=False),
                            pseudo_labels=PseudoLabelOptions(threshold=float("inf")),
                            optimizer=Optimization(warmup_steps=0))
    trainer = pl.Trainer(strategy="ddp", accelerator="cpu", devices=2, max_steps=2, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, num_sanity_val_steps=0, callbacks=[Check()])
    trainer.fit(module, make_datamodule(batch_size=4, unlabeled_fraction=0.5))
    """
)


@pytest.mark.ddp
def test_two_process_ddp_keeps_teachers_identical(tmp_path):
    out = tmp_path / "ddp.json"
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT.format(tests=str(Path(__file__).parent), out=str(out)))
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stderr[-3000:]
    import json

    report = json.loads(out.read_text())
    assert report["world"] == 2 and report["updates"] == 2
    assert report["student_max_diff"] == 0.0
    assert report["teacher_max_diff"] == 0.0


# ------------------------------------------------------------------- issue 10: correction and its loss
def test_eq6_correction_term_is_logged_only_with_correction(monkeypatch):
    sizes = []
    import handssl.models.components.semihand_losses as semihand_losses

    real = semihand_losses.cross_modal_loss

    def spy(*args, **kwargs):
        sizes.append(kwargs.get("size"))
        return real(*args, **kwargs)

    monkeypatch.setattr(semihand_losses, "cross_modal_loss", spy)
    full = _module(
        correction=CORRECTION,
        consistency=ConsistencyOptions(cross_modal_size=16),
        pseudo_labels=PseudoLabelOptions(accept_fraction=1.0),
    )
    trainer = _trainer(max_steps=1)
    trainer.fit(full, make_datamodule())
    metrics = trainer.callback_metrics
    assert "train/correction" in metrics and "train/pseudo_label" in metrics
    assert sizes and set(sizes) == {16}  # cross_modal_size reaches the loss
    assert full.template.count > 0  # the mean template follows the labelled hands
    no_eq6 = _module(
        correction=CorrectionOptions(weight=0.0), pseudo_labels=PseudoLabelOptions(accept_fraction=1.0)
    )
    trainer = _trainer(max_steps=1)
    trainer.fit(no_eq6, make_datamodule())
    assert "train/correction" not in trainer.callback_metrics
    consistency_only = _module(pseudo_labels=PseudoLabelOptions(enabled=False))
    trainer = _trainer(max_steps=1)
    trainer.fit(consistency_only, make_datamodule())
    assert "train/correction" not in trainer.callback_metrics


def test_correction_template_modes():
    joints = _joints(2, seed=5)
    batch = {"eval_joints3d": joints, "eval_valid": torch.ones(2, 21, dtype=torch.bool)}
    scale = torch.tensor([40.0, 50.0])
    from handssl.biomech import bone_lengths
    from handssl.models.components.hand_template import REFERENCE_INDEX

    mean = _module(correction=CORRECTION).correction_template(batch, scale)
    assert torch.allclose(mean[:, REFERENCE_INDEX], scale)  # scaled to the lifting scale
    subject = _module(correction=CorrectionOptions(template="subject")).correction_template(batch, scale)
    assert torch.allclose(subject, bone_lengths(joints))
    batch["eval_joints3d"] = joints.clone()
    batch["eval_joints3d"][1, 4] = float("nan")
    subject = _module(correction=CorrectionOptions(template="subject")).correction_template(batch, scale)
    assert torch.allclose(subject[1], mean[1])  # no usable annotation: the mean template
    assert _module(correction=CorrectionOptions(template="none")).correction_template(batch, scale) is None
    with pytest.raises(ValueError, match=r"correction\.template must be one of"):
        _module(correction={"template": "mano"})


def test_rounds_gate_by_quantile_over_the_whole_set(tmp_path):
    module = _module(mode="rounds", pseudo_labels=PseudoLabelOptions(accept_fraction=0.5))
    _trainer(tmp_path, max_epochs=1, limit_train_batches=1).fit(module, make_datamodule())
    table = module.round_table
    assert int(table["accepted"].sum()) == 4  # half of the 8 unlabelled items, the least spread ones
    spread = table["spread"]
    assert spread[table["accepted"]].max() <= spread[~table["accepted"]].min()
