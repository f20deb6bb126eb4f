"""UNSIR: the noise maximizes what it should, impair + repair forgets, federated vs central impair, the ledger;
budgets scale with the data, the noise-free ablation (the numerics alone, among them client mode's labelling of the
noise with the paired retained records: test_methods_unsir_noise.py).

Names added by the issue-8 fix are imported inside the tests, so that the old module fails test by test."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fedunlearn.config.load import load_config, to_toml
from fedunlearn.data.cache import experiment_data
from fedunlearn.ledgers.access import read_access_log
from fedunlearn.methods import build_method
from fedunlearn.methods.unsir import IMPAIR_STEP, NOISE, NOISE_X, NOISE_Y, REPAIR_STEP, UNSIR
from fedunlearn.methods.unsir_noise import class_noise, retained_subset, sample_noise
from fedunlearn.methods.unsir_params import UNSIRParams
from fedunlearn.models import Weights, build_model, get_weights, set_weights
from fedunlearn.training import evaluate, seed_for, train_epochs
from tests.conftest import TINY, make_tiny_federation

METHODS = 'unlearn.methods=["retrain","unsir"]'
CPU = torch.device("cpu")
# smaller noise batches for the tiny clients (~75 retained records each); the volume follows noise_ratio
SCALED = {"noise_samples": 64}

# trained close to convergence (u accuracy 0.93), so "forget accuracy does not rise" is meaningful
CONVERGED = ("train.rounds=6", "train.local_epochs=3", "train.batch_size=64", "train.lr=0.2")


@pytest.fixture(scope="module")
def short(tmp_path_factory):
    """The tiny federation after its 4 default rounds (class-level tests)."""
    tf = make_tiny_federation(tmp_path_factory.mktemp("unsir4"), METHODS)
    return tf, tf.train_original()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny federation trained close to convergence, u's window open (client-level tests)."""
    tf = make_tiny_federation(tmp_path_factory.mktemp("unsir_converged"), METHODS, *CONVERGED)
    w_t = tf.train_original()
    tf.ctx.window.open(0)
    return tf, w_t


def _model(tf, weights: Weights) -> nn.Module:
    ds, _ = experiment_data(tf.cfg)
    return set_weights(build_model(tf.cfg.model, ds.input_shape, ds.num_classes), weights)


def _class_accuracy(tf, weights: Weights, cls: int) -> tuple[float, float]:
    """(test accuracy on class ``cls``, on the other classes)."""
    ds, parts = experiment_data(tf.cfg)
    x, y = ds.x_test[parts.test], ds.y_test[parts.test]
    m = _model(tf, weights)
    return evaluate(m, x[y == cls], y[y == cls], CPU)[1], evaluate(m, x[y != cls], y[y != cls], CPU)[1]


def _u_accuracy(tf, weights: Weights) -> float:
    ds, parts = experiment_data(tf.cfg)
    idx = parts.members[0]
    return evaluate(_model(tf, weights), ds.x_train[idx], ds.y_train[idx], CPU)[1]


def test_class_noise_raises_the_loss_on_the_forgotten_class(short):
    tf, w_t = short
    ds, _ = experiment_data(tf.cfg)
    model = _model(tf, w_t)
    kw = dict(lr=0.1, reg=0.1, seed=3, device=CPU)
    start = class_noise(model, 0, 256, ds.input_shape, steps=0, **kw)  # the N(0, 1) initialisation
    noise = class_noise(model, 0, 256, ds.input_shape, steps=40, **kw)
    labels = torch.zeros(256, dtype=torch.long)
    with torch.no_grad():
        before = float(nn.functional.cross_entropy(model(torch.as_tensor(start)), labels))
        after = float(nn.functional.cross_entropy(model(torch.as_tensor(noise)), labels))
    assert after > before
    assert all(p.requires_grad for p in model.parameters())  # weights unfrozen again


def test_sample_noise_raises_the_logit_mse(trained):
    tf, w_t = trained
    ds, parts = experiment_data(tf.cfg)
    x = torch.as_tensor(ds.x_train[parts.members[0]][:64])
    noise, before, after = sample_noise(_model(tf, w_t), x, steps=5, lr=0.01, low=float(x.min()),
                                        high=float(x.max()), generator=torch.Generator().manual_seed(0))
    assert after > before
    assert noise.shape == x.shape and float(noise.min()) >= float(x.min()) and float(noise.max()) <= float(x.max())


def test_class_level_unsir_forgets_the_class(short):
    tf, w_t = short
    _withdraw_class(tf, 0)  # class mode needs no forget data: it runs after the window closed
    w = UNSIR(UNSIRParams(**SCALED)).unlearn(tf.job("unsir", w_t, withdrawn=(), forget_classes=[0]))
    forgot_t, kept_t = _class_accuracy(tf, w_t, 0)
    forgot, kept = _class_accuracy(tf, w, 0)
    assert forgot < forgot_t and kept >= kept_t - 0.05
    rows = [r for r in read_access_log(tf.run_dir / "data_access.csv") if r["phase"].startswith("unsir")]
    assert rows and {r["client"] for r in rows} == {"0", "1", "2", "3"}  # every client stays
    assert {r["selection"] for r in rows} == {"retained"}  # ... and none reads the withdrawn class
    assert {r["purpose"] for r in rows} == {"unsir_impair", "unsir_repair"}
    phases = [r.phase for r in tf.ctx.costs.rows if r.method == "unsir"]
    assert phases[-3:] == ["noise", "impair", "repair"]


def test_federated_impair_is_weaker_than_central(short):
    """FedAvg weakens a high-lr impair compared with one central pass (docs/methods.md; finding in unsir's
    docstring)."""
    from fedunlearn.methods.unsir_noise import impair_train, noise_count

    tf, w_t = short
    p = UNSIRParams(**SCALED)
    batch = tf.cfg.train.batch_size
    job = tf.job("unsir", w_t, withdrawn=(), forget_classes=[0])
    noise = UNSIR(p)._server_noise(job, p, w_t)
    one_epoch = p.model_copy(update={"impair_epochs": 1, "noise_volume": "ratio"})
    with job.fed.ctx.method_params("unsir", one_epoch):
        federated = job.fedavg(w_t, 1, "impair", step=IMPAIR_STEP, fraction=1.0, config={"forget_classes": "0"},
                               records={NOISE: noise})
    ds, parts = experiment_data(tf.cfg)
    pooled = [retained_subset(ds.x_train[parts.members[k]], ds.y_train[parts.members[k]], {0}, p.per_class,
                              seed_for(tf.cfg.seed, "unsir", "retained", k)) for k in job.remaining]
    x, y = np.concatenate([x for x, _ in pooled]), np.concatenate([y for _, y in pooled])
    model = _model(tf, w_t)
    n_noise = noise_count(len(x), ratio=p.noise_ratio, copies=p.noise_copies, noise_total=len(noise[NOISE_X]))
    impair_train(model, x, y, noise[NOISE_X], noise[NOISE_Y], n_noise=n_noise, lr=p.impair_lr, batch_size=batch,
                 epochs=1, seed=0, device=CPU)
    acc_t, acc_fed, acc_central = (_class_accuracy(tf, w, 0)[0] for w in (w_t, federated, get_weights(model)))
    assert acc_central < acc_fed < acc_t


def test_client_level_unsir_within_the_window(trained):
    tf, w_t = trained
    w = build_method("unsir").unlearn(tf.job("unsir", w_t))
    assert _u_accuracy(tf, w) <= _u_accuracy(tf, w_t)  # forget-set accuracy does not rise
    rows = [r for r in read_access_log(tf.run_dir / "data_access.csv") if r["phase"].startswith("unsir")]
    u_rows = [r for r in rows if r["client"] == "0"]
    assert u_rows and {r["purpose"] for r in u_rows} == {"unsir_noise"} and {r["window"] for r in u_rows} == {"open"}
    assert {r["purpose"] for r in rows if r["client"] != "0"} == {"unsir_impair", "unsir_repair"}
    noise_row = [r for r in tf.ctx.costs.rows if r.method == "unsir" and r.phase == "noise"][-1]
    assert noise_row.bytes_up > 0  # u sent noise, not records


def test_client_noise_step_sends_noise_only_with_a_higher_mse(trained):
    """u's reply is the noise alone: no labels leave u (the remaining clients label it with their own records)."""
    tf, w_t = trained
    job = tf.job("unsir", w_t)
    with job.fed.ctx.method_params("unsir", UNSIRParams(sample_noise_steps=5, sample_noise_lr=0.01, batch_size=32)):
        reply = job.send([0], "unsir_noise", w_t, "noise")[0]
    assert reply.ok, reply.error
    assert reply.metrics["mse_after"] > reply.metrics["mse_before"]
    assert reply.weights is None and list(reply.records) == [NOISE] and list(reply.records[NOISE]) == [NOISE_X]
    assert len(reply.records[NOISE][NOISE_X]) == reply.metrics["num-examples"]


def test_unsir_is_deterministic(trained):
    tf, w_t = trained
    a = build_method("unsir").unlearn(tf.job("unsir", w_t))
    b = build_method("unsir").unlearn(tf.job("unsir", w_t))
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_params_round_trip_through_toml(tmp_path):
    cfg = load_config(None, TINY + [METHODS, 'unlearn.unsir.profile="low_lr"', "unlearn.unsir.noise_copies=5"])
    p = cfg.unlearn.params("unsir")
    assert isinstance(p, UNSIRParams) and p.noise_copies == 5
    assert p.lrs == (1e-4, 1e-4)
    path = tmp_path / "c.toml"
    path.write_text(to_toml(cfg))
    assert load_config(path).unlearn.params("unsir") == p
    d = load_config(None, TINY + [METHODS]).unlearn.params("unsir")
    assert (d.noise_samples, d.noise_steps, d.noise_copies, d.lrs) == (256, 40, 20, (0.02, 0.01))
    assert d.noise_volume == "ratio" and d.noise_ratio == pytest.approx(10240 / 8000)  # the notebook's mix
    assert d.sample_lrs(0.1) == (0.3, 0.1)  # the calibrated impair lr (experiments/calibrate.py), the recipe's repair
    recipe = UNSIRParams(sample_impair_lr=0)
    assert recipe.sample_lrs(0.1) == (0.1, 0.1) and recipe.sample_lrs(0.01, 0.9) == pytest.approx((0.1, 0.1))
    cfg = load_config(None, TINY + [METHODS, "unlearn.unsir.noise_copies=0", "unlearn.unsir.sample_noise_copies=0",
                                    'unlearn.unsir.noise_volume="absolute"', "unlearn.unsir.sample_impair_lr=0.3"])
    path.write_text(to_toml(cfg))
    q = load_config(path).unlearn.params("unsir")
    assert (q.noise_copies, q.sample_noise_copies, q.noise_volume, q.sample_lrs(0.1)) == (0, 0, "absolute", (0.3, 0.1))


# ------------------------------------------------------------------------------------------- issue 8 fixes


def _withdraw_class(tf, c: int) -> None:
    """Class c withdrawn in the shared federation (its window opened once, then closed)."""
    if c not in tf.ctx.window.classes:
        tf.ctx.window.open_classes([c])
    tf.ctx.window.close_classes([c])


def _count_steps(monkeypatch, tf) -> dict[str, int]:
    """Optimizer steps per phase (``ctx.phase``), counted on every Adam and SGD instance."""
    counts: dict[str, int] = {}
    for cls in (torch.optim.Adam, torch.optim.SGD):
        orig = cls.step

        def step(self, *a, _orig=orig, **kw):
            counts[tf.ctx.phase] = counts.get(tf.ctx.phase, 0) + 1
            return _orig(self, *a, **kw)

        monkeypatch.setattr(cls, "step", step)
    return counts


def test_impair_and_repair_take_several_steps_per_client_in_both_modes(trained, short, monkeypatch):
    """A client with fewer records than the old batch of 256 still takes several optimizer steps per epoch."""
    tf, w_t = trained
    ds, parts = experiment_data(tf.cfg)
    assert max(len(m) for m in parts.members) < 256
    counts = _count_steps(monkeypatch, tf)
    build_method("unsir").unlearn(tf.job("unsir", w_t))
    remaining = len(tf.fed.pids) - 1
    assert counts["unsir.impair"] / remaining >= 4 and counts["unsir.repair"] / remaining >= 4
    job = tf.job("unsir", w_t)
    p = UNSIRParams(sample_noise_copies=1, sample_impair_lr=0.01, batch_size=32, sample_impair_epochs=2)
    with job.fed.ctx.method_params("unsir", p):
        replies = job.send([1], IMPAIR_STEP, w_t, "impair", {"forget_classes": ""},
                           records={NOISE: Weights([(NOISE_X, ds.x_train[:40])])})
    n = replies[0].metrics["num-examples"]
    assert replies[0].metrics["steps"] == 2 * np.ceil(n / 32)
    assert replies[0].metrics["samples"] == 2 * 2 * n  # retained + as many paired noise inputs, two epochs

    tf2, w2 = short
    counts2 = _count_steps(monkeypatch, tf2)
    _withdraw_class(tf2, 0)
    UNSIR(UNSIRParams(**SCALED)).unlearn(tf2.job("unsir", w2, withdrawn=(), forget_classes=[0]))
    assert counts2["unsir.impair"] / len(tf2.fed.pids) >= 4 and counts2["unsir.repair"] / len(tf2.fed.pids) >= 4


def test_noise_copies_zero_is_the_retained_only_ablation(trained):
    """sample_noise_copies = 0: u is not addressed, no noise is sent, and the impair rounds are plain SGD on each
    remaining client's retained subset — the same FedAvg result as a step that does exactly that."""
    from fedunlearn.fl.protocol import CLIENT_STEPS
    from fedunlearn.methods import unsir as mod

    tf, w_t = trained
    p = UNSIRParams(sample_noise_copies=0, repair_rounds=1, sample_impair_lr=0)  # the recipe's lr, as `ref`
    rows_before = len(read_access_log(tf.run_dir / "data_access.csv"))
    w = UNSIR(p).unlearn(tf.job("unsir", w_t))
    new_rows = read_access_log(tf.run_dir / "data_access.csv")[rows_before:]
    assert new_rows and "0" not in {r["client"] for r in new_rows}  # u is never addressed
    assert {r["purpose"] for r in new_rows} == {"unsir_impair", "unsir_repair"}

    def sgd_on_retained(rt, weights, message):
        x, y = mod._retained(rt)
        model = rt.model(weights)
        rc = rt.params(UNSIRParams).recipe(rt.cfg.train, class_mode=False)
        res = train_epochs(model, x, y, epochs=rc.impair_epochs, batch_size=rc.batch_size,
                           optimizer=torch.optim.SGD(model.parameters(), lr=rc.impair_lr),
                           seed=rt.seed(IMPAIR_STEP), device=rt.device)
        return mod.StepOutput(get_weights(model), {"num-examples": float(len(x)), "samples": float(res.samples)})

    if "test_unsir_sgd_on_retained" not in CLIENT_STEPS.names():
        CLIENT_STEPS.register("test_unsir_sgd_on_retained")(sgd_on_retained)
    job = tf.job("unsir", w_t)
    assert p.recipe(tf.cfg.train, class_mode=False).impair_lr == tf.cfg.train.lr / (1 - tf.cfg.train.momentum)
    with job.fed.ctx.method_params("unsir", p):
        ref = job.fedavg(w_t, 1, "impair", step="test_unsir_sgd_on_retained", fraction=1.0,
                         config={"forget_classes": ""})
        ref = job.fedavg(ref, 1, "repair", step=REPAIR_STEP, fraction=1.0, config={"forget_classes": ""})
    assert all(np.array_equal(w[k], ref[k]) for k in w)
    default = UNSIR(UNSIRParams(repair_rounds=1, sample_impair_lr=0)).unlearn(tf.job("unsir", w_t))
    assert not all(np.array_equal(w[k], default[k]) for k in w)  # the noise does change the result


def test_class_noise_copies_zero_impairs_on_retained_only(short):
    from fedunlearn.methods.unsir_noise import impair_train

    tf, w_t = short
    ds, parts = experiment_data(tf.cfg)
    x, y = ds.x_train[parts.members[1]], ds.y_train[parts.members[1]]
    noise_x, noise_y = np.random.default_rng(0).normal(size=(8, x.shape[1])).astype(np.float32), np.zeros(8, int)
    a, b = _model(tf, w_t), _model(tf, w_t)
    _, steps = impair_train(a, x, y, noise_x, noise_y, n_noise=0, lr=0.02, batch_size=32, epochs=1, seed=5,
                            device=CPU)
    train_epochs(b, x, y, epochs=1, batch_size=32, optimizer=torch.optim.Adam(b.parameters(), lr=0.02), seed=5,
                 device=CPU)
    assert steps == np.ceil(len(x) / 32)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    _withdraw_class(tf, 0)
    n_rows = len(tf.ctx.costs.rows)
    UNSIR(UNSIRParams(noise_copies=0, repair_rounds=1)).unlearn(tf.job("unsir", w_t, withdrawn=(), forget_classes=[0]))
    assert [r.phase for r in tf.ctx.costs.rows[n_rows:]] == ["impair", "repair"]  # no noise fitted


def test_class_noise_volume_scales_with_the_retained_size(short):
    """Class mode mixes noise_ratio noise records per retained record into each client's impair set (the count itself:
    test_methods_unsir_noise.py)."""
    tf, w_t = short
    job = tf.job("unsir", w_t, withdrawn=(), forget_classes=[0])
    noise = UNSIR(UNSIRParams(**SCALED))._server_noise(job, UNSIRParams(**SCALED), w_t)
    seen = set()
    for ratio in (0.5, 2.0):
        p = UNSIRParams(noise_copies=20, noise_ratio=ratio, noise_volume="ratio", impair_lr=0.02, batch_size=32,
                        impair_epochs=1, profile="default")
        with job.fed.ctx.method_params("unsir", p):
            replies = job.send(tf.fed.pids, IMPAIR_STEP, w_t, "impair", {"forget_classes": "0"},
                               records={NOISE: noise})
        for r in replies:
            n = r.metrics["num-examples"]
            assert r.metrics["samples"] == n + round(ratio * n)  # old code: n + 20 x 64 whatever the client holds
            seen.add(r.metrics["samples"])
    assert len(seen) > 2
