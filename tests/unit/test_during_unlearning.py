"""During unlearning (issue 11 item 13): with ``audit.during`` every model a method's server holds while it unlearns
is saved as a snapshot (0 = the start, then each aggregated round, pga's ascent, each accepted forsaken edit,
lightweight's perturbation) and the audit reports the withdrawn clients' leakage at each, with a plot and a report
section."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from fedunlearn.engine.during import recording
from fedunlearn.methods import build_method
from fedunlearn.models import load_weights
from fedunlearn.pipeline import run
from fedunlearn.rundir import RunDir
from fedunlearn.stages.audit import run_audit
from fedunlearn.stages.report import write_report
from tests.conftest import tiny_config

METHODS = 'unlearn.methods=["retrain","finetune","lightweight","pga"]'


def _rows(path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def _same(a, b) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def during_run(tmp_path_factory):
    cfg = tiny_config(METHODS, "audit.during=true", "audit.retrain_null=true", "train.local_epochs=3")
    return run(cfg, out=tmp_path_factory.mktemp("during") / "run")


def test_snapshots_saved_in_order_with_their_phases(during_run) -> None:
    d = during_run.run_dir
    phases = {m: [s["phase"] for s in json.loads(RunDir(d).during_index(m, 0).read_text())]
              for m in ("finetune", "lightweight", "pga")}
    assert phases["finetune"] == ["start", "finetune"]  # 10% of R = 4 rounds, at least 1
    assert phases["pga"] == ["start", "pga.ascent", "pga.post", "pga.post"]  # post_rounds = 2
    assert phases["lightweight"][:3] == ["start", "lightweight.perturb", "lightweight.finetune"]
    original = load_weights(d / "models" / "original.pt")
    ascended = load_weights(d / "models" / "during" / "pga" / "w0" / "snapshot_1.pt")
    assert not _same(ascended, original)  # the ascent's own model, not the start again
    assert not (d / "models" / "during" / "retrain").exists()  # the oracle is the yardstick, not a trajectory


def test_audit_reports_leakage_per_snapshot(during_run) -> None:
    d, s = during_run.run_dir, during_run.summary
    rows = _rows(d / "during_unlearning.csv")
    during = s["during_unlearning"]
    assert list(during["models"]) == ["finetune", "lightweight", "pga"]
    for m, e in during["models"].items():
        mine = [r for r in rows if r["model"] == m]
        assert [int(r["snapshot"]) for r in mine] == list(range(e["snapshots"] + 1))
        # snapshot 0 is the original, the last snapshot the method's output: the audit's own loss AUC of each
        assert float(mine[0]["leakage"]) == pytest.approx(s["models"]["original"]["leakage"]["loss"]["auc"], abs=6e-7)
        assert float(mine[-1]["leakage"]) == pytest.approx(s["models"][m]["leakage"]["loss"]["auc"], abs=6e-7)
        samples = [int(r["client_samples"]) for r in mine]
        assert samples[0] == 0 and samples == sorted(samples) and samples[-1] == e["client_samples"] > 0
        # "first within retrain's margin" is the first snapshot whose |leakage - retrain| <= margin
        inside = [abs(float(r["leakage"]) - during["retrain"]) <= during["margin"] for r in mine]
        assert e["within_margin_at_snapshot"] == (inside.index(True) if True in inside else None)
    assert during["retrain"] == pytest.approx(s["models"]["retrain"]["leakage"]["loss"]["auc"], abs=6e-7)
    assert during["margin"] == s["models"]["retrain"]["leakage"]["loss"]["equivalence_margin"]
    assert (d / "plots" / "during_unlearning.png").stat().st_size > 0
    report = (d / "report.md").read_text()
    assert "## During unlearning: the withdrawn clients' leakage snapshot by snapshot" in report
    assert "| pga | ascent → post | 3 |" in report


def test_a_missing_snapshot_is_reported_not_hidden(during_run, tmp_path) -> None:
    d = tmp_path / "copy"
    shutil.copytree(during_run.run_dir, d)
    (d / "models" / "during" / "pga" / "w0" / "snapshot_2.pt").unlink()
    seen: list[tuple[int, int]] = []
    summary = run_audit(d, progress=lambda _phase, step, steps: seen.append((step, steps)))
    during = summary["during_unlearning"]
    # progress counts every scored snapshot too: 5 audited models, 1 null, scores and summary, then the snapshots
    assert seen[-1] == (8 + len(_rows(d / "during_unlearning.csv")),) * 2 and len(seen) > 3
    assert "pga" not in during["models"] and "finetune" in during["models"]
    assert during["not_recorded"] == {"pga": "models/during/pga/w0/snapshot_2.pt is missing"}
    write_report(d)
    assert "- not recorded: `pga`: models/during/pga/w0/snapshot_2.pt is missing" in (d / "report.md").read_text()


def test_sequential_withdrawals_run_on(tmp_path) -> None:
    """Clients 0 then 2: each withdrawal's snapshots are kept; the second starts where the first ended; client samples
    add up over both."""
    cfg = tiny_config('unlearn.methods=["retrain","finetune"]', "withdraw.clients=[0, 2]", "audit.during=true")
    res = run(cfg, out=tmp_path / "r")
    rd = RunDir(res.run_dir)
    first, second = (json.loads(rd.during_index("finetune", i).read_text()) for i in (0, 1))
    end_of_first = load_weights(rd.during("finetune", 0) / f"snapshot_{first[-1]['snapshot']}.pt")
    assert _same(load_weights(rd.during("finetune", 1) / "snapshot_0.pt"), end_of_first)
    rows = [r for r in _rows(rd.during_unlearning) if r["model"] == "finetune"]
    assert [(r["withdrawal"], r["snapshot"]) for r in rows] == [("0", "0"), ("0", "1"), ("1", "0"), ("1", "1")]
    samples = [int(r["client_samples"]) for r in rows]
    assert samples[2] == samples[1] > 0 and samples[3] == samples[1] + second[-1]["client_samples"]


def test_forsaken_records_each_accepted_edit_and_nothing_else(tiny_fed) -> None:
    w = tiny_fed.train_original()
    tiny_fed.ctx.window.open(0)
    method = build_method("forsaken", None)
    rd = RunDir(tiny_fed.run_dir)
    with recording(tiny_fed.ctx, rd, "forsaken", 0, w):
        out = method.unlearn(tiny_fed.job("forsaken", w))
    snapshots = json.loads(rd.during_index("forsaken", 0).read_text())
    accepted = [int(t["step"]) for t in method.trace if t["accepted"]]
    assert [s["round"] for s in snapshots if s["phase"] == "forsaken.edit"] == accepted
    assert len(snapshots) == 1 + len(accepted) + method.params.repair_rounds
    assert _same(load_weights(rd.during("forsaken", 0) / f"snapshot_{len(snapshots) - 1}.pt"), out)


def test_a_new_attempt_clears_the_last_and_one_listener_at_a_time(tiny_fed) -> None:
    rd = RunDir(tiny_fed.run_dir)
    stale = rd.during("finetune", 0) / "snapshot_7.pt"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"from an interrupted attempt")
    with recording(tiny_fed.ctx, rd, "finetune", 0, tiny_fed.initial):
        tiny_fed.ctx.new_model("finetune", 1, tiny_fed.initial)
        with pytest.raises(RuntimeError, match="already set"), tiny_fed.ctx.listening(lambda *a: None):
            pass
    assert not stale.exists()
    assert [s["phase"] for s in json.loads(rd.during_index("finetune", 0).read_text())] == ["start", "finetune"]
    tiny_fed.ctx.new_model("finetune", 2, tiny_fed.initial)  # nobody listens any more: nothing saved
    assert sorted(p.name for p in rd.during("finetune", 0).glob("*.pt")) == ["snapshot_0.pt", "snapshot_1.pt"]
