"""The run directory: the owner of the results contract (docs/design.md "Results contract"). Every path, model name
and column list of a run lives here, and every write goes through the atomic writers of ``fedunlearn.io``.

"The FL part of a run is finished" is an explicit marker in ``phases.json``, written after the last FL phase
(references and the retrain null included), not inferred from which model files happen to exist.
"""

from __future__ import annotations

import json
from pathlib import Path

import tomllib

from fedunlearn.config.schema import ExperimentConfig
from fedunlearn.errors import ConfigError

# ----------------------------------------------------------------------------------------------- model names
INITIAL, ORIGINAL, ORACLE = "initial", "original", "retrain"
REFERENCES = ("reference_a", "reference_b")  # RMIA's reference federations (never audited as models)
RETRAIN_NULL = "retrain_null"                # the retrain-vs-retrain null (then retrain_null_2, ...)

# ----------------------------------------------------------------------------------------------- columns
#: per_client.csv: the 15 contract columns, then the comparison columns
PER_CLIENT_BASE = ["model", "client", "withdrawn", "attack", "n_member", "n_nonmember", "auc", "auc_lo", "auc_hi",
                   "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr", "advantage", "accuracy_member", "accuracy_nonmember",
                   "delta_auc_vs_retrain"]
PER_CLIENT_EXTRA = ["delta_auc_vs_original", "p_vs_retrain", "p_vs_original", "significant_vs_retrain",
                    "significant_vs_original"]
PER_CLIENT_COLUMNS = PER_CLIENT_BASE + PER_CLIENT_EXTRA
VULNERABLE_COLUMNS = ["client", "record", "model", "attack", "score", "rank"]
LEDGER_COLUMNS = ["method", "phase", "wall_s", "rounds", "client_samples", "bytes_up", "bytes_down",
                  "server_storage_bytes", "failed_clients"]
ROUNDS_COLUMNS = ["phase", "round", "clients", "failed", "train_loss", "train_accuracy", "test_loss",
                  "test_accuracy"]
ACCESS_COLUMNS = ["seq", "client", "split", "selection", "records", "purpose", "phase", "window"]

PHASES_FILE = "phases.json"
FL_FINISHED = "finished"  # the marker in phases.json's "done" list


class RunDir:
    """The paths of one run directory (nothing is created by asking)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # files
    config = property(lambda self: self.path / "config.toml")
    env = property(lambda self: self.path / "env.json")
    partitions = property(lambda self: self.path / "partitions.npz")
    phases = property(lambda self: self.path / PHASES_FILE)
    ledger = property(lambda self: self.path / "ledger.csv")
    rounds = property(lambda self: self.path / "rounds.csv")
    data_access = property(lambda self: self.path / "data_access.csv")
    references = property(lambda self: self.path / "references.json")
    summary = property(lambda self: self.path / "summary.json")
    per_client = property(lambda self: self.path / "per_client.csv")
    vulnerable = property(lambda self: self.path / "vulnerable_records.csv")
    seed_audit = property(lambda self: self.path / "seed_audit.csv")
    report = property(lambda self: self.path / "report.md")
    # folders
    models = property(lambda self: self.path / "models")
    state = property(lambda self: self.path / "state")
    history = property(lambda self: self.path / "history")
    signals = property(lambda self: self.path / "signals")
    plots = property(lambda self: self.path / "plots")
    seeds = property(lambda self: self.path / "seeds")

    def model(self, name: str) -> Path:
        """``models/<name>.pt``."""
        return self.models / f"{name}.pt"

    def checkpoint(self, key: str) -> Path:
        """``state/<key>.pt``: a resumable point of the FL stage."""
        return self.state / f"{key}.pt"

    def plot(self, name: str) -> Path:
        return self.plots / f"{name}.png"

    def fl_finished(self) -> bool:
        return fl_finished(self.path)

    def read_config(self) -> ExperimentConfig:
        return read_config(self.path)


def fl_finished(run_dir: str | Path) -> bool:
    """Whether every FL phase of the run (and so every model the audit needs) is done."""
    path = Path(run_dir) / PHASES_FILE
    if not path.is_file():
        return False
    try:
        return FL_FINISHED in json.loads(path.read_text()).get("done", [])
    except (json.JSONDecodeError, AttributeError):
        return False


def read_config(run_dir: str | Path) -> ExperimentConfig:
    """The run's resolved ``config.toml``, validated by the schema alone (it was validated in full when the run was
    prepared), so readers of a finished run need no registry and no FL module."""
    path = Path(run_dir) / "config.toml"
    if not path.is_file():
        raise ConfigError(f"run directory: {run_dir} has no config.toml (not a fedunlearn run)")
    try:
        return ExperimentConfig.model_validate(tomllib.loads(path.read_text(encoding="utf-8")))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, ValueError) as err:
        raise ConfigError(f"run directory: {path} is not a valid fedunlearn config ({err})") from None
