"""The run directory's markers (the first piece of the results contract's owner; docs/design.md "Target layout").

"The FL part of a run is finished" is an explicit marker in ``phases.json``, written after the last FL phase
(references and the retrain null included), not inferred from which model files happen to exist."""

from __future__ import annotations

import json
import os
from pathlib import Path

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
