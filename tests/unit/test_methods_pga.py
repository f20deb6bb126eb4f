"""PGA: the reference model, the projection, the ascent inside the ball, the window and the ledger."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedunlearn.access import read_access_log
from fedunlearn.client import experiment_data
from fedunlearn.config import load_config, to_toml
from fedunlearn.errors import FedUnlearnError
from fedunlearn.methods import build_method
from fedunlearn.methods.pga import PGA, PGAParams, ball_radius, distance, project_to_ball, reference_model
from fedunlearn.models import Weights, build_model, set_weights
from fedunlearn.training import evaluate

from tests.conftest import TINY, make_tiny_federation

METHODS = 'unlearn.methods=["retrain","pga"]'

# trained close to convergence (u accuracy 0.93), so "forget accuracy does not rise" is meaningful
CONVERGED = ("train.rounds=6", "train.local_epochs=3", "train.batch_size=64", "train.lr=0.2")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny federation trained close to convergence (u's last local model stored), with u's window open."""
    tf = make_tiny_federation(tmp_path_factory.mktemp("pga"), METHODS, *CONVERGED)
    w_t = tf.train_original()
    tf.ctx.window.open(0)
    return tf, w_t


def _on_u(tf, weights: Weights) -> tuple[float, float]:
    """(loss, accuracy) on u's members (the auditor's direct view)."""
    ds, parts = experiment_data(tf.cfg)
    model = set_weights(build_model(tf.cfg.model, ds.input_shape, ds.num_classes), weights)
    idx = parts.members[0]
    return evaluate(model, ds.x_train[idx], ds.y_train[idx], torch.device("cpu"))


def _random(seed: int) -> Weights:
    rng = np.random.default_rng(seed)
    return Weights([("fc.weight", rng.normal(size=(5, 4)).astype(np.float32)),
                    ("fc.bias", rng.normal(size=4).astype(np.float32)),
                    ("bn.num_batches_tracked", np.asarray(seed, np.int64))])


def test_project_to_ball():
    center, w = _random(0), _random(1)
    d = distance(w, center)
    inside = project_to_ball(w, center, 2 * d)
    assert all(np.array_equal(inside[k], w[k]) for k in w)
    out = project_to_ball(w, center, d / 4)
    assert distance(out, center) == pytest.approx(d / 4, rel=1e-5)
    # same direction from the center; counters untouched
    a = np.concatenate([(w[k] - center[k]).ravel() for k in ("fc.weight", "fc.bias")])
    b = np.concatenate([(out[k] - center[k]).ravel() for k in ("fc.weight", "fc.bias")])
    assert float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))) == pytest.approx(1.0, abs=1e-6)
    assert out["bn.num_batches_tracked"] == w["bn.num_batches_tracked"]
    assert out["fc.weight"].dtype == np.float32


def test_reference_model_is_the_mean_of_the_others():
    models = [_random(s) for s in range(5)]
    w_t = Weights((k, np.mean([m[k] for m in models], axis=0).astype(models[0][k].dtype)) for k in models[0])
    w_ref = reference_model(w_t, [models[0]], k=5)
    for key in ("fc.weight", "fc.bias"):
        np.testing.assert_allclose(w_ref[key], np.mean([m[key] for m in models[1:]], axis=0), atol=1e-5)
    with pytest.raises(FedUnlearnError):
        reference_model(w_t, [models[0]], k=1)


def test_ball_radius_is_a_third_of_the_mean_distance():
    ref, inits = _random(0), [_random(s) for s in (1, 2, 3)]
    expected = np.mean([distance(ref, w) for w in inits]) / 3
    assert ball_radius(ref, inits, 1 / 3) == pytest.approx(expected)


def test_server_reference_uses_last_round_and_u_last_local(trained):
    tf, w_t = trained
    job = tf.job("pga", w_t)
    assert PGA._last_round_clients(job) == 4
    w_ref, radius = PGA()._reference(job, PGAParams())
    w_u, r_u = tf.ctx.history.load_last_local(0)
    assert r_u == tf.cfg.train.rounds
    for k in w_t:
        np.testing.assert_allclose(w_ref[k], (4 * w_t[k].astype(np.float64) - w_u[k]) / 3, atol=1e-5)
    assert radius > 0


def test_ascent_stays_inside_the_ball_and_raises_u_loss(trained):
    tf, w_t = trained
    job = tf.job("pga", w_t)
    w_ref, _ = PGA()._reference(job, PGAParams())
    radius = 0.2  # small, and a large lr: the projection must bind
    reply = job.send([0], "pga_ascent", w_ref, "ascent",
                     {"radius": radius, "epochs": 3, "early_stop_acc": 0.0, "lr": 0.5, "clip_norm": 5.0,
                      "check_every": 1, "batch_size": 32})[0]
    assert reply.ok, reply.error
    assert distance(reply.weights, w_ref) <= radius * (1 + 1e-5)
    assert distance(reply.weights, w_ref) == pytest.approx(radius, rel=1e-3)
    assert _on_u(tf, reply.weights)[0] > _on_u(tf, w_ref)[0]
    # and it stops early once accuracy on D_u falls below the threshold
    reply = job.send([0], "pga_ascent", w_ref, "ascent",
                     {"radius": 50.0, "epochs": 5, "early_stop_acc": 0.5, "lr": 0.5, "clip_norm": 5.0,
                      "check_every": 1, "batch_size": 32})[0]
    assert reply.metrics["early_stopped"] == 1.0 and reply.metrics["accuracy"] < 0.5


def test_pga_unlearns_within_the_window(trained):
    tf, w_t = trained
    w = build_method("pga").unlearn(tf.job("pga", w_t))
    assert _on_u(tf, w)[1] <= _on_u(tf, w_t)[1]  # forget-set accuracy does not rise
    rows = [r for r in read_access_log(tf.run_dir / "data_access.csv") if r["phase"].startswith("pga")]
    u_rows = [r for r in rows if r["client"] == "0"]
    assert u_rows and {r["purpose"] for r in u_rows} == {"pga_ascent"}
    assert {r["window"] for r in u_rows} == {"open"}
    assert {r["phase"] for r in u_rows} == {"pga.ascent"}
    assert {r["purpose"] for r in rows if r["client"] != "0"} == {"train"}
    phases = {r.phase: r for r in tf.ctx.costs.rows if r.method == "pga"}
    assert phases["ascent"].rounds == 1 and phases["post"].rounds == 1  # post_rounds: 10% of 6 rounds -> 1


def test_pga_is_deterministic(trained):
    tf, w_t = trained
    a = build_method("pga").unlearn(tf.job("pga", w_t))
    b = build_method("pga").unlearn(tf.job("pga", w_t))
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_pga_without_u_last_local_model_fails_clearly(trained):
    tf, w_t = trained  # only the configured withdrawing client (0) has its last local model kept
    with pytest.raises(FedUnlearnError, match="last local model of client 2"):
        build_method("pga").unlearn(tf.job("pga", w_t, withdrawn=(2,)))


def test_params_round_trip_through_toml(tmp_path):
    cfg = load_config(None, TINY + [METHODS, "unlearn.pga.epochs=3", "unlearn.pga.early_stop_acc=0.2",
                                    "unlearn.pga.post_rounds=2"])
    p = cfg.unlearn.params("pga")
    assert isinstance(p, PGAParams) and (p.epochs, p.early_stop_acc, p.post_rounds) == (3, 0.2, 2)
    path = tmp_path / "c.toml"
    path.write_text(to_toml(cfg))
    assert load_config(path).unlearn.params("pga") == p
    d = load_config(None, TINY + [METHODS]).unlearn.params("pga")
    assert (d.epochs, d.early_stop_acc, d.radius_share, d.random_inits) == (5, 0.1, 1 / 3, 10)
