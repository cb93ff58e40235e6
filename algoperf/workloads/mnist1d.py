"""MNIST-1D (Greydanus & Kobak 2024): 1-D signals of length 40, 10 classes, generated locally.

Model: a small 1-D CNN (three convolutions of 32 channels, ReLU, global average pooling, linear
head), the kind of model for which the MNIST-1D paper reports ~94% test accuracy. The 4,000
generated training signals are split 3,500 train / 500 validation; the 1,000 test signals are the
test split. Held-out variant ``mnist1d_tanh``: the same network with tanh activations.
"""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from algoperf.data.mnist1d import load_mnist1d
from algoperf.workloads.base import BaseWorkload

NUM_VALIDATION = 500


class Mnist1dCNN(nn.Module):
    activation: Callable = nn.relu
    channels: int = 32
    num_classes: int = 10

    @nn.compact
    def __call__(self, x):
        x = x[..., None]  # [batch, length, 1]
        x = self.activation(nn.Conv(self.channels, (5,), name="conv_0")(x))
        x = self.activation(nn.Conv(self.channels, (3,), strides=(2,), name="conv_1")(x))
        x = self.activation(nn.Conv(self.channels, (3,), strides=(2,), name="conv_2")(x))
        x = jnp.mean(x, axis=1)
        return nn.Dense(self.num_classes, name="output")(x)


def mnist1d_splits(seed: int = 42) -> dict:
    data = load_mnist1d(seed)
    x, y = data["x_train"], data["y_train"]
    return {"train": {"inputs": x[NUM_VALIDATION:], "targets": y[NUM_VALIDATION:]},
            "validation": {"inputs": x[:NUM_VALIDATION], "targets": y[:NUM_VALIDATION]},
            "test": {"inputs": data["x_test"], "targets": data["y_test"]}}


class Mnist1dWorkload(BaseWorkload):
    workload_name = "mnist1d"
    default_batch_size = 128
    _eval_batch_size = 256
    _target_metric_name = "accuracy"
    _validation_target = 0.88
    _test_target = 0.86
    _max_runtime = 30
    _eval_period = 2
    _step_hint = 1500

    def build_model(self) -> nn.Module:
        return Mnist1dCNN()

    def load_splits(self, data_dir):
        del data_dir  # generated, never read from disk
        return {k: {kk: np.asarray(vv) for kk, vv in v.items()} for k, v in mnist1d_splits().items()}


class Mnist1dTanhWorkload(Mnist1dWorkload):
    workload_name = "mnist1d_tanh"
    _validation_target = 0.80
    _test_target = 0.78

    def build_model(self) -> nn.Module:
        return Mnist1dCNN(activation=nn.tanh)
