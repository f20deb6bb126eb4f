"""fedunlearn — a federated-unlearning simulator on Flower and Ray.

``fedunlearn.run(config)`` runs one experiment (train, withdraw, unlearn, retrain, audit, report); see README.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from fedunlearn.pipeline import RunResult


def run(config: Any, out: Any = None, resume: Any = None) -> RunResult:
    """Run one experiment from an ``ExperimentConfig`` or the path of a TOML file."""
    from fedunlearn.config.load import load_config
    from fedunlearn.config.schema import ExperimentConfig
    from fedunlearn.pipeline import run as _run

    cfg = config if isinstance(config, ExperimentConfig) else load_config(config)
    return _run(cfg, out=out, resume=resume)
