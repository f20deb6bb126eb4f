"""The run directory: the owner of the results contract (docs/design.md "Results contract"). Every path, model name
and column list of a run lives here, and every write goes through the atomic writers of ``fedunlearn.io``.

"The FL part of a run is finished" is an explicit marker in ``phases.json``, written after the last FL phase
(references and the retrain null included), not inferred from which model files happen to exist.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

import tomllib

from fedunlearn.config.schema import ExperimentConfig
from fedunlearn.errors import ConfigError

# ----------------------------------------------------------------------------------------------- model names
INITIAL, ORIGINAL, ORACLE = "initial", "original", "retrain"
REFERENCES = ("reference_a", "reference_b")  # RMIA's reference federations (never audited as models)
RETRAIN_NULL = "retrain_null"                # the retrain-vs-retrain null (then retrain_null_2, ...)
AFTER = "after"                              # continued training after unlearning (models/after/<m>/round_<r>.pt)
DURING = "during"                            # a method's models while unlearning (during/<m>/w<i>/snapshot_<j>.pt)
STARTUP = "startup"                          # ledger method of start-up costs (Ray, actor warm-up), charged to none

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
                  "test_accuracy", "wall_s"]
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
        """``plots/<name>.png``."""
        return self.plots / f"{name}.png"

    def signal(self, model: str) -> Path:
        """``signals/<model>.npz``: a model's cached per-record signals."""
        return self.signals / f"{model}.npz"

    @property
    def scores(self) -> Path:
        return self.signals / "scores.npz"

    @property
    def after_unlearning(self) -> Path:
        return self.path / "after_unlearning.csv"

    @property
    def during_unlearning(self) -> Path:
        return self.path / "during_unlearning.csv"

    def during(self, method: str, withdrawal: int) -> Path:
        """``models/during/<method>/w<i>/``: the models ``method`` passed through while unlearning withdrawal ``i``."""
        return self.models / DURING / method / f"w{withdrawal}"

    def during_index(self, method: str, withdrawal: int) -> Path:
        """``models/during/<method>/w<i>/snapshots.json``: each saved snapshot's phase, round and the method's costs
        so far."""
        return self.during(method, withdrawal) / "snapshots.json"

    def seed_run(self, seed: int) -> Path:
        """``seeds/seed-<s>/``: one A2 replica, a run directory of its own."""
        return self.seeds / f"seed-{seed}"

    def fl_finished(self) -> bool:
        return fl_finished(self.path)

    def read_config(self) -> ExperimentConfig:
        return read_config(self.path)


def after_model(model: str, rnd: int) -> str:
    """The model name of ``model`` after ``rnd`` rounds of continued FedAvg (round 0 = the model itself)."""
    return model if rnd == 0 else f"{AFTER}/{model}/round_{rnd}"


def during_model(method: str, withdrawal: int, snapshot: int) -> str:
    """The model name of snapshot ``snapshot`` of ``method`` unlearning withdrawal ``withdrawal`` (0 = its start)."""
    return f"{DURING}/{method}/w{withdrawal}/snapshot_{snapshot}"


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


def run_failures(run_dir: str | Path) -> dict[str, str]:
    """Methods that failed during the run (name -> reason), as ``phases.json`` recorded them."""
    path = Path(run_dir) / PHASES_FILE
    try:
        failed = json.loads(path.read_text()).get("failed", {})
    except (OSError, json.JSONDecodeError, AttributeError):
        return {}
    return {str(k): str(v) for k, v in failed.items()} if isinstance(failed, dict) else {}


#: keys ``fedunlearn report`` reads from every summary.json
SUMMARY_KEYS = ("name", "seed", "withdrawn_clients", "attacks", "null_band", "n_member", "n_nonmember", "models")


def read_summary(run_dir: str | Path) -> dict:
    """A finished run's ``summary.json``; a missing, corrupt or foreign one is one line (``ConfigError``)."""
    run_dir = Path(run_dir)
    path = run_dir / "summary.json"
    redo = f"re-create it with: fedunlearn audit {run_dir}"
    if not path.is_file():
        raise ConfigError(f"run directory: {run_dir} has no summary.json (not a finished fedunlearn run)")
    try:
        summary = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"summary.json: {path} is not valid JSON ({err}); {redo}") from None
    if not isinstance(summary, dict):
        raise ConfigError(f"summary.json: {path} is not a fedunlearn summary (not a JSON object); {redo}")
    missing = [k for k in SUMMARY_KEYS if k not in summary]
    if missing:
        raise ConfigError(f"summary.json: {path} is not a fedunlearn summary (missing {', '.join(missing)}); {redo}")
    return summary


def check_results_file(run_dir: str | Path, name: str, columns: list[str]) -> None:
    """A CSV of the results that the report reads: present, with its header columns (``ConfigError`` otherwise)."""
    import csv

    run_dir = Path(run_dir)
    path = run_dir / name
    redo = f"re-create it with: fedunlearn audit {run_dir}"
    if not path.is_file():
        raise ConfigError(f"{name}: {run_dir} has no {name}; {redo}")
    try:
        with path.open(newline="") as fh:
            header = next(csv.reader(fh), [])
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ConfigError(f"{name}: {path} cannot be read ({err}); {redo}") from None
    missing = [c for c in columns if c not in header]
    if missing:
        raise ConfigError(f"{name}: {path} lacks columns {', '.join(missing)}; {redo}")


def check_writable(folder: str | Path, what: str, shown: str | Path | None = None) -> None:
    """``folder`` (an existing directory) takes new files: probed by creating and removing one, since permission
    bits say nothing to root or on a read-only file system. ``shown``: the path the user gave, when not ``folder``."""
    import tempfile

    try:
        fd, probe = tempfile.mkstemp(prefix=".fedunlearn-probe-", dir=folder)
    except OSError as err:
        where = f"{shown} is not writable ({folder}: " if shown else f"{folder} is not writable ("
        raise ConfigError(f"{what}: {where}{err.strerror or err}); allowed: a directory you can write to") from None
    os.close(fd)
    os.unlink(probe)


def check_place(path: str | Path, what: str, shown: str | Path | None = None) -> None:
    """New files and directories can be made at ``path``: its nearest existing ancestor (or itself) is a writable
    directory."""
    path = Path(path).expanduser().absolute()
    shown = shown or path
    place = path
    while not place.exists():
        place = place.parent
    if not place.is_dir():
        where = "is an existing file" if place == Path(shown) else f"is under a file ({place})"
        raise ConfigError(f"{what}: {shown} {where}; allowed: a directory in a writable place")
    check_writable(place, what, shown)


def check_out_dir(path: str | Path, what: str = "--out") -> None:
    """A new run directory can be created at ``path``: it is a new or empty directory, under no file, in a writable
    place. Checked before anything is started or written; ``ConfigError`` (one line) otherwise."""
    path = Path(path).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{what}: {path} is an existing file; allowed: a new or empty directory in a writable place")
    if path.is_dir() and any(path.iterdir()):
        raise ConfigError(f"{what}: {path} exists and is not empty; use --resume {path} to continue it")
    check_place(path.parent, what, path)
def default_run_dir(name: str) -> Path:
    """Where a run goes without ``--out``: ``runs/<name>-<YYYYmmdd-HHMMSS>`` (the CLI names it before the run starts,
    so an interrupted run can say which directory to resume)."""
    return Path("runs") / f"{name}-{datetime.now():%Y%m%d-%H%M%S}"
