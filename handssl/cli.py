"""The ``handssl`` command line: ``handssl fit|validate|test|predict -c experiments/<x>.yaml``.

A :class:`~pytorch_lightning.cli.LightningCLI` with handssl's defaults:

* model and data are chosen by ``class_path`` (any :class:`~handssl.models.BaseHandTask` and any
  :class:`~handssl.data.datamodules.HandDataModule`), configs may use omegaconf interpolation
  (``${model.init_args.lr}``) resolved after all sources are merged;
* every run gets its own directory ``<runs_dir>/<run_name>/version_<n>/`` holding the resolved
  ``config.yaml``, CSV metrics, checkpoints and the wandb run (offline by default: no account, no
  network; ``--wandb online`` or ``WANDB_MODE=online`` sends it to a dashboard);
* ``handssl test`` writes ``test_metrics.json`` into the run directory;
* ``handssl data check DATASET --root PATH`` validates a dataset folder.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.cli import ArgsType, LightningArgumentParser, LightningCLI
from pytorch_lightning.loggers import CSVLogger, WandbLogger
from pytorch_lightning.utilities import rank_zero_info, rank_zero_only

import handssl
from handssl.data.base import DatasetError
from handssl.data.datamodules import HandDataModule
from handssl.models.base import BaseHandTask, NonFiniteError

WANDB_MODES = ("offline", "online", "disabled")


class TestMetricsWriter(Callback):
    """Write every ``test/*`` metric into ``<run dir>/test_metrics.json`` (metric name -> number)."""

    filename = "test_metrics.json"

    @rank_zero_only
    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = {
            k: float(v)
            for k, v in sorted(trainer.callback_metrics.items())
            if k.startswith("test/") and v.numel() == 1
        }
        run_dir = Path(trainer.log_dir or trainer.default_root_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / self.filename
        path.write_text(json.dumps(metrics, indent=2) + "\n")
        rank_zero_info(f"handssl: wrote {len(metrics)} test metrics to {path}")


class HandSSLCLI(LightningCLI):
    """LightningCLI with handssl's run directories, loggers and extra options."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--run_name", type=str | None, default=None, help="Run name (default: the config file's stem)."
        )
        parser.add_argument(
            "--runs_dir", type=str, default="runs", help="Folder that holds the run directories."
        )
        parser.add_argument(
            "--wandb",
            type=str | None,
            default=None,
            help="wandb mode: offline (default; no account or network), online, or disabled. "
            "Defaults to $WANDB_MODE when set.",
        )
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=False,
            help="Run the test set with the best checkpoint after fit.",
        )

    def _run_options(self) -> dict[str, Any]:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        name = cfg.get("run_name")
        if not name:
            configs = cfg.get("config") or []
            name = Path(str(configs[-1])).stem if configs else type(self.model).__name__.lower()
        mode = cfg.get("wandb") or os.environ.get("WANDB_MODE", "offline")
        mode = {"dryrun": "offline"}.get(mode, mode)
        if mode not in WANDB_MODES:
            raise ValueError(f"--wandb must be one of {WANDB_MODES}, got {mode!r}")
        return {"name": name, "runs_dir": cfg.get("runs_dir", "runs"), "wandb": mode}

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        trainer_cfg = self._get(self.config_init, "trainer", default={})
        if trainer_cfg.get("logger") in (None, True) and "logger" not in kwargs:
            opts = self._run_options()
            csv = CSVLogger(save_dir=opts["runs_dir"], name=opts["name"])
            loggers: list[Any] = [csv]
            if opts["wandb"] != "disabled":
                os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
                loggers.append(
                    WandbLogger(
                        save_dir=csv.log_dir,
                        name=f"{opts['name']}/version_{csv.version}",
                        project=os.environ.get("WANDB_PROJECT", "handssl"),
                        offline=opts["wandb"] == "offline",
                    )
                )
            kwargs["logger"] = loggers
        return super().instantiate_trainer(**kwargs)

    def after_fit(self) -> None:
        cfg = self.config[self.subcommand]
        if not cfg.get("test_after_fit"):
            return
        ckpt = self.trainer.checkpoint_callback
        ckpt_path = "best" if ckpt is not None and getattr(ckpt, "best_model_path", "") else None
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt_path)


def main(args: ArgsType = None) -> None:
    """Run the handssl command line (``args`` defaults to ``sys.argv[1:]``)."""
    argv = list(sys.argv[1:] if args is None else args) if not isinstance(args, dict) else args
    if isinstance(argv, list) and argv[:1] == ["data"]:
        from handssl.data.check import main as data_main

        sys.exit(data_main(argv[1:]))
    try:
        HandSSLCLI(
            model_class=BaseHandTask,
            datamodule_class=HandDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            trainer_defaults={"callbacks": [TestMetricsWriter()]},
            parser_kwargs={"parser_mode": "omegaconf+", "version": handssl.__version__},
            args=argv,
        )
    except (DatasetError, NonFiniteError) as err:
        if os.environ.get("HANDSSL_DEBUG"):
            raise
        print(f"handssl: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
