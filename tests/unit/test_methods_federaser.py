"""FedEraser: the calibration maths, the replay over the stored history, its ledger and its privacy footprint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedunlearn.config.load import load_config, to_toml
from fedunlearn.data.cache import experiment_data
from fedunlearn.errors import FedUnlearnError
from fedunlearn.ledgers.access import read_access_log
from fedunlearn.methods import build_method
from fedunlearn.methods.federaser import FedEraserParams, apply_update, calibrate, calibration_epochs
from fedunlearn.models import Weights, build_model, set_weights
from fedunlearn.training import evaluate
from tests.conftest import TINY, make_tiny_federation

METHODS = 'unlearn.methods=["retrain","federaser"]'

# trained close to convergence (u accuracy 0.93), so "forget accuracy does not rise" is meaningful
CONVERGED = ("train.rounds=6", "train.local_epochs=3", "train.batch_size=64", "train.lr=0.2")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny federation trained close to convergence (history stored every 2 rounds) and its final model."""
    tf = make_tiny_federation(tmp_path_factory.mktemp("federaser"), METHODS, *CONVERGED)
    return tf, tf.train_original()


def _u_accuracy(tf, weights: Weights) -> float:
    """Accuracy on u's members (the auditor's view: direct, outside the federation)."""
    ds, parts = experiment_data(tf.cfg)
    model = set_weights(build_model(tf.cfg.model, ds.input_shape, ds.num_classes), weights)
    idx = parts.members[0]
    return evaluate(model, ds.x_train[idx], ds.y_train[idx], torch.device("cpu"))[1]


def test_calibrate_has_old_norm_and_new_direction_per_layer():
    rng = np.random.default_rng(0)
    old = Weights([("fc.weight", rng.normal(size=(4, 3))), ("fc.bias", rng.normal(size=3) * 5),
                   ("bn.running_mean", rng.normal(size=3)), ("bn.num_batches_tracked", np.asarray(7.0))])
    new = Weights([("fc.weight", rng.normal(size=(4, 3)) * 0.01), ("fc.bias", rng.normal(size=3)),
                   ("bn.running_mean", rng.normal(size=3)), ("bn.num_batches_tracked", np.asarray(2.0))])
    cal = calibrate(old, new)
    for k in ("fc.weight", "fc.bias"):
        assert np.linalg.norm(cal[k]) == pytest.approx(np.linalg.norm(old[k]))
        cos = float(np.sum(cal[k] * new[k]) / (np.linalg.norm(cal[k]) * np.linalg.norm(new[k])))
        assert cos == pytest.approx(1.0)
    np.testing.assert_array_equal(cal["bn.running_mean"], new["bn.running_mean"])  # statistics: not calibrated
    np.testing.assert_array_equal(cal["bn.num_batches_tracked"], new["bn.num_batches_tracked"])
    zero = calibrate(old, Weights((k, np.zeros_like(v)) for k, v in new.items()))
    assert not np.any(zero["fc.weight"])


def test_apply_update_casts_back():
    w = Weights([("a", np.ones(2, np.float32)), ("n", np.asarray(3, np.int64))])
    out = apply_update(w, Weights([("a", np.full(2, 0.5)), ("n", np.asarray(1.6))]))
    assert out["a"].dtype == np.float32 and out["n"].dtype == np.int64
    np.testing.assert_allclose(out["a"], 1.5)
    assert int(out["n"]) == 5


@pytest.mark.parametrize(("epochs", "ratio", "expected"), [(1, 0.5, 1), (2, 0.5, 1), (3, 0.5, 2), (5, 0.5, 3),
                                                            (4, 0.25, 1), (4, 1.0, 4)])
def test_calibration_epochs_round_half_up(epochs, ratio, expected):
    assert calibration_epochs(epochs, ratio) == expected


def test_federaser_unlearns_from_history_without_u(trained, monkeypatch):
    tf, w_t = trained
    hist = tf.ctx.history
    stored = hist.rounds()
    assert stored == [1, 3, 5]
    assert 0 in hist.clients_at(1)  # u's updates are stored, yet must not be used
    loaded: list[int] = []
    real_load = hist.load_update
    monkeypatch.setattr(hist, "load_update", lambda t, pid: (loaded.append(pid), real_load(t, pid))[1])
    w = build_method("federaser").unlearn(tf.job("federaser", w_t))
    assert set(loaded) == {1, 2, 3} and len(loaded) == 3 * len(stored)
    # forget-set accuracy does not rise
    assert _u_accuracy(tf, w) <= _u_accuracy(tf, w_t)
    # ledger: one calibration round per stored round, the history's size as server storage
    row = [r for r in tf.ctx.costs.rows if r.method == "federaser"][-1]
    assert row.phase == "calibrate" and row.rounds == len(stored)
    assert row.server_storage_bytes == hist.storage_bytes() > 0
    assert row.client_samples > 0
    # privacy: FedEraser reads none of u's data
    rows = read_access_log(tf.run_dir / "data_access.csv")
    mine = [r for r in rows if r["phase"].startswith("federaser")]
    assert mine and all(r["client"] != "0" for r in mine)
    assert {r["purpose"] for r in mine} == {"federaser_calibrate"}
    # the round log got one row per calibrated round
    assert [r.round for r in tf.ctx.rounds.rows if r.phase == "federaser.calibrate"][-len(stored):] == stored


def test_federaser_is_deterministic(trained):
    tf, w_t = trained
    a = build_method("federaser").unlearn(tf.job("federaser", w_t))
    b = build_method("federaser").unlearn(tf.job("federaser", w_t))
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_federaser_needs_history(tmp_path):
    tf = make_tiny_federation(tmp_path)  # methods = ["retrain"]: nothing declares needs_history
    w_t = tf.train_original(2)
    with pytest.raises(FedUnlearnError, match="history"):
        build_method("federaser").unlearn(tf.job("federaser", w_t))


def test_params_round_trip_through_toml(tmp_path):
    cfg = load_config(None, TINY + [METHODS, "unlearn.federaser.interval=3",
                                    "unlearn.federaser.calibration_ratio=0.25"])
    p = cfg.unlearn.params("federaser")
    assert isinstance(p, FedEraserParams)
    assert (p.interval, p.calibration_ratio) == (3, 0.25)
    path = tmp_path / "c.toml"
    path.write_text(to_toml(cfg))
    assert load_config(path).unlearn.params("federaser") == p
    defaults = load_config(None, TINY + [METHODS]).unlearn.params("federaser")  # docs/methods.md's defaults
    assert defaults == FedEraserParams(interval=2, calibration_ratio=0.5)
