"""MNIST-1D (Greydanus & Kobak 2024), generated locally: 4,000 train / 1,000 test signals of length 40.

``mnist1d.data.get_dataset`` downloads by default; ``make_dataset`` builds the same benchmark from
its procedural definition in a few seconds, with no network.
"""
from __future__ import annotations

import functools

import numpy as np

NUM_CLASSES = 10


@functools.lru_cache(maxsize=4)
def _generate(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset  # import lazily: it is slow-ish

    args = get_dataset_args()
    args.seed = seed
    data = make_dataset(args)
    return (np.asarray(data["x"], np.float32), np.asarray(data["y"], np.int32),
            np.asarray(data["x_test"], np.float32), np.asarray(data["y_test"], np.int32))


def load_mnist1d(seed: int = 42) -> dict[str, np.ndarray]:
    """``{'x_train', 'y_train', 'x_test', 'y_test'}``; ``seed=42`` is the package's standard dataset."""
    x_train, y_train, x_test, y_test = _generate(seed)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
