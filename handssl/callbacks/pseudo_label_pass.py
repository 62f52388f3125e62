"""One pass of pseudo-labelling over the unlabelled set, shared by the paper's offline rounds and the export.

:func:`label_unlabeled_set` runs a SemiHand-style module's ``compute_pseudo_labels`` over the datamodule's
deterministic ``pseudo_label_dataloader`` (optionally only its first batches), gathers the ranks' shards and
drops the repeated items a distributed sampler pads with. :func:`round_table` turns such a table into the
per-item store of :class:`~handssl.models.SemiHandModule`'s ``mode="rounds"``, gating over the whole set, and
:func:`round_rows` looks a batch's items up in it. :class:`PseudoLabelRounds` is the callback that runs the
rounds: it, not the module, reads the DataModule.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor

from handssl._progress import progress
from handssl.models.components.pseudo_labels import gate, pseudo_label_errors
from handssl.skeleton import MIDDLE_MCP

__all__ = ["PseudoLabelRounds", "first_positions", "label_unlabeled_set", "round_rows", "round_table"]

ROUND_KEYS = ("uv", "depth", "uv_registered", "depth_registered", "spread", "refused")


@torch.no_grad()
def label_unlabeled_set(
    module: Any,
    datamodule: Any,
    rank: int = 0,
    world_size: int = 1,
    max_batches: int | None = None,
    network: torch.nn.Module | None = None,
) -> dict[str, Tensor] | None:
    """Pseudo-labels of the unlabelled items as a dict of ``(N, ...)`` CPU tensors, sorted by ``index``.

    Args:
        module: Has ``compute_pseudo_labels(batch, network)`` and ``device`` (and ``all_gather`` under DDP).
        datamodule: Has ``pseudo_label_dataloader(rank, world_size)`` and ``num_unlabeled``.
        rank: This process's rank.
        world_size: Number of processes (all take part).
        max_batches: Only the first this many batches of each rank (``None``: all).
        network: The labelling network (default: the module's choice).

    Returns:
        The :class:`~handssl.models.components.pseudo_labels.PseudoLabels` fields plus ``index`` and, where
        the items carry annotations, ``error_raw_mm`` and ``error_final_mm`` (as lifted in training) and
        ``error_raw_known_mm`` and ``error_final_known_mm`` (lifted with the annotated root depth and scale); ``None`` when there is nothing.
    """
    if (
        datamodule is None
        or not hasattr(datamodule, "pseudo_label_dataloader")
        or not datamodule.num_unlabeled
    ):
        return None
    loader = datamodule.pseudo_label_dataloader(rank=rank, world_size=world_size)
    rows: dict[str, list[Tensor]] = {}
    total: int | None
    try:
        total = len(loader) if max_batches is None else min(len(loader), max_batches)
    except TypeError:
        total = max_batches
    for i, batch in enumerate(progress(loader, "pseudo-labels", total=total, enabled=rank == 0)):
        if max_batches is not None and i >= max_batches:
            break
        batch = {k: v.to(module.device) if isinstance(v, Tensor) else v for k, v in batch.items()}
        labels, _ = module.compute_pseudo_labels(batch, network)
        fields = labels.to_dict()
        fields["index"] = batch["index"]
        if "eval_joints3d" in batch:
            errors = pseudo_label_errors(
                labels,
                batch["eval_joints3d"],
                batch["eval_valid"],
                K=batch["K"],
                depth_root=getattr(module, "root_joint", MIDDLE_MCP),
            )
            for name, value in errors.items():
                fields[f"{name}_mm"] = value
        for key, value in fields.items():
            rows.setdefault(key, []).append(value.detach())
    if not rows:
        return None
    table = {k: torch.cat(v) for k, v in rows.items()}
    if world_size > 1:
        table = {k: module.all_gather(v).flatten(0, 1) for k, v in table.items()}
    table = {k: v.cpu() for k, v in table.items()}
    first = first_positions(table["index"])
    return {k: v[first] for k, v in table.items()}


def round_table(
    table: dict[str, Tensor], size: int, threshold: float | None, accept_fraction: float | None
) -> dict[str, Tensor]:
    """Per-item store of one round: the ``ROUND_KEYS`` fields, ``filled`` and ``accepted`` gated over the set."""
    index = table["index"].long()
    out: dict[str, Tensor] = {}
    for key in ROUND_KEYS:
        value = table[key]
        fill = float("inf") if key == "spread" else 0
        out[key] = torch.full((size, *value.shape[1:]), fill, dtype=value.dtype)
        out[key][index] = value
    out["filled"] = torch.zeros(size, dtype=torch.bool)
    out["filled"][index] = True
    eligible = out["filled"] & ~out["refused"].bool()
    out["accepted"] = gate(out["spread"], threshold, accept_fraction, eligible=eligible)
    return out


def round_rows(table: dict[str, Tensor], index: Tensor, device: torch.device) -> dict[str, Tensor]:
    """The rows of ``table`` (:func:`round_table`) of a batch's item ``index``, on ``device``.

    Items the round did not reach (not ``filled``) are neither accepted nor usable (``refused``).
    """
    index = index.long().cpu()
    rows = {k: v[index].to(device) for k, v in table.items()}
    rows["accepted"] = rows["accepted"] & rows["filled"]
    rows["refused"] = rows["refused"].bool() | ~rows["filled"]
    return rows


class PseudoLabelRounds(pl.Callback):
    """The paper's offline rounds (Alg. 1) of :class:`~handssl.models.SemiHandModule` in ``mode="rounds"``.

    At the start of every ``epochs_per_round``-th epoch (once the unsupervised losses have started) the network
    itself, in eval mode, pseudo-labels every item of the datamodule's ``pseudo_label_dataloader``; the module
    keeps the gated table (``round_table``, in its checkpoints) and counts the rounds (``rounds_done``). The
    module adds this callback itself (``configure_callbacks``) and looks its batches' labels up with :meth:`rows`.

    Args:
        epochs_per_round: Epochs per pseudo-labelling round.
    """

    def __init__(self, epochs_per_round: int = 1) -> None:
        if epochs_per_round < 1:
            raise ValueError(f"epochs_per_round must be >= 1, got {epochs_per_round}")
        self.epochs_per_round = epochs_per_round

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if not pl_module.pseudo_labels.enabled:
            return
        if pl_module.global_step < pl_module.unsupervised.start_step and pl_module.round_table is None:
            return
        if pl_module.round_table is None or trainer.current_epoch % self.epochs_per_round == 0:
            self.label(trainer, pl_module)

    def rows(self, pl_module: Any, index: Tensor) -> dict[str, Tensor]:
        """The stored rows of a batch's items (:func:`round_rows`), after a first round if none ran yet.

        That first round runs inside a training step when the unsupervised losses start within an epoch.
        """
        if pl_module.round_table is None:
            self.label(pl_module.trainer, pl_module)
        return round_rows(pl_module.round_table, index, pl_module.device)

    @torch.no_grad()
    def label(self, trainer: pl.Trainer, pl_module: Any) -> None:
        """Recompute and store a pseudo-label for every unlabelled item (one round of the paper's Alg. 1)."""
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "pseudo_label_dataloader"):
            raise ValueError("mode='rounds' needs a SemiSupervisedDataModule (with pseudo_label_dataloader)")
        table = label_unlabeled_set(
            pl_module, datamodule, trainer.global_rank, trainer.world_size, network=pl_module.student
        )
        n = datamodule.num_unlabeled
        if table is None:
            raise ValueError("mode='rounds' found no unlabelled items to pseudo-label in the datamodule")
        labeler = pl_module.pseudo_labeler
        pl_module.round_table = round_table(table, n, labeler.threshold, labeler.accept_fraction)
        pl_module.rounds_done += 1
        rate = float(pl_module.round_table["accepted"].float().mean()) if n else 0.0
        rank_zero_info(
            f"SemiHandModule: round {pl_module.rounds_done}: {n} pseudo-labels, {rate:.0%} accepted"
        )


def first_positions(index: Tensor) -> Tensor:
    """Positions of the first occurrence of each distinct value of ``index``, sorted by that value."""
    seen: dict[int, int] = {}
    for pos, value in enumerate(index.tolist()):
        seen.setdefault(int(value), pos)
    return torch.tensor([seen[k] for k in sorted(seen)], dtype=torch.long)
