"""The data-access ledger and the withdrawal window: the privacy invariant made checkable.

Every read of a client's records, on a client or by the auditor, goes through ``DataAccess.read``, which notes it.
Client-side notes travel back in the reply and the server appends them to ``data_access.csv`` together with the
window state at that moment. The ``WithdrawalWindow`` is the one gate the server passes before it sends a message to
a client: once a withdrawn client's window is closed, any attempt to address it raises ``PrivacyViolation``.
"""

from __future__ import annotations

import csv
import threading
from dataclasses import dataclass, field
from pathlib import Path

from fedunlearn.errors import PrivacyViolation
from fedunlearn.rundir import ACCESS_COLUMNS


@dataclass
class DataRead:
    client: int
    split: str       # "member" | "validation" (client steps) | "audit" (the audit alone)
    records: int
    purpose: str     # the client step ("train", "pga_ascent", ...) or "audit"
    selection: str = "all"  # class withdrawal: "retained" (withdrawn labels removed) or "forget" (only those)

    def encode(self) -> str:
        return f"{self.client}:{self.split}:{self.records}:{self.selection}:{self.purpose}"

    @classmethod
    def decode(cls, s: str) -> DataRead:
        c, split, n, selection, purpose = s.split(":", 4)
        return cls(int(c), split, int(n), purpose, selection)


@dataclass
class WithdrawalWindow:
    """State of each withdrawing client: ``active`` (still a member), ``open`` (withdrawing: its data may be used by
    the steps that declare ``needs_forget_data``), ``closed`` (gone: never addressed again)."""

    state: dict[int, str] = field(default_factory=dict)
    classes: dict[int, str] = field(default_factory=dict)  # class withdrawal: label -> "open" | "closed"

    def open_classes(self, labels: list[int]) -> None:
        for c in labels:
            if self.classes.get(c) == "closed":
                raise PrivacyViolation(f"class {c}: withdrawal window already closed; it cannot be reopened")
            self.classes[c] = "open"

    def close_classes(self, labels: list[int]) -> None:
        for c in labels:
            self.classes[c] = "closed"

    def withdrawn_classes(self) -> list[int]:
        """Labels being or already withdrawn: every client read leaves them out unless it asks for them."""
        return sorted(self.classes)

    def open_classes_now(self) -> list[int]:
        return sorted(c for c, s in self.classes.items() if s == "open")

    def open(self, pid: int) -> None:
        if self.state.get(pid) == "closed":
            raise PrivacyViolation(f"client {pid}: withdrawal window already closed; it cannot be reopened")
        self.state[pid] = "open"

    def close(self, pid: int) -> None:
        self.state[pid] = "closed"

    def status(self, pid: int) -> str:
        return self.state.get(pid, "active")

    def closed(self) -> set[int]:
        return {p for p, s in self.state.items() if s == "closed"}

    def withdrawing(self) -> set[int]:
        return {p for p, s in self.state.items() if s in ("open", "closed")}

    def check(self, pids: list[int], step: str) -> None:
        bad = sorted(set(pids) & self.closed())
        if bad:
            raise PrivacyViolation(f"step {step!r} addressed withdrawn client(s) {bad} after their window closed")


class AccessLog:
    """Server-side, append-only CSV of every data read (thread-safe; Flower runs the ServerApp in a thread)."""

    def __init__(self, path: Path, window: WithdrawalWindow) -> None:
        self.path = path
        self.window = window
        self._lock = threading.Lock()
        self._seq = 0
        if path.exists():
            with path.open() as fh:
                self._seq = sum(1 for _ in fh) - 1
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("w", newline="") as fh:
                csv.writer(fh).writerow(ACCESS_COLUMNS)

    def record(self, reads: list[DataRead], phase: str) -> None:
        if not reads:
            return
        with self._lock, self.path.open("a", newline="") as fh:
            w = csv.writer(fh)
            for r in reads:
                self._seq += 1
                w.writerow([self._seq, r.client, r.split, r.selection, r.records, r.purpose, phase,
                            self._window_state(r)])

    def _window_state(self, r: DataRead) -> str:
        """The window the read falls under: the client's own, or (class withdrawal) the classes' window."""
        if self.window.classes and r.selection != "retained":
            states = set(self.window.classes.values())
            return "closed" if states == {"closed"} else "open"
        return self.window.status(r.client)


def read_access_log(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))
