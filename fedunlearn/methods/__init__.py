"""The unlearning-method registry: one module per method, found by name (``fedunlearn methods`` lists them)."""

from __future__ import annotations

from fedunlearn.methods.base import MethodParams, UnlearningMethod, UnlearnJob
from fedunlearn.methods.federaser import FedEraser
from fedunlearn.methods.finetune import Finetune
from fedunlearn.methods.forsaken import Forsaken
from fedunlearn.methods.lightweight import Lightweight
from fedunlearn.methods.mia_loss import MiaLoss
from fedunlearn.methods.pga import PGA
from fedunlearn.methods.retrain import Retrain
from fedunlearn.methods.unsir import UNSIR
from fedunlearn.registry import Registry

METHODS: Registry[type[UnlearningMethod]] = Registry("method")
for _cls in (Retrain, Finetune, Lightweight, MiaLoss, Forsaken, UNSIR, FedEraser, PGA):
    METHODS.register(_cls.name)(_cls)
    _cls.register_steps()


def build_method(name: str, params: MethodParams | None = None) -> UnlearningMethod:
    return METHODS.get(name, "unlearn.methods")(params)


__all__ = ["METHODS", "MethodParams", "UnlearnJob", "UnlearningMethod", "build_method"]
