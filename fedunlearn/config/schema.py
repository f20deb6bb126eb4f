"""The experiment config's schema: pydantic sections with bounds and strict types, unknown keys rejected, and the
base of every method's hyperparameters. A leaf: it imports nothing of fedunlearn but its errors.

Names that registries own (datasets, partitioners, models, methods, attacks) and the methods' ``[unlearn.<method>]``
tables are checked only when validation is given the registries as pydantic context (``fedunlearn.config.load`` does
that for every user config); a client re-reading the server's resolved config needs the schema alone.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from fedunlearn.config.render import format_errors
from fedunlearn.errors import ConfigError


class NameRegistry(Protocol):
    """What the schema needs of a registry (``fedunlearn.registry.Registry``): membership, names, look-up."""

    kind: str

    def __contains__(self, name: object) -> bool: ...
    def names(self) -> list[str]: ...
    def get(self, name: str, field: str = ...) -> Any: ...


def registry(info: ValidationInfo, kind: str) -> NameRegistry | None:
    """The registry of ``kind`` handed in as validation context, or None (then names are not checked)."""
    regs = info.context.get("registries") if isinstance(info.context, dict) else None
    return regs.get(kind) if regs else None


def _all_known(info: ValidationInfo, kind: str, names: list[str]) -> list[str]:
    """Every name of a list known to the registry of ``kind`` (when it is given); one error lists the unknown ones."""
    reg = registry(info, kind)
    bad = [n for n in names if reg is not None and n not in reg]
    if bad:
        raise ValueError(f"unknown {kind}(s) {', '.join(map(repr, bad))}; allowed: {', '.join(reg.names())}")
    return names


def _known(info: ValidationInfo, kind: str, name: str) -> str:
    reg = registry(info, kind)
    if reg is not None and name not in reg:
        raise ValueError(f"unknown {reg.kind} {name!r}; allowed: {', '.join(reg.names())}")
    return name


class MethodParams(BaseModel):
    """Base of every method's hyperparameters: unknown keys rejected, strict types (``epochs = true`` is refused)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


P = TypeVar("P", bound=MethodParams)


_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")

class Strict(BaseModel):
    """Base of every config section: unknown keys are errors, values are validated on assignment too, and types are
    strict (``train.rounds = true`` is not 1 round; an int still serves where a float is expected)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False, strict=True)


class DataConfig(Strict):
    dataset: str = Field("synthetic", description="digits | mnist | fashion_mnist | cifar10 | npz | synthetic")
    data_dir: str = "data"
    download: bool = False
    path: str = Field("", description="npz file with arrays x and y (dataset = 'npz')")
    # make_classification (dataset = "synthetic")
    samples: int = Field(4000, ge=20, le=10**8)
    features: int = Field(100, ge=2)
    informative: int = Field(20, ge=1)
    classes: int = Field(10, ge=2)
    class_sep: float = Field(2.5, gt=0)
    flip_y: float = Field(0.05, ge=0, le=1)
    test_fraction: float = Field(0.2, gt=0, lt=1, description="test share for datasets without a test split")
    max_samples: int = Field(0, ge=0, description="subsample the training pool (0 = all)")
    partition: str = Field("iid", description="iid | dirichlet | shards")
    alpha: float = Field(0.5, gt=0)
    min_size: int = Field(10, ge=2, description="dirichlet: minimum records per client")
    shards_per_client: int = Field(2, ge=1)
    clients: int = Field(10, ge=2, le=100_000)
    holdout: float = Field(0.2, gt=0, lt=1, description="share of each client's data kept out of training")
    validation: float = Field(0.25, gt=0, lt=1, description="share of each client's held-out records in its "
                              "validation part (methods may read it inside the withdrawal window); the rest is "
                              "the audit part, read by the audit alone")
    seed: int | None = Field(None, ge=0, le=2**32 - 1, description="seed of the data (dataset, partition, splits); "
                             "absent = the experiment seed. The A2 seed audit varies the training seed only")

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, v: str, info: ValidationInfo) -> str:
        return _known(info, "dataset", v)

    @field_validator("partition")
    @classmethod
    def _known_partition(cls, v: str, info: ValidationInfo) -> str:
        return _known(info, "partition", v)

    @model_validator(mode="after")
    def _synthetic_sizes(self) -> DataConfig:
        if self.dataset == "synthetic" and self.informative > self.features:
            raise ValueError(f"informative ({self.informative}) must be <= features ({self.features})")
        if self.dataset == "npz" and not self.path:
            raise ValueError("dataset 'npz' needs data.path (a .npz file with arrays x and y)")
        return self


class ModelConfig(Strict):
    name: str = Field("mlp", description="mlp | cnn | resnet")
    hidden: list[Annotated[int, Field(ge=1, le=65_536)]] = Field(default_factory=lambda: [256, 256],
                                                                description="mlp hidden widths (each 1..65536)")

    @field_validator("name")
    @classmethod
    def _known_model(cls, v: str, info: ValidationInfo) -> str:
        return _known(info, "model", v)


class TrainConfig(Strict):
    rounds: int = Field(30, ge=1, le=100_000)
    fraction: float = Field(1.0, gt=0, le=1, description="share of eligible clients sampled per round, in (0, 1]")
    local_epochs: int = Field(1, ge=1, le=10_000)
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(32, ge=1, le=10**7)
    max_failure_share: float = Field(0.0, ge=0, lt=1,
                                     description="a round fails only past this share of failed clients")


class WithdrawConfig(Strict):
    clients: list[int] = Field(default_factory=lambda: [0], description="partition ids; several = in sequence")
    classes: list[int] = Field(default_factory=list, description="class withdrawal: forget these labels in every "
                                                                 "client's data (then clients = [])")
    round: int | Literal["end"] = Field("end", description='"end" or a round number (withdrawal mid-training)')

    @field_validator("round", mode="before")
    @classmethod
    def _round_or_end(cls, v: object) -> object:
        if v != "end" and (isinstance(v, bool) or not isinstance(v, int)):
            raise ValueError(f'{v!r} not allowed; allowed: a round number or "end"')
        return v

    @property
    def by_class(self) -> bool:
        return bool(self.classes)


class UnlearnConfig(BaseModel):
    """``methods`` plus one optional ``[unlearn.<method>]`` table of hyperparameters per method."""

    model_config = ConfigDict(extra="allow", strict=True)
    methods: list[str] = Field(default_factory=lambda: ["retrain"])

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, v: list[str], info: ValidationInfo) -> list[str]:
        _all_known(info, "method", v)
        if len(set(v)) != len(v):
            raise ValueError("methods must not repeat")
        return v

    @model_validator(mode="after")
    def _method_tables(self, info: ValidationInfo) -> UnlearnConfig:
        """With the method registry: every table validated into its method's ``Params``, and the defaults of every
        listed method (and the retrain oracle, which always runs) spelled out, so ``config.toml`` pins them."""
        methods = registry(info, "method")
        if methods is None:
            return self
        for key, value in (self.model_extra or {}).items():
            if key not in methods:
                raise ValueError(f"unknown key unlearn.{key}; allowed: methods, {', '.join(methods.names())}")
            params_cls = methods.get(key).Params
            if isinstance(value, params_cls):
                continue
            try:
                setattr(self, key, params_cls.model_validate(value or {}))
            except ValidationError as err:
                raise ValueError(format_errors(err, params_cls, prefix=f"unlearn.{key}.")) from None
        for m in dict.fromkeys([*self.methods, "retrain"]):
            if m in methods and m not in (self.model_extra or {}):
                setattr(self, m, methods.get(m).Params())
        return self

    def params(self, method: str) -> MethodParams:
        """The validated hyperparameters of ``method`` in a config loaded with the registries."""
        value = (self.model_extra or {}).get(method)
        if not isinstance(value, MethodParams):
            raise ConfigError(f"unlearn.{method}: no validated table (load the config with fedunlearn.config.load)")
        return value

    def method_params(self, method: str, cls: type[P]) -> P:
        """``method``'s hyperparameters as ``cls`` (validated here when the config was rebuilt from TOML alone)."""
        value = (self.model_extra or {}).get(method)
        if isinstance(value, cls):
            return value
        try:
            return cls.model_validate(value or {})
        except ValidationError as err:
            raise ConfigError(f"unlearn.{method}: {err}") from None


class AuditConfig(Strict):
    """The leakage audit (docs/leakage.md). ``rmia`` in ``attacks`` makes the experiment train two reference
    federations; ``retrain_null`` a second retrain with another seed (the false-alarm level of every comparison with
    retrain, and the equivalence margin of the verdicts; "auto" = on exactly when ``rmia`` is on, i.e. when the strong
    audit is paid for anyway); ``seeds = M`` (M >= 3) the A2 seed-distribution audit: M more in-process replicas of
    the whole experiment with training seeds seed+1..seed+M on the same data (``seeds/seed-<s>/``, expensive: M times
    the FL cost), trained by a step before the audit."""

    attacks: list[str] = Field(default_factory=lambda: ["loss"])
    after_rounds: int = Field(0, ge=0, le=10_000, description="after unlearning: continue FedAvg on the remaining "
                              "clients for N rounds from every unlearned model and from retrain (0 = off)")
    during: bool = Field(False, description="save every model each method passes through while it unlearns "
                         "(models/during/) and report the withdrawn clients' leakage at each")
    population: int = Field(5000, ge=10, description="RMIA population sample size")
    gamma: float = Field(1.0, gt=0)
    bootstrap: int = Field(0, ge=0, description="0 = DeLong CI for AUC; N = stratified bootstrap resamples")
    retrain_null: bool | Literal["auto"] = Field("auto", description='second retrain with another seed; "auto" = '
                                                                    "on when rmia is among the attacks")
    null_seeds: int = Field(1, ge=1, description="retrain-vs-retrain null: retrains with other seeds when "
                            "retrain_null is on (more = a steadier equivalence margin; each costs one retrain)")
    seeds: int = Field(0, ge=0, description="A2 seed audit: 0 = off, M >= 3 = M extra seeds of every model")
    fr_alpha: float = Field(0.1, gt=0, lt=1, description="forgetting rate: A0 threshold at this FPR (original model)")
    fdr_q: float = Field(0.05, gt=0, lt=1, description="Benjamini-Hochberg FDR level over clients")
    vulnerable_top: int = Field(10, ge=1, description="records per client in vulnerable_records.csv")

    @field_validator("seeds")
    @classmethod
    def _enough_seeds(cls, v: int) -> int:
        if v in (1, 2):
            raise ValueError(f"{v} not allowed; allowed: 0 (off) or >= 3 (leave-one-seed-out U-LiRA needs 3)")
        return v

    def wants_retrain_null(self) -> bool:
        """Whether the experiment trains ``retrain_null`` (resolves "auto")."""
        return "rmia" in self.attacks if self.retrain_null == "auto" else bool(self.retrain_null)

    @field_validator("attacks")
    @classmethod
    def _known_attacks(cls, v: list[str], info: ValidationInfo) -> list[str]:
        return _all_known(info, "attack", v)


class SimConfig(Strict):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    ray_address: str = Field("", description='"" = start local Ray; "auto" or host:port = existing cluster')
    num_cpus: float = Field(1.0, gt=0, description="CPUs per client actor")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per client actor (fractions share a GPU)")
    backend: Literal["ray", "inprocess"] = Field("ray", description="inprocess: no Flower/Ray, for tests and debugging")
    faults: str = Field("", description="testing: make clients fail, 'phase:round:pid,...' (round '*' = any); "
                                        "travels with the config, so it reaches Ray workers on every node")

    @field_validator("faults")
    @classmethod
    def _fault_spec(cls, v: str) -> str:
        for item in filter(None, v.split(",")):
            parts = item.split(":")
            if len(parts) != 3 or not parts[2].isdigit() or not (parts[1] == "*" or parts[1].isdigit()):
                raise ValueError(f"bad fault {item!r}; expected phase:round:pid (round may be *), e.g. original:2:1")
        return v


class ExperimentConfig(Strict):
    name: str = Field("experiment", description="the run directory's name prefix: letters, digits, '.', '_', '-'")
    seed: int = Field(0, ge=0, le=2**63 - 1)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        """The name becomes a directory under runs/: no path separators, no '..', nothing hidden or empty."""
        if not _NAME.fullmatch(v) or ".." in v:
            raise ValueError(f"{v!r} not allowed; allowed: letters, digits, '.', '_', '-' (not starting with '.' or "
                             "'-', no '..', no path separators), e.g. quickstart")
        return v
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    withdraw: WithdrawConfig = Field(default_factory=WithdrawConfig)
    unlearn: UnlearnConfig = Field(default_factory=UnlearnConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    sim: SimConfig = Field(default_factory=SimConfig)

    @property
    def data_seed(self) -> int:
        """Seed of the data (dataset, partition, member/held-out splits): ``data.seed``, else ``seed``."""
        return self.seed if self.data.seed is None else self.data.seed

    @model_validator(mode="after")
    def _cross_checks(self, info: ValidationInfo) -> ExperimentConfig:
        self._check_class_withdrawal(registry(info, "method"))
        k = self.data.clients
        bad = [c for c in self.withdraw.clients if not 0 <= c < k]
        if bad:
            raise ValueError(f"withdraw.clients: {bad} out of range; allowed: partition ids 0..{k - 1}")
        if len(set(self.withdraw.clients)) != len(self.withdraw.clients):
            raise ValueError("withdraw.clients: ids must not repeat")
        if not self.withdraw.clients and not self.withdraw.classes:
            raise ValueError("withdraw.clients: empty; allowed: partition ids (or withdraw.classes for a class "
                             "withdrawal)")
        if len(self.withdraw.clients) >= k:
            raise ValueError(f"withdraw.clients: at least one of the {k} clients must remain")
        if "rmia" in self.audit.attacks and k - len(self.withdraw.clients) < 2:
            raise ValueError("audit.attacks: rmia needs >= 2 remaining clients (two reference federations on "
                             f"complementary halves); {k - len(self.withdraw.clients)} remain")
        if self.data.seed is None and self.seed > 2**32 - 1:  # the data seed goes to sklearn: 0..2**32 - 1
            raise ValueError(f"seed: {self.seed} is also the data seed (data.seed unset); allowed: 0..{2**32 - 1}, "
                             "or set data.seed")
        r = self.withdraw.round
        if r != "end" and not 1 <= r < self.train.rounds:
            raise ValueError(f'withdraw.round: {r} not allowed; allowed: "end" or 1..{self.train.rounds - 1}')
        return self


    def _check_class_withdrawal(self, methods: NameRegistry | None) -> None:
        w = self.withdraw
        if not w.classes:
            return
        if w.clients:
            raise ValueError(f"withdraw.clients: must be [] for a class withdrawal (withdraw.classes = {w.classes})")
        if len(set(w.classes)) != len(w.classes) or min(w.classes) < 0:
            raise ValueError("withdraw.classes: distinct labels >= 0 expected")
        if self.data.dataset == "synthetic" and max(w.classes) >= self.data.classes:
            raise ValueError(f"withdraw.classes: {w.classes} out of range; allowed: 0..{self.data.classes - 1}")
        if methods is None:
            return
        bad = [m for m in self.unlearn.methods if m in methods and "class" not in methods.get(m).granularity]
        if bad:
            ok = [m for m in methods.names() if "class" in methods.get(m).granularity]
            raise ValueError(f"unlearn.methods: {', '.join(bad)} unlearn whole clients only; allowed with "
                             f"withdraw.classes: {', '.join(ok)}")
