"""The cost ledger: what each method and phase spent (docs/design.md: wall time, rounds, client samples, bytes,
storage)."""

from __future__ import annotations

import csv
import io
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from fedunlearn.io import atomic_write_text
from fedunlearn.rundir import LEDGER_COLUMNS


@dataclass
class Cost:
    method: str
    phase: str
    wall_s: float = 0.0
    rounds: int = 0
    client_samples: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    server_storage_bytes: int = 0
    failed_clients: int = 0

    def add(self, other: Cost) -> None:
        for f in fields(self):
            if f.name not in ("method", "phase"):
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


assert [f.name for f in fields(Cost)] == LEDGER_COLUMNS, "ledger.csv columns (fedunlearn.rundir)"


@dataclass
class CostLedger:
    """Rows of (method, phase) costs; ``track`` opens a row that the federation fills while a phase runs."""

    rows: list[Cost] = field(default_factory=list)
    current: Cost | None = None

    def start(self, method: str, phase: str) -> Cost:
        row = Cost(method, phase)
        self.rows.append(row)
        self.current = row
        row.wall_s = -time.perf_counter()
        return row

    def stop(self) -> None:
        if self.current is not None:
            self.current.wall_s += time.perf_counter()
            self.current = None

    def note(self, **amounts: int) -> None:
        """Add amounts to the open row (no-op when nothing is tracked)."""
        if self.current is None:
            return
        for k, v in amounts.items():
            setattr(self.current, k, getattr(self.current, k) + v)

    def total(self, method: str) -> Cost:
        tot = Cost(method, "total")
        for r in self.rows:
            if r.method == method:
                tot.add(r)
        return tot

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.DictWriter(buf, LEDGER_COLUMNS)
        w.writeheader()
        for r in self.rows:
            w.writerow(asdict(r))
        return buf.getvalue()

    def save(self, path: Path) -> None:
        atomic_write_text(path, self.to_csv())

    @classmethod
    def load(cls, path: Path) -> CostLedger:
        led = cls()
        if path.exists():
            with path.open() as fh:
                for row in csv.DictReader(fh):
                    c = Cost(row["method"], row["phase"])
                    for f in fields(Cost):
                        if f.name not in ("method", "phase", "wall_s"):
                            setattr(c, f.name, int(row[f.name]))
                    c.wall_s = float(row["wall_s"])
                    led.rows.append(c)
        return led
