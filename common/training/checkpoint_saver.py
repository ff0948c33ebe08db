"""The checkpoint saver of the training loop (like timm's ``utils/checkpoint_saver.py``): ``best.pth``
(slim: the evaluated weights and the constants) when an epoch improved, then ``last.pth`` (all a
resume needs), written by rank 0 through ``checkpoints.save_checkpoint`` (atomic; a full disk is
``io.WriteError``); temporaries a kill left are removed when it starts.
"""
from __future__ import annotations

import logging
from pathlib import Path

from common import io
from common.models import checkpoints

log = logging.getLogger("hpa.train")  # the training loop's log (train.log)


class CheckpointSaver:
    """``best.pth`` and ``last.pth`` of ``out_dir``, written by rank 0 through ``io.atomic_path``;
    temporary files a kill left behind are removed when the saver starts."""

    def __init__(self, out_dir: Path, main: bool):
        self.dir, self.main = Path(out_dir), main
        self.last, self.best = self.dir / "last.pth", self.dir / "best.pth"
        self.last_epoch: int | None = None  # the epoch last.pth holds (None: none of this run)
        if main:
            self.dir.mkdir(parents=True, exist_ok=True)
            n = io.remove_stale_temps(self.dir)
            if n:
                log.info(f"removed {n} temporary file(s) left by an interrupted run in {self.dir}")

    def _write(self, state: dict, path: Path) -> None:
        checkpoints.save_checkpoint(state, path)  # atomic; a full disk is io.WriteError

    def save(self, state: dict, improved: bool) -> None:
        """``best.pth`` (slim: the evaluated weights and the constants, for S5 and Kaggle) when
        ``improved``, then ``last.pth`` (everything a resume needs)."""
        if self.main:
            if improved:  # best first: a crash between the two writes never loses the best epoch
                self._write(checkpoints.slim_checkpoint(state, self.best), self.best)
            self._write(state, self.last)
        self.last_epoch = int(state["epoch"])

    def finish(self) -> None:
        """No epoch ever improved (e.g. every MONITOR value was NaN): best.pth is the slim last.pth."""
        if self.main and not self.best.is_file() and self.last.is_file():
            state = checkpoints.read_checkpoint(self.last, "", "run the step again with --OVERWRITE true")
            self._write(checkpoints.slim_checkpoint(state, self.last), self.best)
