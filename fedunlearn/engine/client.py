"""The client side, independent of transport: a runtime that rebuilds the client's data from the experiment config
a message carries, and ``handle``, which runs the message's step (``fedunlearn.fl.protocol.CLIENT_STEPS``).

``handle`` is the one entry point: the Flower ClientApp (``clients.client_app``) and the in-process federation both
call it. Every record a step touches is read through ``ClientRuntime.read`` and so appears in the data-access ledger;
a step reads its method's hyperparameters as the validated ``Params`` of the config (``ClientRuntime.params``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import traceback
from functools import cached_property
from typing import Any, TypeVar

import numpy as np
import tomllib
import torch
from torch import nn

import fedunlearn.fl.recipe  # noqa: F401 - registers the ``train`` step
import fedunlearn.methods  # noqa: F401 - registers the methods' client steps
from fedunlearn.config.schema import ExperimentConfig, MethodParams
from fedunlearn.data import Dataset, Partitions
from fedunlearn.data.cache import experiment_data
from fedunlearn.errors import NumericalError, PrivacyViolation
from fedunlearn.fl.protocol import CLIENT_STEPS, ClientReply, Records, StepOutput
from fedunlearn.ledgers.access import DataRead
from fedunlearn.models import Weights, build_model, resolve_device, set_weights
from fedunlearn.training import seed_for

log = logging.getLogger(__name__)
P = TypeVar("P", bound=MethodParams)

_EXPERIMENTS: dict[str, ExperimentConfig] = {}


def experiment_from_toml(text: str) -> ExperimentConfig:
    """Parse (and cache per process) the experiment config a message carries: the server's resolved, validated
    config, so the schema alone rebuilds it (no registry look-ups on the clients)."""
    key = hashlib.sha256(text.encode()).hexdigest()
    if key not in _EXPERIMENTS:
        _EXPERIMENTS.clear()
        _EXPERIMENTS[key] = ExperimentConfig.model_validate(tomllib.loads(text))
    return _EXPERIMENTS[key]


def client_device(cfg: ExperimentConfig) -> torch.device:
    """The device of a client step. Under Ray a client takes a GPU only with a share of one (``sim.num_gpus > 0``):
    there ``auto`` means CPU without a share, so that client actors never pile onto a GPU that Ray does not account
    for (fedunlearn keeps Ray from hiding GPUs from actors with ``num_gpus = 0``)."""
    if cfg.sim.device == "auto" and cfg.sim.backend == "ray" and cfg.sim.num_gpus == 0:
        return torch.device("cpu")
    return resolve_device(cfg.sim.device)


class ClientRuntime:
    """What a client step may use: its own records (through the ledger), a model builder, seeds, the config."""

    def __init__(self, pid: int, cfg: ExperimentConfig, message: dict[str, Any],
                 records: Records | None = None) -> None:
        self.pid = pid
        self.cfg = cfg
        self.message = message
        self.records: Records = dict(records or {})
        self.step = str(message.get("step", "train"))
        self.phase = str(message.get("phase", ""))
        self.reads: list[DataRead] = []
        self.device = client_device(cfg)

    @cached_property
    def _data(self) -> tuple[Dataset, Partitions]:
        return experiment_data(self.cfg)

    @property
    def num_classes(self) -> int:
        return self._data[0].num_classes

    @property
    def withdrawn_classes(self) -> set[int]:
        """Class withdrawal: labels that every read leaves out (set by the server once the withdrawal began)."""
        return _labels(self.message.get("withdrawn_classes", ""))

    def read(self, split: str = "member", forget: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """This client's ``member`` (trained-on) or ``validation`` (held-out, never trained on) records; every call
        is noted in the ledger. The audit part of the held-out records is never readable here: only the audit,
        outside the federation, reads it (docs/leakage.md), so no training or method step can tune on it.

        Under a class withdrawal the withdrawn labels are left out; ``forget=True`` returns only them instead, and
        is refused unless their withdrawal window is open (only steps that declare ``needs_forget_data`` ask).
        """
        ds, parts = self._data
        if split == "member":
            idx = parts.members[self.pid]
        elif split == "validation":
            idx = parts.validation[self.pid]
        elif split == "audit":
            raise PrivacyViolation(f"step {self.step!r} asked for client {self.pid}'s audit records; only the audit "
                                   "reads them (methods may read the validation part)")
        else:
            raise ValueError(f"split must be 'member' or 'validation', got {split!r}")
        gone, selection = self.withdrawn_classes, "all"
        if forget:
            if not gone or not gone <= _labels(self.message.get("forget_window_open", "")):
                raise PrivacyViolation(f"step {self.step!r} asked for withdrawn classes {sorted(gone)} of client "
                                       f"{self.pid} outside their withdrawal window")
            idx, selection = idx[np.isin(ds.y_train[idx], sorted(gone))], "forget"
        elif gone:
            idx, selection = idx[~np.isin(ds.y_train[idx], sorted(gone))], "retained"
        self.reads.append(DataRead(self.pid, split, len(idx), self.step, selection))
        return ds.x_train[idx], ds.y_train[idx]

    def model(self, weights: Weights | None = None) -> nn.Module:
        ds = self._data[0]
        m = build_model(self.cfg.model, ds.input_shape, ds.num_classes, seed=self.cfg.seed)
        if weights is not None:
            set_weights(m, weights)
        return m.to(self.device)

    def seed(self, *labels: int | str) -> int:
        """A seed unique to (experiment seed, phase, round, client, labels)."""
        return seed_for(self.cfg.seed, str(self.message.get("phase", "")), int(self.message.get("round", 0)),
                        self.pid, *labels)

    @property
    def method(self) -> str:
        """The method whose phase sent this message (the phase label's first part)."""
        return self.phase.split(".")[0]

    def params(self, cls: type[P]) -> P:
        """This message's method's validated hyperparameters (``[unlearn.<method>]`` of the config it carries)."""
        return self.cfg.unlearn.method_params(self.method, cls)

    def value(self, key: str, kind: type[Any]) -> Any:
        """A value the server computed for this message alone (e.g. pga's radius); missing is an error."""
        if key not in self.message:
            raise ValueError(f"step {self.step!r} needs the message value {key!r}")
        return kind(self.message[key])

    def record(self, name: str) -> Weights:
        """A named weight set sent beside the model; missing is an error."""
        if name not in self.records:
            raise ValueError(f"step {self.step!r} needs the weight set {name!r} beside the model")
        return self.records[name]


def _labels(text: object) -> set[int]:
    return {int(t) for t in str(text).split(",") if t.strip()}


def handle(pid: int, weights: Weights | None, message: dict[str, Any],
           records: Records | None = None) -> ClientReply:
    """Run the message's step for client ``pid``; an exception becomes an error reply (the round goes on)."""
    rt: ClientRuntime | None = None
    try:
        cfg = experiment_from_toml(str(message["experiment"]))
        rt = ClientRuntime(pid, cfg, message, records)
        fail = _injected_fault(cfg, pid, message)
        if fail:
            raise RuntimeError(fail)
        out = CLIENT_STEPS.get(rt.step, "step")(rt, weights, message)
        _check_finite(rt, out)
        return ClientReply(pid, out.weights, out.metrics, rt.reads, records=out.records)
    except Exception as err:  # noqa: BLE001 - a client failure is data, not a crash
        log.debug("client %d step %s failed: %s", pid, message.get("step"), err)  # the server reports it
        reason = f"{type(err).__name__}: {err}"
        if log.isEnabledFor(logging.DEBUG):
            reason += "\n" + traceback.format_exc()
        return ClientReply(pid, None, {}, rt.reads if rt else [], error=reason)


def _check_finite(rt: ClientRuntime, out: StepOutput) -> None:
    """A step that diverged without a loss to show it (an edit, an ascent) is caught here, before it is averaged."""
    sets = {"model": out.weights or {}, **out.records}
    bad = [name for name, w in sets.items() if any(not np.all(np.isfinite(a)) for a in w.values()
                                                  if np.issubdtype(np.asarray(a).dtype, np.floating))]
    if bad:
        raise NumericalError(f"step {rt.step} (phase {rt.phase}, round {rt.message.get('round', 0)}) returned NaN or "
                             f"infinite {', '.join(bad)} weights: lower its learning rate")


def _injected_fault(cfg: ExperimentConfig, pid: int, message: dict[str, Any]) -> str | None:
    """Fault injection for resilience tests: ``sim.faults`` (travels with the config, so it reaches every Ray
    worker) and ``FEDUNLEARN_FAULTS`` (environment; reaches workers only of a Ray started after it was set), both
    ``phase:round:pid,...`` (phase or round ``*`` = any)."""
    spec = ",".join(filter(None, (cfg.sim.faults, os.environ.get("FEDUNLEARN_FAULTS", ""))))
    for item in filter(None, spec.split(",")):
        phase, rnd, who = item.split(":")
        if phase in (str(message.get("phase")), "*") and rnd in (str(message.get("round")), "*") and int(who) == pid:
            return f"injected fault ({item})"
    return None
