"""The run directory's markers (the first piece of the results contract's owner; docs/design.md "Target layout").

"The FL part of a run is finished" is an explicit marker in ``phases.json``, written after the last FL phase
(references and the retrain null included), not inferred from which model files happen to exist."""

from __future__ import annotations

import json
from pathlib import Path

import tomllib

from fedunlearn.config.schema import ExperimentConfig
from fedunlearn.errors import ConfigError

PHASES_FILE = "phases.json"
FL_FINISHED = "finished"  # the marker in phases.json's "done" list


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
