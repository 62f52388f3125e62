"""The ``handssl`` command line: ``handssl fit|validate|test|predict -c experiments/<x>.yaml``.

A :class:`~pytorch_lightning.cli.LightningCLI` with handssl's defaults:

* model and data are chosen by ``class_path`` (any :class:`~handssl.models.BaseHandTask` and any
  :class:`~handssl.data.datamodules.HandDataModule`, with the method's views under ``data.init_args.views``),
  configs may use omegaconf interpolation
  (``${model.init_args.optimizer.lr}``) resolved after all sources are merged;
* configs stack: ``-c experiments/model/X.yaml -c experiments/data/Y.yaml`` (later files override earlier ones),
  and a config's ``defaults:`` list names the files it stacks on; the model's ``image_size`` and
  ``eval_protocol`` follow the data (``link_arguments``), so data configs hold no model key;
* every run gets its own directory ``<runs_dir>/<run_name>/version_<n>/`` holding the resolved
  ``config.yaml``, CSV metrics, checkpoints and the wandb run (offline by default: no account, no
  network; ``--wandb online`` or ``WANDB_MODE=online`` sends it to a dashboard);
* ``handssl test`` writes ``test_metrics.json`` into the run directory, ``handssl predict`` writes
  ``predictions.jsonl`` and ``predictions.pt`` (see :mod:`handssl.callbacks.predictions`; ``--overlays true``
  adds one PNG per image with the predicted skeleton);
* ``--trainer.fast_dev_run`` smoke runs write only into ``<runs_dir>/<run_name>/fast_dev_run/`` and save no
  checkpoints or logs;
* handssl's models, DataModules and datasets may be named by class name alone (``--model=SemiHandModule``);
* a bad value in a config ends in one line ``handssl: error: ...`` and exit code 2 (``HANDSSL_DEBUG=1``
  shows the traceback);
* ``handssl data check DATASET --root PATH`` validates a dataset folder.
* ``handssl export --ckpt_path X --output model.onnx`` exports the inference network (needs ``handssl[export]``).
* ``handssl models [--markdown]`` lists the shipped networks (:mod:`handssl.zoo`).
* ``--ckpt_path`` also takes a shipped name (``semihand-synthhands``; see :mod:`handssl.pretrained`); with ``fit``
  it fine-tunes from the shipped weights (fresh optimizer, step 0) instead of resuming.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["main"]

SUBCOMMANDS = (
    ("fit", "Train a model (-c experiments/<x>.yaml; --test_after_fit true also tests it)."),
    ("validate", "Evaluate a checkpoint on the validation set."),
    ("test", "Evaluate a checkpoint on the test set (writes test_metrics.json)."),
    ("predict", "Predict with a checkpoint (writes predictions.jsonl; -c experiments/predict_images.yaml)."),
    ("export", "Export a checkpoint's inference network: export --ckpt_path X --format onnx."),
    ("models", "List the shipped networks (model zoo): models [--markdown]."),
    ("data check", "Check a dataset folder: data check DATASET --root PATH."),
)


def top_level_help() -> str:
    """``handssl --help``: every subcommand, answered without importing Lightning (it takes seconds)."""
    import handssl

    width = max(len(name) for name, _ in SUBCOMMANDS) + 2
    lines = [
        "usage: handssl [-h] [--version] {fit,validate,test,predict,export,models,data} ...",
        "",
        f"handssl {handssl.__version__}: semi-supervised 3D hand pose estimation (PyTorch Lightning command line).",
        "",
        "subcommands (`handssl SUBCOMMAND --help` lists a subcommand's options):",
        *(f"  {name:<{width}}{text}" for name, text in SUBCOMMANDS),
        "",
        "options:",
        "  -h, --help  Show this help message and exit.",
        "  --version   Print version and exit.",
        "",
        "Example: `handssl fit -c experiments/quickstart.yaml`; `handssl fit --help` for the training options,",
        "`handssl fit --model.help SupervisedModule` for a model's.",
    ]
    return "\n".join(lines)


def main(args: Any = None) -> None:
    """Run the handssl command line (``args`` defaults to ``sys.argv[1:]``)."""
    argv = list(sys.argv[1:] if args is None else args) if not isinstance(args, dict) else args
    if isinstance(argv, list) and argv in (["-h"], ["--help"]):
        print(top_level_help())
        sys.exit(0)
    if isinstance(argv, list) and argv[:1] == ["data"]:
        from handssl.data.check import main as data_main

        sys.exit(data_main(argv[1:]))
    if isinstance(argv, list) and argv[:1] == ["export"]:
        from handssl.export import main as export_main

        sys.exit(export_main(argv[1:]))
    if isinstance(argv, list) and argv[:1] == ["models"]:
        from handssl.zoo import main as models_main

        sys.exit(models_main(argv[1:]))
    from handssl._lightning_cli import main as lightning_main

    lightning_main(args)


def __getattr__(name: str) -> Any:
    # HandSSLCLI, TestMetricsWriter, ConfigError, ... live in handssl._lightning_cli (imports Lightning).
    if name.startswith("__"):  # import machinery probing (__path__, ...): not worth importing Lightning for
        raise AttributeError(f"module 'handssl.cli' has no attribute {name!r}")
    import handssl._lightning_cli as impl

    try:
        return getattr(impl, name)
    except AttributeError:
        raise AttributeError(f"module 'handssl.cli' has no attribute {name!r}") from None


if __name__ == "__main__":
    main()
