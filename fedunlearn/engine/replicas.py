"""A2 seed replicas: the same experiment with training seeds seed+1..seed+M on the same data, for the
seed-distribution audit (docs/leakage.md: U-LiRA and the NeurIPS-2023 per-example epsilon need M models of each kind).

Why replicas and not more phases of the one simulation: every replica repeats original training -> withdrawal ->
unlearning -> retrain, and a withdrawal window can never be reopened once closed (the privacy invariant), the update
history of FedEraser-style methods belongs to one original training, and the cost ledger to one experiment. So each
replica is an experiment of its own, with its own window, history and ledger, in ``RUN_DIR/seeds/seed-<s>/``.
Replicas run in-process (no Flower, no Ray: the same client code and hooks, without M more Ray starts); they are
resumable and trained once: re-auditing reads their cached signals only.

Only the training randomness changes (initial weights, client sampling, data order, method seeds): ``data.seed``
pins the dataset, partition and member/held-out split to the audited run's, and the replica checks it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from fedunlearn.config.load import config_from_dict
from fedunlearn.config.schema import ExperimentConfig
from fedunlearn.data import load_partitions
from fedunlearn.engine.inprocess import run_phases_inprocess
from fedunlearn.engine.session import load_run_config, prepare_run
from fedunlearn.errors import FedUnlearnError
from fedunlearn.rundir import RunDir, fl_finished
from fedunlearn.stages.seed_replicas import seed_run_dir

log = logging.getLogger(__name__)


def seed_config(parent: ExperimentConfig, seed: int) -> ExperimentConfig:
    """The parent experiment with training seed ``seed``, the parent's data, and no audit instruments of its own."""
    d = parent.model_dump(mode="json")
    d["seed"] = seed
    d["name"] = f"{parent.name}-seed{seed}"
    d["data"]["seed"] = parent.data_seed
    d["audit"].update({"attacks": ["loss"], "retrain_null": False, "seeds": 0, "during": False,
                       "after_rounds": 0})
    d["sim"]["backend"] = "inprocess"
    return config_from_dict(d)


def train_seed_runs(run_dir: Path, m: int) -> list[Path]:
    """Train (or finish) the M replicas of ``run_dir`` with seeds seed+1..seed+M; returns their run directories."""
    run_dir = Path(run_dir)
    parent = load_run_config(run_dir)
    parts = load_partitions(RunDir(run_dir).partitions)
    dirs = []
    for i in range(1, m + 1):
        seed = parent.seed + i
        d = seed_run_dir(run_dir, seed)
        if not RunDir(d).config.exists():
            prepare_run(seed_config(parent, seed), d)
            _check_same_data(parts, load_partitions(RunDir(d).partitions), d)
        if not fl_finished(d):
            log.info("A2 seed replica %d/%d (seed %d): training in-process", i, m, seed)
            run_phases_inprocess(load_run_config(d), d)
        dirs.append(d)
    return dirs


def _check_same_data(parent, replica, where: Path) -> None:
    same = len(parent.members) == len(replica.members) and np.array_equal(parent.test, replica.test) and all(
        np.array_equal(a, b) for a, b in zip(parent.members + parent.validation + parent.audit,
                                 replica.members + replica.validation + replica.audit))
    if not same:
        raise FedUnlearnError(f"seed replica {where}: its partitions differ from the audited run's (data.seed?)")
