"""UNSIR's numerics (methods/unsir_noise.py) on small arrays, without a federation: the retained subset, UNSIR-1's
pairing of noise with retained labels and its impair step checked by hand, the class-mode noise volume and order."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedunlearn.methods.unsir_noise import noise_count, paired_impair_train, paired_noise, retained_subset, take_noise

CPU = torch.device("cpu")


def test_retained_subset_excludes_classes_and_caps_each():
    y = np.array([0] * 10 + [1] * 5 + [2] * 3)
    x = np.arange(len(y), dtype=np.float32)[:, None]
    xs, ys = retained_subset(x, y, exclude={1}, per_class=4, seed=0)
    assert sorted(np.unique(ys)) == [0, 2] and (ys == 0).sum() == 4 and (ys == 2).sum() == 3
    xs2, _ = retained_subset(x, y, exclude={1}, per_class=4, seed=0)
    np.testing.assert_array_equal(xs, xs2)


def test_client_impair_labels_the_noise_with_the_paired_retained_records():
    """UNSIR-1's impair step: SGD on CE(f(noise), y_retained) + CE(f(x_retained), y_retained), one copy."""
    y = np.array([2, 0, 1, 1])
    noise = np.arange(10, dtype=np.float32)[:, None]
    order = np.array([3, 1, 4, 0, 2, 5, 6, 7, 8, 9])
    nx, ny, pos = paired_noise(noise, y, 2, order, 8)  # two copies, wrapping around the cycle
    np.testing.assert_array_equal(nx[:, 0], [8, 9, 3, 1, 4, 0, 2, 5])
    np.testing.assert_array_equal(ny, [2, 0, 1, 1, 2, 0, 1, 1])  # the retained labels, never u's
    assert pos == 16

    torch.manual_seed(0)
    x = np.random.default_rng(1).normal(size=(6, 5)).astype(np.float32)
    yr = np.array([0, 1, 2, 0, 1, 2])
    u_noise = np.random.default_rng(2).normal(size=(4, 5)).astype(np.float32)
    net = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    ref = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    ref.load_state_dict(net.state_dict())
    res, steps = paired_impair_train(net, x, yr, u_noise, copies=1, lr=0.5, batch_size=6, epochs=1, seed=3,
                                     noise_seed=4, device=CPU)
    assert steps == 1 and res.samples == 12
    # the same step by hand: the batch order of train_epochs, noise in its seeded cyclic order, retained labels
    idx = torch.randperm(6, generator=torch.Generator().manual_seed(3)).numpy()
    nidx = np.random.default_rng(4).permutation(4)[np.arange(6) % 4]
    xb, yb = torch.as_tensor(x[idx]), torch.as_tensor(yr[idx])
    loss = nn.functional.cross_entropy(ref(xb), yb) + nn.functional.cross_entropy(ref(torch.as_tensor(u_noise[nidx])),
                                                                                 yb)
    loss.backward()
    with torch.no_grad():
        for q in ref.parameters():
            q -= 0.5 * q.grad
    for a, b in zip(net.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b)


def test_class_noise_volume_follows_the_retained_size_and_interleaves_classes():
    """Class mode mixes noise_ratio noise records per retained record (the notebook's absolute volume on request),
    taking the noise batches' classes in turn."""
    assert noise_count(80, ratio=1.28, copies=20, noise_total=512) == 102
    assert noise_count(800, ratio=1.28, copies=20, noise_total=512) == 1024
    assert noise_count(80, ratio=None, copies=20, noise_total=512) == 20 * 512  # the notebook's absolute volume
    assert noise_count(80, ratio=1.28, copies=0, noise_total=512) == 0
    nx, ny = take_noise(np.arange(6.0)[:, None], np.array([0, 0, 0, 2, 2, 2]), 8)
    np.testing.assert_array_equal(ny, [0, 2, 0, 2, 0, 2, 0, 2])  # classes interleaved, cycled
    np.testing.assert_array_equal(nx[:, 0], [0, 3, 1, 4, 2, 5, 0, 3])
