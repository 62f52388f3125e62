"""The Lightning part of :mod:`handssl.cli` (imported only when a Lightning subcommand runs; see there)."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any, NoReturn

import pytorch_lightning as pl
from jsonargparse import Namespace, set_parsing_settings
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.cli import ArgsType, LightningArgumentParser, LightningCLI
from pytorch_lightning.loggers import CSVLogger, WandbLogger
from pytorch_lightning.loggers.logger import DummyLogger
from pytorch_lightning.utilities import rank_zero_info

import handssl
from handssl.callbacks.predictions import PredictionWriter
from handssl.data.base import DatasetError
from handssl.data.datamodules import HandDataModule
from handssl.models.base import BaseHandTask, NonFiniteError

WANDB_MODES = ("offline", "online", "disabled")
FAST_DEV_RUN_DIR = "fast_dev_run"

DESCRIPTION = "handssl: semi-supervised 3D hand pose estimation (PyTorch Lightning command line)."
EPILOG = (
    "other commands: `handssl data check DATASET --root PATH` checks a dataset folder "
    "(`handssl data check --help`); `handssl export --ckpt_path X --output model.onnx` writes a model's "
    "inference network as ONNX (`handssl export --help`). "
    "Example: `handssl fit -c experiments/quickstart.yaml`; `handssl SUBCOMMAND --help` lists its options."
)


class ConfigError(ValueError):
    """A config value was rejected while building the model, data or trainer (shown as one line)."""


class TestMetricsWriter(Callback):
    """Write every ``test/*`` metric into ``<run dir>/test_metrics.json`` (metric name -> number)."""

    filename = "test_metrics.json"

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # ``trainer.log_dir`` broadcasts from rank 0, so every rank must ask for it; only rank 0 writes.
        run_dir = Path(trainer.log_dir or trainer.default_root_dir)
        if trainer.is_global_zero:
            self._write(trainer, run_dir)

    def _write(self, trainer: pl.Trainer, run_dir: Path) -> None:
        metrics = {
            k: float(v)
            for k, v in sorted(trainer.callback_metrics.items())
            if k.startswith("test/") and v.numel() == 1
        }
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / self.filename
        path.write_text(json.dumps(metrics, indent=2) + "\n")
        rank_zero_info(f"handssl: wrote {len(metrics)} test metrics to {path}")


class HandSSLParser(LightningArgumentParser):
    """A LightningCLI parser whose errors are one line ``handssl: error: KEY: PROBLEM`` (exit code 2).

    jsonargparse prints the whole usage and a nested "Does not validate against any of the Union subtypes"
    report; ``HANDSSL_DEBUG=1`` keeps that.
    """

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:  # type: ignore[override]
        if os.environ.get("HANDSSL_DEBUG"):
            super().error(message, ex)
        print(f"handssl: error: {one_line_parse_error(message)}", file=sys.stderr)
        sys.exit(2)


_SKIP_LINES = ("Does not validate", "Subtypes:", "Errors:", "Given value", "- Problem with given class_path")


def one_line_parse_error(message: str) -> str:
    """``'model.scheduler: Expected a typing.Literal[...]. Got value: cosin'`` from jsonargparse's report."""
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    if not lines:
        return "invalid arguments (run with --help)"
    keys: list[str] = []
    detail = None
    for line in lines:
        match = re.match(r'(?:- )?Parser key "([^"]+)":?\s*(.*)', line)
        if match:
            keys.append(match.group(1))
            rest = match.group(2)
            if rest and not rest.startswith(_SKIP_LINES):
                detail = rest
                break
            continue
        if line.startswith(_SKIP_LINES) or line.startswith("- Expected a <class 'NoneType'>"):
            continue
        detail = line.lstrip("- ")
        break
    detail = detail or lines[0]
    key = ".".join(dict.fromkeys(keys))
    return f"{key}: {detail}" if key else detail


class HandSSLCLI(LightningCLI):
    """LightningCLI with handssl's run directories, loggers and extra options.

    Args:
        default_run_name: Run name used when ``--run_name`` is not given (``main`` passes the last config
            file's stem).
        **kwargs: Passed to :class:`~pytorch_lightning.cli.LightningCLI`.
    """

    def __init__(self, *args: Any, default_run_name: str | None = None, **kwargs: Any) -> None:
        self.default_run_name = default_run_name
        super().__init__(*args, **kwargs)

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
            "--overlays",
            type=bool,
            default=False,
            help="predict: also write overlays/<image>.png with the predicted skeleton in the run directory.",
        )
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=False,
            help="Run the test set with the best checkpoint after fit.",
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        # ``main`` always passes the arguments (``sys.argv[1:]`` from the shell), so LightningCLI's warning
        # about getting both ``args`` and command line arguments would be printed on every command.
        if isinstance(args, (dict, Namespace)):
            self.config = parser.parse_object(args)
        else:
            self.config = parser.parse_args(args)

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, TypeError) as err:
            if _find_cause(err, (DatasetError, NonFiniteError)) is not None:
                raise
            # jsonargparse wraps a constructor's own error ("unknown evaluation protocol 'stbb'; valid
            # names: ...") in "Does not validate against any of the Union subtypes ...": keep the root.
            raise ConfigError(str(_root_cause(err))) from err

    def _run_options(self) -> dict[str, Any]:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        name = cfg.get("run_name") or self.default_run_name or type(self.model).__name__.lower()
        mode = cfg.get("wandb") or os.environ.get("WANDB_MODE", "offline")
        mode = {"dryrun": "offline"}.get(mode, mode)
        if mode not in WANDB_MODES:
            raise ValueError(f"--wandb must be one of {WANDB_MODES}, got {mode!r}")
        return {"name": name, "runs_dir": cfg.get("runs_dir", "runs"), "wandb": mode}

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        trainer_cfg = self._get(self.config_init, "trainer", default={})
        opts = self._run_options()
        fast_dev_run = bool(trainer_cfg.get("fast_dev_run"))
        if trainer_cfg.get("default_root_dir") is None:
            root = Path(opts["runs_dir"]) / opts["name"]
            # Lightning logs nothing in a fast_dev_run, so the run would land in the bare ``<name>/``.
            kwargs.setdefault("default_root_dir", str(root / FAST_DEV_RUN_DIR if fast_dev_run else root))
        if fast_dev_run and trainer_cfg.get("logger") in (None, True):
            # What Lightning swaps any logger for in a fast_dev_run (``True`` would first warn about TensorBoard).
            kwargs.setdefault("logger", DummyLogger())
        if trainer_cfg.get("logger") in (None, True) and "logger" not in kwargs:
            csv = CSVLogger(save_dir=opts["runs_dir"], name=opts["name"])
            # Create the (empty) version folder now: wandb and the saved config fill it before the CSV
            # logger's first write, which then warns that the folder "exists and is not empty".
            _ = csv.experiment
            loggers: list[Any] = [csv]
            if opts["wandb"] != "disabled":
                os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
                wandb_logger = WandbLogger(
                    save_dir=csv.log_dir,
                    name=f"{opts['name']}/version_{csv.version}",
                    project=os.environ.get("WANDB_PROJECT", "handssl"),
                    offline=opts["wandb"] == "offline",
                )
                # Lightning always passes ``anonymous=None``, which wandb>=0.19 answers with "The anonymous
                # setting has no effect" on every run; leaving the key out means the same.
                getattr(wandb_logger, "_wandb_init", {}).pop("anonymous", None)
                loggers.append(wandb_logger)
            kwargs["logger"] = loggers
        trainer = super().instantiate_trainer(**kwargs)
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        if cfg.get("overlays"):
            for callback in trainer.callbacks:
                if isinstance(callback, PredictionWriter):
                    callback.overlays = True
        if fast_dev_run:
            # Lightning skips checkpoints in a fast_dev_run except ``save_last`` at train end.
            for callback in trainer.checkpoint_callbacks:
                callback.save_last = False
        return trainer

    def after_fit(self) -> None:
        cfg = self.config[self.subcommand]
        if not cfg.get("test_after_fit"):
            return
        ckpt = self.trainer.checkpoint_callback
        ckpt_path = "best" if ckpt is not None and getattr(ckpt, "best_model_path", "") else None
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt_path)


def _config_stem(argv: Any) -> str | None:
    """Stem of the last ``-c/--config`` file in ``argv`` (the default run name)."""
    if not isinstance(argv, list):
        return None
    stem = None
    for i, arg in enumerate(argv):
        if arg in ("-c", "--config") and i + 1 < len(argv):
            stem = Path(argv[i + 1]).stem
        elif arg.startswith("--config="):
            stem = Path(arg.split("=", 1)[1]).stem
    return stem


def main(args: ArgsType = None) -> None:
    """Run the handssl command line (``args`` defaults to ``sys.argv[1:]``)."""
    argv = list(sys.argv[1:] if args is None else args) if not isinstance(args, dict) else args
    if isinstance(argv, list) and argv[:1] == ["data"]:
        from handssl.data.check import main as data_main

        sys.exit(data_main(argv[1:]))
    if isinstance(argv, list) and argv[:1] == ["export"]:
        from handssl.export import main as export_main

        sys.exit(export_main(argv[1:]))
    refused = _refused_option(argv)
    if refused is not None:
        print(
            f"handssl: error: {refused} is not supported: handssl's models build their own AdamW and "
            "learning-rate schedule; set --model.init_args.lr, weight_decay, scheduler or warmup_steps instead",
            file=sys.stderr,
        )
        sys.exit(2)
    _import_registered_classes()
    # Configs say ${data.init_args.image_size}; in omegaconf+ mode the merged config is rooted at the
    # subcommand, so absolute paths must be turned into relative ones to resolve.
    set_parsing_settings(omegaconf_absolute_to_relative_paths=True)
    try:
        HandSSLCLI(
            model_class=BaseHandTask,
            datamodule_class=HandDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            # Lightning's --optimizer/--lr_scheduler would silently replace the model's optimiser and schedule.
            auto_configure_optimizers=False,
            trainer_defaults={"callbacks": [TestMetricsWriter(), PredictionWriter()]},
            parser_class=HandSSLParser,
            parser_kwargs={
                "parser_mode": "omegaconf+",
                "version": handssl.__version__,
                "prog": "handssl",
                "description": DESCRIPTION,
                "epilog": EPILOG,
            },
            args=argv,
            default_run_name=_config_stem(argv),
        )
    except (ValueError, FloatingPointError) as err:
        # jsonargparse wraps errors raised while instantiating datasets; show the dataset's own message.
        cause = _find_cause(err, (DatasetError, NonFiniteError, ConfigError))
        if cause is None or os.environ.get("HANDSSL_DEBUG"):
            raise
        print(f"handssl: error: {cause}", file=sys.stderr)
        sys.exit(2)


REFUSED_OPTIONS = ("--optimizer", "--lr_scheduler")


def _refused_option(argv: Any) -> str | None:
    """The first of :data:`REFUSED_OPTIONS` in ``argv`` (also as ``--optimizer=...``/``--optimizer.lr``)."""
    if not isinstance(argv, list):
        return None
    for arg in argv:
        for option in REFUSED_OPTIONS:
            if isinstance(arg, str) and (arg == option or arg.startswith((option + "=", option + "."))):
                return option
    return None


def _import_registered_classes() -> None:
    """Import handssl's models, DataModules and datasets, so jsonargparse resolves them by class name.

    jsonargparse turns ``--model=SemiHandModule`` into a class path by searching the imported subclasses of
    the expected type; handssl's packages export lazily, so nothing would be found without this.
    """
    import handssl.data
    import handssl.models

    for package in (handssl.models, handssl.data):
        for name in package.__all__:
            getattr(package, name)


def _root_cause(err: BaseException) -> BaseException:
    """The innermost exception in ``err``'s chain of causes and contexts."""
    seen: set[int] = set()
    while id(err) not in seen:
        seen.add(id(err))
        nxt = err.__cause__ or err.__context__
        if nxt is None:
            break
        err = nxt
    return err


def _find_cause(err: BaseException, types: tuple[type[BaseException], ...]) -> BaseException | None:
    """The first exception of ``types`` in ``err``'s chain of causes and contexts."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, types):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__  # type: ignore[assignment]
    return None


if __name__ == "__main__":
    main()
