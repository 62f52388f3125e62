"""Run folders ``<runs_dir>/<run name>/version_<n>/``: allocated atomically, continued on resume, tidied on failure.

Lightning's ``CSVLogger`` picks the next ``version_<n>`` by listing the folder and creates it later with
``exist_ok=True``, so two runs started together with one name share ``version_0``; and a logger given an
existing version deletes its ``metrics.csv``. Here a version is taken by ``os.mkdir``, which only one process
can win, and :class:`RunCSVLogger` continues an existing ``metrics.csv`` when a run resumes in its own folder.
"""

from __future__ import annotations

import contextlib
import csv
import os
import re
import shutil
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment

VERSION_PATTERN = re.compile(r"version_(\d+)")

#: What a run folder may hold and still count as empty (a failed start): the saved config, Lightning's
#: hyper-parameters file and wandb's run files.
DISPOSABLE = ("config.yaml", "hparams.yaml", "wandb")


def existing_versions(root: str | os.PathLike) -> list[int]:
    """The ``n`` of every ``version_<n>`` folder in ``root`` (sorted; ``[]`` when ``root`` does not exist)."""
    folder = Path(root)
    if not folder.is_dir():
        return []
    found = (VERSION_PATTERN.fullmatch(p.name) for p in folder.iterdir() if p.is_dir())
    return sorted(int(m.group(1)) for m in found if m)


def allocate_version(root: str | os.PathLike, attempts: int = 1000) -> int:
    """Create ``root/version_<n>`` for the next free ``n`` and return ``n``; concurrent callers get distinct ones.

    ``os.mkdir`` either creates the folder or fails because it exists, atomically, so of two processes that
    pick the same ``n`` exactly one gets it and the other tries ``n + 1``.

    Args:
        root: The run name's folder (created when missing).
        attempts: Versions to try before giving up.

    Raises:
        OSError: ``root`` cannot be created or written (e.g. no permission), or no version was free.
    """
    folder = Path(root)
    folder.mkdir(parents=True, exist_ok=True)
    versions = existing_versions(folder)
    version = versions[-1] + 1 if versions else 0
    for _ in range(attempts):
        try:
            os.mkdir(folder / f"version_{version}")
        except FileExistsError:
            version += 1
            continue
        return version
    raise OSError(f"no free version_<n> folder in {folder} after {attempts} attempts")


def checkpoint_run_version(ckpt_path: str | os.PathLike | None, root: str | os.PathLike) -> int | None:
    """``n`` when ``ckpt_path`` lies in ``root/version_<n>/checkpoints/`` (a run of this name), else ``None``."""
    if not ckpt_path:
        return None
    path = Path(ckpt_path)
    if not path.is_file():
        return None
    checkpoints = path.resolve().parent
    match = VERSION_PATTERN.fullmatch(checkpoints.parent.name)
    if checkpoints.name != "checkpoints" or match is None:
        return None
    if checkpoints.parent.parent != Path(root).resolve():
        return None
    return int(match.group(1))


def is_disposable(run_dir: str | os.PathLike) -> bool:
    """Whether ``run_dir`` holds nothing but what a start writes (:data:`DISPOSABLE`, empty folders)."""
    folder = Path(run_dir)
    if not folder.is_dir():
        return False
    for path in folder.rglob("*"):
        relative = path.relative_to(folder)
        if path.is_file() and relative.parts[0] not in DISPOSABLE:
            return False
    return True


def remove_if_disposable(run_dir: str | os.PathLike) -> bool:
    """Remove ``run_dir`` when :func:`is_disposable` (a run that failed before writing anything of its own)."""
    if not is_disposable(run_dir):
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    with contextlib.suppress(OSError):  # the run name's folder too, when this was its only run
        Path(run_dir).parent.rmdir()
    return not Path(run_dir).exists()


def drop_rows_from_step(metrics_csv: str | os.PathLike, first_step: int) -> int:
    """Remove the rows of a Lightning ``metrics.csv`` whose ``step`` is ``first_step`` or later.

    A run resumed from a checkpoint logs those steps again; the rows the stopped run wrote after its
    checkpoint would otherwise appear twice.

    Returns:
        The number of rows removed.
    """
    path = Path(metrics_csv)
    with open(path, newline="") as file:
        reader = csv.DictReader(file)
        fields = list(reader.fieldnames or [])
        rows = list(reader)
    keep = [row for row in rows if not _step_at_least(row.get("step"), first_step)]
    if len(keep) == len(rows):
        return 0
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=fields)
        writer.writeheader()
        writer.writerows(keep)
    return len(rows) - len(keep)


def _step_at_least(value: str | None, first_step: int) -> bool:
    try:
        return value is not None and int(float(value)) >= first_step
    except ValueError:
        return False


class ContinuingExperimentWriter(ExperimentWriter):
    """Lightning's CSV writer that continues an existing ``metrics.csv`` instead of deleting it.

    The existing header is kept; rows from the first step this run logs onwards are dropped (see
    :func:`drop_rows_from_step`) at the first write.
    """

    def _check_log_dir_exists(self) -> None:
        self._pending_trim = os.path.isfile(self.metrics_file_path)
        if self._pending_trim:
            with open(self.metrics_file_path, newline="") as file:
                self.metrics_keys = sorted(csv.DictReader(file).fieldnames or [])

    def save(self) -> None:
        if getattr(self, "_pending_trim", False) and self.metrics:
            self._pending_trim = False
            steps = [int(m["step"]) for m in self.metrics if "step" in m]
            if steps:
                drop_rows_from_step(self.metrics_file_path, min(steps))
        super().save()


class RunCSVLogger(CSVLogger):
    """``CSVLogger`` for a given (allocated or resumed) version: an existing ``metrics.csv`` is continued."""

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        if self._experiment is not None:
            return self._experiment
        self._fs.makedirs(self.root_dir, exist_ok=True)
        self._experiment = ContinuingExperimentWriter(log_dir=self.log_dir)
        return self._experiment
