"""Loading an experiment config: TOML files, ``--set key=value`` overrides, registry checks of every name, and the
resolved config written back as TOML (``tomli_w``).

Validation gets the registries (datasets, partitioners, models, methods, attacks) as pydantic context, so a config
error names the key and the allowed values, every problem at once; the schema itself stays a leaf.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tomllib
from pydantic import ValidationError

from fedunlearn.config.render import format_errors, to_toml
from fedunlearn.config.schema import ExperimentConfig
from fedunlearn.errors import ConfigError

__all__ = ["apply_overrides", "config_from_dict", "load_config", "parse_value", "registries", "to_toml"]


def registries() -> dict[str, Any]:
    """Every registry a config names things in (importing them registers their entries)."""
    from fedunlearn.audit.attacks import ATTACKS
    from fedunlearn.data.datasets import DATASETS
    from fedunlearn.data.partition import PARTITIONERS
    from fedunlearn.methods import METHODS
    from fedunlearn.models import MODELS

    return {"dataset": DATASETS, "partition": PARTITIONERS, "model": MODELS, "method": METHODS, "attack": ATTACKS}


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
    """Validate a raw config dict against the schema, then against the registries. The first pass needs pydantic
    alone, so a wrong key or value is reported before the registries' modules (torch, scikit-learn) are imported."""
    try:
        ExperimentConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_errors(err, ExperimentConfig)) from None
    try:
        return ExperimentConfig.model_validate(data, context={"registries": registries()})
    except ValidationError as err:
        raise ConfigError(format_errors(err, ExperimentConfig)) from None


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
