"""The sweep file: a base experiment plus axes, expanded to a grid of points, each validated by the config loader.

```toml
[sweep]
base = "quickstart.toml"                 # experiment TOML, relative to this file ("" = the defaults)
set = ['audit.attacks=["loss"]']         # --set overrides of the base, as on the command line
replicate = "seed"                       # the axis sweep_summary.csv averages over (mean and 95% CI)
[axes]                                   # any config keys; the grid is their product
seed = [0, 1, 2]
withdraw.clients = [[0], [4]]
[zip.budget]                             # keys that vary together (equal lengths): one level per point
unlearn.lightweight.max_rounds = [1, 3]
unlearn.pga.post_rounds = [1, 2]
```
Every point is checked before anything is written: an axis key the config does not know, an empty axis, a value
of the wrong type, or a combination the config rejects is one ``ConfigError`` naming the key.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import re
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fedunlearn.config.load import apply_overrides, config_from_dict, load_config
from fedunlearn.config.schema import ExperimentConfig
from fedunlearn.errors import ConfigError

MAX_NAME = 96          # point names longer than this are cut and get a hash suffix
#: axis keys the sweep itself owns: it places every point on its Ray cluster and sizes its actors (--parallel)
OWNED_KEYS = ("sim.ray_address", "sim.backend")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class SweepTable(_Strict):
    base: str = Field("", description="experiment TOML, relative to the sweep file; empty = the defaults")
    name: str = Field("", description="the sweep directory's default name (sweeps/<name>); empty = the file's stem")
    set: list[str] = Field(default_factory=list, description="--set overrides of the base, e.g. 'train.rounds=10'")
    replicate: str = Field("seed", description="the axis averaged over in sweep_summary.csv")


class SweepFile(_Strict):
    sweep: SweepTable = Field(default_factory=SweepTable)
    axes: dict[str, Any] = Field(default_factory=dict)
    zip: dict[str, dict[str, Any]] = Field(default_factory=dict)


@dataclass(frozen=True)
class Group:
    """One dimension of the grid: a single axis (``name`` = its key) or a zip group of keys varied together."""

    name: str
    keys: tuple[str, ...]
    levels: tuple[tuple[Any, ...], ...]   # levels[i][j] = value of keys[j] at level i
    zipped: bool = False


@dataclass
class Point:
    name: str
    settings: dict[str, Any]              # every axis key -> its value at this point
    levels: dict[str, int]                # zip group -> level number (1-based)
    cfg: ExperimentConfig

    def columns(self) -> dict[str, str]:
        """The point's settings as CSV cells (zip groups as their level number, then their keys)."""
        return {**{g: str(v) for g, v in self.levels.items()}, **{k: cell(v) for k, v in self.settings.items()}}


@dataclass
class Sweep:
    path: Path
    name: str
    base: Path | None
    overrides: list[str]
    replicate: str
    groups: list[Group]
    points: list[Point] = field(default_factory=list)

    @property
    def axis_keys(self) -> list[str]:
        return [k for g in self.groups for k in g.keys]

    @property
    def zip_groups(self) -> list[str]:
        return [g.name for g in self.groups if g.zipped]


def cell(value: Any) -> str:
    """A setting as one CSV cell / label: scalars as they are, lists and tables as compact JSON."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str | int | float):
        return str(value)
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def flatten(table: dict[str, Any], where: str, prefix: str = "") -> dict[str, list[Any]]:
    """Nested TOML tables to dotted axis keys; every leaf must be a non-empty list."""
    out: dict[str, list[Any]] = {}
    for k, v in table.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out |= flatten(v, where, f"{key}.")
        elif not isinstance(v, list):
            raise ConfigError(f"{where}.{key}: {v!r} is not a list; allowed: a list of values, e.g. {key} = [{v!r}]")
        elif not v:
            raise ConfigError(f"{where}.{key}: empty list; allowed: one or more values")
        else:
            out[key] = v
    return out


def known_keys() -> list[str]:
    """Every dotted key a sweep axis may name: the config's fields, its tables, and every method's parameters."""
    from fedunlearn.methods import METHODS

    def walk(model: type[BaseModel], prefix: str) -> list[str]:
        out = []
        for name, f in model.model_fields.items():
            ann = f.annotation
            out.append(f"{prefix}{name}")
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                out += walk(ann, f"{prefix}{name}.")
        return out

    keys = walk(ExperimentConfig, "")
    for m in METHODS.names():
        keys += [f"unlearn.{m}"] + [f"unlearn.{m}.{p}" for p in METHODS.get(m).Params.model_fields]
    return keys


def _check_key(key: str, where: str, known: list[str]) -> None:
    if key in OWNED_KEYS:
        raise ConfigError(f"{where}.{key}: set by the sweep (--ray-address places every point on one Ray cluster); "
                          "allowed: any other config key")
    if key not in known:
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        raise ConfigError(f"{where}.{key}: unknown key" + (f"; did you mean {close[0]}?" if close else
                                                          "; allowed: config keys such as seed, train.rounds, "
                                                          "unlearn.<method>.<param>"))


def set_key(data: dict[str, Any], key: str, value: Any) -> None:
    """Set a dotted key in a raw config dict, making tables on the way (as ``--set`` does)."""
    parts = key.split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"axes.{key}: {p} is not a table in the base config")
    node[parts[-1]] = deepcopy(value)


def _groups(spec: SweepFile) -> list[Group]:
    known = known_keys()
    groups = []
    for key, values in flatten(spec.axes, "axes").items():
        _check_key(key, "axes", known)
        groups.append(Group(key, (key,), tuple((v,) for v in values)))
    for gname, table in spec.zip.items():
        axes = flatten(table, f"zip.{gname}")
        if not axes:
            raise ConfigError(f"zip.{gname}: no keys; allowed: two or more keys with lists of equal length")
        lengths = {k: len(v) for k, v in axes.items()}
        if len(set(lengths.values())) > 1:
            raise ConfigError(f"zip.{gname}: lists of unequal length {lengths}; allowed: equal lengths (one value "
                              "per level)")
        for key in axes:
            _check_key(key, f"zip.{gname}", known)
        groups.append(Group(gname, tuple(axes), tuple(zip(*axes.values())), zipped=True))
    seen: dict[str, str] = {}
    for g in groups:
        for k in g.keys + ((g.name,) if g.zipped else ()):
            if k in seen:
                raise ConfigError(f"{'zip.' + g.name if g.zipped else 'axes'}.{k}: appears twice (also in "
                                  f"{seen[k]}); allowed: each key on one axis")
            seen[k] = f"zip.{g.name}" if g.zipped else "axes"
    return groups


def _label(key: str) -> str:
    return key.removeprefix("unlearn.")


def _short(value: Any) -> str:
    """A value as it reads in a point name: a list of scalars joined by '-' (``withdraw.clients=0-4``)."""
    if isinstance(value, list) and all(isinstance(v, str | int | float) and not isinstance(v, bool) for v in value):
        return "-".join(map(str, value)) or "none"
    return cell(value)


def point_name(parts: list[tuple[str, Any]]) -> str:
    """Short, filesystem-safe and deterministic: ``seed=0,lightweight.max_rounds=2``; a hash of the settings is
    appended when characters had to be replaced or the name is too long."""
    if not parts:
        return "base"
    text = ",".join(f"{_label(k)}={_short(v)}" for k, v in parts)
    safe = re.sub(r"[^A-Za-z0-9._=,+-]", "_", text).lstrip(".-") or "point"
    if safe != text or len(safe) > MAX_NAME:
        digest = hashlib.sha1(text.encode()).hexdigest()[:8]
        safe = f"{safe[:MAX_NAME - 9]}-{digest}"
    return safe


def _raw_base(base: Path | None, overrides: list[str]) -> dict[str, Any]:
    load_config(base, overrides)  # the loader's own messages for a bad base file or a bad --set
    raw = tomllib.loads(base.read_text(encoding="utf-8")) if base is not None else {}
    return apply_overrides(raw, overrides)


def _validate(raw: dict[str, Any], point: str, settings: dict[str, Any], where: dict[str, str]) -> ExperimentConfig:
    """The config loader's verdict on one point; an error about an axis key is reported under that axis."""
    try:
        return config_from_dict(raw)
    except ConfigError as err:
        msg = str(err)
        hits = [k for k in settings if msg.startswith(f"{k}:") or msg.startswith(f"{k}.")]
        if hits:
            key = max(hits, key=len)
            raise ConfigError(f"{where[key]}.{key} = {cell(settings[key])}: {msg}") from None
        raise ConfigError(f"sweep point {point}: {msg}") from None


def load_sweep(path: str | Path) -> Sweep:
    """Parse and expand a sweep file; every point is validated before anything is written."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep: file not found: {path}")
    try:
        spec = SweepFile.model_validate(tomllib.loads(path.read_text(encoding="utf-8")))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"sweep: {path} is not valid TOML: {err}") from None
    except ValidationError as err:
        e = err.errors()[0]
        loc = ".".join(str(x) for x in e["loc"])
        raise ConfigError(f"sweep {path.name}: {loc}: {e['msg'].removeprefix('Value error, ')}"
                          + ("; allowed: [sweep] base, name, set, replicate; [axes]; [zip.<group>]"
                             if e["type"] == "extra_forbidden" else "")) from None
    base = (path.parent / spec.sweep.base) if spec.sweep.base else None
    if base is not None and not base.is_file():
        raise ConfigError(f"sweep.base: file not found: {base}")
    groups = _groups(spec)
    raw = _raw_base(base, spec.sweep.set)
    replicate = spec.sweep.replicate
    if replicate not in [k for g in groups for k in g.keys] + ["seed"]:
        raise ConfigError(f"sweep.replicate: {replicate!r} is not an axis; allowed: "
                          f"{', '.join(k for g in groups for k in g.keys) or 'seed'}")
    sweep = Sweep(path, spec.sweep.name or path.stem, base, spec.sweep.set, replicate, groups)
    sweep.points = list(_expand(raw, groups))
    _unique_names(sweep.points)
    return sweep


def _expand(raw: dict[str, Any], groups: list[Group]) -> list[Point]:
    where = {k: f"zip.{g.name}" if g.zipped else "axes" for g in groups for k in g.keys}
    points = []
    for combo in itertools.product(*[range(len(g.levels)) for g in groups]):
        data = deepcopy(raw)
        settings: dict[str, Any] = {}
        levels: dict[str, int] = {}
        parts: list[tuple[str, Any]] = []
        for g, i in zip(groups, combo):
            for key, value in zip(g.keys, g.levels[i]):
                set_key(data, key, value)
                settings[key] = value
            if g.zipped:
                levels[g.name] = i + 1
                parts.append((g.name, i + 1))
            else:
                parts.append((g.keys[0], g.levels[i][0]))
        name = point_name(parts)
        points.append(Point(name, settings, levels, _validate(data, name, settings, where)))
    return points


def _unique_names(points: list[Point]) -> None:
    """Two settings that sanitize to the same name (e.g. "a/b" and "a_b") each get a hash of their settings."""
    seen: dict[str, list[Point]] = {}
    for p in points:
        seen.setdefault(p.name, []).append(p)
    for name, same in seen.items():
        if len(same) > 1:
            for p in same:
                digest = hashlib.sha1(json.dumps(p.settings, sort_keys=True).encode()).hexdigest()[:8]
                p.name = f"{name[:MAX_NAME - 9]}-{digest}"


def fl_trainings(cfg: ExperimentConfig) -> int:
    """Full FedAvg trainings (R rounds each) one point runs: original, retrain, the RMIA references, the retrain
    null, and the A2 replicas (each a whole experiment); the unlearning methods themselves are cheaper."""
    per_run = 2 + 2 * ("rmia" in cfg.audit.attacks) + cfg.audit.null_seeds * cfg.audit.wants_retrain_null()
    return per_run * (1 + cfg.audit.seeds)
