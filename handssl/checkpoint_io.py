"""Checkpoint files that are either the old one or the new one, never half of either, on any filesystem.

Lightning's own writer serialises a checkpoint into memory, then lets fsspec write it into a temporary file in
``$TMPDIR`` and *move* it onto the target: across filesystems (``runs/`` on another disk than ``/tmp``) the move
is a copy into the target itself, so a kill or a full disk during it leaves the previous ``last.ckpt`` empty or
truncated, and a temporary copy behind in ``/tmp``. :class:`AtomicCheckpointIO` (installed by the ``handssl``
command line) writes beside the target and renames; :func:`atomic_write_checkpoint` is the pure part.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

#: Marks the temporary files of :func:`atomic_write_checkpoint`: ``.<name>.<TMP_MARK>-<pid>-<hex>``.
TMP_MARK = "handssl-tmp"


class CheckpointSaveError(OSError):
    """A checkpoint could not be written; the previous file at that path (if any) is unchanged.

    ``errno`` is the failure's (``ENOSPC`` for a full disk); ``str()`` is the message alone.
    """

    def __str__(self) -> str:
        return str(self.strerror)


def atomic_write_checkpoint(checkpoint: Any, path: str | os.PathLike) -> None:
    """Write ``checkpoint`` with :func:`torch.save` to ``path`` so that ``path`` is never a partial file.

    The bytes go to a temporary file in the target's folder (same filesystem), are flushed and ``fsync``-ed,
    and the file is then renamed onto ``path`` with :func:`os.replace` (atomic on POSIX and Windows); the
    folder is ``fsync``-ed too, so the rename survives a power cut. Until the rename the previous file stays
    as it was. On failure the temporary file is removed; temporary files left by killed processes in the same
    folder are removed on the next write.

    Args:
        checkpoint: Anything :func:`torch.save` accepts.
        path: The target file; its folder is created.

    Raises:
        CheckpointSaveError: The folder or the file cannot be written (no space, no permission, ...); the
            message names the path and the reason.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CheckpointSaveError(
            err.errno or errno.EIO, f"cannot create the checkpoint folder {target.parent}: {_reason(err)}"
        ) from err
    remove_stale_temporaries(target.parent)
    tmp = target.parent / f".{target.name}.{TMP_MARK}-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        with open(tmp, "wb") as file:
            torch.save(checkpoint, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, target)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(err, OSError):
            raise CheckpointSaveError(
                err.errno or errno.EIO,
                f"cannot save checkpoint {target}: {_reason(err)} (the previous file, if any, is unchanged)",
            ) from err
        raise
    _fsync_folder(target.parent)


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files of :func:`atomic_write_checkpoint` in ``folder`` whose writer is gone.

    A file whose process id is still running (another run writing into the same folder) is kept.

    Returns:
        The files removed.
    """
    removed = []
    for tmp in Path(folder).glob(f".*.{TMP_MARK}-*"):
        pid_text = tmp.name.rsplit(f".{TMP_MARK}-", 1)[-1].split("-", 1)[0]
        if not pid_text.isdigit() or _process_alive(int(pid_text)):
            continue
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed.append(tmp)
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _fsync_folder(folder: Path) -> None:
    # Makes the rename durable; not possible on every platform (Windows) or filesystem, and not needed for
    # atomicity, so failures are ignored.
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _reason(err: OSError) -> str:
    return err.strerror or str(err) or type(err).__name__


class CheckpointReadError(ValueError):
    """A checkpoint file cannot be read (empty, truncated, not a checkpoint); the message names the file."""


def read_checkpoint(path: str | os.PathLike, weights_only: bool = False) -> dict[str, Any]:
    """Load a checkpoint file on the CPU, memory-mapped where possible, or say in one line why it cannot be.

    Args:
        path: The checkpoint file.
        weights_only: Passed to :func:`torch.load`.

    Returns:
        The checkpoint dict (tensors memory-mapped from the file when it is in torch's zip format).

    Raises:
        CheckpointReadError: The file is missing, empty, truncated or not a torch checkpoint holding a dict.
    """
    target = Path(path)
    if not target.is_file():
        raise CheckpointReadError(f"checkpoint not found: {target}")
    size = target.stat().st_size
    if size == 0:
        raise CheckpointReadError(f"checkpoint {target} is empty (0 bytes): a save that never finished?")
    try:
        try:
            checkpoint = torch.load(target, map_location="cpu", weights_only=weights_only, mmap=True)
        except RuntimeError as err:
            if "zip" not in str(err).lower() or _is_zip(target):
                raise
            # A legacy (non-zip) torch file cannot be memory-mapped: read it whole.
            checkpoint = torch.load(target, map_location="cpu", weights_only=weights_only)
    except Exception as err:  # torch reports a damaged file as EOFError, RuntimeError, UnpicklingError, ...
        reason = str(err).strip().splitlines()[0].split(". ")[0] if str(err).strip() else type(err).__name__
        raise CheckpointReadError(
            f"checkpoint {target} cannot be read ({size} bytes; truncated or not a checkpoint file?): {reason}"
        ) from err
    if not isinstance(checkpoint, dict):
        raise CheckpointReadError(
            f"checkpoint {target} holds a {type(checkpoint).__name__}, not a Lightning checkpoint dict"
        )
    return checkpoint


def _is_zip(path: Path) -> bool:
    with open(path, "rb") as file:
        return file.read(4) == b"PK\x03\x04"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO``, saving local paths through :func:`atomic_write_checkpoint`.

    URLs (``s3://...``) keep Lightning's writer. ``Trainer(plugins=[AtomicCheckpointIO()])``; the ``handssl`` command line installs it unless the trainer
    config names another checkpoint plugin.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        atomic_write_checkpoint(checkpoint, path)
