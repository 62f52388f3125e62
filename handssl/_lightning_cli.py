"""The Lightning part of :mod:`handssl.cli` (imported only when a Lightning subcommand runs; see there)."""

from __future__ import annotations

import importlib
import itertools
import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Any, NoReturn

import pytorch_lightning as pl
import yaml
from jsonargparse import Namespace, set_parsing_settings
from lightning_fabric.plugins import CheckpointIO
from lightning_fabric.utilities.exceptions import MisconfigurationException
from omegaconf.errors import InterpolationResolutionError
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.cli import ArgsType, LightningArgumentParser, LightningCLI
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.loggers.logger import DummyLogger
from pytorch_lightning.utilities import rank_zero_info, rank_zero_only

import handssl
from handssl.callbacks.predictions import PredictionWriter
from handssl.checkpoint_io import (
    AtomicCheckpointIO,
    CheckpointReadError,
    CheckpointSaveError,
    read_checkpoint,
)
from handssl.data.base import DatasetError
from handssl.data.datamodules import HandDataModule
from handssl.models.base import BaseHandTask, NonFiniteError
from handssl.models.options import upgrade_hparams
from handssl.pretrained import PretrainedError, is_shipped, load_weights_into, resolve_ckpt_path
from handssl.run_dirs import RunCSVLogger, allocate_version, checkpoint_run_version, remove_if_disposable

WANDB_MODES = ("offline", "online", "disabled")
FAST_DEV_RUN_DIR = "fast_dev_run"

DESCRIPTION = "handssl: semi-supervised 3D hand pose estimation (PyTorch Lightning command line)."
EPILOG = (
    "other commands: `handssl data check DATASET --root PATH` checks a dataset folder "
    "(`handssl data check --help`); `handssl export --ckpt_path X --output model.onnx` writes a model's "
    "inference network as ONNX (`handssl export --help`). "
    "Example: `handssl fit -c experiments/quickstart.yaml`; `handssl SUBCOMMAND --help` lists its options."
)


#: ``model.init_args`` that follow the data through ``link_arguments`` (see ``HandSSLCLI.add_arguments_to_parser``).
LINKED_MODEL_ARGS = ("image_size", "eval_protocol")

#: The protocol of a dataset class that names none (root-relative wrist MPJPE / N-MPJPE / PA-MPJPE, AUC 20-50).
DEFAULT_EVAL_PROTOCOL = "synthhands"

#: The key of a config file that lists the config files it stacks on (see :func:`expand_config_defaults`).
DEFAULTS_KEY = "defaults"


#: The command line as given (before ``defaults:`` expansion), to say where an unknown option came from.
SOURCE_ARGS: ContextVar[tuple[str, ...]] = ContextVar("handssl_source_args", default=())

#: Exit code of ``handssl predict`` when some items were skipped (their predictions are missing).
PARTIAL_EXIT_CODE = 3

#: Environment variable through which DDP ranks started by Lightning learn rank 0's run version.
RUN_VERSION_ENV = "HANDSSL_RUN_VERSION"

#: Run folders this process created (removed by ``main`` when the command fails before writing into them).
STARTED_RUN_DIRS: list[Path] = []


class ConfigError(ValueError):
    """A config value was rejected while building the model, data or trainer (shown as one line)."""


def data_eval_protocol(data: Any) -> str:
    """The evaluation protocol a DataModule config's data asks for: its test set's (else validation set's).

    Every handssl dataset class names its protocol in ``eval_protocol`` (``RHD.eval_protocol == "rhd"``, see
    :mod:`handssl.metrics.protocols`); a split given as a list (concatenated datasets) is named by its
    first dataset. DataModules with no test or validation dataset (their SynthHands defaults) and dataset
    classes that name none get :data:`DEFAULT_EVAL_PROTOCOL`.

    Args:
        data: The ``data`` config (``class_path`` and ``init_args``), as a namespace or a mapping.

    Returns:
        A protocol name, e.g. ``"stb"``.
    """
    init_args = _field(data, "init_args")
    for split in ("test", "val"):
        spec = _field(init_args, split)
        for item in spec if isinstance(spec, (list, tuple)) else [spec]:
            class_path = _field(item, "class_path")
            if isinstance(class_path, str):
                return str(getattr(_import_class(class_path), "eval_protocol", DEFAULT_EVAL_PROTOCOL))
    return DEFAULT_EVAL_PROTOCOL


def _field(obj: Any, key: str) -> Any:
    if isinstance(obj, Namespace):
        return obj.get(key)
    if isinstance(obj, Mapping):
        return obj.get(key)
    return None


def _import_class(class_path: str) -> Any:
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None  # jsonargparse names a wrong class_path itself


def apply_explicit_model_args(
    cfg: Namespace, explicit: Mapping[str, Any], checkpoint_hparams: Mapping[str, Any] | None = None
) -> None:
    """Check and restore the linked model arguments that were given explicitly (after the links ran).

    ``image_size`` must equal the data's: the model's network is built for the crops the data delivers, so
    a model config, an option or a checkpoint (``--ckpt_path``, whose hyper-parameters rebuild the model)
    asking for another size is a config error. An explicit ``eval_protocol`` wins over the one the data names
    (e.g. to score Panoptic with another protocol); a checkpoint's does not (the data being tested decides).

    Args:
        cfg: The parsed config of the subcommand (``model``, ``data``, ``ckpt_path``, ...).
        explicit: ``model.init_args`` values given by a config or the command line.
        checkpoint_hparams: The hyper-parameters of ``--ckpt_path``'s checkpoint, if any.

    Raises:
        ConfigError: The model's ``image_size`` (explicit or the checkpoint's) differs from the data's.
    """
    init_args = cfg.get("model.init_args")
    if not isinstance(init_args, Namespace):
        return
    data_size = cfg.get("data.init_args.image_size")
    sizes = (
        ("the checkpoint's hyper-parameters", (checkpoint_hparams or {}).get("image_size")),
        ("a config or the command line", explicit.get("image_size")),
    )
    for source, model_size in sizes:
        if (
            "image_size" in init_args
            and model_size is not None
            and data_size is not None
            and model_size != data_size
        ):
            raise ConfigError(
                f"model.init_args.image_size {model_size} (from {source}) differs from "
                f"data.init_args.image_size {data_size}: the model's image_size follows the data's, so set "
                f"--data.init_args.image_size={model_size}"
            )
    if explicit.get("eval_protocol") is not None:
        init_args["eval_protocol"] = explicit["eval_protocol"]


def checkpoint_hparams(path: str | os.PathLike | None) -> dict[str, Any]:
    """The hyper-parameters stored in a Lightning checkpoint (``{}`` without one); tensors are not read."""
    if not path or not Path(path).is_file():
        return {}
    ckpt = read_checkpoint(path, weights_only=True)
    hparams = ckpt.get("hyper_parameters", {})
    return dict(hparams) if isinstance(hparams, Mapping) else {}


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

    #: Where :class:`HandSSLCLI` collects the linked ``model.init_args`` values (:data:`LINKED_MODEL_ARGS`) that
    #: a config, the command line or a checkpoint gave explicitly, before the links overwrite them.
    explicit_model_args: dict[str, Any] | None = None

    #: The classes whose arguments this parser was given (a class_path's own parser: that class only).
    signature_classes: tuple[type, ...] = ()

    def add_class_arguments(self, theclass: Any, *args: Any, **kwargs: Any) -> Any:
        self.signature_classes = (*self.signature_classes, theclass)
        return super().add_class_arguments(theclass, *args, **kwargs)

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if os.environ.get("HANDSSL_DEBUG"):
            super().error(message, ex)
        line = one_line_parse_error(message)
        unknown = re.search(r"Option '([^']+)' is not accepted", line)
        moved = moved_argument(unknown.group(1), self.signature_classes) if unknown else None
        owner = moved[0].__name__ if moved else None
        where = locate_option(unknown.group(1), list(SOURCE_ARGS.get()), owner) if unknown else None
        if where:
            line = f"{where}: {line.split(': ', 1)[-1] if line.startswith(where) else line}"
        if unknown and moved:
            line = line.replace(unknown.group(0), moved[1])
        print(f"handssl: error: {line}", file=sys.stderr)
        sys.exit(2)

    def _parse_common(self, cfg: Namespace, *args: Any, **kwargs: Any) -> Namespace:
        # jsonargparse's one step between merging every source (config files, command line, checkpoint
        # hyper-parameters) and applying the parse links: the last place where a linked model argument
        # that was given explicitly can be told apart from the one the link computes.
        sink = self.explicit_model_args
        if sink is not None and isinstance(cfg, Namespace) and isinstance(cfg.get("model"), Namespace):
            init_args = cfg.get("model.init_args")
            sink.clear()
            if isinstance(init_args, Namespace):
                sink.update({key: init_args[key] for key in LINKED_MODEL_ARGS if key in init_args})
        try:
            return super()._parse_common(cfg, *args, **kwargs)
        except InterpolationResolutionError as err:
            # omegaconf resolves ${...} here, after every source was merged; its error is a long traceback.
            # Raised, not self.error(): jsonargparse retries some parses internally (a training config's
            # datasets under another DataModule), and only an error that reaches main() is the user's.
            key = str(getattr(err, "full_key", "") or "").split(".", 1)[-1]  # without the subcommand
            message = str(getattr(err, "msg", err)).splitlines()[0]
            # handssl turns absolute ${a.b} into relative paths (${.a.b}) for omegaconf; show the user's.
            missing = re.match(r"Interpolation key '\.*([^']+)' not found", message)
            if missing:
                message = f"interpolation ${{{missing.group(1)}}} names a key that is not in the config"
            raise ConfigError(f"{key}: {message}" if key else message) from err


def moved_argument(option: str, classes: Sequence[type]) -> tuple[type, str] | None:
    """The class among ``classes`` that no longer takes ``option``, and where the option went.

    A class lists such arguments in a ``moved_arguments`` mapping (name -> the new place, as YAML), e.g.
    the SynthHands datasets' world arguments; the parse error then says where the argument went instead of
    only that it is not accepted.

    Returns:
        ``(SynthHands, "SynthHands: `style` moved to `world: {...}`")``, or ``None``.
    """
    for cls in classes:
        moved = getattr(cls, "moved_arguments", None)
        if isinstance(moved, Mapping) and option in moved:
            return cls, f"{cls.__name__}: `{option}` moved to `{moved[option]}`"
    return None


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
        default_run_name: Run name used when ``--run_name`` is not given (``main`` passes the config files'
            stems joined by ``+``).
        **kwargs: Passed to :class:`~pytorch_lightning.cli.LightningCLI`.
    """

    def __init__(self, *args: Any, default_run_name: str | None = None, **kwargs: Any) -> None:
        self.default_run_name = default_run_name
        self.explicit_model_args: dict[str, Any] = {}
        super().__init__(*args, **kwargs)

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        parser = super().init_parser(**kwargs)
        parser.explicit_model_args = self.explicit_model_args  # type: ignore[attr-defined]
        return parser

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # Values that must agree between data and model are written once, on the data side, so that a model
        # config stacks on any data config (`-c experiments/model/X.yaml -c experiments/data/Y.yaml`): the
        # network's input side is the data's, and the test set's datasets name their evaluation protocol.
        # A model without the argument (SupervisedModule has no image_size) is left alone.
        parser.link_arguments("data.init_args.image_size", "model.init_args.image_size", apply_on="parse")
        parser.link_arguments(
            "data", "model.init_args.eval_protocol", compute_fn=data_eval_protocol, apply_on="parse"
        )
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
            "--strict",
            type=bool,
            default=False,
            help="predict: stop at the first unreadable image (default: skip it, name it, predict the others "
            f"and exit with code {PARTIAL_EXIT_CODE}).",
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

    def _parse_ckpt_path(self) -> None:
        # ``--ckpt_path semihand-synthhands`` names shipped weights (handssl.pretrained): Lightning reads the
        # model's class and hyper-parameters from their materialised checkpoint, the saved config keeps the name.
        subcommand = self.config.get("subcommand")
        value = self.config[subcommand].get("ckpt_path") if subcommand else None
        try:
            path = resolve_ckpt_path(value)
        except PretrainedError as err:
            raise ConfigError(str(err)) from None
        if not (subcommand and path and Path(path).is_file()):
            return
        # Lightning's own _parse_ckpt_path, reading a damaged file as one line and the flat arguments of
        # checkpoints written before the option groups (lr=..., ema_decay=...) into their groups.
        checkpoint = read_checkpoint(path, weights_only=True)
        hparams = upgrade_hparams(checkpoint.get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        try:
            self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)
        except SystemExit:
            sys.stderr.write("Parsing of ckpt_path hyperparameters failed!\n")
            raise

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict[str, Any]:
        kwargs = super()._prepare_subcommand_kwargs(subcommand)
        name = kwargs.get("ckpt_path")
        if is_shipped(name):
            if subcommand == "fit":
                # Fine-tuning, not resuming: the shipped weights, then step 0 with a fresh optimizer.
                load_weights_into(self.model, name)
                kwargs["ckpt_path"] = None
            else:
                kwargs["ckpt_path"] = resolve_ckpt_path(name)
        return kwargs

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        # Lightning merged --ckpt_path's hyper-parameters into the config before the data links overwrote the
        # model's image_size: read the checkpoint's own value to check it.
        hparams = checkpoint_hparams(resolve_ckpt_path(cfg.get("ckpt_path")))
        apply_explicit_model_args(cfg, self.explicit_model_args, hparams)
        model_class = _import_class(str(cfg.get("model.class_path") or ""))
        if self.subcommand in ("predict", "test", "validate") and model_class is BaseHandTask:
            # The config names no model (predict_images.yaml): it comes from the checkpoint.
            raise ConfigError(
                f"{self.subcommand} needs --ckpt_path: a checkpoint written by handssl fit, or a shipped name "
                "(handssl models lists them); the model is rebuilt from it"
            )

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, TypeError) as err:
            if _find_cause(err, (DatasetError, NonFiniteError, ConfigError)) is not None:
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

    def _run_version(self, root: Path) -> int:
        """The ``version_<n>`` this command writes into (created here on rank 0; see :mod:`handssl.run_dirs`).

        ``fit --ckpt_path`` with a checkpoint of one of ``root``'s runs continues in that run's folder;
        otherwise a new version is taken atomically. DDP ranks started by Lightning inherit rank 0's choice.
        """
        if getattr(rank_zero_only, "rank", 0) > 0 and RUN_VERSION_ENV in os.environ:
            return int(os.environ[RUN_VERSION_ENV])
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        ckpt_path = cfg.get("ckpt_path") if self.subcommand == "fit" else None
        version = checkpoint_run_version(ckpt_path, root)
        if version is not None:
            rank_zero_info(f"handssl: resuming in the checkpoint's run folder {root / f'version_{version}'}")
        else:
            try:
                version = allocate_version(root)
            except OSError as err:
                raise ConfigError(
                    f"--runs_dir: cannot create a run folder in {root}: {err.strerror or err}"
                ) from err
            STARTED_RUN_DIRS.append(root / f"version_{version}")
            if ckpt_path and Path(str(ckpt_path)).is_file():
                rank_zero_info(
                    f"handssl: resuming from {ckpt_path} in a new run folder {root / f'version_{version}'} "
                    f"(the checkpoint is not in a run folder of {root})"
                )
        os.environ[RUN_VERSION_ENV] = str(version)
        return version

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
            version = self._run_version(Path(opts["runs_dir"]) / opts["name"])
            csv = RunCSVLogger(save_dir=opts["runs_dir"], name=opts["name"], version=version)
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
        plugins = trainer_cfg.get("plugins")
        plugins = (
            [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        )
        if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):
            # Checkpoints written beside their target and renamed: a kill or a full disk never leaves a
            # half-written last.ckpt (Lightning's own writer copies across filesystems into the target).
            kwargs.setdefault("plugins", [*plugins, AtomicCheckpointIO()])
        try:
            trainer = super().instantiate_trainer(**kwargs)
        except MisconfigurationException as err:
            accelerator = str({**trainer_cfg, **kwargs}.get("accelerator", ""))
            hint = (
                ": this machine has none; use --trainer.accelerator=cpu (or leave out experiments/trainer/gpu.yaml)"
                if accelerator in ("gpu", "cuda", "mps", "tpu") and "found" in str(err)
                else ""
            )
            raise ConfigError(f"trainer: {err}{hint}") from err
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        if cfg.get("overlays"):
            for callback in getattr(trainer, "callbacks", []):  # set by Lightning at runtime, untyped
                if isinstance(callback, PredictionWriter):
                    callback.overlays = True
        if cfg.get("strict"):
            for dataset in getattr(self.datamodule, "datasets", {}).values():
                if hasattr(dataset, "skip_unreadable"):
                    dataset.skip_unreadable = False
        if fast_dev_run:
            # Lightning skips checkpoints in a fast_dev_run except ``save_last`` at train end.
            for callback in trainer.checkpoint_callbacks:
                if isinstance(callback, ModelCheckpoint):
                    callback.save_last = False
        return trainer

    def after_predict(self) -> None:
        for callback in getattr(self.trainer, "callbacks", []):
            if isinstance(callback, PredictionWriter) and callback.skipped:
                sys.exit(
                    PARTIAL_EXIT_CODE
                )  # the predictions are written; the exit code says some are missing

    def after_fit(self) -> None:
        cfg = self.config[self.subcommand]
        if not cfg.get("test_after_fit"):
            return
        ckpt = self.trainer.checkpoint_callback
        best = getattr(ckpt, "best_model_path", "") if ckpt is not None else ""
        ckpt_path = "best" if best else None
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt_path)


def _config_args(argv: list[str]) -> list[tuple[int, int, str]]:
    """``(start, stop, value)`` of every ``-c X`` / ``--config X`` / ``--config=X`` in ``argv``."""
    found = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-c", "--config") and i + 1 < len(argv):
            found.append((i, i + 2, argv[i + 1]))
            i += 2
            continue
        if isinstance(arg, str) and arg.startswith("--config="):
            found.append((i, i + 1, arg.split("=", 1)[1]))
        i += 1
    return found


def _config_stem(argv: Any) -> str | None:
    """The default run name: the stems of the ``-c/--config`` files in ``argv``, joined by ``+``.

    ``-c experiments/quickstart.yaml`` runs as ``quickstart``; ``-c experiments/model/semihand.yaml -c
    experiments/data/rhd_to_stb.yaml`` as ``semihand+rhd_to_stb``.
    """
    if not isinstance(argv, list):
        return None
    stems = [
        Path(value).stem for _, _, value in _config_args(argv) if Path(value).suffix in (".yaml", ".yml")
    ]
    return "+".join(stems) or None


def expand_config_defaults(argv: list[str]) -> list[str]:
    """Stack config files the way lightning-hydra-template's experiment configs do, before parsing.

    A config file may start with ``defaults:``, a list of config files (relative to that file) that it stacks
    on. ``-c X`` becomes ``-c <each default, expanded the same way> -c <X without its defaults key>``, so X's
    own values override its defaults and later ``-c`` files and command-line options override X, e.g.
    ``experiments/semihand_full_rhd_stb.yaml``::

        defaults: [model/semihand.yaml, data/rhd_to_stb.yaml]
        model:
          init_args: {optimizer: {lr: 1.0e-4}}

    The config files of one command must not name unrelated DataModules: the shipped configs all name
    :class:`~handssl.data.datamodules.HandDataModule` (the model config its views, the data config its
    datasets; whether the views can use the datasets is the views' check), but configs written before name its
    earlier forms, and two of those (``SemiSupervisedDataModule`` with ``MultiViewDataModule``) are refused
    here, where jsonargparse would silently drop the first one's settings. A subclass may replace its base
    (``predict_images.yaml``).

    Args:
        argv: Command-line arguments.

    Returns:
        ``argv`` with every ``-c`` file that has ``defaults`` replaced by its expansion.

    Raises:
        ConfigError: A ``defaults`` entry is not a list of paths, names a missing file, or the files form a
            cycle; or two config files name unrelated DataModules.
    """
    out: list[str] = []
    data_classes: list[tuple[Path, str]] = []
    position = 0
    for start, stop, value in _config_args(argv):
        out += argv[position:start]
        out += _expand_config(value, (), data_classes)
        position = stop
    _check_data_classes(data_classes)
    return out + argv[position:]


def _expand_config(value: str, chain: tuple[Path, ...], data_classes: list[tuple[Path, str]]) -> list[str]:
    path = Path(value)
    if "\n" in value or path.suffix.lower() not in (".yaml", ".yml") or not path.is_file():
        return ["-c", value]  # a config string, or a missing file: jsonargparse reports it
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in (*chain, resolved))
        raise ConfigError(f"config defaults form a cycle: {cycle}")
    try:
        content = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(yaml_error_line(path, err)) from err
    if not isinstance(content, dict):
        return ["-c", value]
    has_defaults = DEFAULTS_KEY in content
    defaults = content.pop(DEFAULTS_KEY, [])
    if isinstance(defaults, str):
        defaults = [defaults]
    if not isinstance(defaults, list) or not all(isinstance(d, str) for d in defaults):
        raise ConfigError(f"{path}: {DEFAULTS_KEY} must be a list of config files, got {defaults!r}")
    expanded: list[str] = []
    for default in defaults:
        target = path.parent / default
        if not target.is_file():
            raise ConfigError(f"{path}: {DEFAULTS_KEY} names {default}, but {target} does not exist")
        expanded += _expand_config(str(target), (*chain, resolved), data_classes)
    data = content.get("data")
    class_path = data.get("class_path") if isinstance(data, dict) else data
    if isinstance(class_path, str):
        data_classes.append((path, class_path if "." in class_path else f"handssl.data.{class_path}"))
    if not has_defaults:
        return ["-c", value]
    if content:
        # The file's own keys, without ``defaults``, as a config string (jsonargparse takes either).
        expanded += ["-c", yaml.safe_dump(content, sort_keys=False)]
    return expanded


def locate_option(option: str, argv: list[str], owner: str | None = None) -> str | None:
    """Where an option jsonargparse refused was given (``None``: not found).

    ``--a.b.option`` on the command line, or ``<file>: a.b.option`` in a ``-c`` file or a file its
    ``defaults:`` stack on. With ``owner`` (a class name), only an option in the ``init_args`` of a
    ``class_path`` naming that class counts in a file (the same name may be a valid key elsewhere).
    """
    for arg in argv:
        name = arg.split("=", 1)[0] if isinstance(arg, str) else ""
        if name.startswith("--") and name.rsplit(".", 1)[-1] == option:
            return name
    for _, _, value in _config_args(argv):
        found = _find_key_in_config(Path(value), option, set(), owner)
        if found:
            return found
    return None


def _find_key_in_config(path: Path, option: str, seen: set[Path], owner: str | None = None) -> str | None:
    if path.suffix.lower() not in (".yaml", ".yml") or not path.is_file() or path.resolve() in seen:
        return None
    seen.add(path.resolve())
    try:
        content = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, OSError):
        return None
    if not isinstance(content, dict):
        return None
    defaults = content.get(DEFAULTS_KEY, [])
    for default in (
        [defaults] if isinstance(defaults, str) else defaults if isinstance(defaults, list) else []
    ):
        found = _find_key_in_config(path.parent / str(default), option, seen, owner)
        if found:
            return found
    # (dotted key, node, class name whose init_args the node is)
    stack: list[tuple[str, Any, str | None]] = [("", content, None)]
    while stack:
        prefix, node, node_class = stack.pop()
        if isinstance(node, dict):
            class_path = node.get("class_path")
            for key, value in node.items():
                dotted = f"{prefix}.{key}" if prefix else str(key)
                if key == option and prefix and (owner is None or node_class == owner):
                    return f"{path}: {dotted}"
                held = str(class_path).rpartition(".")[2] if key == "init_args" and class_path else None
                stack.append((dotted, value, held))
    return None


def yaml_error_line(path: Path, err: yaml.YAMLError) -> str:
    """``'<file>:<line>:<column>: <problem> (<context>)'`` for a YAML syntax error in a config file."""
    mark = getattr(err, "problem_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    context = getattr(err, "context", None)
    return f"{where}: YAML syntax error: {problem}" + (f" ({context})" if context else "")


def _check_data_classes(data_classes: list[tuple[Path, str]]) -> None:
    """Refuse config files that name unrelated DataModules (see :func:`expand_config_defaults`)."""
    for (first, first_class), (second, second_class) in itertools.pairwise(data_classes):
        a, b = _import_class(first_class), _import_class(second_class)
        if not (isinstance(a, type) and isinstance(b, type)) or issubclass(a, b) or issubclass(b, a):
            continue
        raise ConfigError(
            f"{first} trains on {a.__name__} but {second} gives a {b.__name__}: stack a model config on "
            f"data configs of its kind (experiments/data/*.yaml whose data.class_path is {a.__name__})"
        )


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
            "learning-rate schedule; set --model.init_args.optimizer.lr (or .weight_decay, .scheduler, "
            ".warmup_steps) instead",
            file=sys.stderr,
        )
        sys.exit(2)
    STARTED_RUN_DIRS.clear()
    try:
        make_cli(argv)
    except BaseException as err:
        for run_dir in STARTED_RUN_DIRS:  # a failed start leaves no empty run folder behind
            remove_if_disposable(run_dir)
        if not isinstance(err, (ValueError, FloatingPointError, OSError)):
            raise
        # jsonargparse wraps errors raised while instantiating datasets; show the dataset's own message.
        cause = _find_cause(
            err, (DatasetError, NonFiniteError, ConfigError, CheckpointSaveError, CheckpointReadError)
        )
        if cause is None or os.environ.get("HANDSSL_DEBUG"):
            raise
        print(f"handssl: error: {worker_message(cause)}", file=sys.stderr)
        sys.exit(2)


def make_cli(args: list[str] | dict[str, Any], run: bool = True) -> HandSSLCLI:
    """Build handssl's :class:`HandSSLCLI` on ``args`` (after :func:`expand_config_defaults`), and run it.

    Args:
        args: Command-line arguments, e.g. ``["fit", "-c", "experiments/quickstart.yaml"]``; with
            ``run=False`` no subcommand, e.g. ``["-c", "experiments/model/semihand.yaml", "-c", ...]``.
        run: Run the subcommand; ``False`` only parses and builds model, data and trainer (``cli.model``,
            ``cli.datamodule``, ``cli.config``), which is how the tests look at a composed config.

    Returns:
        The CLI, after its subcommand ran (``run=True``).

    Raises:
        ConfigError: A config is inconsistent (see :func:`expand_config_defaults`, :func:`apply_explicit_model_args`).
    """
    default_run_name = _config_stem(args)
    # Nested parsers (a class_path's own) report unknown options; they see the command line through this.
    SOURCE_ARGS.set(tuple(args) if isinstance(args, list) else ())
    if isinstance(args, list):
        args = expand_config_defaults(args)
    _import_registered_classes()
    # Configs say ${data.init_args.image_size}; in omegaconf+ mode the merged config is rooted at the
    # subcommand, so absolute paths must be turned into relative ones to resolve.
    set_parsing_settings(omegaconf_absolute_to_relative_paths=True)
    return HandSSLCLI(
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
        args=args,
        run=run,
        default_run_name=default_run_name,
    )


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


def worker_message(err: BaseException) -> str:
    """``err``'s own message, also when a DataLoader worker raised it.

    torch re-raises a worker's exception in the main process with the worker's whole traceback as its
    message (``Caught DatasetError in DataLoader worker process 0. Original Traceback ...``); the last line
    holds the original ``<type>: <message>``.
    """
    text = str(err)
    if "Original Traceback" not in text:
        return text
    last = [line for line in text.strip().splitlines() if line.strip()][-1].strip()
    return re.sub(r"^[\w.]+(Error|Exception): ", "", last)


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
