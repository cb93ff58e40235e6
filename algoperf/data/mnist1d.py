"""MNIST-1D (Greydanus & Kobak 2024), generated locally: signals of length 40, 80 % train / 20 % test.

``mnist1d.data.get_dataset`` downloads by default; ``make_dataset`` builds the same benchmark from
its procedural definition (5,000 samples = the standard 4,000 train / 1,000 test) in a few seconds, with
no network; ``num_samples`` draws more signals from the same procedure.
"""
from __future__ import annotations

import functools

import numpy as np

NUM_CLASSES = 10


STANDARD_NUM_SAMPLES = 5000


@functools.lru_cache(maxsize=4)
def _generate(seed: int, num_samples: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset  # import lazily: it is slow-ish

    args = get_dataset_args()
    args.seed = seed
    args.num_samples = num_samples
    data = make_dataset(args)
    return (np.asarray(data["x"], np.float32), np.asarray(data["y"], np.int32),
            np.asarray(data["x_test"], np.float32), np.asarray(data["y_test"], np.int32))


def load_mnist1d(seed: int = 42, num_samples: int = STANDARD_NUM_SAMPLES) -> dict[str, np.ndarray]:
    """``{'x_train', 'y_train', 'x_test', 'y_test'}``; ``seed=42, num_samples=5000`` is the standard dataset."""
    if num_samples < 10:
        raise ValueError(f"num_samples={num_samples} must be >= 10")
    x_train, y_train, x_test, y_test = _generate(seed, num_samples)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
