"""One colour per model, the same in every plot of every run: a model's colour depends on its name only.

``original`` is dark grey, ``retrain`` green (dashed in line plots), the seed methods take the other tab10 colours in
the README's order, the audit's instruments (RMIA references, the retrain null) a light grey, dotted; any other name
(a method you registered) a tab20 colour picked by a stable hash of its name (CRC-32, not Python's salted ``hash``).
"""

from __future__ import annotations

import zlib

ORIGINAL_COLOR = "#404040"
RETRAIN_COLOR = "#2ca02c"     # tab:green
INSTRUMENT_COLOR = "#a0a0a0"
#: the seed methods, in the README's order, and the tab10 colours left once grey and green are taken
SEED_METHODS = ("finetune", "lightweight", "mia_loss", "forsaken", "unsir", "federaser", "pga")
_METHOD_COLORS = ("#1f77b4", "#ff7f0e", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")
#: tab20, for names the table above does not know
_OTHER_COLORS = ("#1f77b4", "#aec7e8", "#ff7f0e", "#ffbb78", "#2ca02c", "#98df8a", "#d62728", "#ff9896", "#9467bd",
                 "#c5b0d5", "#8c564b", "#c49c94", "#e377c2", "#f7b6d2", "#7f7f7f", "#c7c7c7", "#bcbd22", "#dbdb8d",
                 "#17becf", "#9edae5")


def is_instrument(name: str) -> bool:
    """RMIA's reference federations and the retrain-vs-retrain null models: trained, but not audited models."""
    return name.startswith(("reference_", "retrain_null"))


def model_color(name: str) -> str:
    """The colour of model ``name`` (a hex string matplotlib accepts), independent of which other models a run has."""
    if name == "original":
        return ORIGINAL_COLOR
    if name == "retrain":
        return RETRAIN_COLOR
    if is_instrument(name):
        return INSTRUMENT_COLOR
    if name in SEED_METHODS:
        return _METHOD_COLORS[SEED_METHODS.index(name)]
    return _OTHER_COLORS[zlib.crc32(name.encode()) % len(_OTHER_COLORS)]


def model_style(name: str) -> dict:
    """Line style of model ``name``: its colour; original and retrain drawn heavier, retrain dashed, instruments
    dotted."""
    style = {"color": model_color(name), "lw": 1.2, "ls": "-"}
    if name in ("original", "retrain"):
        style["lw"] = 1.7
    if name == "retrain":
        style["ls"] = "--"
    if is_instrument(name):
        style["ls"] = ":"
    return style


def phase_model(phase: str) -> str:
    """The model a ``rounds.csv`` phase belongs to: ``mia_loss.repair`` -> ``mia_loss``; ``retrain_null.retrain``
    -> ``retrain_null``."""
    return phase.split(".")[0]
