"""The experiment config: pydantic models loaded from TOML, unknown keys rejected, every problem reported at once.

One experiment = one TOML file. Every key has a default; ``--set key=value`` overrides any key. The resolved config
is written to the run directory as ``config.toml`` and is the only thing the clients need to rebuild their data.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import tomllib
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fedunlearn.errors import ConfigError

if TYPE_CHECKING:
    from fedunlearn.registry import Registry


def _known(registry: Registry[Any], name: str) -> str:
    """Validate a name against a registry (imported lazily: registries import this module's types)."""
    if name not in registry:
        raise ValueError(f"unknown {registry.kind} {name!r}; allowed: {', '.join(registry.names())}")
    return name


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
    def _known_dataset(cls, v: str) -> str:
        from fedunlearn.data.datasets import DATASETS

        return _known(DATASETS, v)

    @field_validator("partition")
    @classmethod
    def _known_partition(cls, v: str) -> str:
        from fedunlearn.data.partition import PARTITIONERS

        return _known(PARTITIONERS, v)

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
    def _known_model(cls, v: str) -> str:
        from fedunlearn.models import MODELS

        return _known(MODELS, v)


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
    def _known_methods(cls, v: list[str]) -> list[str]:
        from fedunlearn.methods import METHODS

        bad = [m for m in v if m not in METHODS]
        if bad:
            raise ValueError(f"unknown method(s) {', '.join(map(repr, bad))}; allowed: {', '.join(METHODS.names())}")
        if len(set(v)) != len(v):
            raise ValueError("methods must not repeat")
        return v

    @model_validator(mode="after")
    def _method_tables(self) -> UnlearnConfig:
        from fedunlearn.methods import METHODS

        for key, value in (self.model_extra or {}).items():
            if key not in METHODS:
                raise ValueError(f"unknown key unlearn.{key}; allowed: methods, {', '.join(METHODS.names())}")
            params_cls = METHODS.get(key).Params
            if isinstance(value, params_cls):
                continue
            try:
                setattr(self, key, params_cls.model_validate(value or {}))
            except ValidationError as err:
                raise ValueError(_format_errors(err, prefix=f"unlearn.{key}.", model=params_cls)) from None
        return self

    def params(self, method: str) -> BaseModel:
        """The validated hyperparameters of ``method`` (its defaults when the table is absent)."""
        from fedunlearn.methods import METHODS

        extra = self.model_extra or {}
        return extra.get(method) or METHODS.get(method).Params()


class AuditConfig(Strict):
    """The leakage audit (docs/leakage.md). ``rmia`` in ``attacks`` makes the experiment train two reference
    federations; ``retrain_null`` a second retrain with another seed (the false-alarm level of every comparison with
    retrain, and the equivalence margin of the verdicts; "auto" = on exactly when ``rmia`` is on, i.e. when the strong
    audit is paid for anyway); ``seeds = M`` (M >= 3) the A2 seed-distribution audit: M more in-process replicas of
    the whole experiment with training seeds seed+1..seed+M on the same data (``seeds/seed-<s>/``, expensive: M times
    the FL cost), trained by a step before the audit."""

    attacks: list[str] = Field(default_factory=lambda: ["loss"])
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
    def _known_attacks(cls, v: list[str]) -> list[str]:
        from fedunlearn.audit.attacks import ATTACKS

        bad = [a for a in v if a not in ATTACKS]
        if bad:
            raise ValueError(f"unknown attack(s) {', '.join(map(repr, bad))}; allowed: {', '.join(ATTACKS.names())}")
        return v


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
    def _cross_checks(self) -> ExperimentConfig:
        self._check_class_withdrawal()
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


    def _check_class_withdrawal(self) -> None:
        w = self.withdraw
        if not w.classes:
            return
        if w.clients:
            raise ValueError(f"withdraw.clients: must be [] for a class withdrawal (withdraw.classes = {w.classes})")
        if len(set(w.classes)) != len(w.classes) or min(w.classes) < 0:
            raise ValueError("withdraw.classes: distinct labels >= 0 expected")
        if self.data.dataset == "synthetic" and max(w.classes) >= self.data.classes:
            raise ValueError(f"withdraw.classes: {w.classes} out of range; allowed: 0..{self.data.classes - 1}")
        from fedunlearn.methods import METHODS

        bad = [m for m in self.unlearn.methods if m in METHODS and "class" not in METHODS.get(m).granularity]
        if bad:
            ok = [m for m in METHODS.names() if "class" in METHODS.get(m).granularity]
            raise ValueError(f"unlearn.methods: {', '.join(bad)} unlearn whole clients only; allowed with "
                             f"withdraw.classes: {', '.join(ok)}")


# --------------------------------------------------------------------------------------------------- loading


def _known_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every dotted key of a config model (sections recursed), for "did you mean" suggestions."""
    out = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += _known_keys(ann, f"{prefix}{name}.")
        else:
            out.append(f"{prefix}{name}")
    return out


def _format_errors(err: ValidationError, prefix: str = "", model: type[BaseModel] | None = None) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"] if not str(x).startswith("function-after"))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
            close = difflib.get_close_matches(loc, _known_keys(model or ExperimentConfig), n=1, cutoff=0.6)
            if close:
                msg += f"; did you mean {prefix}{close[0]}?"
        if loc and msg.startswith(f"{loc}."):  # a nested table already named its own location
            parts.append(msg)
        else:
            parts.append(f"{prefix}{loc}: {msg}" if loc else f"{prefix}{msg}")
    return "; ".join(parts)


def parse_value(raw: str) -> Any:
    """Parse the value of a ``--set key=value`` as TOML (numbers, booleans, lists); fall back to a bare string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides to a raw config dict (in place) and return it."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value (for example data.clients=20)")
        key, raw = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ConfigError(f"--set {item!r}: empty key")
        node = data
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {p} is not a table")
        node[parts[-1]] = parse_value(raw.strip())
    return data


def config_from_dict(data: dict[str, Any]) -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err)) from None


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load a TOML experiment file (or the defaults when ``path`` is None) and apply ``--set`` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if p.is_dir():
            raise ConfigError(f"config: {p} is a directory; allowed: a TOML file, e.g. experiments/quickstart.toml")
        if not p.is_file():
            raise ConfigError(f"config: file not found: {p}")
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except UnicodeDecodeError as err:
            raise ConfigError(f"config: {p} is not UTF-8 text ({err.reason} at byte {err.start})") from None
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"config: {p} is not valid TOML: {err}") from None
    apply_overrides(data, overrides or [])
    return config_from_dict(data)


def to_toml(cfg: ExperimentConfig) -> str:
    """Serialize the fully resolved config (every default spelled out) as TOML (``tomli_w``: it escapes control
    characters and newlines in strings; unset optional values are left out, TOML has no null)."""
    import tomli_w

    return tomli_w.dumps(_drop_none(cfg.model_dump(mode="json")))


def _drop_none(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _drop_none(v) for k, v in data.items() if v is not None}
    if isinstance(data, list):
        return [_drop_none(v) for v in data]
    return data
