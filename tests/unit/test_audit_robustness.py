"""Issue 11, items 3, 8 and 12: the audit never loses results (unreadable model files, re-audits with fewer attacks),
bad run directories and ``--out`` paths are one line with exit code 2 and leave nothing behind, and a class
withdrawal is judged by the forgotten classes' accuracy against retrain's."""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedunlearn.cli import app
from fedunlearn.pipeline import run
from fedunlearn.stages.audit import run_audit
from fedunlearn.stages.report import write_report
from tests.conftest import TINY, tiny_config
from tests.unit.test_audit_stage import ATTACKS, strong_run  # noqa: F401 - the module-scoped fixture, built here once


def _copy(run_dir: Path, dest: Path) -> Path:
    return Path(shutil.copytree(run_dir, dest))  # copy2 keeps mtimes: the signal caches stay valid


def _tree(d: Path) -> dict[str, bytes]:
    """Every file under ``d`` with its bytes: "nothing left behind" means this is unchanged."""
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _one_line_exit_2(res) -> str:  # noqa: ANN001 - click Result
    out = res.output.strip()
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    assert "Traceback" not in res.output and len(out.splitlines()) == 1 and out.startswith("error: "), res.output
    return out


def _break(path: Path, how: str) -> None:
    data = path.read_bytes()
    {"missing": lambda: path.unlink(), "empty": lambda: path.write_bytes(b""),
     "truncated": lambda: path.write_bytes(data[: len(data) // 2]),
     "garbage": lambda: path.write_bytes(b"not a model")}[how]()


REASONS = {"missing": "models/finetune.pt is missing", "empty": "models/finetune.pt is empty (0 bytes)",
           "truncated": "models/finetune.pt cannot be read: truncated or not a PyTorch weights file",
           "garbage": "models/finetune.pt cannot be read: truncated or not a PyTorch weights file"}


@pytest.mark.parametrize("how", list(REASONS))
def test_an_unreadable_method_model_is_a_failed_method_and_the_rest_is_audited(strong_run: Path,  # noqa: F811
                                                                               tmp_path: Path, how: str) -> None:
    d = _copy(strong_run, tmp_path / "run")
    _break(d / "models" / "finetune.pt", how)
    summary = run_audit(d)
    write_report(d)
    assert summary["failed_methods"]["finetune"].startswith(REASONS[how]), summary["failed_methods"]
    assert "\n" not in summary["failed_methods"]["finetune"]
    assert list(summary["models"]) == ["original", "retrain"]
    assert json.loads((d / "summary.json").read_text())["failed_methods"] == summary["failed_methods"]
    with (d / "per_client.csv").open() as fh:
        models = {r["model"] for r in csv.DictReader(fh)}
    assert models == {"original", "retrain"}
    report = (d / "report.md").read_text()
    assert "## Failed methods" in report and f"- `finetune`: {REASONS[how]}" in report


def test_a_restored_method_model_is_audited_again(strong_run: Path, tmp_path: Path) -> None:  # noqa: F811
    """A reason found by the audit is not carried over once the file is readable again."""
    d = _copy(strong_run, tmp_path / "run")
    good = (d / "models" / "finetune.pt").read_bytes()
    _break(d / "models" / "finetune.pt", "empty")
    assert "finetune" in run_audit(d)["failed_methods"]
    (d / "models" / "finetune.pt").write_bytes(good)
    summary = run_audit(d)
    assert summary["failed_methods"] == {} and "finetune" in summary["models"]


@pytest.mark.parametrize(("model", "how", "needle"), [
    ("original", "empty", "models/original.pt is empty (0 bytes)"),
    ("retrain", "truncated", "models/retrain.pt cannot be read: truncated or not a PyTorch weights file"),
    ("retrain", "garbage", "models/retrain.pt cannot be read"),
    ("retrain", "missing", "models/retrain.pt is missing"),
])
def test_an_unreadable_original_or_retrain_is_one_line_and_leaves_nothing_behind(
        strong_run: Path, tmp_path: Path, model: str, how: str, needle: str) -> None:  # noqa: F811
    d = _copy(strong_run, tmp_path / "run")
    _break(d / "models" / f"{model}.pt", how)
    before = _tree(d)
    out = _one_line_exit_2(CliRunner().invoke(app, ["audit", str(d)]))
    assert needle in out and "every verdict is against original.pt and retrain.pt" in out, out
    assert _tree(d) == before


def test_audit_with_one_attack_keeps_the_others_and_redraws_every_plot(strong_run: Path,  # noqa: F811
                                                                       tmp_path: Path) -> None:
    """``fedunlearn audit RUN --attacks loss`` re-scores loss and keeps rmia and difference (same inputs): the merged
    results equal a full audit's, and every plot is redrawn from them (none is left from before)."""
    d = _copy(strong_run, tmp_path / "run")
    before = json.loads((d / "summary.json").read_text())
    (d / "plots" / "client_auc_gone.png").write_bytes(b"a plot no report draws any more")
    t0 = time.time_ns()
    res = CliRunner().invoke(app, ["audit", str(d), "--attacks", "loss"])
    assert res.exit_code == 0, res.output
    assert "audit: re-scored loss; kept rmia, difference from the previous audit" in " ".join(res.output.split())
    after = json.loads((d / "summary.json").read_text())
    assert after["attacks"] == ATTACKS and after["audit_run"]["kept"] == ["rmia", "difference"]
    assert (d / "per_client.csv").read_bytes() == (strong_run / "per_client.csv").read_bytes()
    for m in before["models"]:
        assert after["models"][m]["leakage"] == before["models"][m]["leakage"], m
    for key in ("verdicts", "comparisons", "retrain_null", "rmia"):
        assert after[key] == before[key], key
    plots = {p.name: p.stat().st_mtime_ns for p in (d / "plots").glob("*.png")}
    assert set(plots) == {p.name for p in (strong_run / "plots").glob("*.png")}
    assert all(t >= t0 for t in plots.values()), "a plot was left from the previous audit"
    report = (d / "report.md").read_text()
    assert all(f"{a} attack: withdrawn" in report for a in ATTACKS)  # one leakage table per attack


def test_kept_attacks_are_rescored_when_a_model_file_changed(strong_run: Path, tmp_path: Path) -> None:  # noqa: F811
    d = _copy(strong_run, tmp_path / "run")
    path = d / "models" / "finetune.pt"
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000_000))
    summary = run_audit(d, ["loss"])
    assert summary["attacks"] == ATTACKS and summary["audit_run"]["scored"] == ATTACKS
    assert summary["audit_run"]["kept"] == [] and "models/finetune.pt" in summary["audit_run"]["note"]


def test_report_refuses_corrupt_or_missing_results_before_drawing_anything(strong_run: Path,  # noqa: F811
                                                                           tmp_path: Path) -> None:
    cases = [("summary.json", b'{"name": "tiny", "attacks": [', "summary.json: ", "is not valid JSON"),
             ("summary.json", b"[]", "summary.json: ", "is not a fedunlearn summary"),
             ("per_client.csv", None, "per_client.csv: ", "has no per_client.csv"),
             ("signals/scores.npz", b"not an npz", "signals/scores.npz: ", "cannot be read")]
    for i, (name, data, field, needle) in enumerate(cases):
        d = _copy(strong_run, tmp_path / f"run{i}")
        if data is None:
            (d / name).unlink()
        else:
            (d / name).write_bytes(data)
        before = _tree(d)
        out = _one_line_exit_2(CliRunner().invoke(app, ["report", str(d)]))
        assert out.startswith(f"error: {field}") and needle in out and "fedunlearn audit" in out, out
        assert _tree(d) == before, name


def test_audit_starts_from_scratch_on_a_corrupt_summary(strong_run: Path, tmp_path: Path) -> None:  # noqa: F811
    """The hint of ``fedunlearn report`` works: the audit rewrites a corrupt summary.json and says so."""
    d = _copy(strong_run, tmp_path / "run")
    (d / "summary.json").write_text("{")
    summary = run_audit(d)
    assert summary["attacks"] == ATTACKS and "not valid JSON" in summary["audit_run"]["note"]
    assert json.loads((d / "summary.json").read_text())["models"].keys() == summary["models"].keys()


def _unwritable(tmp_path: Path) -> Path:
    """A directory nobody can write to: a 0555 folder, or /sys when running as root (root ignores the mode)."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        (locked / "probe").touch()
    except OSError:
        return locked
    (locked / "probe").unlink()
    try:
        Path("/sys/fedunlearn-probe").touch()
    except OSError:
        return Path("/sys")
    pytest.skip("no unwritable directory on this machine")


def test_run_out_problems_are_one_line_before_anything_starts(tmp_path: Path) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    locked = _unwritable(tmp_path)
    overrides = [x for o in TINY for x in ("--set", o)]
    cases = [(a_file, "is an existing file"), (a_file / "run", f"is under a file ({a_file})"),
             (locked / "run", "is not writable")]
    try:
        for out, needle in cases:
            before = _tree(tmp_path)
            res = CliRunner().invoke(app, ["run", *overrides, "--out", str(out)])
            line = _one_line_exit_2(res)
            assert line.startswith("error: --out: ") and needle in line, line
            assert "allowed:" in line and _tree(tmp_path) == before
    finally:
        if locked.is_relative_to(tmp_path):
            locked.chmod(0o755)


def test_run_out_check_passes_a_new_or_empty_directory(tmp_path: Path) -> None:
    from fedunlearn.rundir import check_out_dir

    (tmp_path / "empty").mkdir()
    for ok in (tmp_path / "new" / "run", tmp_path / "empty"):
        check_out_dir(ok)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"], "the check leaves nothing behind"


# ------------------------------------------------------------------------------------------- class withdrawals


@pytest.fixture(scope="module")
def class_run(tmp_path_factory) -> Path:
    cfg = tiny_config('unlearn.methods=["retrain","finetune","unsir"]', "withdraw.clients=[]",
                      "withdraw.classes=[1]", 'audit.attacks=["loss"]', "audit.retrain_null=true")
    return run(cfg, out=tmp_path_factory.mktemp("cls") / "run").run_dir


def test_class_withdrawal_is_judged_by_forgotten_class_accuracy_against_retrain(class_run: Path) -> None:
    """The original (which forgot nothing) is under-unlearned by the class yardstick, never "inside" a band; the
    margin is the larger of the retrain null's and the sampling one, and each verdict follows from Δ and it."""
    from fedunlearn.audit.metrics import equivalence_verdict

    summary = json.loads((class_run / "summary.json").read_text())
    assert summary["verdict_rule"].startswith("class withdrawal: the headline verdict is forget_class_verdicts")
    fc = {m: e["forget_class"] for m, e in summary["models"].items()}
    assert set(fc) == {"original", "finetune", "unsir", "retrain"} == set(summary["forget_class_verdicts"])
    re_acc = summary["models"]["retrain"]["withdrawn_accuracy"]
    for m, f in fc.items():
        assert f["accuracy"] == summary["models"][m]["withdrawn_accuracy"]
        assert f["delta"] == pytest.approx(f["accuracy"] - re_acc)
        assert f["null_margin"] is not None and f["margin"] == max(f["null_margin"], f["sampling_margin"]) > 0
        assert f["verdict"] == ("exact" if m == "retrain" else equivalence_verdict(f["delta"], f["margin"]))
        assert summary["forget_class_verdicts"][m] == f["verdict"]
        assert summary["models"][m]["leakage"]["loss"]["never_seen"] is None
    assert fc["original"]["accuracy"] > re_acc + fc["original"]["margin"]
    assert fc["original"]["verdict"] == "under-unlearned"
    assert summary["retrain_null"]["attacks"]["loss"]["withdrawn_never_seen"] is None
    report = (class_run / "report.md").read_text()
    assert "## Class withdrawal [1]: forgotten-class accuracy against retrain" in report
    assert "| original | " in report.split("## Class withdrawal")[1].split("\n\n")[1]


def test_class_null_margin_is_the_rms_of_retrain_null_accuracy_differences(class_run: Path) -> None:
    import numpy as np

    from fedunlearn.config.load import load_config
    from fedunlearn.data import load_partitions
    from fedunlearn.data.cache import experiment_data
    from fedunlearn.stages.inference import compute_signals

    cfg = load_config(class_run / "config.toml")
    parts = load_partitions(class_run / "partitions.npz")
    y = experiment_data(cfg)[0].y_train
    re, null = compute_signals(class_run, "retrain"), compute_signals(class_run, "retrain_null")
    d = [null.pool_correct[f].mean() - re.pool_correct[f].mean()
         for f in (np.asarray(m)[y[m] == 1] for m in parts.members) if len(f)]
    summary = json.loads((class_run / "summary.json").read_text())
    got = summary["models"]["unsir"]["forget_class"]["null_margin"]
    assert got == pytest.approx(1.96 * float(np.sqrt(np.mean(np.square(d)))), abs=1e-12)


def test_accuracy_sampling_margin_is_agresti_caffo() -> None:
    from fedunlearn.stages.verdicts import accuracy_sampling_margin

    # two accuracies of 0/98: p~ = 1/100 each, SE = sqrt(2 * 0.01 * 0.99 / 100)
    assert accuracy_sampling_margin(0, 0, 98) == pytest.approx(1.96 * (2 * 0.01 * 0.99 / 100) ** 0.5)
    assert accuracy_sampling_margin(0, 0, 98) > accuracy_sampling_margin(0, 0, 998) > 0
    assert accuracy_sampling_margin(10, 90, 100) == pytest.approx(accuracy_sampling_margin(90, 10, 100))
