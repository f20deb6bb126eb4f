"""Numerical failure is caught where it happens (issue 11 item 4): a NaN or infinite loss stops the client step in
that batch, the round fails with one line naming phase, round, clients and the fix, and a step that returns
non-finite weights is refused before they are averaged."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fedunlearn.cli import app
from fedunlearn.errors import NumericalError
from fedunlearn.fl.protocol import CLIENT_STEPS, StepOutput
from fedunlearn.training import sgd, train_epochs
from tests.conftest import TINY, make_tiny_federation


def test_a_diverging_loss_stops_in_its_first_epoch() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 5)).astype(np.float32) * 1e3, rng.integers(0, 3, 64)
    model = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    with pytest.raises(NumericalError, match=r"loss is (nan|inf) in epoch 1: lower train.lr"):
        train_epochs(model, x, y, epochs=50, batch_size=16, optimizer=sgd(model, 1e6), seed=0,
                     device=torch.device("cpu"), lr_key="train.lr")


def test_lr_1e6_fails_the_round_with_one_line(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["run", *[a for kv in TINY for a in ("--set", kv)], "--set", "train.lr=1e6",
                                   "--out", str(out)])
    assert res.exit_code == 1, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and not any("Traceback" in ln for ln in lines), res.output
    line = " ".join(res.output.split())  # the one line, unwrapped
    # the round where the loss first turns NaN (round 1 still ends finite at this size, round 2 does not)
    assert re.search(r"error: original round [12]: 4/4 clients failed .*clients 0, 1, 2, 3: NumericalError: loss is "
                     r"(nan|inf) in epoch \d+: lower train.lr$", line), line


def test_a_step_returning_nan_weights_is_refused(tmp_path) -> None:
    def bad(rt, weights, message):
        return StepOutput({k: np.full_like(v, np.nan) for k, v in weights.items()}, {"num-examples": 1.0})

    if "test_nan_step" not in CLIENT_STEPS:
        CLIENT_STEPS.register("test_nan_step")(bad)
    tf = make_tiny_federation(tmp_path)
    (reply,) = tf.job("finetune", tf.initial).send([1], "test_nan_step", tf.initial, "probe")
    assert not reply.ok and "NumericalError: step test_nan_step" in reply.error and "NaN or infinite model" in \
        reply.error, reply.error
