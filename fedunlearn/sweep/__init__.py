"""Sweeps: a base experiment plus axes, expanded to a grid of ordinary runs, run side by side on one Ray cluster,
aggregated over seeds (``sweep.csv``, ``sweep_summary.csv``) and drawn as leakage-vs-cost frontiers (``sweep.md``).

``spec`` (the sweep file and its grid), ``launch`` (one ``fedunlearn run`` driver per point), ``cluster`` (the local
Ray head), ``lock`` (the sweep directory's owner), ``aggregate`` (the CSVs), ``frontier`` (plots and report),
``workflow`` (``run_sweep``, what ``fedunlearn sweep`` calls)."""

from fedunlearn.sweep.spec import Sweep, load_sweep
from fedunlearn.sweep.workflow import SweepResult, run_sweep

__all__ = ["Sweep", "SweepResult", "load_sweep", "run_sweep"]
