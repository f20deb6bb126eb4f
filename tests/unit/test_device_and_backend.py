"""Devices and Ray settings without Ray or a GPU: ``auto`` falls back to CPU, client actors take a GPU only with a
share of one, and ``backend_config`` starts a private local Ray or attaches to a cluster."""

from __future__ import annotations

import pytest
import torch

from fedunlearn.engine.client import client_device
from fedunlearn.errors import ConfigError
from fedunlearn.models import resolve_device
from fedunlearn.simulation import RayMemorySampler, backend_config
from tests.conftest import tiny_config


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def fake_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


def test_auto_falls_back_to_cpu_without_cuda(no_cuda) -> None:
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert client_device(tiny_config('sim.device="auto"')) == torch.device("cpu")


def test_cuda_without_a_gpu_is_a_config_error(no_cuda) -> None:
    with pytest.raises(ConfigError, match="sim.device"):
        resolve_device("cuda")


def test_auto_takes_the_gpu_when_there_is_one(fake_cuda) -> None:
    assert resolve_device("auto") == torch.device("cuda")
    assert client_device(tiny_config('sim.device="auto"')) == torch.device("cuda")  # in-process backend


def test_ray_clients_take_a_gpu_only_with_a_share(fake_cuda) -> None:
    ray = ['sim.backend="ray"', 'sim.device="auto"']
    assert client_device(tiny_config(*ray)) == torch.device("cpu")
    assert client_device(tiny_config(*ray, "sim.num_gpus=0.25")) == torch.device("cuda")
    assert client_device(tiny_config('sim.backend="ray"', 'sim.device="cuda"')) == torch.device("cuda")


def test_backend_config_local_ray_is_private() -> None:
    bc = backend_config(tiny_config('sim.backend="ray"', "sim.num_cpus=0.5", "sim.num_gpus=0.25"))
    assert bc["client_resources"] == {"num_cpus": 0.5, "num_gpus": 0.25}
    init = bc["init_args"]
    assert init["address"] == "local" and init["num_cpus"] >= 1  # never joins a cluster found in /tmp/ray
    assert init["include_dashboard"] is False


@pytest.mark.parametrize("address", ["auto", "10.0.0.5:6379"])
def test_backend_config_attaches_to_a_cluster(address: str) -> None:
    init = backend_config(tiny_config('sim.backend="ray"', f'sim.ray_address="{address}"'))["init_args"]
    assert init["address"] == address and "num_cpus" not in init  # the cluster's nodes bring their own CPUs


def test_cuda_without_gpu_share_warns(caplog) -> None:
    backend_config(tiny_config('sim.backend="ray"', 'sim.device="cuda"'))
    assert "sim.num_gpus" in caplog.text


def test_memory_sampler_without_ray_reports_nothing() -> None:
    with RayMemorySampler(interval=0.01) as s:
        pass
    assert s.result_mb() == {}


def test_flower_dispatch_patch_asks_only_nodes_with_pending_messages() -> None:
    """The replacement of Flower's per-node polling loop delivers each pending message once, through Flower's own
    ``get_message_ins``, and never asks nodes that have nothing pending."""
    import queue
    import threading
    import time
    from types import SimpleNamespace

    from flwr.server.superlink.fleet.vce import vce_api

    from fedunlearn.simulation import _speed_up_flower_dispatch

    def msg(node: int, mid: str) -> SimpleNamespace:
        return SimpleNamespace(mid=mid, metadata=SimpleNamespace(dst_node_id=node, delivered_at=""))

    class State:
        def __init__(self) -> None:
            self.lock = threading.RLock()
            self.message_ins_store = {m.mid: m for m in (msg(5, "a"), msg(5, "b"), msg(9, "c"), msg(77, "x"))}
            self.asked: list[int] = []

        def get_message_ins(self, node_id: int, limit: int) -> list:
            self.asked.append(node_id)
            with self.lock:
                out = [m for m in self.message_ins_store.values()
                       if m.metadata.dst_node_id == node_id and not m.metadata.delivered_at][:limit]
                for m in out:
                    m.metadata.delivered_at = "now"
            return out

    _speed_up_flower_dispatch()
    state, q, stop = State(), queue.Queue(), threading.Event()
    th = threading.Thread(target=vce_api.add_messages_to_queue, args=(state, q, {5: 0, 9: 1, 11: 2}, stop))
    th.start()
    time.sleep(0.35)
    stop.set()
    th.join(timeout=5)
    got = sorted(q.get_nowait().mid for _ in range(q.qsize()))
    assert got == ["a", "b", "c"]  # node 77 is not in this federation: left alone
    assert set(state.asked) == {5, 9} and 11 not in state.asked
