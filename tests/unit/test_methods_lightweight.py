"""lightweight: the perturbation (scale, seeding, BN statistics), the sigma = 0 ablation, the verify/budget stopping
rule and the window, the kl variant, determinism, forget accuracy, TOML round-trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedunlearn.access import read_access_log
from fedunlearn.client import experiment_data
from fedunlearn.config import load_config, to_toml
from fedunlearn.methods import build_method
from fedunlearn.methods.finetune import Finetune, FinetuneParams
from fedunlearn.methods.lightweight import Lightweight, LightweightParams, perturb
from fedunlearn.models import Weights, build_model, set_weights
from fedunlearn.training import evaluate

from tests.conftest import TINY, make_tiny_federation

METHODS = 'unlearn.methods=["retrain","lightweight"]'
# memorizing set-up: u's A0 AUC under w_T (0.63) sits just above its null band (upper edge 0.62)
LEAKY = ("train.rounds=3", "train.local_epochs=8", "model.hidden=[128]", "train.lr=0.2", "data.flip_y=0.2",
         "data.class_sep=1.0", "data.features=40")


@pytest.fixture(scope="module")
def w_t(tmp_path_factory):
    return make_tiny_federation(tmp_path_factory.mktemp("lw"), METHODS, *LEAKY).train_original()


def _fed(path):
    return make_tiny_federation(path, METHODS, *LEAKY)


def _u_accuracy(tf, weights: Weights) -> float:
    ds, parts = experiment_data(tf.cfg)
    model = set_weights(build_model(tf.cfg.model, ds.input_shape, ds.num_classes), weights)
    idx = parts.members[0]
    return evaluate(model, ds.x_train[idx], ds.y_train[idx], torch.device("cpu"))[1]


def _u_rows(tf) -> list[dict[str, str]]:
    rows = read_access_log(tf.run_dir / "data_access.csv")
    return [r for r in rows if r["client"] == "0" and r["purpose"] != "audit"]


def _dist(a: Weights, b: Weights) -> float:
    return float(np.sqrt(sum(np.sum((a[k].astype(np.float64) - b[k]) ** 2) for k in a)))


def _ledger(tf, method: str) -> dict[str, int]:
    return {r.phase: r.rounds for r in tf.ctx.costs.rows if r.method == method}


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


def test_verify_reads_u_only_in_its_window_then_budget_rule(tmp_path, w_t):
    tf = _fed(tmp_path)
    tf.ctx.window.open(0)
    method = Lightweight(LightweightParams(max_rounds=3))
    w = method.unlearn(tf.job("lightweight", w_t))
    trace = method.trace
    # u verified after each round and the loop stopped as soon as its AUC reached the null band
    assert 1 <= len(trace) <= 3
    assert all(t["gone.0"] == 0.0 for t in trace[:-1])
    assert trace[-1]["gone.0"] == 1.0 and trace[-1]["auc.0"] <= trace[-1]["band_hi.0"]
    assert len(trace) < 3  # on this set-up one round of FedAvg without u already suffices
    assert _ledger(tf, "lightweight")["finetune"] == len(trace)
    rows = _u_rows(tf)
    assert rows and all(r["phase"] == "lightweight.verify" and r["window"] == "open" for r in rows)
    assert {r["split"] for r in rows} == {"member", "validation"}
    assert _u_accuracy(tf, w) <= _u_accuracy(tf, w_t)

    # window closed: u is never addressed; the budget rule runs exactly max_rounds
    tf.ctx.window.close(0)
    again = Lightweight(LightweightParams(max_rounds=3))
    again.unlearn(tf.job("lightweight", w_t))
    assert again.trace == []
    assert len(_u_rows(tf)) == len(rows)
    assert [r.rounds for r in tf.ctx.costs.rows if r.method == "lightweight" and r.phase == "finetune"] == [1, 3]


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
    path = tmp_path / "c.toml"
    path.write_text(to_toml(cfg))
    assert load_config(path).unlearn.params("lightweight") == p
    d = load_config(None, TINY + [METHODS]).unlearn.params("lightweight")
    assert (d.sigma, d.stop, d.max_rounds, d.variant, d.lambda_ce) == (0.05, "verify", 0, "perturb", 1.0)
