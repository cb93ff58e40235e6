"""MNIST with upstream's development-workload model: an MLP 784-128-10 with a sigmoid hidden layer.

Reads MNIST from ``--data_dir`` (nothing is downloaded): either the four idx files
(``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
``t10k-labels-idx1-ubyte``, optionally ``.gz``) or ``mnist.npz`` with ``x_train, y_train, x_test,
y_test`` (the Keras layout). The last sixth of the training images is the validation split (50k/10k
for the real data, as upstream), pixels scaled to [0, 1]. Variant ``mnist_relu``: ReLU hidden layer.
"""
from __future__ import annotations

import gzip
import pathlib
import struct

import flax.linen as nn
import numpy as np

from algoperf.workloads.base import BaseWorkload

IDX_FILES = {"x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
             "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}
IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: pathlib.Path) -> np.ndarray:
    """An IDX file (LeCun's format: magic 0x0000TTDD, D big-endian dimensions, then the data)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    ndim = raw[3]
    dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.dtype(IDX_DTYPES[raw[2]]), offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} but holds {data.size} values")
    return data.reshape(dims)


def write_idx(path: pathlib.Path, array: np.ndarray) -> None:
    """Writes a uint8 array as IDX (used to make the small test files)."""
    array = np.asarray(array, np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())


def load_mnist_arrays(data_dir: str | None) -> dict:
    if not data_dir:
        raise ValueError(f"data_dir={data_dir!r}: the mnist workload reads MNIST from a folder (idx files or "
                         "mnist.npz); none given")
    root = pathlib.Path(data_dir).expanduser()
    if not root.is_dir():
        raise ValueError(f"data_dir={data_dir!r} is not a directory")
    if (root / "mnist.npz").is_file():
        with np.load(root / "mnist.npz") as f:
            return {k: f[k] for k in IDX_FILES}
    out = {}
    for key, name in IDX_FILES.items():
        path = next((root / n for n in (name, name + ".gz") if (root / n).is_file()), None)
        if path is None:
            raise ValueError(f"data_dir={data_dir!r} has neither mnist.npz nor {name}[.gz]")
        out[key] = read_idx(path)
    return out


class MnistMLP(nn.Module):
    activation: callable = nn.sigmoid

    @nn.compact
    def __call__(self, x):
        x = x.reshape((x.shape[0], -1))
        return nn.Dense(10, name="output")(self.activation(nn.Dense(128, name="hidden")(x)))


class MnistWorkload(BaseWorkload):
    workload_name = "mnist"
    default_batch_size, _eval_batch_size = 128, 1000
    _target_metric_name, _eval_period, _step_hint = "accuracy", 5, 7813
    _validation_target, _test_target, _max_runtime = 0.97, 0.97, 60  # upstream's MNIST target

    def load_splits(self, data_dir):
        arrays = load_mnist_arrays(data_dir)
        x = arrays["x_train"].reshape(len(arrays["x_train"]), -1).astype(np.float32) / 255.0
        y = arrays["y_train"].astype(np.int32)
        cut = len(x) - len(x) // 6
        x_test = arrays["x_test"].reshape(len(arrays["x_test"]), -1).astype(np.float32) / 255.0
        return {"train": {"inputs": x[:cut], "targets": y[:cut]},
                "validation": {"inputs": x[cut:], "targets": y[cut:]},
                "test": {"inputs": x_test, "targets": arrays["y_test"].astype(np.int32)}}

    def build_model(self) -> nn.Module:
        return MnistMLP()


class MnistReluWorkload(MnistWorkload):
    workload_name = "mnist_relu"

    def build_model(self) -> nn.Module:
        import flax.linen as nn_

        return MnistMLP(activation=nn_.relu)
