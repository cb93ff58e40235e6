"""Byte-level text corpora: the embedded Tiny Shakespeare by default, or any folder of text files.

The corpus is the byte sequence of the text (vocabulary 256, no tokenizer); the first 90% is the
training split and the last 10% the validation split, as customary for Tiny Shakespeare (char-rnn,
nanoGPT). Batches are a pure function of ``(seed, step)``, so the data iterator's whole state is its
step counter: a resumed run sees exactly the batches it would have seen.
"""
from __future__ import annotations

import dataclasses
import importlib.resources
import pathlib

import numpy as np

VOCAB_SIZE = 256
TRAIN_FRACTION = 0.9
TEXT_SUFFIXES = (".txt", ".md", ".text", ".rst")


@dataclasses.dataclass(frozen=True)
class TextCorpus:
    name: str
    train: np.ndarray  # uint8 bytes
    validation: np.ndarray

    def split(self, name: str) -> np.ndarray:
        if name not in ("train", "validation"):
            raise ValueError(f"split={name!r}; allowed: 'train', 'validation'")
        return self.train if name == "train" else self.validation


def embedded_shakespeare_bytes() -> bytes:
    return importlib.resources.files("training.data").joinpath("tinyshakespeare.txt").read_bytes()


def read_text_dir(data_dir: str | pathlib.Path) -> bytes:
    """Concatenates the text files of ``data_dir`` (recursively, sorted by path) as bytes."""
    root = pathlib.Path(data_dir)
    if not root.is_dir():
        raise ValueError(f"data_dir={str(data_dir)!r} is not a directory")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
    if not files:
        raise ValueError(f"data_dir={str(data_dir)!r} holds no text files (suffixes {TEXT_SUFFIXES})")
    return b"\n".join(p.read_bytes() for p in files)


def split_corpus(data: bytes, name: str, train_fraction: float = TRAIN_FRACTION) -> TextCorpus:
    array = np.frombuffer(data, dtype=np.uint8)
    cut = int(len(array) * train_fraction)
    return TextCorpus(name=name, train=array[:cut], validation=array[cut:])


def load_corpus(data_dir: str | None = None, min_split_len: int = 2) -> TextCorpus:
    """The embedded Tiny Shakespeare (``data_dir`` None or empty) or the text files under ``data_dir``."""
    if data_dir:
        corpus = split_corpus(read_text_dir(data_dir), name=str(data_dir))
    else:
        corpus = split_corpus(embedded_shakespeare_bytes(), name="tinyshakespeare")
    for split in ("train", "validation"):
        if len(corpus.split(split)) < min_split_len:
            raise ValueError(
                f"corpus {corpus.name!r}: {split} split has {len(corpus.split(split))} bytes, "
                f"need at least {min_split_len} (one sequence plus its next-token target)")
    return corpus


def _windows(data: np.ndarray, starts: np.ndarray, seq_len: int) -> dict[str, np.ndarray]:
    idx = starts[:, None] + np.arange(seq_len + 1)[None, :]
    window = data[idx].astype(np.int32)
    return {"inputs": window[:, :-1], "targets": window[:, 1:]}


def check_seq_len(data: np.ndarray, seq_len: int, split: str) -> None:
    if len(data) < seq_len + 1:
        raise ValueError(f"seq_len={seq_len} needs at least {seq_len + 1} bytes; {split} split has {len(data)}")


def train_batch(data: np.ndarray, seed: int, step: int, batch_size: int, seq_len: int) -> dict[str, np.ndarray]:
    """The training batch for ``step``: ``batch_size`` random windows, a pure function of (seed, step)."""
    check_seq_len(data, seq_len, "train")
    rng = np.random.default_rng([seed, step])
    starts = rng.integers(0, len(data) - seq_len, size=batch_size)
    return _windows(data, starts, seq_len)


def eval_batches(data: np.ndarray, num_batches: int, batch_size: int, seq_len: int, seed: int = 0):
    """A fixed list of ``num_batches`` evaluation batches (the same at every evaluation)."""
    check_seq_len(data, seq_len, "validation")
    rng = np.random.default_rng([seed, 2**31 - 1])
    return [_windows(data, rng.integers(0, len(data) - seq_len, size=batch_size), seq_len)
            for _ in range(num_batches)]
