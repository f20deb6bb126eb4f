"""The one per-process cache of an experiment's data: its dataset and partitions, rebuilt deterministically from the
config on every node (server, auditor, each Ray worker), so nothing but the config has to travel."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedunlearn.data.datasets import Dataset, load_dataset
from fedunlearn.data.splits import Partitions, make_partitions

if TYPE_CHECKING:
    from fedunlearn.config.schema import ExperimentConfig

_DATA: dict[str, tuple[Dataset, Partitions]] = {}


def experiment_data(cfg: ExperimentConfig) -> tuple[Dataset, Partitions]:
    """The dataset and partitions of an experiment; deterministic in the config, so every node rebuilds the same.
    One experiment's data is kept at a time (a process serves one experiment)."""
    seed = cfg.data_seed
    key = cfg.data.model_dump_json() + f"|{seed}"
    if key not in _DATA:
        _DATA.clear()
        ds = load_dataset(cfg.data, seed)
        _DATA[key] = (ds, make_partitions(ds, cfg.data, seed))
    return _DATA[key]
