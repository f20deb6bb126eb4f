"""The run directory's markers (the first piece of the results contract's owner; docs/design.md "Target layout").

"The FL part of a run is finished" is an explicit marker in ``phases.json``, written after the last FL phase
(references and the retrain null included), not inferred from which model files happen to exist."""

from __future__ import annotations

import json
from pathlib import Path

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


def default_run_dir(name: str) -> Path:
    """Where a run goes without ``--out``: ``runs/<name>-<YYYYmmdd-HHMMSS>`` (the CLI names it before the run starts,
    so an interrupted run can say which directory to resume)."""
    from datetime import datetime

    return Path("runs") / f"{name}-{datetime.now():%Y%m%d-%H%M%S}"
