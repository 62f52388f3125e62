"""Export a trained model's inference network to ONNX: ``handssl export --ckpt_path X --output model.onnx``.

The exported graph maps ``image`` (``float32 (B, 3, S, S)`` in ``[0, 1]``, the crop the DataModule would
feed, ``S`` its ``image_size``; ``B`` is dynamic) to ``joints3d`` (``(B, 21, 3)`` mm, root-relative), i.e.
the task's ``predict_joints3d``: for :class:`~handssl.models.SupervisedModule` its network, for
:class:`~handssl.models.NVSModule` the encoder and pose head, for :class:`~handssl.models.SemiHandModule`
the evaluation network (teacher or student) and the 2.5D lifting, which also takes ``K`` (``float32
(B, 3, 3)``, the crop's intrinsics: the root depth comes from them). Needs the optional ``onnx`` package (``pip install "handssl[export]"``,
which also brings ``onnxruntime`` to run the file).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from handssl.models.base import BaseHandTask

__all__ = [
    "ExportError",
    "check_image_size",
    "example_inputs",
    "load_task",
    "main",
    "needs_intrinsics",
    "task_image_size",
    "to_onnx",
]

INSTALL_HINT = 'ONNX export needs the onnx package: pip install "handssl[export]"'


class ExportError(RuntimeError):
    """An export precondition failed (missing package, unreadable checkpoint); the message says which."""


class _Inference(nn.Module):
    """``image -> joints3d`` of a task, as a plain module for tracing."""

    def __init__(self, task: BaseHandTask) -> None:
        super().__init__()
        self.task = task

    def forward(self, image: Tensor, K: Tensor | None = None) -> Tensor:
        batch = {"image": image} if K is None else {"image": image, "K": K}
        return self.task.predict_joints3d(batch)


def needs_intrinsics(task: BaseHandTask) -> bool:
    """Whether the task's inference path reads the batch's ``K`` (SemiHand's 2.5D lifting does)."""
    from handssl.models.semihand import SemiHandModule

    return isinstance(task, SemiHandModule)


def example_inputs(task: BaseHandTask, batch: int, image_size: int) -> dict[str, Tensor]:
    """Random inputs of the exported graph (``image``, and ``K`` with a nominal focal length where needed)."""
    inputs = {"image": torch.rand(batch, 3, image_size, image_size)}
    if needs_intrinsics(task):
        c = (image_size - 1) / 2
        K = torch.tensor([[2.0 * image_size, 0.0, c], [0.0, 2.0 * image_size, c], [0.0, 0.0, 1.0]])
        inputs["K"] = K.expand(batch, 3, 3).contiguous()
    return inputs


def load_task(ckpt_path: str | Path) -> BaseHandTask:
    """The task saved in a handssl checkpoint or shipped as ``ckpt_path`` (a name of :mod:`handssl.pretrained`).

    The class is read from the checkpoint; the task comes back in eval mode on CPU.
    """
    from handssl.checkpoint_io import CheckpointReadError, read_checkpoint
    from handssl.pretrained import PretrainedError, resolve_ckpt_path

    try:
        path = Path(resolve_ckpt_path(ckpt_path) or "")
    except PretrainedError as err:
        raise ExportError(str(err)) from None
    try:
        checkpoint = read_checkpoint(path)
    except CheckpointReadError as err:
        raise ExportError(str(err)) from None
    class_path = checkpoint.get("hyper_parameters", {}).get("_class_path")
    if not class_path:
        raise ExportError(f"{path} does not name its model class (not written by `handssl fit`?)")
    module_name, _, name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module_name), name)
    return cls.load_from_checkpoint(path, map_location="cpu").eval()


def to_onnx(task: BaseHandTask, path: str | Path, image_size: int = 64, opset: int = 17) -> Path:
    """Write ``task``'s ``image -> joints3d`` network to an ONNX file and return its path.

    Args:
        task: A trained handssl task (any :class:`~handssl.models.base.BaseHandTask`).
        path: Output file.
        image_size: Side of the input crop (the DataModule's ``image_size``).
        opset: ONNX opset version.
    """
    try:
        import onnx
    except ImportError as err:
        raise ExportError(INSTALL_HINT) from err
    path = Path(path)
    if path.is_dir():
        raise ExportError(f"--output {path} is a folder: give a file name, e.g. {path / 'model.onnx'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ExportError(f"--output {path}: cannot create {path.parent}: {err.strerror or err}") from err
    network = _Inference(task).eval()
    example = example_inputs(task, 2, image_size)
    try:
        with torch.no_grad():
            network(**example_inputs(task, 1, image_size))
    except RuntimeError as err:  # e.g. an NVS pose head that was never trained (pre-training stage 1)
        raise ExportError(f"cannot export {type(task).__name__}: {str(err).splitlines()[0]}") from err
    with torch.no_grad(), warnings.catch_warnings():
        # The input side is fixed on purpose, so the tracer's "treated as a constant" warnings are noise.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # The TorchScript exporter: the dynamo one would also need onnxscript.
        try:
            torch.onnx.export(
                network,
                tuple(example.values()),
                str(path),
                input_names=list(example),
                output_names=["joints3d"],
                dynamic_axes={**{name: {0: "batch"} for name in example}, "joints3d": {0: "batch"}},
                opset_version=opset,
                dynamo=False,
            )
        except OSError as err:
            raise ExportError(f"--output {path}: cannot write it: {err.strerror or err}") from err
    onnx.checker.check_model(str(path))
    return path


def task_image_size(task: BaseHandTask) -> int | None:
    """The crop side the task was built for (its ``image_size`` hyper-parameter), or ``None`` when it has none."""
    size = getattr(task, "hparams", {}).get("image_size")
    return int(size) if isinstance(size, int) else None


def check_image_size(task: BaseHandTask, image_size: int) -> None:
    """Refuse an export input side other than the one the task was built for (its heads expect those crops).

    Raises:
        ExportError: ``image_size`` is not positive, or differs from the task's ``image_size``.
    """
    if image_size < 1:
        raise ExportError(f"--image_size must be a positive number of pixels, got {image_size}")
    built = task_image_size(task)
    if built is not None and built != image_size:
        raise ExportError(
            f"--image_size {image_size} differs from the {built}-pixel crops {type(task).__name__} was trained "
            f"on: use --image_size {built} (or leave it out)"
        )


def main(argv: list[str] | None = None) -> int:
    """``handssl export``: checkpoint to ONNX; errors end in one ``handssl: error:`` line (exit code 2)."""
    parser = argparse.ArgumentParser(prog="handssl export", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--ckpt_path",
        required=True,
        help="checkpoint written by handssl fit, or a shipped name (handssl models)",
    )
    parser.add_argument("--output", default="model.onnx", help="ONNX file to write (default: model.onnx)")
    parser.add_argument(
        "--image_size",
        type=int,
        default=None,
        help="input crop side (default: the checkpoint's image_size, else 64); must match the checkpoint's",
    )
    fmt: tuple[Literal["onnx"], ...] = ("onnx",)
    parser.add_argument("--format", choices=fmt, default="onnx", help="export format")
    args = parser.parse_args(argv)
    try:
        task = load_task(args.ckpt_path)
        size = args.image_size if args.image_size is not None else task_image_size(task) or 64
        check_image_size(task, size)
        path = to_onnx(task, args.output, image_size=size)
    except ExportError as err:
        print(f"handssl: error: {err}", file=sys.stderr)
        return 2
    inputs = f"image (B, 3, {size}, {size})"
    if needs_intrinsics(task):
        inputs += ", K (B, 3, 3)"
    print(f"handssl: wrote {path} ({inputs} -> joints3d (B, 21, 3) mm)")
    return 0
