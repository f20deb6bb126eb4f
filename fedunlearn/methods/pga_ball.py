"""PGA's ball geometry, apart from the method: the reference model w_ref, the ball radius from random inits, and the
projections onto the ball (of a weight set on the server, in place on u's parameters during the ascent). Distances
are ``models.sq_distance`` / ``models.distance`` over the float parameters (the notebook's ``Utils.get_distance`` is
the squared one). Pure functions of weights, so the server half and the tests share them."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedunlearn.errors import FedUnlearnError
from fedunlearn.models import Weights, distance, is_float_param, sq_distance


def reference_model(global_weights: Weights, withdrawn_locals: list[Weights], k: int) -> Weights:
    """w_ref = (K·w_T − Σ_u w_u)/(K − |U|): the mean of the other clients' models when w_T is the mean of all K."""
    m = len(withdrawn_locals)
    if k - m < 1:
        raise FedUnlearnError(f"pga: {k} client(s) in the last round, cannot remove {m}")
    out = Weights()
    for key, w in global_weights.items():
        if not is_float_param(key, np.asarray(w)):
            out[key] = np.array(w, copy=True)
            continue
        acc = k * np.asarray(w, np.float64) - sum(np.asarray(u[key], np.float64) for u in withdrawn_locals)
        out[key] = (acc / (k - m)).astype(w.dtype)
    return out


def project_to_ball(weights: Weights, center: Weights, radius: float) -> Weights:
    """Euclidean projection of ``weights`` onto the L2 ball of ``radius`` around ``center`` (float parameters)."""
    d = distance(weights, center)
    if d <= radius:
        return Weights((k, np.array(v, copy=True)) for k, v in weights.items())
    scale = radius / d
    out = Weights()
    for key, w in weights.items():
        if key in center and is_float_param(key, np.asarray(w)):
            c = np.asarray(center[key], np.float64)
            out[key] = (c + (np.asarray(w, np.float64) - c) * scale).astype(w.dtype)
        else:
            out[key] = np.array(w, copy=True)
    return out


def mean_sq_distance(reference: Weights, inits: list[Weights]) -> float:
    """Mean squared distance from w_ref to random initialisations: the yardstick of the radius and the stop."""
    return float(np.mean([sq_distance(reference, w0) for w0 in inits]))


def ball_radius(yardstick: float, share: float) -> float:
    """δ = sqrt(share · yardstick), the yardstick being ``mean_sq_distance`` to random inits: the notebook's
    threshold ``mean(d²)/3`` is a bound on the squared distance and its projection rescales to
    ``sqrt(threshold)``."""
    return float(np.sqrt(share * yardstick))


def params_sq_distance(params: list[nn.Parameter], center: list[torch.Tensor]) -> float:
    return float(sum(((p.detach() - c).double() ** 2).sum() for p, c in zip(params, center)))


@torch.no_grad()
def project_params(params: list[nn.Parameter], center: list[torch.Tensor], radius: float) -> float:
    """In-place projection of the model's parameters onto the ball; returns the distance before projecting."""
    d = float(np.sqrt(params_sq_distance(params, center)))
    if d > radius:
        scale = radius / d
        for p, c in zip(params, center):
            p.copy_(c + (p - c) * scale)
    return d
