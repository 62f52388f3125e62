"""BaseHandTask: the small base LightningModule every handssl method builds on.

Subclasses declare their hyper-parameters as typed ``__init__`` arguments (they become the CLI), keep the ones
their hooks read as typed attributes (set *before* ``super().__init__()``, which runs the hooks; ``self.hparams``
still records every argument for checkpoints), then override the hooks:

* :meth:`configure_models` builds the ``nn.Module`` components,
* :meth:`configure_losses` builds loss modules (optional),
* :meth:`training_step` computes the losses,
* :meth:`predict_joints3d` maps a batch to root-relative 3D joints (mm) for evaluation.

Validation and test share one evaluation step: root-relative predictions against the batch's camera-frame
``joints3d``: root-relative ``{stage}/mpjpe``, ``{stage}/n_mpjpe`` and ``{stage}/pa_mpjpe`` (wrist root, mm), and
the named evaluation protocol's numbers (:mod:`handssl.metrics.protocols`) as ``{stage}/<protocol>/<key>``,
e.g. ``test/stb/auc``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar, Literal, get_args, get_origin, get_type_hints

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from handssl.data.datamodules import load_pending_loader_states
from handssl.metrics.classes import MPJPE, NMPJPE, PAMPJPE
from handssl.metrics.protocols import EvalProtocol, ProtocolMetric, get_protocol
from handssl.models.options import (
    Optimization,
    group_hparams,
    moved_arguments,
    task_default,
    upgraded_groups,
)
from handssl.skeleton import root_relative, valid_with_root

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self from Python 3.11

COMPILE_BACKENDS = ("inductor", "aot_eager")
"""``torch.compile`` backends a task accepts (``compile_backend``)."""


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Put ``module`` in eval mode inside the block and restore its train/eval mode after it."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def to_float(value: Any) -> Any:
    """``value`` with every floating-point tensor (also inside dicts, lists and tuples) cast to float32.

    Network outputs computed under ``bf16-mixed`` / ``16-mixed`` autocast are half precision; the losses and
    the geometry after them should not be.
    """
    if isinstance(value, Tensor):
        return value.float() if value.is_floating_point() and value.dtype != torch.float64 else value
    if isinstance(value, dict):
        return {key: to_float(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_float(item) for item in value)
    return value


def check_choices(cls: type, arguments: Mapping[str, Any]) -> None:
    """Raise :class:`ValueError` when an argument of ``cls.__init__`` lies outside its ``Literal[...]`` choices.

    The CLI refuses such a value itself; this refuses it from Python too, for every task's arguments at once.
    """
    try:
        hints = get_type_hints(cls.__init__)  # type: ignore[misc]
    except NameError:  # an annotation names a type imported only for type checking: nothing to check
        return
    for name, value in arguments.items():
        hint = hints.get(name)
        choices = get_args(hint) if get_origin(hint) is Literal else ()
        if choices and value not in choices:
            raise ValueError(f"{name} must be one of {choices}, got {value!r}")


class NonFiniteError(FloatingPointError):
    """A batch or a loss holds NaN or inf; the message names the key, the sample and the step."""


def check_batch(batch: dict[str, Any], where: str = "batch") -> None:
    """Raise :class:`NonFiniteError` when an image or a valid joint in ``batch`` is NaN or inf.

    Joints marked invalid may be NaN (that is how datasets mark missing annotations).
    """
    image = batch.get("image")
    if isinstance(image, Tensor) and not torch.isfinite(image).all():
        bad = (~torch.isfinite(image.flatten(1))).any(1).nonzero().flatten().tolist()
        raise NonFiniteError(f"{where}: NaN/inf in 'image' of samples {bad} ({_describe(batch, bad)})")
    for key in ("joints3d", "joints2d"):
        joints = batch.get(key)
        if not isinstance(joints, Tensor):
            continue
        valid = valid_joints(batch, key)
        mask = valid if valid is not None else torch.ones(joints.shape[:-1], dtype=torch.bool)
        finite = torch.isfinite(joints).all(-1) | ~mask.bool()
        if not finite.all():
            bad = (~finite).flatten(1).any(1).nonzero().flatten().tolist()
            raise NonFiniteError(
                f"{where}: NaN/inf in '{key}' of joints marked valid, samples {bad} ({_describe(batch, bad)}); "
                "mark missing annotations with valid=False"
            )


def valid_joints(batch: dict[str, Any], key: str = "joints3d") -> Tensor | None:
    """Which joints of ``batch[key]`` carry an annotation.

    ``valid`` marks annotated joints; datasets with 2D labels only (e.g. the CMU HandDB sets) add
    ``valid3d`` (all False) so that their NaN 3D joints count as missing.
    """
    valid = batch.get("valid")
    if key == "joints3d" and isinstance(batch.get("valid3d"), Tensor):
        valid = batch["valid3d"] if valid is None else valid & batch["valid3d"]
    return valid.bool() if isinstance(valid, Tensor) else None


def _describe(batch: dict[str, Any], indices: list[int]) -> str:
    meta = batch.get("meta")
    if not isinstance(meta, dict):
        return "no meta"
    parts = []
    for i in indices[:3]:
        fields = {k: v[i] for k, v in meta.items() if isinstance(v, (list, tuple, Tensor)) and len(v) > i}
        parts.append(", ".join(f"{k}={v.item() if isinstance(v, Tensor) else v}" for k, v in fields.items()))
    return "; ".join(parts)


class StageMetrics(nn.ModuleDict):
    """The evaluation metrics of one stage, as a ``ModuleDict`` keyed ``mpjpe``, ``n_mpjpe``, ``pa_mpjpe``, ``protocol``.

    The keys are also typed attributes (``metrics.protocol`` is the :class:`ProtocolMetric`).
    """

    mpjpe: MPJPE
    n_mpjpe: NMPJPE
    pa_mpjpe: PAMPJPE
    protocol: ProtocolMetric

    def __init__(self, protocol: EvalProtocol) -> None:
        super().__init__()
        self.mpjpe = MPJPE()
        self.n_mpjpe = NMPJPE()
        self.pa_mpjpe = PAMPJPE()
        self.protocol = ProtocolMetric(protocol)

    @property
    def errors(self) -> dict[str, MPJPE | NMPJPE | PAMPJPE]:
        """The root-relative error metrics by name: ``mpjpe``, ``n_mpjpe``, ``pa_mpjpe``."""
        return {"mpjpe": self.mpjpe, "n_mpjpe": self.n_mpjpe, "pa_mpjpe": self.pa_mpjpe}


class BaseHandTask(pl.LightningModule):
    """Base class of handssl's LightningModules: hooks, shared evaluation, optimiser.

    Args:
        optimizer: AdamW and its learning-rate schedule (:class:`~handssl.models.options.Optimization`; in
            YAML ``optimizer: {lr: 1.0e-3, scheduler: none}``, keys left out keep the task's defaults).
        eval_protocol: Name of the evaluation protocol (see :mod:`handssl.metrics.protocols`).
        channels_last: Keep the convolution weights (and so the feature maps) in ``torch.channels_last``
            memory format (the layout tensor-core convolutions under ``bf16-mixed`` prefer; same numbers).
        compile: Compile the networks (:meth:`compile_targets`) with ``torch.compile`` in place; the
            state dict keeps its keys. The first steps are slow while the graphs compile.
        compile_backend: ``torch.compile`` backend: ``"inductor"`` (generated kernels, the fast one) or
            ``"aot_eager"`` (traces forward and backward without code generation; checks that a model
            compiles, quickly).
    """

    monitor = "val/mpjpe"
    mode = "min"

    moved_arguments: ClassVar[Mapping[str, str]] = moved_arguments("optimizer")
    """Where each flat argument of earlier versions went (``lr`` -> ``optimizer: {lr: ...}``), for the CLI's error."""

    def __init__(
        self,
        optimizer: Optimization = Optimization(),
        eval_protocol: str = "synthhands",
        channels_last: bool = False,
        compile: bool = False,
        compile_backend: Literal["inductor", "aot_eager"] = "inductor",
    ) -> None:
        super().__init__()
        # A mapping (a checkpoint's hparams) keeps this task's defaults for the keys it leaves out.
        self.optimization = Optimization.of(optimizer, task_default(type(self), "optimizer"))
        if compile_backend not in COMPILE_BACKENDS:
            raise ValueError(f"compile_backend must be one of {COMPILE_BACKENDS}, got {compile_backend!r}")
        self.save_hyperparameters()  # every argument of the subclasses' __init__ too
        # Groups as plain dicts: a checkpoint's hyper-parameters stay readable with weights_only=True.
        self.save_hyperparameters(group_hparams(self.hparams, type(self)))
        check_choices(type(self), self.hparams)
        self.eval_protocol = eval_protocol
        self.configure_models()
        self.configure_losses()
        self.configure_metrics()
        if channels_last:
            self.to(memory_format=torch.channels_last)
        if compile:
            for module in self.compile_targets():
                module.compile(backend=compile_backend)

    @classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path: Any,
        map_location: Any = None,
        hparams_file: Any = None,
        strict: bool | None = None,
        weights_only: bool | None = None,
        **kwargs: Any,
    ) -> Self:
        """Lightning's ``load_from_checkpoint``, which also reads checkpoints written before the option groups.

        Their flat arguments (``lr=``, ``ema_decay=``, ...) go into their groups
        (:func:`~handssl.models.options.upgrade_hparams`) instead of being dropped.
        """
        kwargs = {**upgraded_groups(checkpoint_path), **kwargs}
        return super().load_from_checkpoint(
            checkpoint_path, map_location, hparams_file, strict, weights_only, **kwargs
        )

    # ----------------------------------------------------------------------------------------- hooks
    def configure_models(self) -> None:
        """Build the ``nn.Module`` components (override)."""

    def configure_losses(self) -> None:
        """Build loss modules (override when needed)."""

    def configure_metrics(self) -> None:
        """Build the validation and test metrics for ``eval_protocol``."""
        protocol = get_protocol(self.eval_protocol)
        self.eval_metrics = nn.ModuleDict({stage: StageMetrics(protocol) for stage in ("val", "test")})

    def stage_metrics(self, stage: str) -> StageMetrics:
        """The :class:`StageMetrics` of ``stage`` (``"val"`` or ``"test"``)."""
        metrics = self.eval_metrics[stage]
        if not isinstance(metrics, StageMetrics):
            raise TypeError(f"eval_metrics[{stage!r}] is a {type(metrics).__name__}, not StageMetrics")
        return metrics

    def visualization_state(self, stage: Literal["val", "test"] = "val") -> dict[str, Any]:
        """What this task shows to the visualisation callbacks: the one interface they read.

        :class:`~handssl.callbacks.PoseVisualizationCallback` and
        :class:`~handssl.callbacks.pseudo_labels.PseudoLabelExport` call it instead of reaching into the
        task's attributes; a task with more to show overrides it and extends the dict. Every key is optional.

        Args:
            stage: Whose evaluation metric to expose.

        Returns:
            ``protocol_name``: the evaluation protocol (``eval_protocol``); ``protocol``: the
            :class:`~handssl.metrics.ProtocolMetric` accumulating ``stage`` (its PCK curve), when the task has
            one; SemiHand adds ``pseudo_labels`` (the latest training batch's pseudo-labels, on CPU) and
            ``confidence``, ``confidence_threshold``, ``confidence_keep`` (their spread ``C``, a cost kept
            ``"below"`` the threshold).
        """
        state: dict[str, Any] = {"protocol_name": self.eval_protocol}
        metrics = getattr(self, "eval_metrics", None)
        if metrics is not None and stage in metrics:
            state["protocol"] = metrics[stage]["protocol"]
        return state

    def predict_joints3d(self, batch: dict[str, Any]) -> Tensor:
        """Root-relative 3D joints ``(B, 21, 3)`` in mm, in the camera frame of ``batch['image']``."""
        raise NotImplementedError

    def compile_targets(self) -> list[nn.Module]:
        """The networks that ``compile=True`` compiles (override; default: none, so ``compile`` is refused)."""
        raise ValueError(f"{type(self).__name__} names no networks to compile (override compile_targets)")

    # ------------------------------------------------------------------------------ mixed precision
    @contextmanager
    def full_precision(self) -> Iterator[None]:
        """Turn autocast off: losses, lifting and geometry run in float32 inside a ``*-mixed`` step.

        Under ``bf16-mixed`` every matrix product would otherwise run in bfloat16 (8 bits of mantissa: 0.5 px at
        64 px, 2 mm at 500 mm depth), and some linear algebra (``det``, ``svd``) has no bfloat16 kernel.
        Tensors coming out of autocast regions must be cast with :func:`to_float` first.
        """
        with torch.autocast(self.device.type, enabled=False):
            yield

    # ------------------------------------------------------------------------------------ evaluation
    def evaluation_batch(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
        """Prediction, camera-frame target and validity for evaluation; override for multi-view batches."""
        valid = valid_joints(batch, "joints3d")
        if valid is None:
            raise KeyError("an evaluation batch needs 'valid' (which joints of 'joints3d' are annotated)")
        return self.predict_joints3d(batch), batch["joints3d"], valid

    def _evaluate(self, batch: dict[str, Any], stage: str) -> None:
        check_batch(batch, f"{stage} batch")
        pred, target, valid = self.evaluation_batch(batch)
        pred, target = to_float(pred), to_float(target)
        target_rel = root_relative(target)
        rel_valid = valid_with_root(valid)
        metrics = self.stage_metrics(stage)
        with self.full_precision():  # Procrustes alignment: SVD, no bfloat16 kernel
            for error in metrics.errors.values():
                error.update(pred, target_rel, rel_valid)
            metrics.protocol.update(pred, target, valid)
        batch_size = pred.shape[0]
        for name, error in metrics.errors.items():
            self.log(f"{stage}/{name}", error, batch_size=batch_size, prog_bar=name == "mpjpe")

    def on_train_start(self) -> None:
        """Finish restoring a resumed run where Lightning leaves it short (a subclass overriding it calls super).

        * The training loaders get their saved position and RNG states, which Lightning drops when
          ``configure_optimizers`` asked for ``estimated_stepping_batches`` (see
          :func:`~handssl.data.datamodules.load_pending_loader_states`).
        * A checkpoint saved by a callback's ``on_train_batch_end`` (``ModelCheckpoint(every_n_train_steps=...)``)
          was taken before the module's own ``on_train_batch_end`` of that batch ran (Lightning calls the
          callbacks first), so that hook (SemiHand's teacher update) runs now, before the next batch, as it did
          in the uninterrupted run; it gets ``outputs=None`` and ``batch=None``.
        """
        load_pending_loader_states(self.trainer)
        epoch_loop = self.trainer.fit_loop.epoch_loop
        if epoch_loop.restarted_on_train_batch_end:
            self.on_train_batch_end(None, None, max(epoch_loop.batch_idx, 0))

    def on_validation_epoch_end(self) -> None:
        self._log_protocol("val")

    def on_test_epoch_end(self) -> None:
        self._log_protocol("test")

    def _log_protocol(self, stage: str) -> None:
        metric = self.stage_metrics(stage).protocol
        if not metric.update_called:
            return
        result = metric.compute()
        name = metric.protocol.name
        for key, value in result.items():
            if isinstance(value, Tensor) and value.numel() == 1:
                self.log(f"{stage}/{name}/{key}", value.float(), sync_dist=False)
        metric.reset()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        return {"joints3d": self.predict_joints3d(batch), "meta": batch.get("meta")}

    # ------------------------------------------------------------------------------------- training
    def log_losses(self, losses: dict[str, Tensor], batch_size: int) -> Tensor:
        """Log every loss term as ``train/<name>`` and return ``losses['loss']`` after a finiteness check."""
        total = losses["loss"]
        if not torch.isfinite(total):
            terms = {k: float(v.detach()) for k, v in losses.items()}
            raise NonFiniteError(
                f"training loss is not finite at step {self.global_step}: {terms}; "
                "lower the learning rate or check the data for NaN"
            )
        for name, value in losses.items():
            self.log(f"train/{name}", value.detach(), batch_size=batch_size, prog_bar=name == "loss")
        return total

    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        options = self.optimization
        optimizer = torch.optim.AdamW(params, lr=options.lr, weight_decay=options.weight_decay)
        if options.scheduler == "none":
            return optimizer
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = min(options.warmup_steps, total // 4)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return 0.01 + 0.99 * 0.5 * (1 + torch.cos(torch.tensor(progress * torch.pi)).item())

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
