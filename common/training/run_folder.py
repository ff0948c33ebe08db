"""A training run's folder (``OUTPUT_DIR/<RUN_NAME>/fold<k>``): refused when it holds another run
(:func:`check_run_folder`; the constants that may differ: :data:`RUN_MECHANICS`), its first writes
when training starts (:func:`start_run`: OVERWRITE's removal of the old :data:`RUN_FILES`,
``config.json``, the checkpoint saver, ``train.log``), each epoch's logs (:func:`write_logs`:
``summary.csv``, ``curves.png``, the line of ``train.log``).
"""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from common import config as config_mod
from common import io, plots
from common.training.checkpoint_saver import CheckpointSaver
from common.training.distributed import DistEnv

# constants that change how a run is executed, not what it trains: a run folder may differ in these
RUN_MECHANICS = ("RESUME", "OVERWRITE", "NUM_WORKERS", "DEVICE", "CACHE_GB", "RECIPE", "OVERRIDES",
                 "environment")
RUN_FILES = ("best.pth", "last.pth", "summary.csv", "curves.png", "oof.csv", "oof_cells.csv")

log = logging.getLogger("hpa.train")  # the training loop's log


def check_run_folder(cfg: dict, out_dir: Path) -> None:
    """Never overwrite another run silently: a folder whose config.json holds other constants is
    refused (the differences shown) unless RESUME (checked against the checkpoint) or OVERWRITE
    (its old outputs are removed when training starts, :func:`start_run`). Writes nothing."""
    saved_path = out_dir / "config.json"
    if not saved_path.is_file() or bool(cfg["RESUME"]) or bool(cfg["OVERWRITE"]):
        return
    saved, new = config_mod.load(saved_path), config_mod.to_jsonable(cfg)
    # .get: a constant only one of them has
    diff = [f"{k}: {saved.get(k, '(unset)')!r} -> {new.get(k, '(unset)')!r}"
            for k in sorted(set(saved) | set(new)) if k not in RUN_MECHANICS and saved.get(k) != new.get(k)]
    if diff:
        raise SystemExit(f"{out_dir} holds a run with other constants ({'; '.join(diff)}): give another "
                         "RUN_NAME, --RESUME true to continue it, or --OVERWRITE true to replace it")


def start_run(cfg: dict, out_dir: Path, env: DistEnv, last_epoch: int | None) -> CheckpointSaver:
    """Training starts: the first writes into the run folder (rank 0): with OVERWRITE the old run's
    outputs removed, ``config.json`` (atomically), the checkpoint saver, ``train.log``."""
    replace = bool(cfg["OVERWRITE"]) and not bool(cfg["RESUME"]) and (out_dir / "config.json").is_file()
    if env.main and replace:
        for name in RUN_FILES:
            (out_dir / name).unlink(missing_ok=True)
    saver = CheckpointSaver(out_dir, env.main)
    if env.main:
        config_mod.save(cfg, out_dir / "config.json")  # as to_jsonable writes it (and a checkpoint holds it)
    env.barrier()
    saver.last_epoch = last_epoch
    open_log(out_dir, env.main)
    return saver


def write_logs(out_dir: Path, row: dict, history: list, improved: bool) -> None:
    """summary.csv, curves.png and the epoch's line of train.log (rank 0)."""
    io.atomic_to_csv(pd.DataFrame(history), out_dir / "summary.csv")
    try:
        plots.plot_training_curves(out_dir / "summary.csv", out_dir / "curves.png")
    except Exception as e:  # noqa: BLE001 - a plot never stops training
        log.warning(f"curves.png not written: {e}")
    msg = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
    log.info(msg + (" *" if improved else ""))


def open_log(out_dir: Path, main: bool) -> None:
    """The training log: every rank prints (rank > 0 only warnings); rank 0 also writes ``train.log``."""
    log.setLevel(logging.INFO)
    log.propagate = False
    if not any(isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
               for h in log.handlers):
        sh = logging.StreamHandler()
        sh.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(sh)
    if not main:
        log.setLevel(logging.WARNING)
        return
    fh = logging.FileHandler(out_dir / "train.log")
    fh.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(fh)


def close_log() -> None:
    """Close ``train.log`` (the run ended, however it ended)."""
    for h in list(log.handlers):
        if isinstance(h, logging.FileHandler):
            log.removeHandler(h)
            h.close()
