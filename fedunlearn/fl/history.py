"""Per-client update history on disk (FedEraser needs it; PGA needs the withdrawing client's last local model).

Kept on disk, not in the strategy, so 1,000 clients fit in memory. Layout under ``<run>/history/``:
``round_<t>/global.npz`` (the global model sent in round t), ``round_<t>/client_<k>.npz`` (client k's update:
local minus global) every ``interval`` rounds, and ``last_local/client_<k>.npz`` (k's latest local model).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from fedunlearn.io import atomic_save_npz
from fedunlearn.models import Weights


def _save(path: Path, weights: Weights) -> int:
    atomic_save_npz(path, **{k.replace(".", "/"): v for k, v in weights.items()})
    return path.stat().st_size


def _load(path: Path) -> Weights:
    with np.load(path) as z:
        return Weights((k.replace("/", "."), z[k]) for k in z.files)


class UpdateHistory:
    """Stores global models and per-client updates every ``interval`` rounds of the original training."""

    def __init__(self, root: Path, interval: int = 1, keep_updates: bool = True,
                 keep_last_local: set[int] | None = None) -> None:
        self.root = root
        self.interval = max(1, interval)
        self.keep_updates = keep_updates
        self.keep_last_local = keep_last_local  # None = every client (a real server cannot know who will leave)

    def wants(self, rnd: int) -> bool:
        """Rounds 1, 1+Δt, 1+2Δt, ... are stored (FedEraser's calibration starts at the first stored round)."""
        return self.keep_updates and (rnd - 1) % self.interval == 0

    def wants_last_local(self, pid: int) -> bool:
        return self.keep_last_local is None or pid in self.keep_last_local

    def save_global(self, rnd: int, weights: Weights) -> int:
        return _save(self.root / f"round_{rnd:05d}" / "global.npz", weights)

    def save_update(self, rnd: int, pid: int, update: Weights, num_examples: int) -> int:
        upd = Weights(update)
        upd["__num_examples__"] = np.asarray(num_examples)
        return _save(self.root / f"round_{rnd:05d}" / f"client_{pid}.npz", upd)

    def save_last_local(self, pid: int, rnd: int, weights: Weights) -> int:
        w = Weights(weights)
        w["__round__"] = np.asarray(rnd)
        return _save(self.root / "last_local" / f"client_{pid}.npz", w)

    def rounds(self) -> list[int]:
        out = []
        for d in self.root.glob("round_*"):
            m = re.fullmatch(r"round_(\d+)", d.name)
            if m and (d / "global.npz").exists():
                out.append(int(m.group(1)))
        return sorted(out)

    def load_global(self, rnd: int) -> Weights:
        return _load(self.root / f"round_{rnd:05d}" / "global.npz")

    def clients_at(self, rnd: int) -> list[int]:
        return sorted(int(p.stem.split("_")[1]) for p in (self.root / f"round_{rnd:05d}").glob("client_*.npz"))

    def load_update(self, rnd: int, pid: int) -> tuple[Weights, int]:
        w = _load(self.root / f"round_{rnd:05d}" / f"client_{pid}.npz")
        n = int(w.pop("__num_examples__"))
        return w, n

    def load_last_local(self, pid: int) -> tuple[Weights, int] | None:
        p = self.root / "last_local" / f"client_{pid}.npz"
        if not p.exists():
            return None
        w = _load(p)
        return w, int(w.pop("__round__"))

    def storage_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.rglob("*.npz")) if self.root.exists() else 0
