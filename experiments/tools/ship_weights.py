"""Pack benchmark checkpoints into the package's shipped weights (``handssl/pretrained/weights``).

Every shipped network gets ``<name>.pt`` (class, hyper-parameters, state dict, extra state; optimizer state
and paths to other checkpoints dropped) and ``<name>.json`` (this command, the commit, the benchmark command
and row that trained it with its measured metrics and seed, the file's SHA-256 and size). ``handssl.pretrained.load``
reads them; ``handssl models`` tabulates them. Two fields say how to make the file again: ``recipe``, the
file under ``experiments/`` that trains it (the benchmark script, or ``--recipe``), and ``command``, the whole
reproduction: the training command, then this one.

    # SemiHand: the source-only, full and target-oracle rows of the ablation (synthetic -> real; per row the
    # seed nearest the row's mean test MPJPE; trained_by is that row's own handssl fit command)
    python experiments/tools/ship_weights.py semihand
    # NVS: the supervised, pretrained (stage 1 + stage 2) and semi rows of experiments/studies/nvs_sweep.py at one
    # labelled subject (per row the seed nearest the row's mean test N-MPJPE, the weights its test command scored;
    # trained_by is that row's own commands)
    python experiments/tools/ship_weights.py nvs

Each file must stay under 10 MB (the network is refused otherwise).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import functools
import hashlib
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from handssl.pretrained import MAX_BYTES, WEIGHTS_DIR, pack

SEMIHAND = {
    "source_only": "semihand-source-only-synthhands",
    "full": "semihand-synthhands",
    "oracle": "semihand-oracle-synthhands",
}
NVS = {
    "supervised": "nvs-supervised-synthhands",
    "pretrained": "nvs-pretrained-synthhands",
    "semi": "nvs-semi-synthhands",
}
#: What each row trains on (``trained_on`` in the metadata): SynthHands renders only, never a real photo.
SEMIHAND_TRAINED_ON = {
    "source_only": "SynthHands v2 renders: labelled synthetic-style crops (no real image)",
    "full": "SynthHands v2 renders: labelled synthetic-style + unlabelled real-style crops (no real image)",
    "oracle": "SynthHands v2 renders: labelled real-style crops (no real image)",
}
NVS_TRAINED_ON = {
    "semi": "SynthHands v2 multi-view renders: labels of {k} of 32 subjects + unlabelled view pairs (no real image)",
    "supervised": "SynthHands v2 renders: labels of {k} of 32 subjects (no real image)",
    "pretrained": "SynthHands v2 multi-view renders: unlabelled view pairs of 32 subjects (stage 1), then labels of "
    "{k} of 32 subjects (stage 2) (no real image)",
}
PATH_HPARAMS = ("init_checkpoint", "pretrained_checkpoint")
STUDIES = Path(__file__).resolve().parents[1] / "studies"
NVS_SWEEP = "python experiments/studies/nvs_sweep.py"


@functools.cache
def git_commit() -> str:
    """``HEAD``'s hash, with ``+dirty`` when tracked files differ from it (read once, before any file is written).

    The logs of studies (``experiments/results/*/logs``) do not count: a study still running appends to them.
    """
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout
        diff = ["git", "diff", "--quiet", "HEAD", "--", ".", ":(exclude,glob)experiments/results/*/logs/**"]
        dirty = subprocess.run(diff, capture_output=True).returncode != 0
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.strip() + ("+dirty" if dirty else "")


def last_commit(path: str | None) -> str | None:
    """The commit that last changed ``path`` (the benchmark results the weights come with), if tracked."""
    if not path:
        return None
    try:
        out = subprocess.run(["git", "log", "-1", "--format=%H", "--", path], capture_output=True, text=True)
    except OSError:
        return None
    return out.stdout.strip() or None


def read_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise SystemExit(f"checkpoint not found: {path} (run the benchmark first; see --help)")
    return torch.load(path, map_location="cpu", weights_only=False)


def write(name: str, payload: dict[str, Any], meta: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    commit = git_commit()  # before the first file is written, which would make the tree dirty
    weights = out / f"{name}.pt"
    torch.save(payload, weights)
    size = weights.stat().st_size
    if size > MAX_BYTES:
        weights.unlink()
        raise SystemExit(f"{name}: {size / 2**20:.1f} MB is over the 10 MB limit of shipped weights")
    ship_command = "python " + " ".join(sys.argv)
    meta = {
        "name": name,
        "class": payload["class"],
        "image_size": payload["hparams"].get("image_size"),
        **meta,
        "recipe": meta.get("recipe") or recipe_of(meta["trained_by"]),
        "command": f"{meta['trained_by']} && {ship_command}",
        "ship_command": ship_command,
        "commit": commit,
        "results_commit": last_commit(meta.get("results")),
        "date": datetime.date.today().isoformat(),
        "bytes": size,
        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
    }
    (out / f"{name}.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"{weights}: {size / 2**20:.2f} MB, metrics {meta.get('metrics')}")


def recipe_of(command: str) -> str | None:
    """The file under ``experiments/`` that a training command runs (``python experiments/<folder>/<script>.py
    ...``, or the first ``-c experiments/...yaml`` of ``handssl fit``); of a chain ``a && b``, the last stage's."""
    for stage in reversed(command.split("&&")):
        for token in shlex.split(stage):
            if token.startswith("experiments/") and token.endswith((".py", ".yaml", ".yml")):
                return token
    return None


def seed_of(results: Path) -> int | None:
    """The seed of a benchmark's results: ``args.json`` beside them, else ``seed<N>`` in their file name."""
    args = results.with_name("args.json")
    if args.is_file():
        seed = json.loads(args.read_text()).get("seed")
        if seed is not None:
            return int(seed)
    match = re.search(r"seed(\d+)", results.stem)
    return int(match.group(1)) if match else None


def hparams_of(checkpoint: dict[str, Any]) -> dict[str, Any]:
    hparams = dict(checkpoint["hyper_parameters"])
    for key in PATH_HPARAMS:
        if key in hparams:
            hparams[key] = None
    return hparams


def nearest_to_mean(
    rows: list[dict[str, str]], key: str = "mpjpe"
) -> tuple[dict[str, str], dict[str, float]]:
    """The row whose ``key`` is nearest its rows' mean (the seed to ship), and the mean, SD and seed count."""
    values = [float(r[key]) for r in rows]
    mean = sum(values) / len(values)
    sd = (
        (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else float("nan")
    )
    chosen = min(rows, key=lambda r: abs(float(r[key]) - mean))
    return chosen, {"mean": mean, "sd": sd, "seeds": float(len(values))}


def ship_semihand(args: argparse.Namespace) -> None:
    """Ship the source-only, full and oracle rows of ``experiments/studies/semihand_ablation.py``: per row, the seed
    whose test MPJPE is nearest the row's mean over seeds, from its run's final checkpoint."""
    with open(args.results, newline="") as handle:
        table = list(csv.DictReader(handle))
    for row, name in SEMIHAND.items():
        rows = [r for r in table if r["row"] == row]
        if not rows:
            raise SystemExit(
                f"{args.results} has no {row!r} row yet (run experiments/studies/semihand_ablation.py)"
            )
        chosen, stats = nearest_to_mean(rows)
        runs = sorted(
            (Path(args.run_dir) / f"{row}_seed{chosen['seed']}").glob("version_*/checkpoints/final.ckpt")
        )
        if not runs:
            raise SystemExit(f"no final.ckpt of {row} seed {chosen['seed']} under {args.run_dir}")
        checkpoint = read_checkpoint(runs[-1])
        extra = dict(checkpoint.get("semihand", {}))
        extra["round_table"] = None  # per-item labels of the training set: not needed to predict
        payload = pack(
            "SemiHandModule", hparams_of(checkpoint), checkpoint["state_dict"], {"semihand": extra}
        )
        metrics = {k: float(chosen[k]) for k in ("mpjpe", "pa_mpjpe", "auc") if chosen.get(k)}
        meta = {
            "description": f"SemiHand ablation row {row!r}, the seed nearest the row's mean test MPJPE",
            "trained_on": SEMIHAND_TRAINED_ON[row],
            "trained_by": chosen["command"],
            "recipe": args.recipe or recipe_of(chosen["command"]),
            "results": str(args.results),
            "row": row,
            "seed": int(chosen["seed"]),
            "steps": int(chosen["steps"]),
            "minutes": float(chosen["minutes"]),
            "metrics": metrics,
            "row_mpjpe": {"mean": stats["mean"], "sd": stats["sd"], "seeds": int(stats["seeds"])},
            "metrics_note": "real-style SynthHands v2 test subjects, wrist-relative mm, root depth and scale known",
        }
        write(name, payload, meta, Path(args.out))


def nvs_sweep() -> ModuleType:
    """``experiments/studies/nvs_sweep.py``, whose run names, final checkpoints and controls the nvs rows follow."""
    if str(STUDIES) not in sys.path:
        sys.path.insert(0, str(STUDIES))
    import nvs_sweep

    return nvs_sweep


def tested_checkpoint(command: str, what: str) -> Path:
    """The checkpoint a row's ``command`` scored on test: the last ``--ckpt_path`` of its ``handssl test``.

    Taking it from the command rather than from the run folder means a later run of the same name (a rerun, a
    resume in a new ``version_<n>``) never replaces the weights whose metrics the row reports.
    """
    paths = [
        word.split("=", 1)[1] if "=" in word else ""
        for word in shlex.split(command)
        if word.startswith("--ckpt_path")
    ]
    if not paths or not paths[-1]:
        raise SystemExit(f"{what}: its command names no --ckpt_path=<file> (not a row of {NVS_SWEEP}?)")
    path = Path(paths[-1])
    if not path.is_file():
        raise SystemExit(f"checkpoint not found: {path} ({what} scored it on test; run {NVS_SWEEP} again)")
    return path


#: The test world's arguments a shipped NVS network records (``world`` in its metadata): its input convention.
WORLD_KEYS = ("style", "crop", "crop_extent_mm", "crop_margin", "image_size")


def test_world(checkpoint: Path) -> dict[str, Any] | None:
    """The ``SynthHandsWorld`` arguments of the test subjects a run was scored on, from the run's ``config.yaml``.

    A network expects the crops it trained on (the NVS recipes: ``crop: fixed``, 240 mm); notebooks and
    ``bench_nvs.py --pretrained`` render their SynthHands views with these. ``None`` when the run folder has no
    config (a checkpoint copied elsewhere).
    """
    config = checkpoint.parent.parent / "config.yaml"
    if not config.is_file():
        return None
    import yaml

    data = (yaml.safe_load(config.read_text()) or {}).get("data", {}).get("init_args", {})
    world = (data.get("test") or {}).get("init_args", {}).get("world", {}).get("init_args", {})
    return {key: world[key] for key in WORLD_KEYS if key in world} or None


def ship_nvs(args: argparse.Namespace) -> None:
    """Ship the supervised, pretrained and semi rows of ``experiments/studies/nvs_sweep.py`` at ``--subjects``
    labelled subjects: per row, the seed whose test N-MPJPE is nearest the row's mean over seeds, with the weights
    its test command scored (the pretrained row: its stage 2 run, whose module holds stage 1's encoder and
    decoder)."""
    sweep = nvs_sweep()
    k = args.subjects
    with open(args.results, newline="") as handle:
        table = list(csv.DictReader(handle))
    for regime, name in NVS.items():
        rows = [r for r in table if r["regime"] == regime and int(r["k"]) == k]
        if not rows:
            raise SystemExit(
                f"{args.results} has no {regime} row at k={k} yet (run {NVS_SWEEP} --subjects {k} "
                f"--regimes {regime} --out {Path(args.results).parent} --work-dir {args.run_dir})"
            )
        chosen, stats = nearest_to_mean(rows, key="test_n_mpjpe")
        seed = int(chosen["seed"])
        what = f"{args.results} row {regime} k={k} seed={seed}"
        tested = tested_checkpoint(chosen["command"], what)
        checkpoint = read_checkpoint(tested)
        payload = pack("NVSModule", hparams_of(checkpoint), checkpoint["state_dict"], {})
        # The zoo's metric names (handssl.zoo.METRICS): the rows' test_* columns are the test metrics.
        keys = ("test_n_mpjpe", "test_mpjpe", "test_pa_mpjpe", *sweep.CONTROLS)
        metrics = {key.removeprefix("test_"): float(chosen[key]) for key in keys if chosen.get(key)}
        trained_by = args.trained_by or chosen["command"]
        meta = {
            "description": f"NVS sweep, {regime} at {k} labelled subject(s) of 32, the seed nearest the row's mean "
            "test N-MPJPE",
            "trained_on": NVS_TRAINED_ON[regime].format(k=k),
            "trained_by": trained_by,
            "recipe": args.recipe or recipe_of(trained_by),
            "results": str(args.results),
            "k": k,
            "labeled": chosen.get("labeled"),
            "seed": seed,
            "steps": int(chosen["steps"]),
            "train_min": float(chosen["train_min"]),
            "metrics": metrics,
            "row_n_mpjpe": {"mean": stats["mean"], "sd": stats["sd"], "seeds": int(stats["seeds"])},
            "metrics_note": "SynthHands v2 test subjects (fixed 240 mm crops), mm; hand-pixel L1 of synthesized "
            "views",
            "validation_curve": {
                "columns": ["train_min", "val_n_mpjpe"],
                "points": [list(point) for point in sweep.curve_of(chosen)],
            },
        }
        world = test_world(tested)
        if world:
            meta["world"] = world
        write(name, payload, meta, Path(args.out))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("method", choices=("semihand", "nvs"))
    parser.add_argument(
        "--run-dir",
        default=None,
        help="the benchmark's checkpoint folder (nvs: the weights are those each row's test command names)",
    )
    parser.add_argument("--results", default=None, help="the benchmark's results (rows.csv)")
    parser.add_argument(
        "--subjects", type=int, default=1, help="nvs: labelled subjects k of the shipped rows (the k column)"
    )
    parser.add_argument(
        "--trained-by",
        default=None,
        help="nvs: the command that trained them (default: the shipped row's own command)",
    )
    parser.add_argument(
        "--recipe",
        default=None,
        help="the experiments/ file that trains them (default: the last one the training command runs)",
    )
    parser.add_argument("--out", default=str(WEIGHTS_DIR))
    args = parser.parse_args(argv)
    if args.method == "semihand":
        args.run_dir = args.run_dir or "runs/semihand_ablation_v4"
        args.results = args.results or "experiments/results/semihand_ablation_v4/rows.csv"
        if not Path(args.results).is_file():
            raise SystemExit(
                f"results file not found: {args.results} (run experiments/studies/semihand_ablation.py)"
            )
        ship_semihand(args)
    else:
        args.run_dir = args.run_dir or "runs/nvs_sweep"
        args.results = args.results or "experiments/results/nvs_sweep/rows.csv"
        if not Path(args.results).is_file():
            raise SystemExit(f"results file not found: {args.results} (run {NVS_SWEEP})")
        ship_nvs(args)


if __name__ == "__main__":
    main()
