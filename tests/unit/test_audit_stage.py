"""The audit stage end to end on one tiny in-process run with the strong audit (loss, rmia, difference): reference
federations, comparison columns, forgetting rate, vulnerable records, plots, cached re-audit, retrain null, A2."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from fedunlearn.audit.metrics import benjamini_hochberg
from fedunlearn.audit.signals import RecordSignals
from fedunlearn.engine.phases import reference_halves
from fedunlearn.ledgers.access import read_access_log
from fedunlearn.pipeline import run
from fedunlearn.rundir import PER_CLIENT_COLUMNS
from fedunlearn.stages.inference import ModelSignals
from fedunlearn.stages.summary import withdrawn_forgetting
from tests.conftest import tiny_config

ATTACKS = ["loss", "rmia", "difference"]
CONTRACT = ["model", "client", "withdrawn", "attack", "n_member", "n_nonmember", "auc", "auc_lo", "auc_hi",
            "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr", "advantage", "accuracy_member", "accuracy_nonmember",
            "delta_auc_vs_retrain"]


@pytest.fixture(scope="module")
def strong_run(tmp_path_factory) -> Path:
    cfg = tiny_config('unlearn.methods=["retrain","finetune"]', f"audit.attacks={json.dumps(ATTACKS)}")
    return run(cfg, out=tmp_path_factory.mktemp("strong") / "run").run_dir


def _rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open() as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def _copy(run_dir: Path, dest: Path) -> Path:
    return Path(shutil.copytree(run_dir, dest))  # copy2 keeps the model files' mtimes: signal caches stay valid


def test_rmia_references_trained_in_the_run_and_not_audited(strong_run: Path) -> None:
    d = strong_run
    for f in ("models/reference_a.pt", "models/reference_b.pt", "models/retrain_null.pt", "references.json",
              "signals/reference_a.npz", "signals/reference_b.npz"):
        assert (d / f).is_file(), f
    refs = json.loads((d / "references.json").read_text())
    assert refs["out_of_both"] == [0]
    assert sorted(refs["reference_a"] + refs["reference_b"]) == [1, 2, 3]
    summary = json.loads((d / "summary.json").read_text())
    assert list(summary["models"]) == ["original", "finetune", "retrain"]  # instruments are not audited models
    rmia = summary["rmia"]
    assert rmia["a"] in [round(0.1 * i, 1) for i in range(11)]
    assert rmia["halves"]["reference_a"] == refs["reference_a"] and rmia["population_size"] > 0
    _, rows = _rows(d / "per_client.csv")
    assert {(r["model"], r["client"]) for r in rows if r["attack"] == "rmia"} == {
        (m, str(k)) for m in ("original", "finetune", "retrain") for k in range(4)}
    with (d / "ledger.csv").open() as fh:
        ledger = {(r["method"], r["phase"]) for r in csv.DictReader(fh)}
    assert {("references", "reference_a"), ("references", "reference_b"), ("retrain_null", "retrain")} <= ledger
    reads = read_access_log(d / "data_access.csv")
    phases = {r["phase"] for r in reads}
    assert {"reference_a", "reference_b", "retrain_null.retrain"} <= phases
    assert not [r for r in reads if r["client"] == "0" and r["purpose"] != "audit" and r["window"] == "closed"]


def test_reference_halves_are_complementary_seeded_and_exclude_withdrawn() -> None:
    a, b = reference_halves(list(range(10)), [3, 7], seed=5)
    assert sorted(a + b) == [0, 1, 2, 4, 5, 6, 8, 9] and len(a) == len(b) == 4
    assert (a, b) == reference_halves(list(range(10)), [3, 7], seed=5)
    assert (a, b) != reference_halves(list(range(10)), [3, 7], seed=6)


def test_per_client_columns_and_benjamini_hochberg(strong_run: Path) -> None:
    header, rows = _rows(strong_run / "per_client.csv")
    assert header[:15] == CONTRACT and header == PER_CLIENT_COLUMNS
    assert header[15:] == ["delta_auc_vs_original", "p_vs_retrain", "p_vs_original", "significant_vs_retrain",
                           "significant_vs_original"]
    for r in rows:
        if r["model"] == "retrain":
            assert r["p_vs_retrain"] == "NA" and r["significant_vs_retrain"] == "NA"
        if r["model"] == "original":
            assert r["p_vs_original"] == "NA" and float(r["delta_auc_vs_original"]) == 0.0
        if r["model"] != "retrain":
            assert 0.0 <= float(r["p_vs_retrain"]) <= 1.0
    q = json.loads((strong_run / "summary.json").read_text())["comparisons"]["q"]
    for m in ("original", "finetune"):
        for a in ATTACKS:
            group = [r for r in rows if r["model"] == m and r["attack"] == a]
            if not group:
                continue
            p = np.array([float(r["p_vs_retrain"]) for r in group])
            assert [r["significant_vs_retrain"] == "true" for r in group] == list(benjamini_hochberg(p, q))


def test_forgetting_rate_beside_retrain(strong_run: Path) -> None:
    summary = json.loads((strong_run / "summary.json").read_text())
    fr_re = summary["models"]["retrain"]["forgetting_rate"]
    for m in ("finetune", "retrain"):
        fr = summary["models"][m]["forgetting_rate"]
        assert {"fr", "fr_per_record", "b_t", "b_f", "a_f", "fr_retrain", "fr_per_record_retrain"} <= set(fr)
        assert fr["fr_retrain"] == fr_re["fr"] and fr["b_t"] > 0
        assert fr["fr"] == pytest.approx(1 - (fr["b_t"] + fr["b_f"] - fr["a_f"]) / fr["b_t"])
    assert "NaN" not in (strong_run / "summary.json").read_text()


def test_forgetting_rate_undefined_when_nothing_was_a_member() -> None:
    def sig(phi: np.ndarray) -> ModelSignals:
        return ModelSignals(RecordSignals(np.full(len(phi), 0.5), phi), np.ones(len(phi), bool), np.ones(1, bool))

    phi = np.concatenate([np.full(20, -5.0), np.linspace(0, 1, 40)])  # members score below every held-out record
    mem, hold = np.arange(20), np.arange(20, 60)
    fr = withdrawn_forgetting(sig(phi), sig(phi), mem, hold, 0.1)
    assert fr["b_t"] == 0 and fr["fr"] is None and fr["fr_per_record"] is None
    assert fr["note"].startswith("undefined (B_T = 0)")


def test_vulnerable_records_csv(strong_run: Path) -> None:
    from fedunlearn.data import load_partitions

    header, rows = _rows(strong_run / "vulnerable_records.csv")
    assert header == ["client", "record", "model", "attack", "score", "rank"]
    parts = load_partitions(strong_run / "partitions.npz")
    for k in range(4):
        mine = [r for r in rows if r["client"] == str(k)]
        assert [int(r["rank"]) for r in mine] == list(range(1, 11))
        assert {r["model"] for r in mine} == {"original"} and {r["attack"] for r in mine} == {"rmia"}
        assert set(int(r["record"]) for r in mine) <= set(parts.members[k].tolist())
        scores = [float(r["score"]) for r in mine]
        assert scores == sorted(scores, reverse=True)


def test_plots_exist(strong_run: Path) -> None:
    for name in ["roc_client0", "auc_heatmap"] + [f"roc_grid_{a}" for a in ATTACKS]:
        assert (strong_run / "plots" / f"{name}.png").stat().st_size > 1000, name
    assert "## RMIA set-up" in (strong_run / "report.md").read_text()


def test_withdrawn_client_under_retrain_inside_band_for_every_attack(strong_run: Path) -> None:
    summary = json.loads((strong_run / "summary.json").read_text())
    for a in ATTACKS:
        leak = summary["models"]["retrain"]["leakage"][a]
        assert leak["verdict"] == "exact", (a, leak)
        assert leak["never_seen"] == ("inside" if a != "difference" else None), (a, leak)
        ft = summary["models"]["finetune"]["leakage"][a]
        assert ft["verdict"] in ("equivalent", "over-unlearned", "under-unlearned")
        assert summary["verdicts"]["finetune"][a]["verdict"] == ft["verdict"]
    null = summary["retrain_null"]["attacks"]
    assert set(null) == set(ATTACKS)
    for a in ATTACKS:
        assert null[a]["withdrawn_never_seen"] == ("inside" if a != "difference" else None)
        assert 0 <= null[a]["bh_flagged"] <= null[a]["clients"] == 4


def test_verdict_margin_comes_from_the_retrain_null(strong_run: Path) -> None:
    """The equivalence margin is 1.96 x RMS of retrain-null vs retrain ΔAUC over clients, recomputed here from the
    cached signals; the verdict compares finetune's Δ with it."""
    import numpy as np

    from fedunlearn.audit.metrics import auc
    from fedunlearn.data import load_partitions
    from fedunlearn.stages.inference import compute_signals
    from fedunlearn.stages.scoring import load_scores, score_models

    summary = json.loads((strong_run / "summary.json").read_text())
    scores = load_scores(strong_run)
    parts = load_partitions(strong_run / "partitions.npz")
    sigs = {m: compute_signals(strong_run, m) for m in ("original", "retrain_null")}
    null = score_models(["retrain_null"], sigs, parts, ["loss"], 1.0, None)
    d = [auc(*null[("retrain_null", k, "loss")]) - auc(*scores[("retrain", k, "loss")]) for k in range(4)]
    assert summary["retrain_null"]["attacks"]["loss"]["equivalence_margin"] == pytest.approx(
        1.96 * float(np.sqrt(np.mean(np.square(d)))), rel=1e-9)
    for a in ATTACKS:
        ft = summary["models"]["finetune"]["leakage"][a]
        margin = ft["equivalence_margin"]
        assert margin == summary["retrain_null"]["attacks"][a]["equivalence_margin"] > 0
        d = ft["distance_to_retrain"]
        more = "over-unlearned" if a == "difference" else "under-unlearned"
        less = "under-unlearned" if a == "difference" else "over-unlearned"
        assert ft["verdict"] == ("equivalent" if abs(d) <= margin else more if d > 0 else less)


def test_audit_reads_are_their_own_kind_in_the_ledger(strong_run: Path) -> None:
    """Only the audit reads audit records, and the ledger says so: split ``audit``, purpose ``audit``."""
    from fedunlearn.ledgers.access import read_access_log

    rows = read_access_log(strong_run / "data_access.csv")
    audit_rows = [r for r in rows if r["split"] == "audit"]
    assert len(audit_rows) == 4 and all(r["purpose"] == "audit" and r["phase"] == "audit" for r in audit_rows)
    assert {r["split"] for r in rows if r["purpose"] != "audit"} <= {"member", "validation"}


def test_a2_replicas_are_a_step_before_the_audit_which_only_reads(tmp_path: Path) -> None:
    """``audit.seeds = M``: the pipeline trains the M replicas, then the audit reads them; an audit asked for
    replicas that are not there fails with the command that trains them, and trains nothing itself."""
    from fedunlearn.errors import ConfigError
    from fedunlearn.stages.audit import run_audit

    cfg = tiny_config('unlearn.methods=["retrain","finetune"]', "audit.seeds=3", "train.rounds=2", "audit.during=true",
                      "audit.after_rounds=1")
    d = run(cfg, out=tmp_path / "run").run_dir
    summary = json.loads((d / "summary.json").read_text())
    a2 = summary["seed_audit"]
    assert a2["seeds"] == 3 and a2["seed_values"] == [1, 2, 3] and "finetune" in a2["models"]
    # the replicas train the models the A2 audit reads, not the run's own extras (snapshots, continued training)
    assert (d / "models" / "during").is_dir() and (d / "models" / "after").is_dir()
    for replica in (d / "seeds").iterdir():
        assert not (replica / "models" / "during").exists() and not (replica / "models" / "after").exists()
    shutil.rmtree(d / "seeds" / "seed-2")  # a replica that was never trained
    with pytest.raises(ConfigError, match="--seeds: the A2 replicas seeds/seed-2 are not trained"):
        run_audit(d)
    assert not (d / "seeds" / "seed-2").exists(), "the audit trained nothing"


def test_an_unfinished_run_is_refused_by_its_marker_not_its_files(strong_run: Path, tmp_path: Path) -> None:
    """"FL finished" is the explicit marker in phases.json: with every model file present but the marker gone (the
    references or the null still to train), the audit refuses the run and says how to continue it."""
    from fedunlearn.errors import ConfigError
    from fedunlearn.stages.audit import run_audit

    d = _copy(strong_run, tmp_path / "unfinished")
    state = json.loads((d / "phases.json").read_text())
    assert state["done"][-1] == "finished"
    state["done"].remove("finished")
    (d / "phases.json").write_text(json.dumps(state))
    with pytest.raises(ConfigError, match="is not finished.*--resume"):
        run_audit(d)


def test_audit_stage_imports_no_flower_ray_or_fl_phases(strong_run: Path) -> None:
    """The audit, run alone in a fresh interpreter, reads saved models: Flower, Ray, the FL phases, the transports
    and the Flower glue are never imported."""
    import subprocess
    import sys

    code = ("import sys; from fedunlearn.stages.audit import run_audit; run_audit(sys.argv[1]); "
            "bad = {m for m in sys.modules if m.split('.')[0] in ('flwr', 'ray', 'strategies', 'clients') "
            "or m.startswith(('fedunlearn.simulation', 'fedunlearn.pipeline', 'fedunlearn.engine', 'fedunlearn.fl', "
            "'fedunlearn.methods', 'fedunlearn.config.load'))}; "
            "print(sorted(bad)); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code, str(strong_run)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
