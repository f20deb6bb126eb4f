"""FedAvg hooks without Flower: seeded sampling, weighted averaging, failure share, the withdrawal window."""

from __future__ import annotations

import numpy as np
import pytest

from fedunlearn.errors import PhaseFailed, PrivacyViolation
from fedunlearn.fl.fedavg import FedAvgRounds, sample_clients, weighted_average
from fedunlearn.fl.protocol import ClientReply
from fedunlearn.ledgers.access import read_access_log
from fedunlearn.models import Weights
from tests.conftest import make_tiny_federation


def test_sampling_is_seeded_and_sized() -> None:
    a = sample_clients(range(10), 0.3, seed=7)
    assert a == sample_clients(range(10), 0.3, seed=7) and len(a) == 3 and a == sorted(a)
    assert any(sample_clients(range(10), 0.3, seed=s) != a for s in range(8, 20))
    assert sample_clients(range(10), 0.01, seed=1).__len__() == 1
    assert sample_clients([3, 1, 2], 1.0, seed=0) == [1, 2, 3]


def test_weighted_average_matches_hand_computation() -> None:
    w1 = Weights(a=np.array([0.0, 2.0], np.float32), n=np.array(2, np.int64))
    w2 = Weights(a=np.array([4.0, 6.0], np.float32), n=np.array(4, np.int64))
    avg = weighted_average([(w1, 1.0), (w2, 3.0)])
    np.testing.assert_allclose(avg["a"], [3.0, 5.0])
    assert avg["a"].dtype == np.float32 and avg["n"].dtype == np.int64 and int(avg["n"]) == 4  # rint(3.5) = 4


def test_withdrawn_client_never_sampled_and_refused(tmp_path) -> None:
    tf = make_tiny_federation(tmp_path, "train.fraction=0.5")
    tf.ctx.window.open(0)
    tf.ctx.window.close(0)
    eng = FedAvgRounds(tf.ctx, "retrain", [1, 2, 3])
    for rnd in range(1, 30):
        pids, cfg = eng.configure(rnd)
        assert 0 not in pids and len(pids) == 2 and cfg["round"] == rnd
    with pytest.raises(PrivacyViolation):
        FedAvgRounds(tf.ctx, "retrain", [0, 1, 2])
    with pytest.raises(PrivacyViolation):
        tf.fed.send([0], "train", tf.initial)
    assert not any(r["client"] == "0" for r in read_access_log(tf.run_dir / "data_access.csv"))


def test_history_records_updates_every_interval(tmp_path) -> None:
    tf = make_tiny_federation(tmp_path)
    tf.ctx.history.interval, tf.ctx.history.keep_updates = 2, True
    w = tf.train_original(rounds=4)
    hist = tf.ctx.history
    assert hist.rounds() == [1, 3]
    assert hist.clients_at(1) == [0, 1, 2, 3]
    upd, n = hist.load_update(3, 2)
    assert n > 0 and set(upd) == set(w)
    last, rnd = hist.load_last_local(0)
    assert rnd == 4


def test_failed_clients_tolerated_up_to_share(tmp_path) -> None:
    tf = make_tiny_federation(tmp_path, "train.max_failure_share=0.3")
    eng = FedAvgRounds(tf.ctx, "original", tf.fed.pids)
    pids, cfg = eng.configure(1)
    good = tf.fed._exchange(pids[1:], "train", tf.initial, cfg, {})
    bad = [ClientReply(pids[0], error="boom")]
    tf.ctx.costs.start("original", "train")
    eng.aggregate(1, tf.initial, good + bad)  # 1/4 failed <= 0.3: the round goes on
    assert tf.ctx.rounds.rows[-1].failed == 1 and tf.ctx.costs.current.failed_clients == 1
    eng.configure(2)
    with pytest.raises(PhaseFailed, match="2/4 clients failed"):
        eng.aggregate(2, tf.initial, good[:2] + bad + [ClientReply(pids[1], error="boom")])


def test_training_is_deterministic(tmp_path) -> None:
    a = make_tiny_federation(tmp_path / "a").train_original(rounds=2)
    b = make_tiny_federation(tmp_path / "b").train_original(rounds=2)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_seed_labels_count_whole() -> None:
    from fedunlearn.training import seed_for

    assert seed_for(0, "reference_a", 1) != seed_for(0, "reference_b", 1)
    assert seed_for(0, "finetune", 3) != seed_for(0, "finetune.continue", 3)
    assert seed_for(0, "original", 3) == seed_for(0, "original", 3)


def test_one_failure_rule_for_every_aggregated_round() -> None:
    """``check_failure_share`` is the rule FedAvg rounds, mixed rounds, ReMI's weighted rounds and FedEraser's
    calibrated rounds all apply: fail past the allowed share of the expected clients, or when none succeeded."""
    from fedunlearn.fl.fedavg import check_failure_share

    check_failure_share("p", 1, 3, 4, 0.25)  # 1/4 failed: at the allowed share, not past it
    with pytest.raises(PhaseFailed, match=r"p round 2: 2/4 clients failed \(allowed share 0.25\): client 3: boom"):
        check_failure_share("p", 2, 2, 4, 0.25, [ClientReply(3, error="boom")])
    with pytest.raises(PhaseFailed, match="1/1 clients failed"):
        check_failure_share("p", 3, 0, 1, 0.99)
