"""Datasets the training experiments read: byte-level text corpora (``text``: the embedded Tiny
Shakespeare, or any folder of text files)."""
