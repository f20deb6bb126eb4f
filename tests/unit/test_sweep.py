"""The sweep without running anything: grid expansion, bad axes, point names, the skip / resume plan, the lock, and
the aggregates over synthetic point outputs (no Ray, no training)."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedunlearn.config.render import to_toml
from fedunlearn.errors import ConfigError
from fedunlearn.sweep import aggregate, frontier
from fedunlearn.sweep.launch import PointRun, check_same_experiment, driver_command, plan, point_state
from fedunlearn.sweep.lock import SweepLock
from fedunlearn.sweep.spec import load_sweep, point_name
from fedunlearn.sweep.workflow import _scale, write_outputs
from tests.conftest import TINY

BASE = "\n".join(TINY) + "\n"  # --set lines are TOML assignments too: written under no table they are dotted keys


def _write(tmp_path: Path, body: str, base: str = BASE) -> Path:
    (tmp_path / "base.toml").write_text(_as_toml(base))
    path = tmp_path / "sweep.toml"
    path.write_text('[sweep]\nbase = "base.toml"\n' + body)
    return path


def _as_toml(lines: str) -> str:
    """TINY's dotted ``key=value`` lines as a TOML document (dotted keys at the top level are valid TOML)."""
    return "\n".join(ln.replace("=", " = ", 1) for ln in lines.splitlines() if ln) + "\n"


GRID = """[axes]
seed = [0, 1]
withdraw.clients = [[0], [2]]
[zip.budget]
unlearn.pga.post_rounds = [1, 3]
unlearn.finetune.rounds = [1, 2]
"""


def test_grid_expansion_product_of_axes_and_zip_levels(tmp_path: Path) -> None:
    sweep = load_sweep(_write(tmp_path, GRID))
    assert len(sweep.points) == 2 * 2 * 2
    assert sweep.axis_keys == ["seed", "withdraw.clients", "unlearn.pga.post_rounds", "unlearn.finetune.rounds"]
    p = next(p for p in sweep.points if p.settings["seed"] == 1 and p.levels["budget"] == 2)
    assert p.cfg.seed == 1 and p.cfg.unlearn.params("pga").post_rounds == 3  # type: ignore[attr-defined]
    assert p.cfg.unlearn.params("finetune").rounds == 2  # type: ignore[attr-defined]
    assert p.cfg.data.clients == 4 and p.cfg.train.rounds == 4   # the base is kept
    assert [p.name for p in sweep.points][:2] == ["seed=0,withdraw.clients=0,budget=1",
                                                  "seed=0,withdraw.clients=0,budget=2"]
    assert len({p.name for p in sweep.points}) == len(sweep.points)


def test_sweep_set_overrides_the_base(tmp_path: Path) -> None:
    sweep = load_sweep(_write(tmp_path, "set = ['train.rounds=6']\n[axes]\nseed = [3]\n"))
    assert [(p.cfg.train.rounds, p.cfg.seed) for p in sweep.points] == [(6, 3)]


@pytest.mark.parametrize(("axes", "needle"), [
    ("seed = []", "axes.seed: empty list"),
    ("seed = 3", "axes.seed: 3 is not a list"),
    ("trian.rounds = [1]", "axes.trian.rounds: unknown key; did you mean train.rounds?"),
    ('train.rounds = ["a"]', "axes.train.rounds = a: train.rounds:"),
    ("unlearn.pga.post_round = [1]", "axes.unlearn.pga.post_round: unknown key; did you mean unlearn.pga.post_rounds"),
    ("withdraw.clients = [[9]]", "axes.withdraw.clients = [9]: withdraw.clients: [9] out of range"),
    ('sim.ray_address = ["x"]', "axes.sim.ray_address: set by the sweep"),
])
def test_bad_axis_is_one_line_exit_2_nothing_written(tmp_path: Path, axes: str, needle: str) -> None:
    from fedunlearn.cli import app

    path = _write(tmp_path, f"[axes]\n{axes}\n")
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["sweep", str(path), "--out", str(out)])
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    assert needle in text and len(res.output.strip().splitlines()) <= 3  # one line, wrapped at most by rich
    assert not out.exists()


def test_bad_zip_and_sweep_tables(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="zip.b: lists of unequal length"):
        load_sweep(_write(tmp_path, "[zip.b]\nseed = [0, 1]\ntrain.rounds = [2]\n"))
    with pytest.raises(ConfigError, match="appears twice"):
        load_sweep(_write(tmp_path, "[axes]\nseed = [0]\n[zip.b]\nseed = [0]\n"))
    with pytest.raises(ConfigError, match="sweep.replicat: Extra inputs"):
        load_sweep(_write(tmp_path, "replicat = 'seed'\n"))
    with pytest.raises(ConfigError, match="sweep.replicate: 'train.rounds' is not an axis"):
        load_sweep(_write(tmp_path, "replicate = 'train.rounds'\n[axes]\nseed = [0]\n"))


def test_point_names_safe_deterministic_and_unique(tmp_path: Path) -> None:
    assert point_name([("seed", 0), ("unlearn.lightweight.max_rounds", 2)]) == "seed=0,lightweight.max_rounds=2"
    assert point_name([("withdraw.clients", [0, 4])]) == "withdraw.clients=0-4"
    odd = point_name([("data.path", "a/b c")])
    assert "/" not in odd and " " not in odd and odd == point_name([("data.path", "a/b c")])
    assert odd != point_name([("data.path", "a_b_c")])  # replaced characters add a hash of the real value
    long = point_name([(f"unlearn.forsaken.k{i}", 1000 + i) for i in range(20)])
    assert len(long) <= 96 and long != point_name([(f"unlearn.forsaken.k{i}", 1000 + i) for i in range(19)])
    assert point_name([]) == "base"


def _finish(run_dir: Path, cfg) -> None:  # noqa: ANN001 - an ExperimentConfig
    run_dir.mkdir(parents=True)
    (run_dir / "config.toml").write_text(to_toml(cfg))
    (run_dir / "phases.json").write_text(json.dumps({"done": ["original", "finished"]}))
    (run_dir / "summary.json").write_text("{}")
    (run_dir / "report.md").write_text("")


def test_plan_skips_finished_resumes_partial_runs_new(tmp_path: Path) -> None:
    sweep = load_sweep(_write(tmp_path, "[axes]\nseed = [0, 1, 2]\n"))
    root = tmp_path / "sw"
    a, b, _ = sweep.points
    _finish(root / a.name, a.cfg)
    (root / b.name).mkdir(parents=True)
    (root / b.name / "config.toml").write_text(to_toml(b.cfg))   # killed mid-run: no FL-finished marker
    (root / "seed=2").mkdir()                                    # an empty directory counts as new
    runs = plan(sweep.points, root)
    assert [r.action for r in runs] == ["skip", "resume", "run"]
    assert [point_state(root / p.name) for p in sweep.points] == ["finished", "partial", "new"]
    (root / a.name / "report.md").unlink()                       # summary written, report not: not finished
    assert point_state(root / a.name) == "partial"
    run_cmd = driver_command(runs[2], root / "configs" / "seed=2.toml", scale=2)
    assert run_cmd[3:] == ["run", str(root / "configs" / "seed=2.toml"), "--out", str(root / "seed=2")]
    assert driver_command(runs[1], Path("unused"), 2)[3:] == ["run", "--resume", str(root / b.name)]
    ray = PointRun(a.__class__(a.name, a.settings, a.levels, a.cfg.model_copy(update={"sim": a.cfg.sim.model_copy(
        update={"backend": "ray", "num_cpus": 1.5})})), root / "x", "run")
    cmd = driver_command(ray, Path("c.toml"), scale=2)   # two points side by side: each asks twice the CPUs
    assert cmd[-4:] == ["--ray-address", "auto", "--set", "sim.num_cpus=3"]


def test_plan_refuses_a_point_dir_with_another_experiment_or_no_run(tmp_path: Path) -> None:
    sweep = load_sweep(_write(tmp_path, "[axes]\nseed = [0]\n"))
    (p,) = sweep.points
    other = p.cfg.model_copy(update={"train": p.cfg.train.model_copy(update={"rounds": 9})})
    _finish(tmp_path / "sw" / p.name, other)
    with pytest.raises(ConfigError, match="train.rounds = 9, the sweep now gives 4"):
        check_same_experiment(p, tmp_path / "sw" / p.name)
    (tmp_path / "sw2" / p.name).mkdir(parents=True)
    (tmp_path / "sw2" / p.name / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match="not a fedunlearn run directory"):
        plan(sweep.points, tmp_path / "sw2")
    sim = p.cfg.model_copy(update={"sim": p.cfg.sim.model_copy(update={"num_cpus": 2.0, "ray_address": "auto"})})
    _finish(tmp_path / "sw3" / p.name, sim)
    check_same_experiment(p, tmp_path / "sw3" / p.name)  # how it ran (sim) may differ


def test_parallel_beyond_this_machine_is_refused(tmp_path: Path) -> None:
    sweep = load_sweep(_write(tmp_path, "set = ['sim.backend=\"ray\"']\n[axes]\nseed = [0, 1, 2]\n"))
    runs = plan(sweep.points, tmp_path / "sw")
    assert _scale(runs, 2, local_cpus=2) == 2 and _scale(runs, 8, local_cpus=None) == 3
    with pytest.raises(ConfigError, match="--parallel: 3 points side by side need 3 CPUs"):
        _scale(runs, 3, local_cpus=2)


def test_lock_refuses_a_live_owner_and_stops_a_dead_sweeps_leftovers(tmp_path: Path) -> None:
    import psutil

    live = subprocess.Popen(["sleep", "60"])
    orphan = subprocess.Popen(["sleep", "60"], start_new_session=True)
    head = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        entry = {"pid": live.pid, "started": psutil.Process(live.pid).create_time()}
        (tmp_path / "sweep.lock.json").write_text(json.dumps({"owner": entry, "groups": {}}))
        with pytest.raises(ConfigError, match=f"in use by a running sweep \\(pid {live.pid}\\)"):
            SweepLock(tmp_path).acquire()
        dead = {"pid": live.pid, "started": entry["started"] - 100}   # same PID, another start: not the owner
        groups = {name: {"pid": p.pid, "started": psutil.Process(p.pid).create_time()}
                  for name, p in (("ray-head", head), ("seed=0", orphan))}
        head_tmp = tmp_path / "fusweep-abc"
        (head_tmp / "session_latest").mkdir(parents=True)
        groups["ray-head"]["temp_dir"] = str(head_tmp)
        (tmp_path / "sweep.lock.json").write_text(json.dumps({"owner": dead, "groups": groups}))
        assert SweepLock(tmp_path).acquire() == ["seed=0", "ray-head"]  # the drivers before the cluster
        assert orphan.wait(timeout=20) is not None and head.wait(timeout=20) is not None
        assert not head_tmp.exists()  # the dead head's temp dir goes too
        assert json.loads((tmp_path / "sweep.lock.json").read_text())["owner"]["pid"] == os.getpid()
    finally:
        for p in (live, orphan, head):
            p.kill()
            p.wait()


# ------------------------------------------------------------------------------------- aggregates (synthetic)

def _fake_point(run_dir: Path, seed: int, budget: int, cfg) -> None:  # noqa: ANN001
    """A finished run's summary.json and per_client.csv with values that are simple functions of the settings."""
    _finish(run_dir, cfg)
    models = {}
    for m in ("original", "finetune", "pga", "retrain"):
        gap = {"original": 0.2, "finetune": 0.1, "pga": 0.05 * budget, "retrain": 0.0}[m] + 0.01 * seed
        cs = {"original": 9000, "finetune": 300, "pga": 100 * budget, "retrain": 3000}[m]
        e: dict = {"test_accuracy": 0.8 + 0.01 * seed - (0.02 * budget if m == "pga" else 0),
                   "retained_accuracy": 0.9,
                   "leakage": {"loss": {"distance_to_retrain": gap, "equivalence_margin": 0.065,
                                        "verdict": "exact" if m == "retrain" else
                                        "equivalent" if gap <= 0.065 else "under-unlearned"}}}
        if m != "original":
            e["cost"] = {"wall_s": cs / 100, "client_samples": cs, "rounds": 1}
            e["speedup_vs_retrain"] = {"wall": 3000 / cs, "client_samples": 3000 / cs}
        models[m] = e
    summary = {"attacks": ["loss"], "models": models, "failed_methods": {},
               "original_training": {"wall_s": 90.0, "client_samples": 9000, "rounds": 4}}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    with (run_dir / "per_client.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["model", "client", "withdrawn", "attack", "auc", "delta_auc_vs_retrain"])
        for m in models:
            for k in range(4):
                w.writerow([m, k, "true" if k == 0 else "false", "loss", 0.5, 0.0 if m == "retrain" else 0.01 * k])


def test_aggregates_over_synthetic_points(tmp_path: Path) -> None:
    sweep = load_sweep(_write(tmp_path, "[axes]\nseed = [0, 1, 2]\n[zip.budget]\nunlearn.pga.post_rounds = [1, 2]\n"))
    root = tmp_path / "sw"
    for p in sweep.points:
        _fake_point(root / p.name, p.cfg.seed, p.levels["budget"], p.cfg)
    runs = plan(sweep.points, root)
    assert all(r.action == "skip" for r in runs)
    outputs = write_outputs(sweep, root, runs)
    assert {p.name for p in outputs} >= {"sweep.csv", "sweep_summary.csv", "sweep.md", "frontier_loss.png",
                                         "utility.png"}
    with (root / "sweep.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6 * 4 * 4  # points x models x clients x attacks
    r = next(r for r in rows if r["point"] == "seed=2,budget=2" and r["model"] == "pga" and r["client"] == "0")
    assert (r["seed"], r["budget"], r["unlearn.pga.post_rounds"], r["client_samples"]) == ("2", "2", "2", "200")
    assert r["verdict"] == "under-unlearned" and r["equivalence_margin"] == "0.065"
    with (root / "sweep_summary.csv").open() as fh:
        summ = list(csv.DictReader(fh))
    assert "seed" not in summ[0]  # the replicate axis is averaged over
    by = {(s["model"], s["budget"]): s for s in summ}
    assert set(by) == {("original", ""), ("finetune", ""), ("pga", "1"), ("pga", "2"), ("retrain", "")}
    ft = by[("finetune", "")]                      # pga's budget does not change finetune: 3 seeds, not 6
    assert ft["replicates"] == "3" and math.isclose(float(ft["dauc_withdrawn"]), 0.11)
    from scipy.stats import t

    half = t.ppf(0.975, 2) * 0.01 / math.sqrt(3)   # values 0.10, 0.11, 0.12: stdev 0.01
    assert math.isclose(float(ft["dauc_withdrawn_hi"]) - 0.11, half, rel_tol=1e-4)
    assert math.isclose(float(ft["dauc_remaining"]), 0.02)   # clients 1-3: 0.01, 0.02, 0.03
    pga2 = by[("pga", "2")]
    assert pga2["unlearn.pga.post_rounds"] == "2" and math.isclose(float(pga2["speedup_client_samples"]), 15)
    # gaps .05, .06 equivalent (margin .065), .07 not
    assert math.isclose(float(by[("pga", "1")]["equivalent_share"]), 2 / 3, rel_tol=1e-5)
    assert math.isclose(float(pga2["test_acc_ratio"]), statistics_mean([(0.76 + 0.01 * s) / (0.8 + 0.01 * s)
                                                                          for s in range(3)]), rel_tol=1e-6)
    assert by[("retrain", "")]["equivalent_share"] == "1"
    md = (root / "sweep.md").read_text()
    assert "plots/frontier_loss.png" in md and "| pga | budget=1 (post_rounds=1) | 3 |" in md


def statistics_mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def test_pareto_front() -> None:
    pts = [(100.0, 0.05), (300.0, 0.10), (3000.0, 0.0), (200.0, -0.02), (50.0, math.nan)]
    assert frontier.pareto(pts) == [True, False, True, True, False]


def test_mean_ci_edges() -> None:
    assert aggregate.mean_ci([]) is None and aggregate.mean_ci([None, float("nan")]) is None
    assert aggregate.mean_ci([0.3]) == {"mean": 0.3, "lo": None, "hi": None, "n": 1}
    ci = aggregate.mean_ci([1.0, 1.0, 1.0])
    assert ci is not None and ci["lo"] == ci["hi"] == 1.0


def test_dry_run_lists_points_and_writes_nothing(tmp_path: Path) -> None:
    from fedunlearn.cli import app

    path = _write(tmp_path, "set = ['audit.attacks=[\"loss\",\"rmia\"]']\n[axes]\nseed = [0, 1]\n")
    out = tmp_path / "out"
    t0 = time.monotonic()
    res = CliRunner().invoke(app, ["sweep", str(path), "--out", str(out), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "seed=0" in res.output and "seed=1" in res.output and "about 10 full FL trainings" in res.output
    assert not out.exists() and time.monotonic() - t0 < 60
