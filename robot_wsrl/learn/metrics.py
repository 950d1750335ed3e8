"""Run metrics: one CSV per stream (train, eval, episodes) and, optionally, TensorBoard.

CSV rows are flushed as they are written, so a crash loses at most the row in flight.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def _scalar(value: Any) -> float | int | str:
    if hasattr(value, "item"):
        return value.item()
    return value


class MetricsLogger:
    def __init__(self, out_dir: str | Path, tensorboard: bool = True) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._files: dict[str, tuple[Any, csv.DictWriter]] = {}
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.out_dir / "tb"))
            except ImportError:  # tensorboard is optional; CSV always works
                self._tb = None

    def log(self, stream: str, step: int, values: Mapping[str, Any]) -> None:
        """Append a row to <stream>.csv (resume appends). A row with new keys (e.g. the update metrics
        that start after warmup) adds columns: the file is rewritten once, earlier rows left blank there."""
        row = {"step": step, **{k: _scalar(v) for k, v in values.items()}}
        if stream not in self._files:
            path = self.out_dir / f"{stream}.csv"
            exists = path.exists() and path.stat().st_size > 0
            if exists:
                with path.open() as f:
                    fields = next(csv.reader(f))
            else:
                fields = list(row)
            handle = path.open("a", newline="")
            writer = csv.DictWriter(handle, fieldnames=fields)
            if not exists:
                writer.writeheader()
            self._files[stream] = (handle, writer)
        handle, writer = self._files[stream]
        if any(key not in writer.fieldnames for key in row):
            handle, writer = self._widen(stream, row)
        writer.writerow(row)
        handle.flush()
        if self._tb is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(f"{stream}/{key}", value, step)

    def _widen(self, stream: str, row: Mapping[str, Any]) -> tuple[Any, csv.DictWriter]:
        handle, writer = self._files.pop(stream)
        handle.close()
        fields = [*writer.fieldnames, *(key for key in row if key not in writer.fieldnames)]
        path = self.out_dir / f"{stream}.csv"
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        tmp = path.with_name(f".{path.name}.tmp")
        with tmp.open("w", newline="") as f:
            rewriter = csv.DictWriter(f, fieldnames=fields)
            rewriter.writeheader()
            rewriter.writerows(rows)
        tmp.replace(path)
        handle = path.open("a", newline="")
        writer = csv.DictWriter(handle, fieldnames=fields)
        self._files[stream] = (handle, writer)
        return handle, writer

    def close(self) -> None:
        for handle, _ in self._files.values():
            handle.close()
        self._files.clear()
        if self._tb is not None:
            self._tb.close()
            self._tb = None
