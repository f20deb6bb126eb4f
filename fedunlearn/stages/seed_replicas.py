"""A2 over the seed replicas' saved models (docs/leakage.md): per-example U-LiRA and the NeurIPS-2023 epsilon of every
model against retrain. The replicas are trained by a pipeline step before the audit
(``fedunlearn.engine.replicas``); this stage only reads them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from fedunlearn.rundir import RunDir, fl_finished
from fedunlearn.stages.inference import ORACLE, ModelSignals, compute_signals
from fedunlearn.stages.scoring import write_rows
from fedunlearn.stages.summary import forget_sets


def seed_count(cfg, seeds: int | None) -> int:  # noqa: ANN001 - ExperimentConfig
    """The A2 replica count asked for (``--seeds``, else the run's ``audit.seeds``), checked: 0 (off) or >= 3."""
    from fedunlearn.errors import ConfigError

    m = cfg.audit.seeds if seeds is None else seeds
    if m in (1, 2) or m < 0:
        raise ConfigError(f"--seeds: {m} not allowed; allowed: 0 (off) or >= 3")
    return m


def seed_run_dir(run_dir: Path, seed: int) -> Path:
    """Where the A2 replica with training seed ``seed`` of ``run_dir`` lives."""
    return RunDir(run_dir).seed_run(seed)


def saved_seed_runs(run_dir: Path, seed: int, m: int) -> list[Path]:
    """The M finished replicas (seeds seed+1..seed+M) of a run; a clear error when one is missing (the audit reads,
    it never trains: the replicas step runs before it)."""
    from fedunlearn.errors import ConfigError

    dirs = [seed_run_dir(run_dir, seed + i) for i in range(1, m + 1)]
    missing = [str(d.relative_to(run_dir)) for d in dirs if not fl_finished(d)]
    if missing:
        raise ConfigError(f"--seeds: the A2 replicas {', '.join(missing)} are not trained; run "
                          f"`fedunlearn audit {run_dir} --seeds {m}` (it trains them first)")
    return dirs


def seed_audit(run_dir: Path, seed_dirs: list[Path], names: list[str], sigs: dict[str, ModelSignals], parts,
               cfg) -> dict:
    """A2 over the withdrawn members: per-example U-LiRA accuracy and NeurIPS-2023 epsilon of every model against
    retrain, from the M seed replicas; per-record values in ``seed_audit.csv``.

    Models: the original (no unlearning at all: the upper reference) and each method that produced a model in every
    replica. Null: epsilon of retrain vs retrain on two disjoint halves of the retrain seeds, compared with the same
    half-size epsilon of each model (the max over rules biases epsilon upwards, so compare with that, not with 0).
    """
    from fedunlearn.audit.seed_audit import (
        FIXED_VARIANCE_BELOW,
        challenge_score,
        epsilons_per_example,
        fit_ulira,
        ulira_accuracy,
    )

    w_mem = forget_sets(cfg, parts)[0]
    m_seeds = len(seed_dirs)
    present = [m for m in names if all((RunDir(d).model(m)).exists() for d in seed_dirs)]
    if ORACLE not in present:
        return {"seeds": m_seeds, "error": "retrain missing in a seed replica"}
    phi = {m: np.stack([compute_signals(d, m).pool.phi[w_mem] for d in seed_dirs]) for m in present}
    ret = phi[ORACLE]
    h = m_seeds // 2
    eps_null = epsilons_per_example(ret[:h], ret[h:2 * h])
    out: dict = {"seeds": m_seeds, "seed_values": [json.loads(RunDir(d).env.read_text())["seed"]
                                                   for d in seed_dirs],
                 "replicas": [str(d.relative_to(run_dir)) for d in seed_dirs], "records": int(len(w_mem)),
                 "score": "phi (logit-scaled confidence) of each withdrawn member", "delta": 1e-5,
                 "fixed_variance": m_seeds < FIXED_VARIANCE_BELOW,
                 "retrain_vs_retrain": {"epsilon_half_mean": float(eps_null.mean()),
                                        "challenge_score_half": challenge_score(eps_null), "half_seeds": h},
                 "models": {}, "missing": [m for m in names if m not in present]}
    per_record = []
    for m in present:
        if m == ORACLE:
            continue
        unl = phi[m]
        eps = epsilons_per_example(unl, ret)
        eps_half = epsilons_per_example(unl[:h], ret[h:2 * h])
        acc = ulira_accuracy(unl, ret)
        llr = fit_ulira(unl, ret).score(sigs[m].pool.phi[w_mem])  # the audited run's own model, not a shadow seed
        out["models"][m] = {
            "epsilon_mean": float(eps.mean()), "epsilon_median": float(np.median(eps)), "epsilon_max": float(eps.max()),
            "challenge_score": challenge_score(eps), "epsilon_half_mean": float(eps_half.mean()),
            "ulira_accuracy_mean": float(acc.mean()), "ulira_llr_mean_of_audited_model": float(llr.mean())}
        per_record += [{"model": m, "record": int(r), "epsilon": float(e), "ulira_accuracy": float(u)}
                       for r, e, u in zip(w_mem, eps, acc)]
    per_record += [{"model": "retrain_vs_retrain", "record": int(r), "epsilon": float(e), "ulira_accuracy": math.nan}
                   for r, e in zip(w_mem, eps_null)]
    write_rows(RunDir(run_dir).seed_audit, ["model", "record", "epsilon", "ulira_accuracy"], per_record)
    return out
