"""Inference of a finished run's saved models: per-record signals on the whole training pool and the test set,
computed once and cached in ``signals/<model>.npz``, and which models are audited (``original``, the configured
methods, ``retrain``) or are instruments of the audit (RMIA's references, the retrain-vs-retrain null)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedunlearn.audit.signals import RecordSignals, signals_from_logits
from fedunlearn.errors import ConfigError
from fedunlearn.rundir import ORACLE, ORIGINAL, REFERENCES, RETRAIN_NULL, RunDir

BOTH_REFERENCES = "reference_ab"  # records OUT of both references: the mean of both (RMIA averages its references)
#: models saved in ``models/`` that are instruments of the audit, not audited models
NOT_AUDITED = frozenset({"initial", *REFERENCES, RETRAIN_NULL})


def is_null_model(name: str) -> bool:
    """``retrain_null`` and its further seeds ``retrain_null_2``, ``retrain_null_3``, ... (``audit.null_seeds``)."""
    return name == RETRAIN_NULL or (name.startswith(RETRAIN_NULL + "_") and name[len(RETRAIN_NULL) + 1:].isdigit())


def null_model_names(run_dir: Path) -> list[str]:
    """The retrain-vs-retrain null models of a run, in seed order."""
    names = [p.stem for p in RunDir(run_dir).models.glob("*.pt") if is_null_model(p.stem)]
    return sorted(names, key=lambda n: 1 if n == RETRAIN_NULL else int(n.rsplit("_", 1)[1]))
_SIGNALS_VERSION = 2
_UNDEFINED_FR = "undefined (B_T = 0): no withdrawn member was judged a member by the original model"

Scores = dict[tuple[str, int, str], tuple[np.ndarray, np.ndarray]]


@dataclass
class ModelSignals:
    """One model's outputs on the whole training pool and the test set (indexed like the dataset)."""

    pool: RecordSignals
    pool_correct: np.ndarray
    test_correct: np.ndarray
    test: RecordSignals | None = None

    def at(self, idx: np.ndarray) -> RecordSignals:
        return RecordSignals(prob_true=self.pool.prob_true[idx], phi=self.pool.phi[idx])


class ModelFileError(ConfigError):
    """A model file of a run directory that the audit cannot read: missing, empty, truncated or corrupt, or holding
    weights of another model. The audit lists such a method under ``failed_methods``; for ``original`` and ``retrain``
    (every verdict is against them) it stops with this one line."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(f"{path} {reason}")


def audited_models(cfg) -> list[str]:  # noqa: ANN001 - ExperimentConfig
    """The models the audit expects, in order: original, the configured methods, retrain (never ``NOT_AUDITED``)."""
    return [ORIGINAL] + [m for m in cfg.unlearn.methods if m != ORACLE] + [ORACLE]


def _first_line(err: BaseException, limit: int = 120) -> str:
    """The error's type and first sentence, for a one-line reason."""
    text = (str(err).strip().splitlines() or [""])[0].split(". ")[0].rstrip(".")
    return f"{type(err).__name__}: {text[:limit]}" if text else type(err).__name__


def load_model(path: Path, cfg, ds):  # noqa: ANN001, ANN201 - ExperimentConfig, Dataset -> nn.Module
    """The saved model at ``path`` built for the run's model spec; ``ModelFileError`` (one line) when it cannot be."""
    from fedunlearn.models import build_model, load_weights, set_weights

    if not path.is_file():
        raise ModelFileError(path, "is missing")
    if path.stat().st_size == 0:
        raise ModelFileError(path, "is empty (0 bytes)")
    try:
        weights = load_weights(path)
    except Exception as err:  # noqa: BLE001 - torch.load raises OSError, EOFError, KeyError, RuntimeError, ...
        raise ModelFileError(path, f"cannot be read: truncated or not a PyTorch weights file ({_first_line(err)})") \
            from None
    try:
        return set_weights(build_model(cfg.model, ds.input_shape, ds.num_classes), weights)
    except Exception as err:  # noqa: BLE001 - missing keys, wrong shapes
        raise ModelFileError(path, f"does not hold weights of the run's model ({_first_line(err)})") from None


def compute_signals(run_dir: Path, name: str) -> ModelSignals:
    """Inference of model ``name`` on every training-pool and test record, cached in ``signals/<name>.npz``.

    The cache is keyed by the model file's modification time; any model in ``models/`` (references included) can be
    cached, so re-auditing with other attacks never re-runs inference.
    """
    model_path = RunDir(run_dir).model(name)
    cache = RunDir(run_dir).signal(name)
    if not model_path.is_file():
        raise ModelFileError(model_path, "is missing")
    stamp = model_path.stat().st_mtime_ns
    if cache.exists():
        with np.load(cache) as z:
            fresh = "version" in z.files and int(z["version"]) == _SIGNALS_VERSION and int(z["stamp"]) == stamp
            if fresh:
                return ModelSignals(RecordSignals(z["prob_true"], z["phi"]), z["pool_correct"], z["test_correct"],
                                    RecordSignals(z["test_prob_true"], z["test_phi"]))
    from fedunlearn.data.cache import experiment_data
    from fedunlearn.io import atomic_save_npz
    from fedunlearn.models import resolve_device
    from fedunlearn.rundir import read_config
    from fedunlearn.training import logits

    cfg = read_config(run_dir)
    ds, _ = experiment_data(cfg)
    device = resolve_device(cfg.sim.device)
    model = load_model(model_path, cfg, ds)
    z_pool = logits(model, ds.x_train, device)
    z_test = logits(model, ds.x_test, device)
    sig = signals_from_logits(z_pool, ds.y_train)
    test_sig = signals_from_logits(z_test, ds.y_test)
    pool_correct = z_pool.argmax(1) == ds.y_train
    test_correct = z_test.argmax(1) == ds.y_test
    atomic_save_npz(cache, prob_true=sig.prob_true, phi=sig.phi, pool_correct=pool_correct,
                    test_correct=test_correct, test_prob_true=test_sig.prob_true, test_phi=test_sig.phi,
                    stamp=np.asarray(stamp), version=np.asarray(_SIGNALS_VERSION))
    return ModelSignals(sig, pool_correct, test_correct, test_sig)
