"""Member / validation / audit split of each client's partition, and the saved ``partitions.npz`` of a run.

A client trains only on its members. Its held-out records (never trained on) are split once more (docs/leakage.md):
- **validation**: the client's own held-out data, which a method may read inside the client's withdrawal window
  (unseen-data outputs, an oracle's threshold, a Gaussian fit, a stop rule);
- **audit**: read by the audit alone — the calibrated non-members of the client's leakage audit (same distribution,
  never trained on, never seen by any method), so under the retrained model the withdrawn client's attack AUC is 0.5
  in expectation, and no method can tune or stop on the very records that judge it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedunlearn.data.partition import partition_indices
from fedunlearn.errors import ConfigError, DataError
from fedunlearn.io import atomic_save_npz

if TYPE_CHECKING:
    from fedunlearn.config.schema import DataConfig
    from fedunlearn.data.datasets import Dataset

log = logging.getLogger(__name__)


@dataclass
class Partitions:
    """Which records each client holds, by index.

    Parameters
    ----------
    members:
        Per client (partition id = list position): indices into ``x_train`` the client trains on.
    validation:
        Per client: held-out indices a method may read inside the client's withdrawal window (never trained on).
    audit:
        Per client: held-out indices only the audit reads (its non-members; never trained on, never read by a method).
    test:
        Indices into ``x_test`` of the global test set.
    """

    members: list[np.ndarray]
    validation: list[np.ndarray]
    audit: list[np.ndarray]
    test: np.ndarray

    @property
    def holdout(self) -> list[np.ndarray]:
        """Per client: every held-out record (validation and audit), sorted."""
        return [np.sort(np.concatenate([v, a])) for v, a in zip(self.validation, self.audit)]

    @property
    def num_clients(self) -> int:
        return len(self.members)

    def client_indices(self, pid: int) -> np.ndarray:
        """All of client ``pid``'s records (members and held-out), sorted indices into ``x_train``."""
        if not 0 <= pid < self.num_clients:
            raise ConfigError(f"partition id {pid} out of range; allowed: 0..{self.num_clients - 1}")
        return np.sort(np.concatenate([self.members[pid], self.validation[pid], self.audit[pid]]))


def _shuffle_split(indices: np.ndarray, share: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(``round(share * n)`` shuffled indices, the rest), each sorted and at least one record (needs n >= 2)."""
    k = min(max(int(round(share * len(indices))), 1), len(indices) - 1)
    perm = rng.permutation(indices)
    return np.sort(perm[:k]), np.sort(perm[k:])


def split_member_holdout(
    indices: np.ndarray, holdout: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Shuffle ``indices`` and keep ``round(holdout * n)`` of them out (at least one record on each side)."""
    indices = np.asarray(indices, dtype=np.int64)
    n = len(indices)
    if n < 2:
        raise ConfigError(
            f"data.clients: a client holds {n} record(s); each needs >= 2 to keep members and held-out records "
            f"apart; lower data.clients"
        )
    if not 0 < holdout < 1:
        raise ConfigError(f"data.holdout: {holdout} not allowed; allowed: 0 < holdout < 1")
    held, members = _shuffle_split(indices, holdout, rng)
    return members, held


def split_validation_audit(holdout: np.ndarray, validation: float, rng: np.random.Generator,
                           pid: int) -> tuple[np.ndarray, np.ndarray]:
    """Shuffle a client's held-out records and give ``round(validation * n)`` of them to the validation part, the
    rest to the audit part (at least one record each)."""
    holdout = np.asarray(holdout, dtype=np.int64)
    if len(holdout) < 2:
        raise ConfigError(
            f"data.holdout: client {pid} keeps {len(holdout)} held-out record(s); it needs >= 2 (validation and "
            f"audit parts); raise data.holdout or data.samples"
        )
    return _shuffle_split(holdout, validation, rng)


def make_partitions(dataset: Dataset, cfg: DataConfig, seed: int) -> Partitions:
    """Partition the training pool into clients, then split each client into members, validation and audit records,
    all seeded."""
    parts = partition_indices(dataset.y_train, cfg, seed)
    members, validation, audit = [], [], []
    for pid, idx in enumerate(parts):
        # One generator per client: a client's split does not depend on the other clients' sizes.
        m, h = split_member_holdout(idx, cfg.holdout, np.random.default_rng([seed, 1, pid]))
        v, a = split_validation_audit(h, cfg.validation, np.random.default_rng([seed, 2, pid]), pid)
        members.append(m)
        validation.append(v)
        audit.append(a)
    log.debug("members per client %s, validation %s, audit %s", [len(m) for m in members],
              [len(v) for v in validation], [len(a) for a in audit])
    return Partitions(members, validation, audit, np.arange(len(dataset.y_test), dtype=np.int64))


def save_partitions(path: str | Path, parts: Partitions) -> Path:
    """Write ``partitions.npz`` atomically: ``member_<pid>``, ``validation_<pid>``, ``audit_<pid>``, ``test``,
    ``num_clients``."""
    arrays: dict[str, np.ndarray] = {"num_clients": np.asarray(parts.num_clients, dtype=np.int64)}
    for pid in range(parts.num_clients):
        arrays[f"member_{pid}"] = np.asarray(parts.members[pid], dtype=np.int64)
        arrays[f"validation_{pid}"] = np.asarray(parts.validation[pid], dtype=np.int64)
        arrays[f"audit_{pid}"] = np.asarray(parts.audit[pid], dtype=np.int64)
    arrays["test"] = np.asarray(parts.test, dtype=np.int64)
    return atomic_save_npz(path, **arrays)


def load_partitions(path: str | Path) -> Partitions:
    """Read a ``partitions.npz`` written by ``save_partitions``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"partitions: file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as f:
            k = int(f["num_clients"])
            members = [f[f"member_{pid}"].astype(np.int64) for pid in range(k)]
            validation = [f[f"validation_{pid}"].astype(np.int64) for pid in range(k)]
            audit = [f[f"audit_{pid}"].astype(np.int64) for pid in range(k)]
            test = f["test"].astype(np.int64)
    except KeyError as err:
        raise DataError(f"partitions: {path} lacks array {err} (a run from before the validation/audit split? "
                        f"re-run it)") from None
    return Partitions(members, validation, audit, test)
