"""lightweight: the perturbation (scale, seeding, BN statistics, a large sigma moves the model), the sigma = 0
ablation, the verify/budget stopping rule (u's A0 check on its validation part and the remaining clients' loss back
at its pre-perturbation level, queried under w_T before perturbing) and the window, the query ledger, the kl
variant, determinism, forget accuracy, TOML round-trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedunlearn.config.load import load_config, to_toml
from fedunlearn.data.cache import experiment_data
from fedunlearn.ledgers.access import read_access_log
from fedunlearn.methods import build_method
from fedunlearn.methods.finetune import Finetune, FinetuneParams
from fedunlearn.methods.lightweight import Lightweight, LightweightParams, perturb
from fedunlearn.models import Weights, build_model, set_weights
from fedunlearn.training import evaluate, seed_for
from tests.conftest import TINY, make_tiny_federation

METHODS = 'unlearn.methods=["retrain","lightweight"]'
# memorizing set-up: u's A0 AUC against its validation part under w_T (0.71) sits above its null band (upper edge
# 0.61; 72 members, 38 validation records); plain FedAvg without u needs 4 rounds to bring it inside
LEAKY = ("train.rounds=3", "train.local_epochs=8", "model.hidden=[128]", "train.lr=0.2", "data.flip_y=0.2",
         "data.class_sep=1.0", "data.features=40", "data.holdout=0.4", "data.validation=0.8")


@pytest.fixture(scope="module")
def w_t(tmp_path_factory):
    return make_tiny_federation(tmp_path_factory.mktemp("lw"), METHODS, *LEAKY).train_original()


def _fed(path):
    return make_tiny_federation(path, METHODS, *LEAKY)


def _member_eval(tf, weights: Weights, pid: int) -> tuple[float, float]:
    """(mean CE, accuracy) of client ``pid``'s members under ``weights``."""
    ds, parts = experiment_data(tf.cfg)
    model = set_weights(build_model(tf.cfg.model, ds.input_shape, ds.num_classes), weights)
    idx = parts.members[pid]
    return evaluate(model, ds.x_train[idx], ds.y_train[idx], torch.device("cpu"))


def _u_accuracy(tf, weights: Weights) -> float:
    return _member_eval(tf, weights, 0)[1]


def _u_rows(tf) -> list[dict[str, str]]:
    rows = read_access_log(tf.run_dir / "data_access.csv")
    return [r for r in rows if r["client"] == "0" and r["purpose"] != "audit"]


def _dist(a: Weights, b: Weights) -> float:
    return float(np.sqrt(sum(np.sum((a[k].astype(np.float64) - b[k]) ** 2) for k in a)))


def _ledger(tf, method: str) -> dict[str, int]:
    return {r.phase: r.rounds for r in tf.ctx.costs.rows if r.method == method}


def _query_rows(tf) -> list[dict[str, str]]:
    return [r for r in read_access_log(tf.run_dir / "data_access.csv") if r["phase"] == "lightweight.query"]


def _perturbed(tf, w_t: Weights, sigma: float) -> Weights:
    """The model right after the method's perturbation (same seeding as ``Lightweight.unlearn``)."""
    return perturb(w_t, sigma, seed_for(tf.cfg.seed, "lightweight", "perturb", 0))


def test_perturbation_scales_with_sigma_and_skips_bn_statistics():
    rng = np.random.default_rng(0)
    w = Weights([("fc.weight", rng.normal(0, 0.3, size=(200, 50)).astype(np.float32)),
                 ("fc.bias", rng.normal(0, 2.0, size=50).astype(np.float32)),
                 ("bn.running_mean", rng.normal(size=50).astype(np.float32)),
                 ("bn.running_var", rng.random(50).astype(np.float32)),
                 ("bn.num_batches_tracked", np.asarray(7, np.int64))])
    small, large = perturb(w, 0.05, seed=1), perturb(w, 0.1, seed=1)
    assert _dist(small, w) > 0
    assert _dist(large, w) == pytest.approx(2 * _dist(small, w), rel=1e-3)  # same draws, twice the scale
    for k in ("bn.running_mean", "bn.running_var", "bn.num_batches_tracked"):
        assert np.array_equal(small[k], w[k]) and small[k].dtype == w[k].dtype
    # per tensor, relative to that tensor's spread
    for k in ("fc.weight", "fc.bias"):
        ratio = np.std(small[k] - w[k]) / np.std(w[k])
        assert ratio == pytest.approx(0.05, rel=0.25)
    assert all(np.array_equal(perturb(w, 0.0, 1)[k], w[k]) for k in w)
    assert all(np.array_equal(perturb(w, 0.05, 1)[k], small[k]) for k in w)       # seeded
    assert not np.array_equal(perturb(w, 0.05, 2)["fc.weight"], small["fc.weight"])


def test_sigma_zero_is_finetune_with_the_same_rule(tmp_path, w_t):
    """The ablation: sigma = 0 under the budget rule is finetune, bit for bit; sigma > 0 moves away from it."""
    tf = _fed(tmp_path)
    ablation = Lightweight(LightweightParams(sigma=0.0, stop="budget", max_rounds=2)).unlearn(tf.job("finetune", w_t))
    ft = Finetune(FinetuneParams(rounds=2)).unlearn(tf.job("finetune", w_t))
    assert all(np.array_equal(ablation[k], ft[k]) for k in ft)
    perturbed = Lightweight(LightweightParams(sigma=0.05, stop="budget", max_rounds=2)).unlearn(tf.job("finetune", w_t))
    assert _dist(perturbed, ft) > 0


def test_a_large_sigma_really_moves_the_model(tmp_path, w_t):
    """sigma = 1 (noise as large as each tensor's spread) costs accuracy on the forget set and the remaining
    clients' members; sigma = 0 leaves w_T as it is; the noise's size grows with sigma."""
    tf = _fed(tmp_path)
    assert all(np.array_equal(_perturbed(tf, w_t, 0.0)[k], w_t[k]) for k in w_t)
    acc_t, acc_1 = _u_accuracy(tf, w_t), _u_accuracy(tf, _perturbed(tf, w_t, 1.0))
    assert acc_1 < acc_t - 0.05
    loss_t, loss_1 = _member_eval(tf, w_t, 1)[0], _member_eval(tf, _perturbed(tf, w_t, 1.0), 1)[0]
    assert loss_1 > loss_t
    for k in w_t:  # per tensor, relative to that tensor's own spread
        if np.std(w_t[k]) > 0:
            ratio = np.std(_perturbed(tf, w_t, 1.0)[k] - w_t[k]) / np.std(w_t[k])
            assert ratio == pytest.approx(1.0, rel=0.3), k


def test_verify_reads_u_only_in_its_window_then_budget_rule(tmp_path, w_t):
    tf = _fed(tmp_path)
    tf.ctx.window.open(0)
    method = Lightweight(LightweightParams(max_rounds=6))
    w = method.unlearn(tf.job("lightweight", w_t))
    trace = method.trace
    # u verified after each round and the loop stopped as soon as its AUC reached the null band (and the remaining
    # clients' loss was back): on this set-up FedAvg without u needs a few rounds, fewer than the cap
    assert 2 <= len(trace) < 6
    # the remaining clients were asked twice: under w_T before perturbing, and in the one round u's check passed
    assert len(_query_rows(tf)) == 2 * 3
    assert all(t["gone.0"] == 0.0 and t["queried"] == 0.0 for t in trace[:-1])
    assert trace[-1]["gone.0"] == 1.0 and trace[-1]["auc.0"] <= trace[-1]["band_hi.0"]
    assert trace[-1]["loss_back"] == 1.0 and trace[-1]["loss_now"] <= trace[-1]["loss_before"]
    assert _ledger(tf, "lightweight")["finetune"] == len(trace)
    rows = _u_rows(tf)
    assert rows and all(r["phase"] == "lightweight.verify" and r["window"] == "open" for r in rows)
    assert {r["split"] for r in rows} == {"member", "validation"}
    assert _u_accuracy(tf, w) <= _u_accuracy(tf, w_t)

    # window closed: u is never addressed; the budget rule runs exactly max_rounds, no query round
    n_query = len(_query_rows(tf))
    tf.ctx.window.close(0)
    again = Lightweight(LightweightParams(max_rounds=6))
    again.unlearn(tf.job("lightweight", w_t))
    assert again.trace == [] and again.loss_before == {}
    assert len(_u_rows(tf)) == len(rows)
    assert len(_query_rows(tf)) == n_query
    assert [r.rounds for r in tf.ctx.costs.rows if r.method == "lightweight" and r.phase == "finetune"] == [
        len(trace), 6]


def test_stop_waits_for_the_remaining_loss(tmp_path, w_t):
    """A large perturbation: after one round u's AUC is already inside the band, but the remaining clients' loss is
    still above its level under w_T, so the rule goes on until the repair has brought it back."""
    tf = _fed(tmp_path)
    tf.ctx.window.open(0)
    method = Lightweight(LightweightParams(sigma=2.0, max_rounds=6))
    method.unlearn(tf.job("lightweight", w_t))
    first, last = method.trace[0], method.trace[-1]
    assert first["gone.0"] == 1.0 and first["auc.0"] <= first["band_hi.0"]
    assert len(method.trace) >= 2 and _ledger(tf, "lightweight")["finetune"] >= 2   # no stop after round 1
    assert first["queried"] == 1.0 and first["loss_now"] > first["loss_before"] and first["loss_back"] == 0.0
    assert last["gone.0"] == 1.0 and last["loss_back"] == 1.0
    assert last["loss_now"] <= last["loss_before"]
    assert _ledger(tf, "lightweight")["finetune"] == len(method.trace)

    # the tolerance (our knob) lets a loss within (1 + loss_tol) x the pre-perturbation level pass
    tol = first["loss_now"] / first["loss_before"] - 1.0 + 0.01
    loose = Lightweight(LightweightParams(sigma=2.0, max_rounds=6, loss_tol=tol))
    loose.unlearn(tf.job("lightweight", w_t))
    assert len(loose.trace) == 1 and loose.trace[0]["loss_back"] == 1.0
    assert [r.rounds for r in tf.ctx.costs.rows if r.method == "lightweight" and r.phase == "finetune"] == [
        len(method.trace), 1]


def test_pre_perturbation_loss_is_queried_under_w_t_before_perturbing(tmp_path, w_t):
    """The reference level is each remaining client's member CE under w_T itself, asked before the perturbation."""
    tf = _fed(tmp_path)
    tf.ctx.window.open(0)
    method = Lightweight(LightweightParams(sigma=2.0, max_rounds=6))
    method.unlearn(tf.job("lightweight", w_t))
    # order: the query round opens the method's ledger, before the perturbation and any training or verification
    phases = [r.phase for r in tf.ctx.costs.rows if r.method == "lightweight"]
    assert phases[:2] == ["query", "perturb"]
    reads = [r for r in read_access_log(tf.run_dir / "data_access.csv") if r["phase"].startswith("lightweight")]
    assert [r["phase"] for r in reads[:3]] == ["lightweight.query"] * 3
    assert {r["client"] for r in reads[:3]} == {"1", "2", "3"}
    assert sorted(method.loss_before) == [1, 2, 3]
    bent = _perturbed(tf, w_t, 2.0)
    for pid, (loss, n) in method.loss_before.items():
        assert loss == pytest.approx(_member_eval(tf, w_t, pid)[0], rel=1e-9)
        assert abs(loss - _member_eval(tf, bent, pid)[0]) > 0.05   # not the perturbed model's loss
        assert n == len(experiment_data(tf.cfg)[1].members[pid])


def test_ledger_shows_the_remaining_clients_query_reads(tmp_path, w_t):
    """Each loss query is a query round in the cost ledger and reads the remaining clients' members, noted in
    data_access.csv under the phase lightweight.query; u is never part of it."""
    tf = _fed(tmp_path)
    tf.ctx.window.open(0)
    method = Lightweight(LightweightParams(sigma=2.0, max_rounds=6))
    method.unlearn(tf.job("lightweight", w_t))
    rows = _query_rows(tf)
    assert rows and sorted({r["client"] for r in rows}) == ["1", "2", "3"]
    queries = 1 + sum(int(t["queried"]) for t in method.trace)   # before perturbing + each round u's check passed
    assert queries >= 3
    row = next(r for r in tf.ctx.costs.rows if r.method == "lightweight" and r.phase == "query")
    members = experiment_data(tf.cfg)[1].members
    assert row.rounds == queries
    assert row.client_samples == queries * sum(len(members[k]) for k in (1, 2, 3))
    assert len(rows) == 3 * queries
    assert all(r["split"] == "member" and r["purpose"] == "lightweight_loss" and r["selection"] == "all"
               for r in rows)
    assert all(int(r["records"]) == len(members[int(r["client"])]) for r in rows)


def test_kl_variant_mixes_u_kl_with_remaining_ce(tmp_path, w_t):
    tf = _fed(tmp_path)
    tf.ctx.window.open(0)
    method = Lightweight(LightweightParams(variant="kl", stop="budget", max_rounds=2, lambda_ce=1.0))
    w = method.unlearn(tf.job("lightweight", w_t))
    assert _ledger(tf, "lightweight")["kl"] == 2
    rows = _u_rows(tf)
    assert rows and all(r["phase"] == "lightweight.kl" and r["purpose"] == "lightweight_kl" and r["window"] == "open"
                        for r in rows)
    plain = Lightweight(LightweightParams(stop="budget", max_rounds=2)).unlearn(tf.job("lightweight", w_t))
    # u's KL toward noise outputs forgets more of D_u than the remaining clients' rounds alone
    assert _u_accuracy(tf, w) < _u_accuracy(tf, plain) <= _u_accuracy(tf, w_t)

    tf.ctx.window.close(0)
    Lightweight(LightweightParams(variant="kl", stop="budget", max_rounds=1)).unlearn(tf.job("lightweight", w_t))
    assert len(_u_rows(tf)) == len(rows)


def test_deterministic_under_the_seed(tmp_path, w_t):
    out = []
    for name in ("a", "b"):
        tf = _fed(tmp_path / name)
        tf.ctx.window.open(0)
        out.append(build_method("lightweight").unlearn(tf.job("lightweight", w_t)))
    assert all(np.array_equal(out[0][k], out[1][k]) for k in out[0])
    assert _dist(out[0], w_t) > 0


def test_params_round_trip_through_toml(tmp_path):
    cfg = load_config(None, TINY + [METHODS, "unlearn.lightweight.sigma=0.1", 'unlearn.lightweight.stop="budget"',
                                    "unlearn.lightweight.max_rounds=2", 'unlearn.lightweight.variant="kl"',
                                    "unlearn.lightweight.lambda_ce=0.5"])
    p = cfg.unlearn.params("lightweight")
    assert isinstance(p, LightweightParams)
    assert (p.sigma, p.stop, p.max_rounds, p.variant, p.lambda_ce) == (0.1, "budget", 2, "kl", 0.5)
    assert load_config(None, TINY + [METHODS, "unlearn.lightweight.loss_tol=0.02"]).unlearn.params(
        "lightweight").loss_tol == 0.02
    path = tmp_path / "c.toml"
    path.write_text(to_toml(cfg))
    assert load_config(path).unlearn.params("lightweight") == p
    d = load_config(None, TINY + [METHODS]).unlearn.params("lightweight")
    assert (d.sigma, d.stop, d.max_rounds, d.variant, d.lambda_ce, d.loss_tol) == (0.5, "verify", 0, "perturb",
                                                                                  1.0, 0.0)  # sigma calibrated
