"""mia_loss (ReMI): the Gaussian fit, the leak term falling on u's steps, u's phi moving toward its held-out level,
the attack-MLP variant, the early stop, the window and the ledger, determinism, forget accuracy, TOML round-trip."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedunlearn.access import read_access_log
from fedunlearn.audit.signals import phi_from_logits
from fedunlearn.client import experiment_data
from fedunlearn.config import load_config, to_toml
from fedunlearn.methods import build_method
from fedunlearn.methods.mia_loss import MiaLoss, MiaLossParams, gaussian_leak, mean_softmax_kl
from fedunlearn.models import Weights, build_model, set_weights
from fedunlearn.training import evaluate, logits

from tests.conftest import TINY, make_tiny_federation

METHODS = 'unlearn.methods=["retrain","mia_loss"]'
# memorizing set-up: u's A0 AUC under w_T (0.63) sits just above its null band (upper edge 0.62)
LEAKY = ("train.rounds=3", "train.local_epochs=8", "model.hidden=[128]", "train.lr=0.2", "data.flip_y=0.2",
         "data.class_sep=1.0", "data.features=40")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def w_t(tmp_path_factory):
    return make_tiny_federation(tmp_path_factory.mktemp("mia"), METHODS, *LEAKY).train_original()


def _fed(path):
    return make_tiny_federation(path, METHODS, *LEAKY)


def _u_phi(tf, weights: Weights) -> tuple[np.ndarray, np.ndarray]:
    """phi of u's members and held-out records (the auditor's direct view)."""
    ds, parts = experiment_data(tf.cfg)
    model = set_weights(build_model(tf.cfg.model, ds.input_shape, ds.num_classes), weights)
    m, h = parts.members[0], parts.validation[0]
    return (phi_from_logits(logits(model, ds.x_train[m], CPU), ds.y_train[m]),
            phi_from_logits(logits(model, ds.x_train[h], CPU), ds.y_train[h]))


def _u_accuracy(tf, weights: Weights) -> float:
    ds, parts = experiment_data(tf.cfg)
    model = set_weights(build_model(tf.cfg.model, ds.input_shape, ds.num_classes), weights)
    idx = parts.members[0]
    return evaluate(model, ds.x_train[idx], ds.y_train[idx], CPU)[1]


def _u_rows(tf) -> list[dict[str, str]]:
    rows = read_access_log(tf.run_dir / "data_access.csv")
    return [r for r in rows if r["client"] == "0" and r["purpose"] != "audit"]


def test_gaussian_leak_is_the_softplus_llr_and_pushes_phi_down():
    mu_in, sd_in, mu_out, sd_out = 3.0, 1.0, 0.5, 2.0
    x = torch.tensor([3.0, 0.5, -1.0], requires_grad=True)
    value = gaussian_leak(x, mu_in, sd_in, mu_out, sd_out)
    llr = (math.log(sd_out / sd_in) - (x.detach() - mu_in) ** 2 / (2 * sd_in ** 2)
           + (x.detach() - mu_out) ** 2 / (2 * sd_out ** 2))
    assert float(value.detach()) == pytest.approx(float(torch.nn.functional.softplus(llr).mean()), rel=1e-6)
    value.backward()
    assert x.grad[0] > 0  # a member-like record is pushed toward lower confidence
    # bounded below: far out in the non-member tail the term vanishes instead of running to -infinity
    assert float(gaussian_leak(torch.tensor([-50.0]), mu_in, sd_in, mu_out, sd_out)) == pytest.approx(0.0, abs=1e-6)
    z_u, z_h = torch.tensor([[4.0, 0.0, 0.0]]), torch.tensor([[1.0, 1.0, 1.0]])
    assert float(mean_softmax_kl(z_u, z_h)) > 0 and float(mean_softmax_kl(z_h, z_h)) == pytest.approx(0.0, abs=1e-7)


def test_gaussian_fit_leak_falls_and_phi_moves_toward_heldout(tmp_path, w_t):
    tf = _fed(tmp_path)
    tf.ctx.window.open(0)
    method = MiaLoss(MiaLossParams(rounds=1, repair_rounds=0))
    w = method.unlearn(tf.job("mia_loss", w_t))

    # the fit: Gaussians of phi on u's members / held-out records under w_T
    pm, ph = _u_phi(tf, w_t)
    fit = method.fits[0]
    assert fit["mu_in"] == pytest.approx(pm.mean(), rel=1e-5) and fit["sd_in"] == pytest.approx(pm.std(), rel=1e-5)
    assert fit["mu_out"] == pytest.approx(ph.mean(), rel=1e-5) and fit["sd_out"] == pytest.approx(ph.std(), rel=1e-5)
    assert fit["mu_in"] > fit["mu_out"]  # u's records are memorized

    # u's step lowers its leak and KL terms and moves its members' phi toward the held-out level
    step = method.trace[0]
    assert step["gone.0"] == 0.0
    assert step["leak_after.0"] < step["leak_before.0"] and step["kl_after.0"] < step["kl_before.0"]
    assert abs(step["phi_member_after.0"] - step["phi_holdout.0"]) < abs(step["phi_member.0"] - step["phi_holdout.0"])
    # ... and so does the averaged global model
    pm_after, ph_after = _u_phi(tf, w)
    assert pm_after.mean() - ph_after.mean() < pm.mean() - ph.mean()
    assert _u_accuracy(tf, w) <= _u_accuracy(tf, w_t)


def test_early_stop_window_and_ledger(tmp_path, w_t):
    tf = _fed(tmp_path)
    tf.ctx.window.open(0)
    method = MiaLoss(MiaLossParams(rounds=3, repair_rounds=1))
    method.unlearn(tf.job("mia_loss", w_t))
    # stopped once u reported its AUC inside the null band: that round's remaining clients never trained
    assert 2 <= len(method.trace) <= 3 and method.trace[-1]["gone.0"] == 1.0
    mixed = [r for r in tf.ctx.rounds.rows if r["phase"] == "mia_loss.unlearn"]
    assert len(mixed) == len(method.trace) - 1
    ledger = {r.phase: r.rounds for r in tf.ctx.costs.rows if r.method == "mia_loss"}
    assert ledger == {"fit": 1, "unlearn": len(method.trace), "repair": 1}
    rows = _u_rows(tf)
    assert rows and all(r["window"] == "open" and r["phase"] in ("mia_loss.fit", "mia_loss.unlearn") for r in rows)
    assert {r["purpose"] for r in rows} == {"mia_loss_fit", "mia_loss_forget"}

    # window closed: u is never addressed again; the remaining clients' rounds and repair still run
    tf.ctx.window.close(0)
    out = MiaLoss(MiaLossParams(rounds=1, repair_rounds=1)).unlearn(tf.job("mia_loss", w_t))
    assert len(_u_rows(tf)) == len(rows)
    assert any(not np.array_equal(out[k], w_t[k]) for k in w_t)


def test_attack_variant_runs_with_a_fixed_attack(tmp_path, w_t):
    tf = _fed(tmp_path)
    tf.ctx.window.open(0)
    method = MiaLoss(MiaLossParams(leak="attack", rounds=1, repair_rounds=0, attack_epochs=100))
    w = method.unlearn(tf.job("mia_loss", w_t))
    assert method.fits[0]["attack_auc"] > 0.5  # the attack learned something on D_u vs H_u under w_T
    step = method.trace[0]
    assert 0.0 < step["leak_after.0"] < step["leak_before.0"] < 1.0  # its mean member probability fell
    assert _u_accuracy(tf, w) <= _u_accuracy(tf, w_t)


def test_deterministic_under_the_seed(tmp_path, w_t):
    out = []
    for name in ("a", "b"):
        tf = _fed(tmp_path / name)
        tf.ctx.window.open(0)
        out.append(build_method("mia_loss").unlearn(tf.job("mia_loss", w_t)))
    assert all(np.array_equal(out[0][k], out[1][k]) for k in out[0])


def test_params_round_trip_through_toml(tmp_path):
    cfg = load_config(None, TINY + [METHODS, 'unlearn.mia_loss.leak="attack"', "unlearn.mia_loss.lambda_leak=2.0",
                                    "unlearn.mia_loss.lambda_kl=0.5", "unlearn.mia_loss.rounds=2",
                                    "unlearn.mia_loss.repair_rounds=0"])
    p = cfg.unlearn.params("mia_loss")
    assert isinstance(p, MiaLossParams)
    assert (p.leak, p.lambda_leak, p.lambda_kl, p.rounds, p.repair_rounds) == ("attack", 2.0, 0.5, 2, 0)
    path = tmp_path / "c.toml"
    path.write_text(to_toml(cfg))
    assert load_config(path).unlearn.params("mia_loss") == p
    d = load_config(None, TINY + [METHODS]).unlearn.params("mia_loss")
    assert (d.leak, d.lambda_leak, d.lambda_kl, d.lr, d.rounds, d.repair_rounds) == ("gaussian", 1.0, 1.0, 1e-3, 3, 1)
