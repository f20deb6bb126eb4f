"""Models chosen by name: ``mlp`` (tabular, digits), ``cnn`` (MNIST/FashionMNIST), ``resnet`` (small, CIFAR-10).

Weights travel as ``Weights`` (an ordered dict of numpy arrays, the state dict's keys) so that server-side maths,
history on disk and Flower records all share one representation.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from fedunlearn.registry import Registry

if TYPE_CHECKING:
    from fedunlearn.config.schema import ModelConfig

Weights = OrderedDict[str, np.ndarray]
ModelFactory = Callable[["ModelConfig", tuple[int, ...], int], nn.Module]
MODELS: Registry[ModelFactory] = Registry("model")


@MODELS.register("mlp")
def mlp(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Fully connected ReLU network on the flattened input (the usual model of tabular MIA benchmarks)."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for h in cfg.hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


@MODELS.register("cnn")
def cnn(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Two conv blocks and a dense head (the FedAvg paper's MNIST CNN, narrower)."""
    c, h, w = _image_shape(input_shape)
    feat = 64 * (h // 4) * (w // 4)
    return nn.Sequential(
        nn.Conv2d(c, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(feat, 128), nn.ReLU(), nn.Linear(128, num_classes),
    )


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.short(x))


class SmallResNet(nn.Module):
    """ResNet-8 style network (3 stages of one basic block, widths 16/32/64) for 32×32 images."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.layers = nn.Sequential(_Block(16, 16, 1), _Block(16, 32, 2), _Block(32, 64, 2))
        self.head = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


@MODELS.register("resnet")
def resnet(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    c, _, _ = _image_shape(input_shape)
    return SmallResNet(c, num_classes)


def _image_shape(input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    from fedunlearn.errors import ConfigError

    if len(input_shape) != 3:
        raise ConfigError(f"model.name: needs image input (C, H, W), got shape {input_shape}; use model.name = 'mlp'")
    return input_shape  # type: ignore[return-value]


def build_model(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int, seed: int | None = None) -> nn.Module:
    """Build the configured model; with ``seed`` its initial weights are a pure function of the seed."""
    factory = MODELS.get(cfg.name, "model.name")
    if seed is None:
        return factory(cfg, tuple(input_shape), num_classes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory(cfg, tuple(input_shape), num_classes)


def get_weights(model: nn.Module) -> Weights:
    return OrderedDict((k, v.detach().cpu().numpy().copy()) for k, v in model.state_dict().items())


def set_weights(model: nn.Module, weights: Weights) -> nn.Module:
    """Load numpy weights, casting back to each buffer's dtype (FedAvg returns integer buffers as floats)."""
    state = model.state_dict()
    new = OrderedDict()
    for k, ref in state.items():
        new[k] = torch.as_tensor(np.asarray(weights[k])).to(dtype=ref.dtype)
    model.load_state_dict(new)
    return model


def weights_nbytes(weights: Weights) -> int:
    return int(sum(v.nbytes for v in weights.values()))


def is_float_param(name: str, value: np.ndarray) -> bool:
    """True for trainable-like float tensors (not BatchNorm running stats or counters)."""
    return value.dtype.kind == "f" and not name.endswith(("running_mean", "running_var", "num_batches_tracked"))


def sq_distance(a: Weights, b: Weights) -> float:
    """Squared L2 distance between two models over their float parameters (``is_float_param``: BatchNorm running
    statistics and counters left out) as one vector: pga's ball geometry, the drift measured after unlearning."""
    return float(sum(np.sum((np.asarray(a[k], np.float64) - np.asarray(b[k], np.float64)) ** 2)
                     for k, v in a.items() if is_float_param(k, np.asarray(v))))


def distance(a: Weights, b: Weights) -> float:
    """L2 distance between two models over their float parameters, as one vector (``sq_distance``)."""
    return float(np.sqrt(sq_distance(a, b)))


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        from fedunlearn.errors import ConfigError

        raise ConfigError("sim.device: 'cuda' requested but no CUDA device is visible; allowed here: auto, cpu")
    return torch.device(device)


def save_weights(path: str | os.PathLike[str], weights: Weights) -> None:
    """Save as a PyTorch state dict (``models/*.pt`` of the results contract), atomically."""
    from fedunlearn.io import atomic_torch_save

    atomic_torch_save(path, OrderedDict((k, torch.from_numpy(np.array(v))) for k, v in weights.items()))


def load_weights(path: str | os.PathLike[str]) -> Weights:
    state = torch.load(path, map_location="cpu", weights_only=True)
    return OrderedDict((k, v.numpy()) for k, v in state.items())
