"""Partitioners chosen by name: split the training pool's indices into ``data.clients`` disjoint client partitions.

Pure functions of (labels, config, generator) so they test without Flower or Ray. ``partition_indices`` is the one
entry point: it seeds the generator, dispatches through ``PARTITIONERS`` and checks that the result is a partition
(disjoint, complete, sorted int64), so a newly registered partitioner cannot silently drop or duplicate records.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from fedunlearn.errors import ConfigError
from fedunlearn.registry import Registry

if TYPE_CHECKING:
    from fedunlearn.config.schema import DataConfig

log = logging.getLogger(__name__)

Partitioner = Callable[[np.ndarray, int, "DataConfig", np.random.Generator], list[np.ndarray]]
PARTITIONERS: Registry[Partitioner] = Registry("partitioner")

DIRICHLET_TRIES = 100


def _need_records(n: int, clients: int) -> None:
    if n < clients:
        raise ConfigError(f"data.clients: {clients} clients but only {n} training records; allowed: <= {n}")


@PARTITIONERS.register("iid")
def iid(labels: np.ndarray, clients: int, cfg: DataConfig, rng: np.random.Generator) -> list[np.ndarray]:
    """Uniformly random split into near-equal parts (sizes differ by at most one)."""
    _need_records(len(labels), clients)
    return list(np.array_split(rng.permutation(len(labels)), clients))


@PARTITIONERS.register("dirichlet")
def dirichlet(labels: np.ndarray, clients: int, cfg: DataConfig, rng: np.random.Generator) -> list[np.ndarray]:
    """Label skew: each class is split over clients by Dirichlet(alpha) proportions (Hsu et al., 2019,
    arXiv:1909.06335); small alpha = each client sees few classes. Redrawn until every client has >= min_size."""
    n = len(labels)
    if n < clients * cfg.min_size:
        raise ConfigError(
            f"data.min_size: {clients} clients x min_size {cfg.min_size} exceeds the {n} training records; "
            f"lower data.min_size or data.clients"
        )
    by_class = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    smallest = 0
    for _ in range(DIRICHLET_TRIES):
        parts: list[list[np.ndarray]] = [[] for _ in range(clients)]
        for idx in by_class:
            p = rng.dirichlet(np.full(clients, cfg.alpha))
            cuts = (np.cumsum(p)[:-1] * len(idx)).astype(np.int64)
            for k, chunk in enumerate(np.split(idx, cuts)):
                parts[k].append(chunk)
        out = [np.concatenate(p) for p in parts]
        smallest = min(len(p) for p in out)
        if smallest >= cfg.min_size:
            return out
    raise ConfigError(
        f"data.alpha / data.min_size: {DIRICHLET_TRIES} Dirichlet(alpha={cfg.alpha}) draws left a client with fewer "
        f"than min_size={cfg.min_size} records (smallest {smallest}); raise data.alpha or lower data.min_size "
        f"or data.clients"
    )


@PARTITIONERS.register("shards")
def shards(labels: np.ndarray, clients: int, cfg: DataConfig, rng: np.random.Generator) -> list[np.ndarray]:
    """Pathological label skew of the FedAvg paper (McMahan et al., 2017, arXiv:1602.05629): sort by label, cut into
    clients x shards_per_client shards, deal shards_per_client random shards to each client."""
    n_shards = clients * cfg.shards_per_client
    if len(labels) < n_shards:
        raise ConfigError(
            f"data.shards_per_client: {clients} clients x {cfg.shards_per_client} shards needs >= {n_shards} "
            f"training records, got {len(labels)}; lower data.shards_per_client or data.clients"
        )
    shuffled = rng.permutation(len(labels))  # random order within a class, then a stable sort by label
    order = shuffled[np.argsort(labels[shuffled], kind="stable")]
    pieces = np.array_split(order, n_shards)
    deal = rng.permutation(n_shards).reshape(clients, cfg.shards_per_client)
    return [np.concatenate([pieces[s] for s in row]) for row in deal]


def partition_indices(labels: np.ndarray, cfg: DataConfig, seed: int) -> list[np.ndarray]:
    """Partition ``range(len(labels))`` into ``cfg.clients`` sorted int64 index arrays with ``cfg.partition``."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    fn = PARTITIONERS.get(cfg.partition, "data.partition")
    rng = np.random.default_rng(seed)
    parts = [np.sort(np.asarray(p, dtype=np.int64)) for p in fn(labels, cfg.clients, cfg, rng)]
    if len(parts) != cfg.clients:
        raise RuntimeError(f"partitioner {cfg.partition!r} returned {len(parts)} partitions, expected {cfg.clients}")
    joined = np.sort(np.concatenate(parts)) if parts else np.empty(0, np.int64)
    if len(joined) != len(labels) or not np.array_equal(joined, np.arange(len(labels))):
        raise RuntimeError(f"partitioner {cfg.partition!r} did not return a disjoint, complete partition")
    empty = [k for k, p in enumerate(parts) if len(p) == 0]
    if empty:
        raise ConfigError(
            f"data.partition: {cfg.partition!r} left client(s) {empty} without records; lower data.clients"
        )
    log.debug("partition %s: sizes %s", cfg.partition, [len(p) for p in parts])
    return parts
