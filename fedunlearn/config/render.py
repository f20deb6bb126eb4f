"""How a config is written out: as TOML (``tomli_w``: it escapes control characters and newlines) and, when it is
wrong, as one line per problem naming the dotted key (with a "did you mean" for unknown keys). A leaf, so both the
schema and the loader use it."""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

if TYPE_CHECKING:
    from fedunlearn.config.schema import ExperimentConfig


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


def _known_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every dotted key of a config model (sections recursed), for "did you mean" suggestions."""
    out = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += [f"{prefix}{name}"] + _known_keys(ann, f"{prefix}{name}.")
        else:
            out.append(f"{prefix}{name}")
    return out


def format_errors(err: ValidationError, model: type[BaseModel], prefix: str = "") -> str:
    """A pydantic error as one line per problem, "; "-joined, each naming its dotted key."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"] if not str(x).startswith("function-after"))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
            close = difflib.get_close_matches(loc, _known_keys(model), n=1, cutoff=0.6)
            if close:
                msg += f"; did you mean {prefix}{close[0]}?"
        if loc and msg.startswith(f"{loc}."):  # a nested table already named its own location
            parts.append(msg)
        else:
            parts.append(f"{prefix}{loc}: {msg}" if loc else f"{prefix}{msg}")
    return "; ".join(parts)
