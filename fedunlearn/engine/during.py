"""The models a method passes through while it unlearns (``audit.during``), saved for the audit.

Snapshot 0 is the model the method starts from; every later snapshot is a new model the server holds (an aggregated
round, pga's ascended model, an accepted forsaken edit, lightweight's perturbation: ``ServerContext.new_model``).
Each is saved as ``models/during/<method>/w<i>/snapshot_<j>.pt`` and listed in ``snapshots.json`` beside it with its
phase, round and what the method had spent so far (client samples, FL rounds), so the audit stage
``stages/during.py`` can draw the withdrawn clients' leakage snapshot by snapshot without re-running anything. The
auditor, not the server, scores them: nothing here reads a record.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager

from fedunlearn.fl.session import ServerContext
from fedunlearn.io import atomic_write_json
from fedunlearn.models import Weights, save_weights
from fedunlearn.rundir import RunDir, during_model

START = "start"  # the phase label of snapshot 0


@contextmanager
def recording(ctx: ServerContext, rd: RunDir, method: str, withdrawal: int, start: Weights) -> Iterator[None]:
    """Save ``start`` as snapshot 0, then every new server model inside as the next one (phase ``method.<phase>``).

    A method that stopped half-way runs again from its start on ``--resume``, so a folder left by that attempt is
    cleared first: the snapshots on disk are always one whole attempt.
    """
    folder = rd.during(method, withdrawal)
    shutil.rmtree(folder, ignore_errors=True)
    first_row = len(ctx.costs.rows)
    snapshots: list[dict] = []

    def keep(phase: str, rnd: int, weights: Weights) -> None:
        mine = [r for r in ctx.costs.rows[first_row:] if r.method == method]
        save_weights(rd.model(during_model(method, withdrawal, len(snapshots))), weights)
        snapshots.append({"snapshot": len(snapshots), "phase": phase, "round": rnd,
                          "client_samples": sum(r.client_samples for r in mine),
                          "rounds": sum(r.rounds for r in mine)})
        atomic_write_json(rd.during_index(method, withdrawal), snapshots)

    keep(START, 0, start)
    with ctx.listening(keep):
        yield
