"""Datasets chosen by name: embedded (``digits``, ``synthetic``), torchvision (``mnist``, ``fashion_mnist``,
``cifar10``) or a user ``.npz``.

Every loader is a pure function of ``(DataConfig, seed)``: the server and every client rebuild the same arrays from
the resolved config alone, so no data travels through Flower. ``load_dataset`` caches a few results per process
because client actors ask for the same dataset on every message.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fedunlearn.errors import ConfigError, DataError
from fedunlearn.registry import Registry

if TYPE_CHECKING:
    from fedunlearn.config.schema import DataConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dataset:
    """A training pool and a global test set, as float32 features and int64 labels.

    Parameters
    ----------
    name:
        The registry name the dataset was loaded under.
    x_train, y_train:
        Training pool (partitioned into clients): ``(N, F)`` for tabular data or ``(N, C, H, W)`` for images.
    x_test, y_test:
        Global test set, same feature shape.
    num_classes:
        Number of classes; labels are in ``0..num_classes-1``.

    The arrays are shared through the per-process cache of ``load_dataset``: treat them as read-only.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one record (what a model factory needs)."""
        return tuple(self.x_train.shape[1:])


DatasetLoader = Callable[["DataConfig", int], Dataset]
DATASETS: Registry[DatasetLoader] = Registry("dataset")

_CACHE_SIZE = 4
_cache: OrderedDict[tuple[str, int, str], Dataset] = OrderedDict()


def load_dataset(cfg: DataConfig, seed: int) -> Dataset:
    """Load ``cfg.dataset`` deterministically in ``seed``; repeated calls in one process hit a small LRU cache."""
    key = (cfg.model_dump_json(), seed, os.getcwd())  # cwd: relative paths resolve against it
    hit = _cache.get(key)
    if hit is not None:
        _cache.move_to_end(key)
        return hit
    loader = DATASETS.get(cfg.dataset, "data.dataset")
    ds = loader(cfg, seed)
    log.info(
        "dataset %s: %d train, %d test, %d classes, input %s",
        ds.name, len(ds.y_train), len(ds.y_test), ds.num_classes, ds.input_shape,
    )
    _cache[key] = ds
    while len(_cache) > _CACHE_SIZE:
        _cache.popitem(last=False)
    return ds


def clear_dataset_cache() -> None:
    """Forget cached datasets (tests; or after the files behind a config changed)."""
    _cache.clear()


def describe_datasets() -> list[tuple[str, str]]:
    """(name, one-line description) per registered dataset, from the first docstring line of its loader."""
    out = []
    for name, loader in DATASETS.items():
        doc = (loader.__doc__ or "").strip().splitlines()
        out.append((name, doc[0].strip() if doc else ""))
    return out


# --------------------------------------------------------------------------------------------------- helpers


def _split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    """Seeded train/test split, stratified when every class is large enough for it (else plain)."""
    from sklearn.model_selection import train_test_split

    try:
        return tuple(train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y))
    except ValueError:
        pass
    try:
        return tuple(train_test_split(x, y, test_size=test_fraction, random_state=seed))
    except ValueError as err:
        raise ConfigError(
            f"data.test_fraction: cannot split {len(y)} records with test_fraction={test_fraction} ({err})"
        ) from None


def _cap(x: np.ndarray, y: np.ndarray, cfg: DataConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Subsample the training pool to ``cfg.max_samples`` (seeded, without replacement, original order kept)."""
    if cfg.max_samples <= 0 or cfg.max_samples >= len(y):
        return x, y
    keep = np.sort(np.random.default_rng([seed, 2]).choice(len(y), size=cfg.max_samples, replace=False))
    return x[keep], y[keep]


def _normalize_channels(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel standardization of ``(N, C, H, W)`` images with the training pool's statistics."""
    mean = x_train.mean(axis=(0, 2, 3), dtype=np.float64).reshape(1, -1, 1, 1)
    std = x_train.std(axis=(0, 2, 3), dtype=np.float64).reshape(1, -1, 1, 1)
    std = np.where(std < 1e-12, 1.0, std)
    return ((x_train - mean) / std).astype(np.float32), ((x_test - mean) / std).astype(np.float32)


def _resolve(path: str) -> Path:
    return Path(path).expanduser().resolve()


# --------------------------------------------------------------------------------------------------- digits


@DATASETS.register("digits")
def load_digits(cfg: DataConfig, seed: int) -> Dataset:
    """scikit-learn's embedded 8x8 handwritten digits (1,797 images, 10 classes); no download; a smoke test."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = (bunch.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = _split(x, y, cfg.test_fraction, seed)
    x_tr, y_tr = _cap(x_tr, y_tr, cfg, seed)
    return Dataset("digits", x_tr, y_tr, x_te, y_te, 10)


# --------------------------------------------------------------------------------------------------- torchvision


def _torchvision(name: str, cls_name: str, folder: str, cfg: DataConfig, seed: int) -> Dataset:
    """Load a torchvision dataset from ``data_dir`` (downloading only when asked), scaled to [0, 1], standardized."""
    import torchvision.datasets as tvd

    cls = getattr(tvd, cls_name)
    root = _resolve(cfg.data_dir)
    expected = root / folder
    try:
        train = cls(str(root), train=True, download=cfg.download)
        test = cls(str(root), train=False, download=False)
    except (RuntimeError, OSError) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        if cfg.download:
            raise DataError(
                f"data.data_dir: downloading {name} into {expected} failed ({reason}); check the network, "
                f"or place the files there and set data.download = false"
            ) from None
        raise DataError(
            f"data.data_dir: {name} not found at {expected}; set data.download = true or place the files there"
        ) from None
    except (ValueError, TypeError, AssertionError, EOFError, KeyError, pickle.UnpicklingError) as err:
        raise DataError(
            f"data.data_dir: {name} files under {expected} are unreadable ({type(err).__name__}: {err}); "
            f"delete them and set data.download = true"
        ) from None
    x_tr, y_tr = _images(train.data), np.asarray(train.targets, dtype=np.int64)
    x_te, y_te = _images(test.data), np.asarray(test.targets, dtype=np.int64)
    x_tr, y_tr = _cap(x_tr, y_tr, cfg, seed)  # before the float conversion: CIFAR-10 as float32 is 600 MB
    x_tr, x_te = _normalize_channels(_to_unit(x_tr), _to_unit(x_te))
    return Dataset(name, x_tr, y_tr, x_te, y_te, len(train.classes))


def _images(data: Any) -> np.ndarray:
    """uint8 images as ``(N, C, H, W)``: MNIST gives a ``(N, H, W)`` tensor, CIFAR a ``(N, H, W, C)`` array."""
    arr = data.numpy() if hasattr(data, "numpy") else np.asarray(data)
    if arr.ndim == 3:
        return arr[:, None, :, :]
    return np.ascontiguousarray(arr.transpose(0, 3, 1, 2))


def _to_unit(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32) / np.float32(255.0)


@DATASETS.register("mnist")
def load_mnist(cfg: DataConfig, seed: int) -> Dataset:
    """MNIST handwritten digits, 60k/10k 28x28 (torchvision; files in <data_dir>/MNIST/raw or data.download=true)."""
    return _torchvision("mnist", "MNIST", "MNIST/raw", cfg, seed)


@DATASETS.register("fashion_mnist")
def load_fashion_mnist(cfg: DataConfig, seed: int) -> Dataset:
    """Fashion-MNIST clothing, 60k/10k 28x28 (torchvision; <data_dir>/FashionMNIST/raw or data.download=true)."""
    return _torchvision("fashion_mnist", "FashionMNIST", "FashionMNIST/raw", cfg, seed)


@DATASETS.register("cifar10")
def load_cifar10(cfg: DataConfig, seed: int) -> Dataset:
    """CIFAR-10 colour images, 50k/10k 32x32 (torchvision; <data_dir>/cifar-10-batches-py or data.download=true)."""
    return _torchvision("cifar10", "CIFAR10", "cifar-10-batches-py", cfg, seed)


# --------------------------------------------------------------------------------------------------- npz


def _labels(y: Any, key: str, where: str, records: int) -> np.ndarray:
    """Integer class indices 0..C-1 as int64 (integral floats accepted), with C at most ``records`` (the records of
    x and x_test): larger labels are ids, not classes — a label of 10^9 would build a model with 10^9 outputs."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise DataError(f"data.path: {where}: array {key!r} must be 1-D labels, got shape {y.shape}")
    if y.dtype.kind not in "iuf":
        raise DataError(f"data.path: {where}: array {key!r} must hold integer class labels, got dtype {y.dtype}")
    bad = np.flatnonzero(~np.isfinite(y) | (y != np.round(y))) if y.dtype.kind == "f" else []
    if len(bad):
        raise DataError(f"data.path: {where}: array {key!r} has {len(bad)} non-integer label(s) (first: "
                        f"{float(y[bad[0]])} at record {bad[0]}); allowed: integer class indices 0..C-1")
    neg = np.flatnonzero(y < 0)
    if neg.size:
        raise DataError(f"data.path: {where}: array {key!r} has {neg.size} negative label(s) (first: {y[neg[0]]:g} "
                        f"at record {neg[0]}); allowed: 0..C-1")
    if y.size and y.max() >= records:  # compared before the int64 cast, which would wrap values beyond it
        i = int(np.argmax(y))
        raise DataError(f"data.path: {where}: array {key!r} has label {y[i]:.12g} (record {i}), more classes than "
                        f"the {records} records; allowed: class indices 0..C-1 with C <= {records} (relabel, e.g. "
                        "np.unique(y, return_inverse=True))")
    return y.astype(np.int64)


def _features(x: Any, key: str, where: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim not in (2, 4):
        raise DataError(
            f"data.path: {where}: array {key!r} has shape {x.shape}; allowed: (N, features) or (N, C, H, W)"
        )
    if x.dtype.kind not in "biuf":
        raise DataError(f"data.path: {where}: array {key!r} must be numeric, got dtype {x.dtype}")
    with np.errstate(over="ignore", invalid="ignore"):  # values beyond float32 become inf: reported below
        out = x.astype(np.float32)
    bad = ~np.isfinite(out)
    if bad.any():
        rec = int(np.flatnonzero(bad.reshape(len(out), -1).any(axis=1))[0])
        raise DataError(f"data.path: {where}: array {key!r} has {int(bad.sum())} NaN or infinite value(s) as float32 "
                        f"(first in record {rec}); allowed: finite numbers below {np.finfo(np.float32).max:.1e}")
    return out


@DATASETS.register("npz")
def load_npz(cfg: DataConfig, seed: int) -> Dataset:
    """Your own arrays: data.path = a .npz with x (N, features) or (N, C, H, W) and y (N,); optional x_test, y_test."""
    if not cfg.path:
        raise DataError("data.path: dataset 'npz' needs data.path (a .npz file with arrays x and y)")
    path = _resolve(cfg.path)
    if not path.is_file():
        raise DataError(f"data.path: file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as err:  # noqa: BLE001 - any unreadable file is one user-facing error
        raise DataError(f"data.path: {path} is not a readable .npz file ({type(err).__name__}: {err})") from None
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise DataError(
            f"data.path: {path} lacks array(s) {', '.join(missing)}; found: {', '.join(sorted(arrays)) or 'none'}"
        )
    records = sum(np.atleast_1d(arrays[k]).shape[0] for k in ("x", "x_test") if k in arrays)
    x = _features(arrays["x"], "x", str(path))
    y = _labels(arrays["y"], "y", str(path), records)
    if len(x) != len(y):
        raise DataError(f"data.path: {path}: x has {len(x)} records but y has {len(y)}; allowed: one label per record")
    if len(y) < 2:
        raise DataError(f"data.path: {path}: needs at least 2 records, got {len(y)}")
    has_test = [k for k in ("x_test", "y_test") if k in arrays]
    if len(has_test) == 1:
        raise DataError(f"data.path: {path} has {has_test[0]} without its partner; give both x_test and y_test")
    if has_test:
        x_te = _features(arrays["x_test"], "x_test", str(path))
        y_te = _labels(arrays["y_test"], "y_test", str(path), records)
        if len(x_te) != len(y_te):
            raise DataError(f"data.path: {path}: x_test has {len(x_te)} records but y_test has {len(y_te)}; allowed: "
                            "one label per record")
        if x_te.shape[1:] != x.shape[1:]:
            raise DataError(f"data.path: {path}: x_test records {x_te.shape[1:]} differ from x records {x.shape[1:]}")
    classes = np.unique(y)
    if classes.size < 2:
        raise DataError(f"data.path: {path}: array 'y' holds a single class ({classes[0]}); allowed: at least 2 "
                        "classes")
    num_classes = int(max(y.max(), y_te.max() if has_test and y_te.size else 0)) + 1
    if has_test:
        x_tr, y_tr = x, y
    else:
        x_tr, x_te, y_tr, y_te = _split(x, y, cfg.test_fraction, seed)
    x_tr, y_tr = _cap(x_tr, y_tr, cfg, seed)
    return Dataset("npz", x_tr, y_tr, x_te, y_te, num_classes)


# --------------------------------------------------------------------------------------------------- synthetic


@DATASETS.register("synthetic")
def load_synthetic(cfg: DataConfig, seed: int) -> Dataset:
    """Generated tabular data (scikit-learn make_classification; data.samples/features/informative/classes/...)."""
    from sklearn.datasets import make_classification

    if cfg.informative > cfg.features:
        raise ConfigError(f"data.informative: {cfg.informative} must be <= data.features ({cfg.features})")
    if cfg.classes > 2**cfg.informative:
        need = int(np.ceil(np.log2(cfg.classes)))
        raise ConfigError(
            f"data.informative: {cfg.informative} too small for {cfg.classes} classes; allowed: >= {need} "
            f"(make_classification needs classes <= 2**informative)"
        )
    x, y = make_classification(
        n_samples=cfg.samples,
        n_features=cfg.features,
        n_informative=cfg.informative,
        n_redundant=0,
        n_classes=cfg.classes,
        n_clusters_per_class=1,
        class_sep=cfg.class_sep,
        flip_y=cfg.flip_y,
        random_state=seed,
    )
    x_tr, x_te, y_tr, y_te = _split(x, y.astype(np.int64), cfg.test_fraction, seed)
    x_tr, y_tr = _cap(x_tr, y_tr, cfg, seed)
    mean = x_tr.mean(axis=0)
    std = x_tr.std(axis=0)
    std = np.where(std < 1e-12, 1.0, std)
    x_tr = ((x_tr - mean) / std).astype(np.float32)
    x_te = ((x_te - mean) / std).astype(np.float32)
    return Dataset("synthetic", x_tr, y_tr, x_te, y_te, cfg.classes)
