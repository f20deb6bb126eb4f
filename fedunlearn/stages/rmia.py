"""RMIA's instruments (Zarifzadeh et al., ICML 2024, offline; docs/leakage.md A1): the two reference federations
saved in the run, the population sample Z of audit and test records, and the tuned ``a``."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedunlearn.audit.attacks import ATTACKS, rmia_scores, tune_rmia_a
from fedunlearn.audit.metrics import (
    auc,
)
from fedunlearn.audit.signals import RecordSignals
from fedunlearn.rundir import RunDir
from fedunlearn.stages.inference import BOTH_REFERENCES, REFERENCES, ModelSignals, compute_signals


@dataclass(frozen=True)
class Population:
    """RMIA's population sample Z: audit records (training-pool indices) and test records (test indices)."""

    pool: np.ndarray
    test: np.ndarray

    def __len__(self) -> int:
        return int(len(self.pool) + len(self.test))

    def without(self, pool_idx: np.ndarray) -> Population:
        """Z minus the given pool records (a client's own audit records are never its population)."""
        return Population(self.pool[~np.isin(self.pool, pool_idx)], self.test)

    def signals(self, s: ModelSignals) -> RecordSignals:
        if s.test is None:
            raise ValueError("these signals lack test-set outputs (stale cache)")
        return RecordSignals(np.concatenate([s.pool.prob_true[self.pool], s.test.prob_true[self.test]]),
                             np.concatenate([s.pool.phi[self.pool], s.test.phi[self.test]]))


def sample_population(parts, size: int, seed: int) -> Population:
    """The union of every client's audit records and the test set, seeded sample of at most ``size`` records
    (validation records never: methods read them)."""
    hold = np.sort(np.concatenate([np.asarray(h, np.int64) for h in parts.audit]))
    test = np.asarray(parts.test, np.int64)
    n = len(hold) + len(test)
    if n <= size:
        return Population(hold, test)
    pick = np.sort(np.random.default_rng([seed, 0x726D6961]).choice(n, size=size, replace=False))
    return Population(hold[pick[pick < len(hold)]], test[pick[pick >= len(hold)] - len(hold)])


@dataclass
class References:
    """RMIA's two reference federations, the population and the tuned ``a``.

    Parameters
    ----------
    half_a, half_b: the clients each reference trained on (complementary halves of the remaining clients).
    out_of_both: withdrawn clients, in neither half (OUT for both; the audit uses the mean of both references'
        p(x) for them, as RMIA averages over every reference model that is OUT for x: less variance than one).
    sigs: cached signals of ``reference_a`` and ``reference_b``.
    population: the population sample Z.
    a, tuning_auc: RMIA's ``a``, tuned by attacking reference A with reference B, and the AUC it reached.
    """

    half_a: list[int]
    half_b: list[int]
    out_of_both: list[int]
    sigs: dict[str, ModelSignals]
    population: Population
    a: float = math.nan
    tuning_auc: float = math.nan

    def __post_init__(self) -> None:
        ra, rb = self.sigs[REFERENCES[0]], self.sigs[REFERENCES[1]]
        self.sigs[BOTH_REFERENCES] = ModelSignals(_mean_signals(ra.pool, rb.pool), ra.pool_correct, ra.test_correct,
                                                  _mean_signals(ra.test, rb.test) if ra.test and rb.test else None)

    def for_client(self, k: int) -> str:
        """The reference signals that EXCLUDE client k (both references' mean when both exclude it)."""
        if k in self.out_of_both:
            return BOTH_REFERENCES
        return REFERENCES[1] if k in self.half_a else REFERENCES[0]

    def tune(self, parts, gamma: float) -> None:
        """Tune ``a`` on {0, 0.1, ..., 1}: target = reference A, reference = B; members = A's clients' members,
        non-members = A's clients' audit records (OUT for both), population = Z without those."""
        mem = np.concatenate([parts.members[k] for k in self.half_a])
        non = np.concatenate([parts.audit[k] for k in self.half_a])
        ra, rb = self.sigs[REFERENCES[0]], self.sigs[REFERENCES[1]]
        z = self.population.without(non)
        pza, pzb = z.signals(ra).prob_true, z.signals(rb).prob_true
        self.a = tune_rmia_a(ra.pool.prob_true[mem], ra.pool.prob_true[non], rb.pool.prob_true[mem],
                             rb.pool.prob_true[non], pza, pzb, gamma=gamma)
        s_mem = rmia_scores(ra.pool.prob_true[mem], rb.pool.prob_true[mem], pza, pzb, self.a, gamma)
        s_non = rmia_scores(ra.pool.prob_true[non], rb.pool.prob_true[non], pza, pzb, self.a, gamma)
        self.tuning_auc = auc(s_mem, s_non)

    def describe(self) -> dict:
        return {"a": self.a, "a_grid": [round(0.1 * i, 1) for i in range(11)], "tuning_auc": self.tuning_auc,
                "tuned_on": "reference_a attacked with reference_b (members vs audit records of reference A's clients)",
                "population_size": len(self.population), "population_held_out": int(len(self.population.pool)),
                "population_test": int(len(self.population.test)),
                "halves": {"reference_a": self.half_a, "reference_b": self.half_b, "out_of_both": self.out_of_both},
                "reference_for_client": "reference_b for reference A's clients, reference_a for reference B's, the "
                                        "mean of both for withdrawn clients (OUT for both references)"}


def _mean_signals(a: RecordSignals, b: RecordSignals) -> RecordSignals:
    """The mean of two models' p_y(x) (RMIA's reference term), with its logit-scaled confidence."""
    p = (a.prob_true + b.prob_true) / 2
    return RecordSignals(prob_true=p, phi=np.log(p) - np.log1p(-np.minimum(p, 1 - 1e-16)))


def load_references(run_dir: Path, cfg, parts) -> References:
    """The references of a run (``references.json`` and ``models/reference_{a,b}.pt``), tuned."""
    from fedunlearn.errors import ConfigError

    meta_path = RunDir(run_dir).references
    missing = [p.name for p in [meta_path] + [RunDir(run_dir).model(r) for r in REFERENCES] if not p.exists()]
    if missing:
        allowed = ", ".join(n for n in ATTACKS.names() if "reference" not in ATTACKS.get(n).needs)
        raise ConfigError(f"audit.attacks: rmia needs reference federations, which this run did not train "
                          f"(missing {', '.join(missing)}; run with rmia among audit.attacks); allowed here: {allowed}")
    meta = json.loads(meta_path.read_text())
    refs = References(list(meta["reference_a"]), list(meta["reference_b"]), list(meta.get("out_of_both", [])),
                      {r: compute_signals(run_dir, r) for r in REFERENCES},
                      sample_population(parts, cfg.audit.population, cfg.seed))
    refs.tune(parts, cfg.audit.gamma)
    return refs
