"""Training logs: a CSV file (one row per logged step) and TensorBoard, written on rank 0.

The CSV is appended one complete line per ``write`` call and flushed, so a crash loses at
most the row being written and never leaves a half-filled one behind another. When a run
resumes from step k, rows after k (logged after the checkpoint, before the interruption)
are dropped, so the file reads as one uninterrupted run. A key that appears later than the
first row widens the header (the file is rewritten atomically once, earlier rows get empty
cells). Floats are written with ``repr`` (round-trip exact).

TensorBoard needs the ``tensorboard`` package (``pip install tensorboard``); without it the
logger prints one warning and does nothing.
"""
from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path
from typing import Any, Mapping, Optional

from face3d.io_utils import atomic_write

__all__ = ["CSVLogger", "TensorBoardLogger", "read_csv_log"]

log = logging.getLogger("face3d.training")


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else str(v)
    return str(v)


def read_csv_log(path: str | Path) -> list[dict[str, str]]:
    """The rows of a CSV log as dicts of strings."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class CSVLogger:
    """Append-only CSV log with a ``step`` column first.

    Args:
        path: the CSV file (its folder must exist).
        resume_step: keep the rows of steps ≤ this from an existing file (None: start a
            new file, replacing any old one).
    """

    def __init__(self, path: str | Path, resume_step: Optional[int] = None) -> None:
        self.path = Path(path)
        self.columns: list[str] = []
        rows: list[dict[str, str]] = []
        if resume_step is not None and self.path.is_file():
            rows = [r for r in read_csv_log(self.path) if r.get("step", "").isdigit() and int(r["step"]) <= resume_step]
            with open(self.path, newline="") as f:
                self.columns = next(csv.reader(f), [])
        self._rewrite(rows)

    def _rewrite(self, rows: list[Mapping[str, str]]) -> None:
        buf = io.StringIO()
        if self.columns:
            w = csv.DictWriter(buf, fieldnames=self.columns, lineterminator="\n")
            w.writeheader()
            for r in rows:
                w.writerow({k: r.get(k, "") for k in self.columns})
        with atomic_write(self.path) as tmp:
            tmp.write_text(buf.getvalue())

    def write(self, step: int, values: Mapping[str, Any]) -> None:
        """Append the row of ``step``."""
        row = {"step": str(int(step)), **{k: _cell(v) for k, v in values.items() if k != "step"}}
        new = [k for k in row if k not in self.columns]
        if new:
            old_rows = read_csv_log(self.path) if self.columns else []
            self.columns = (self.columns or ["step"]) + [k for k in new if k != "step"]
            self._rewrite(old_rows)
        buf = io.StringIO()
        csv.DictWriter(buf, fieldnames=self.columns, lineterminator="\n").writerow(
            {k: row.get(k, "") for k in self.columns})
        with open(self.path, "a", newline="") as f:
            f.write(buf.getvalue())  # one write per row
            f.flush()

    def close(self) -> None:
        pass


class TensorBoardLogger:
    """Scalars and images to ``folder`` through ``torch.utils.tensorboard`` when available."""

    def __init__(self, folder: str | Path, resume_step: Optional[int] = None, enabled: bool = True) -> None:
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.warning("tensorboard is not installed (pip install tensorboard); TensorBoard logging is off")
            return
        # purge_step drops events after the checkpoint a resumed run continues from
        self.writer = SummaryWriter(str(folder), purge_step=None if resume_step is None else resume_step + 1)

    @property
    def active(self) -> bool:
        return self.writer is not None

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(k, v, step)

    def image(self, tag: str, image_chw, step: int) -> None:
        if self.writer is not None:
            self.writer.add_image(tag, image_chw.clamp(0, 1).cpu(), step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
            self.writer = None
