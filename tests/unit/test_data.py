"""Data package: partitioners, member/held-out splits, the embedded loaders (the file-based ones:
test_data_loaders.py), and the partitions file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedunlearn.config.load import load_config
from fedunlearn.config.schema import DataConfig
from fedunlearn.data import (
    DATASETS,
    PARTITIONERS,
    Dataset,
    Partitions,
    describe_datasets,
    load_dataset,
    load_partitions,
    make_partitions,
    partition_indices,
    save_partitions,
    split_member_holdout,
    split_validation_audit,
)
from fedunlearn.data.datasets import clear_dataset_cache
from fedunlearn.errors import ConfigError, DataError


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_dataset_cache()
    yield
    clear_dataset_cache()


def _labels(n: int = 1000, classes: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, classes, size=n)


def _check_partition(parts: list[np.ndarray], n: int, clients: int) -> None:
    assert len(parts) == clients
    for p in parts:
        assert p.dtype == np.int64
        assert np.all(np.diff(p) > 0), "sorted, no duplicates"
    joined = np.concatenate(parts)
    assert len(joined) == n, "disjoint"
    assert np.array_equal(np.sort(joined), np.arange(n)), "complete"


# ------------------------------------------------------------------------------------------------ partitioners


@pytest.mark.parametrize("name", PARTITIONERS.names())
def test_partitioner_is_disjoint_complete_and_seeded(name: str) -> None:
    labels = _labels()
    cfg = DataConfig(dataset="synthetic", partition=name, clients=8, alpha=1.0, min_size=10)
    a = partition_indices(labels, cfg, seed=3)
    _check_partition(a, len(labels), 8)
    b = partition_indices(labels, cfg, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    c = partition_indices(labels, cfg, seed=4)
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_iid_sizes_near_equal() -> None:
    parts = partition_indices(_labels(1003), DataConfig(partition="iid", clients=10), seed=0)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_iid_too_many_clients() -> None:
    with pytest.raises(ConfigError, match="data.clients"):
        partition_indices(_labels(5), DataConfig(partition="iid", clients=6), seed=0)


def _mean_tv_from_global(labels: np.ndarray, parts: list[np.ndarray], classes: int) -> float:
    glob = np.bincount(labels, minlength=classes) / len(labels)
    tvs = [0.5 * np.abs(np.bincount(labels[p], minlength=classes) / len(p) - glob).sum() for p in parts]
    return float(np.mean(tvs))


def test_dirichlet_skew_grows_as_alpha_falls() -> None:
    labels = _labels(3000)
    skew = {
        alpha: _mean_tv_from_global(
            labels, partition_indices(labels, DataConfig(partition="dirichlet", clients=10, alpha=alpha), 0), 10
        )
        for alpha in (0.1, 1.0, 10.0)
    }
    assert skew[0.1] > skew[1.0] > skew[10.0]
    assert skew[10.0] < 0.2 < skew[0.1]


def test_dirichlet_respects_min_size() -> None:
    parts = partition_indices(_labels(2000), DataConfig(partition="dirichlet", clients=10, alpha=0.1, min_size=20), 1)
    assert min(len(p) for p in parts) >= 20


def test_dirichlet_impossible_names_fields() -> None:
    with pytest.raises(ConfigError, match="data.min_size"):
        partition_indices(_labels(50), DataConfig(partition="dirichlet", clients=10, min_size=10), 0)
    # feasible in total but hopeless with such a small alpha and min_size = an equal share
    with pytest.raises(ConfigError, match=r"data\.alpha"):
        partition_indices(_labels(100), DataConfig(partition="dirichlet", clients=10, alpha=0.05, min_size=10), 0)


def test_shards_give_few_labels_per_client() -> None:
    cfg = DataConfig(partition="shards", clients=10, shards_per_client=2)
    balanced = np.repeat(np.arange(10), 200)[np.random.default_rng(0).permutation(2000)]
    parts = partition_indices(balanced, cfg, 0)
    assert all(len(np.unique(balanced[p])) <= 2 for p in parts)  # shards align with classes
    labels = _labels(2000)  # unequal class sizes: a shard can straddle a label boundary
    n_labels = [len(np.unique(labels[p])) for p in partition_indices(labels, cfg, 0)]
    assert max(n_labels) <= 4 and np.mean(n_labels) <= 3.5


def test_shards_too_few_records() -> None:
    with pytest.raises(ConfigError, match="data.shards_per_client"):
        partition_indices(_labels(15), DataConfig(partition="shards", clients=4, shards_per_client=4), 0)


def test_unknown_partitioner_rejected_by_config() -> None:
    with pytest.raises(ConfigError, match=r"data.partition: unknown partitioner 'nope'; allowed: .*iid"):
        load_config(None, ["data.partition=nope"])


# ------------------------------------------------------------------------------------------------ splits


def test_split_member_holdout_shares() -> None:
    idx = np.arange(100, 200)
    m, h = split_member_holdout(idx, 0.2, np.random.default_rng(0))
    assert len(h) == 20 and len(m) == 80
    assert not set(m) & set(h)
    assert np.array_equal(np.sort(np.concatenate([m, h])), idx)
    assert m.dtype == h.dtype == np.int64


@pytest.mark.parametrize(("n", "holdout"), [(2, 0.01), (2, 0.99), (3, 0.5), (5, 0.9)])
def test_split_keeps_one_each_side(n: int, holdout: float) -> None:
    m, h = split_member_holdout(np.arange(n), holdout, np.random.default_rng(0))
    assert len(m) >= 1 and len(h) >= 1 and len(m) + len(h) == n


def test_split_needs_two_records() -> None:
    with pytest.raises(ConfigError, match="data.clients"):
        split_member_holdout(np.arange(1), 0.2, np.random.default_rng(0))


@pytest.mark.parametrize(("n", "share"), [(2, 0.01), (2, 0.99), (5, 0.5)])
def test_validation_audit_split_keeps_one_each_side(n: int, share: float) -> None:
    v, a = split_validation_audit(np.arange(n), share, np.random.default_rng(0), pid=0)
    assert len(v) >= 1 and len(a) >= 1 and len(v) + len(a) == n and not set(v) & set(a)


def test_validation_audit_split_needs_two_held_out_records() -> None:
    with pytest.raises(ConfigError, match="data.holdout: client 3"):
        split_validation_audit(np.arange(1), 0.5, np.random.default_rng(0), pid=3)


def test_validation_share_is_validated() -> None:
    from fedunlearn.config.load import load_config

    for bad in ("0", "1", "1.5", '"x"'):
        with pytest.raises(ConfigError, match="data.validation"):
            load_config(None, [f"data.validation={bad}"])


def test_make_partitions_deterministic_and_covering() -> None:
    cfg = DataConfig(dataset="synthetic", samples=400, features=10, informative=5, classes=4, clients=5, holdout=0.25)
    ds = load_dataset(cfg, 0)
    a = make_partitions(ds, cfg, 0)
    b = make_partitions(ds, cfg, 0)
    c = make_partitions(ds, cfg, 1)
    assert a.num_clients == 5
    for pid in range(5):
        assert np.array_equal(a.members[pid], b.members[pid])
        assert np.array_equal(a.validation[pid], b.validation[pid])
        assert np.array_equal(a.audit[pid], b.audit[pid])
        assert not set(a.members[pid]) & set(a.holdout[pid])
        assert not set(a.validation[pid]) & set(a.audit[pid]), "validation and audit parts are disjoint"
        assert np.array_equal(a.holdout[pid], np.sort(np.concatenate([a.validation[pid], a.audit[pid]])))
        share = len(a.holdout[pid]) / len(a.client_indices(pid))
        assert abs(share - 0.25) < 0.05
        assert abs(len(a.validation[pid]) / len(a.holdout[pid]) - cfg.validation) < 0.1
    _check_partition([a.client_indices(p) for p in range(5)], len(ds.y_train), 5)
    assert not np.array_equal(a.members[0], c.members[0])
    assert np.array_equal(a.test, np.arange(len(ds.y_test)))
    with pytest.raises(ConfigError):
        a.client_indices(5)


def test_save_load_partitions_round_trip(tmp_path: Path) -> None:
    cfg = DataConfig(dataset="synthetic", samples=200, features=8, informative=4, classes=3, clients=4)
    parts = make_partitions(load_dataset(cfg, 0), cfg, 0)
    path = save_partitions(tmp_path / "run" / "partitions.npz", parts)
    back = load_partitions(path)
    assert isinstance(back, Partitions) and back.num_clients == 4
    for pid in range(4):
        assert np.array_equal(back.members[pid], parts.members[pid])
        assert np.array_equal(back.validation[pid], parts.validation[pid])
        assert np.array_equal(back.audit[pid], parts.audit[pid])
    assert np.array_equal(back.test, parts.test)
    assert list(tmp_path.joinpath("run").iterdir()) == [path], "no temp files left"
    with pytest.raises(DataError, match="partitions"):
        load_partitions(tmp_path / "missing.npz")


# ------------------------------------------------------------------------------------------------ embedded loaders


def test_registry_names_and_descriptions() -> None:
    assert set(DATASETS.names()) == {"digits", "mnist", "fashion_mnist", "cifar10", "npz", "synthetic"}
    desc = dict(describe_datasets())
    assert set(desc) == set(DATASETS.names()) and all(desc.values())


def test_digits_loader() -> None:
    cfg = DataConfig(dataset="digits", clients=5, test_fraction=0.2)
    ds = load_dataset(cfg, 0)
    assert isinstance(ds, Dataset) and ds.num_classes == 10
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert ds.input_shape == (1, 8, 8) and ds.x_test.shape[1:] == (1, 8, 8)
    assert len(ds.y_train) + len(ds.y_test) == 1797 and abs(len(ds.y_test) - 0.2 * 1797) <= 1
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0
    assert load_dataset(cfg, 0) is ds, "cached"
    clear_dataset_cache()
    again = load_dataset(cfg, 0)
    assert again is not ds and np.array_equal(again.y_train, ds.y_train)
    assert not np.array_equal(load_dataset(cfg, 1).y_train, ds.y_train)


def test_synthetic_loader() -> None:
    cfg = DataConfig(dataset="synthetic", samples=300, features=12, informative=6, classes=5, test_fraction=0.2)
    ds = load_dataset(cfg, 0)
    assert ds.x_train.shape == (240, 12) and ds.x_test.shape == (60, 12)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64 and ds.num_classes == 5
    assert np.allclose(ds.x_train.mean(0), 0, atol=1e-5) and np.allclose(ds.x_train.std(0), 1, atol=1e-4)
    clear_dataset_cache()
    assert np.array_equal(load_dataset(cfg, 0).x_train, ds.x_train)
    assert not np.array_equal(load_dataset(cfg, 1).x_train, ds.x_train)


def test_synthetic_informative_guard() -> None:
    cfg = DataConfig(dataset="synthetic", samples=100, features=10, informative=2, classes=5)
    with pytest.raises(ConfigError, match="data.informative"):
        load_dataset(cfg, 0)


def test_max_samples_subsamples_training_pool() -> None:
    ds = load_dataset(DataConfig(dataset="digits", max_samples=100), 0)
    assert len(ds.y_train) == 100 and len(ds.y_test) > 300
