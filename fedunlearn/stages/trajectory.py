"""The measure along a sequence of saved models (during unlearning, ``stages/during.py``; after it,
``stages/after.py``): for one model, the withdrawn clients' leakage and the test accuracy.

Leakage is the loss attack's AUC of the withdrawn clients' members against their audit records, pooled over the
withdrawn clients (one client: exactly its loss AUC in ``per_client.csv``); for a class withdrawal, the forgotten
classes' member accuracy (docs/leakage.md: there the null band is no yardstick). The loss attack needs no reference
models, so every saved model of a run can be scored the same way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedunlearn.audit.metrics import auc
from fedunlearn.config.schema import ExperimentConfig
from fedunlearn.data.cache import experiment_data
from fedunlearn.rundir import ORIGINAL
from fedunlearn.stages.inference import compute_signals
from fedunlearn.stages.scoring import score_models


class WithdrawnLeakage:
    """Scores saved models of one run: ``measure(name)`` -> (leakage, test accuracy); ``description`` says which
    leakage it is."""

    def __init__(self, run_dir: Path, cfg: ExperimentConfig, parts, gamma: float) -> None:  # noqa: ANN001
        self.run_dir, self.parts, self.gamma = run_dir, parts, gamma
        self.withdrawn = sorted(cfg.withdraw.clients)
        self.forget = np.zeros(0, dtype=np.int64)
        if not self.withdrawn:
            ds, _ = experiment_data(cfg)
            members = np.concatenate(parts.members)
            self.forget = members[np.isin(ds.y_train[members], cfg.withdraw.classes)]
        self._original = compute_signals(run_dir, ORIGINAL)  # the attack input's reference (the loss attack ignores it)
        self.description = ("loss-attack AUC of the withdrawn clients' members vs their audit records"
                            if self.withdrawn else "accuracy on the forgotten classes' members")

    def measure(self, name: str) -> tuple[float, float]:
        """(leakage, test accuracy) of the saved model ``name`` (signals cached like every audited model's)."""
        sig = compute_signals(self.run_dir, name)
        if self.withdrawn:
            scores = score_models([name], {name: sig, ORIGINAL: self._original}, self.parts, ["loss"], self.gamma,
                                  None)
            mem = np.concatenate([scores[(name, k, "loss")][0] for k in self.withdrawn])
            non = np.concatenate([scores[(name, k, "loss")][1] for k in self.withdrawn])
            leakage = auc(mem, non)
        else:
            leakage = float(sig.pool_correct[self.forget].mean())
        return float(leakage), float(sig.test_correct[self.parts.test].mean())
