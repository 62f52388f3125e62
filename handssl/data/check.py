"""``handssl data check``: construct a dataset's splits, load a few samples of each, report the counts.

Usage::

    handssl data check rhd --root data/RHD_published_v2
    handssl data check stb --root data/STB --option camera=BB_left
    handssl data check panoptic --root data/panoptic --option hand=left

Each split is built with the dataset's own class; a split whose files are absent is reported as missing
(with the loader's message: the missing path and the expected layout); the first, middle and last sample of
every present split are loaded and validated with :func:`~handssl.data.base.check_sample`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from handssl.data.base import DatasetError, check_sample, require_path

__all__ = ["DATASETS", "DatasetSpec", "SplitReport", "check_dataset", "inspect_dataset", "main"]


@dataclass(frozen=True)
class DatasetSpec:
    """How to build each split of a dataset.

    Attributes:
        target: ``"module:Class"`` under :mod:`handssl.data`.
        split_key: Constructor argument that selects the split (``None`` for single-split datasets).
        splits: Split values, or a function of ``root`` that finds them (Panoptic sequences).
        needs_root: Whether the class takes a ``root`` argument.
    """

    target: str
    split_key: str | None
    splits: tuple[str, ...] | Callable[[Path], list[str]]
    needs_root: bool = True

    def load_class(self) -> type:
        """Import the dataset class."""
        module, name = self.target.split(":")
        return getattr(importlib.import_module(f"handssl.data.{module}"), name)


def _panoptic_sequences(root: Path) -> list[str]:
    from handssl.data.panoptic import PANOPTIC_LAYOUT, find_sequences

    require_path(root, "CMU Panoptic root folder", PANOPTIC_LAYOUT)
    return find_sequences(root)


DATASETS: dict[str, DatasetSpec] = {
    "rhd": DatasetSpec("rhd:RHD", "split", ("training", "evaluation")),
    "stb": DatasetSpec("stb:STB", "split", ("train", "test")),
    "dexter_object": DatasetSpec("dexter_object:DexterObject", None, ("test",)),
    "panoptic": DatasetSpec("panoptic:Panoptic", "sequences", _panoptic_sequences),
    "handdb": DatasetSpec("handdb:PanopticHandDB", "subset", ("panopticdb", "manual_train", "manual_test")),
    "freihand": DatasetSpec("freihand:FreiHAND", "split", ("training", "evaluation")),
    "synthhands": DatasetSpec(
        "synthhands.single_view:SynthHands", "split", ("train", "val", "test"), needs_root=False
    ),
}
"""The datasets ``check`` knows, by CLI name."""

_ALIASES = {"do": "dexter_object", "dexter+object": "dexter_object", "dexterobject": "dexter_object"}


@dataclass
class SplitReport:
    """Outcome for one split: its sample count, or why it is missing.

    Attributes:
        split: Split name.
        count: Number of samples (``None`` when the split is missing).
        error: The loader's message when the split is missing.
        checked: Indices of the samples that were loaded and validated.
        warnings: Warnings the loader emitted (e.g. skipped samples).
    """

    split: str
    count: int | None = None
    error: str | None = None
    checked: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _spec(name: str) -> tuple[str, DatasetSpec]:
    key = name.lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    return key, DATASETS[key]


def inspect_dataset(name: str, root: str | Path | None, **options: Any) -> list[SplitReport]:
    """Build every split of dataset ``name`` and validate a few samples of each; one report per split.

    A split whose construction raises :class:`DatasetError` (absent files) is reported as missing. A split
    that exists but whose samples fail to load or validate raises :class:`DatasetError` naming the split and
    the sample. Passing the split argument itself in ``options`` (e.g. ``split="test"``) checks only that.

    Args:
        name: Dataset name (see :data:`DATASETS`).
        root: Dataset root folder (ignored by SynthHands, which is procedural).
        **options: Extra constructor arguments for every split.
    """
    key, spec = _spec(name)
    if spec.needs_root and root is None:
        raise ValueError(f"dataset {key!r} needs a root folder")
    root_path = None if root is None else Path(root)
    if spec.split_key is not None and spec.split_key in options:
        splits = [options.pop(spec.split_key)]
    elif callable(spec.splits):
        if root_path is None:
            raise ValueError(f"dataset {key!r} needs a root folder to find its splits")
        splits = spec.splits(root_path)
        if not splits:
            from handssl.data.panoptic import PANOPTIC_LAYOUT

            raise DatasetError(
                f"no {key} sequence found under {root_path}\nExpected layout:\n{PANOPTIC_LAYOUT}"
            )
    else:
        splits = list(spec.splits)
    cls = spec.load_class()
    reports = []
    for split in splits:
        label = split if isinstance(split, str) else ",".join(map(str, split))
        report = SplitReport(label)
        kwargs = dict(options)
        if spec.needs_root:
            kwargs["root"] = root_path
        if spec.split_key is not None:
            kwargs[spec.split_key] = split
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                dataset = cls(**kwargs)
            except DatasetError as err:
                report.error = str(err)
            else:
                report.count = len(dataset)
                report.checked = sorted({0, report.count // 2, report.count - 1}) if report.count else []
                for index in report.checked:
                    where = f"{key} {label} sample {index}"
                    try:
                        sample = dataset[index]
                    except DatasetError as err:
                        raise DatasetError(f"{where}: {err}") from err
                    except Exception as err:
                        raise DatasetError(f"{where}: {type(err).__name__}: {err}") from err
                    check_sample(sample, where=where)
        report.warnings = [str(w.message) for w in caught]
        reports.append(report)
    return reports


def check_dataset(name: str, root: str | Path | None, **options: Any) -> dict[str, int]:
    """Check a dataset on disk: build each split, validate its first, middle and last samples.

    Args:
        name: ``rhd``, ``stb``, ``dexter_object``, ``panoptic``, ``handdb``, ``freihand`` or ``synthhands``.
        root: Dataset root folder (``None`` is fine for SynthHands).
        **options: Extra constructor arguments, e.g. ``camera="BB"`` for STB.

    Returns:
        Sample count per present split (missing splits are left out).

    Raises:
        DatasetError: When no split is usable (the message lists each split's missing path and the expected
            layout), or when a present split has a sample that fails to load or validate.
        ValueError: For an unknown dataset name.
    """
    reports = inspect_dataset(name, root, **options)
    counts = {r.split: r.count for r in reports if r.count is not None}
    if not counts:
        details = "\n\n".join(
            f"[{', '.join(splits)}] {error}" for error, splits in _group_errors(reports).items()
        )
        raise DatasetError(f"no usable split of {_spec(name)[0]} under {root}:\n\n{details}")
    return counts


def _group_errors(reports: list[SplitReport]) -> dict[str, list[str]]:
    """Missing splits grouped by their error message (a wrong root gives one message for all)."""
    groups: dict[str, list[str]] = {}
    for r in reports:
        if r.count is None:
            groups.setdefault(str(r.error), []).append(r.split)
    return groups


def _parse_option(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ValueError(f"--option expects key=value, got {text!r}")
    key, value = text.split("=", 1)
    if not key.isidentifier():
        raise ValueError(f"--option key must be an argument name, got {key!r}")
    try:
        parsed = yaml.safe_load(value) if value else value
    except yaml.YAMLError:
        parsed = value
    return key, parsed


def build_parser() -> argparse.ArgumentParser:
    """The ``handssl data check`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="handssl data check",
        description="Check that a dataset is on disk in the expected layout: build each split, load and "
        "validate its first, middle and last samples, print the sample counts.",
    )
    parser.add_argument("dataset", help=f"one of: {', '.join(sorted(DATASETS))}")
    parser.add_argument("--root", help="dataset root folder (not needed for synthhands)")
    parser.add_argument(
        "--option",
        "-o",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra constructor argument for every split (YAML value), e.g. camera=BB or hand=left; repeatable",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``handssl data check DATASET --root PATH [--option key=value ...]``; return the exit code.

    Prints a table of sample counts per split (missing splits with the reason). Exit code 0 when at least
    one split is usable, 2 (with the error message, no traceback) otherwise.

    Args:
        argv: Arguments (``sys.argv[1:]`` when ``None``); a leading ``"check"`` is accepted and skipped.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["check"]:
        argv = argv[1:]
    args = build_parser().parse_args(argv)
    try:
        options = dict(_parse_option(o) for o in args.option)
        key, _ = _spec(args.dataset)
        reports = inspect_dataset(key, args.root, **options)
    except (DatasetError, ValueError, TypeError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    width = max(len("split"), *(len(r.split) for r in reports))
    print(f"{key} ({args.root})" if args.root else key)
    print(f"  {'split':<{width}}  samples")
    for r in reports:
        print(f"  {r.split:<{width}}  {r.count if r.count is not None else 'missing'}")
    for r in reports:
        for message in r.warnings:
            print(f"note [{r.split}]: {message}")
    missing = [r for r in reports if r.count is None]
    for error, splits in _group_errors(missing).items():
        print(f"\nmissing [{', '.join(splits)}]: {error}", file=sys.stderr)
    if len(missing) == len(reports):
        print(f"\nerror: no usable split of {key}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
