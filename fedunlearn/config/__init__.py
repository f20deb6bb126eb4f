"""The experiment config: ``schema`` (pydantic sections, a leaf) and ``load`` (TOML, overrides, registry checks)."""
