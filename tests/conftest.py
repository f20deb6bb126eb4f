"""Shared fixtures: tiny synthetic experiments that run in-process (no Ray) in a second or two."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")


TINY = [
    'name="tiny"', "seed=0",
    'data.dataset="synthetic"', "data.samples=600", "data.features=20", "data.informative=8", "data.classes=3",
    "data.class_sep=1.5", "data.flip_y=0.05", "data.clients=4", "data.holdout=0.25", "data.validation=0.5",
    "model.hidden=[32]",
    "train.rounds=4", "train.local_epochs=1", "train.lr=0.1", "train.batch_size=32",
    'sim.backend="inprocess"', 'sim.device="cpu"',
]


def tiny_config(*overrides: str):
    from fedunlearn.config.load import load_config

    return load_config(None, TINY + list(overrides))


@dataclass
class TinyFederation:
    """A prepared run with its server context and in-process federation; ``original`` trained on request."""

    cfg: object
    run_dir: Path
    ctx: object
    fed: object
    initial: dict

    def train_original(self, rounds: int | None = None):
        from fedunlearn.fl.fedavg import FedAvgRounds

        self.ctx.phase = "original"
        self.ctx.costs.start("original", "train")
        engine = FedAvgRounds(self.ctx, "original", self.fed.pids, record_history=True)
        w = self.fed.fedavg(engine, self.initial, rounds or self.cfg.train.rounds)
        self.ctx.costs.stop()
        return w

    def job(self, method: str, start, withdrawn=(0,), forget_classes=()):
        """An UnlearnJob; a class withdrawal is ``withdrawn=(), forget_classes=[c]``."""
        from fedunlearn.methods import UnlearnJob

        remaining = [p for p in self.fed.pids if p not in withdrawn]
        return UnlearnJob(self.fed, method, start, self.initial, list(withdrawn), remaining, self.cfg.train.rounds,
                          list(forget_classes))


def make_tiny_federation(tmp_path: Path, *overrides: str) -> TinyFederation:
    from fedunlearn.engine.inprocess import InProcessFederation
    from fedunlearn.engine.session import build_server_context, load_run_config, prepare_run

    run_dir = prepare_run(tiny_config(*overrides), tmp_path / "run")
    cfg = load_run_config(run_dir)
    ctx, initial = build_server_context(cfg, run_dir)
    return TinyFederation(cfg, run_dir, ctx, InProcessFederation(ctx, range(cfg.data.clients)), initial)


@pytest.fixture
def tiny_fed(tmp_path: Path) -> TinyFederation:
    return make_tiny_federation(tmp_path)


def check_snapshots(d: Path, name: str) -> None:
    """``audit.during``: the snapshots method ``name`` saved run in order from the original to its output, each with
    its phase and its costs so far (never more than the ledger's total for the method)."""
    import csv
    import json

    import numpy as np

    from fedunlearn.models import load_weights

    folder = d / "models" / "during" / name / "w0"
    snapshots = json.loads((folder / "snapshots.json").read_text())
    assert [s["snapshot"] for s in snapshots] == list(range(len(snapshots))) and len(snapshots) >= 2
    assert snapshots[0]["phase"] == "start" and all(s["phase"].split(".")[0] == name for s in snapshots[1:]), snapshots
    ends = {"original": folder / "snapshot_0.pt", name: folder / f"snapshot_{snapshots[-1]['snapshot']}.pt"}
    for model, path in ends.items():
        a, b = load_weights(d / "models" / f"{model}.pt"), load_weights(path)
        assert all(np.array_equal(a[k], b[k]) for k in a), f"{path.name} is not models/{model}.pt"
    with (d / "ledger.csv").open() as fh:
        total = [r for r in csv.DictReader(fh) if r["method"] == name]
    for key in ("client_samples", "rounds"):
        seen = [s[key] for s in snapshots]
        assert seen == sorted(seen) and seen[-1] <= sum(int(r[key]) for r in total), (key, seen)


def pytest_collection_modifyitems(config, items) -> None:  # noqa: ANN001 - pytest's hook signature
    """``@pytest.mark.full`` tests (each several minutes through Ray or Flower's CLI) run with
    FEDUNLEARN_FULL_TESTS=1 (``make test-full``); ``make test`` reports them as skipped with this reason, so CI stays
    within its time on 2 CPUs."""
    import os

    import pytest

    if os.environ.get("FEDUNLEARN_FULL_TESTS") == "1":
        return
    skip = pytest.mark.skip(reason="full check (minutes): run `make test-full` (FEDUNLEARN_FULL_TESTS=1)")
    for item in items:
        if "full" in item.keywords:
            item.add_marker(skip)
