import numpy as np
import pytest

from training.data import text


def test_embedded_corpus_split_is_deterministic_and_disjoint():
    a, b = text.load_corpus(), text.load_corpus()
    raw = np.frombuffer(text.embedded_shakespeare_bytes(), np.uint8)
    assert len(raw) == 1_115_394
    cut = int(0.9 * len(raw))
    np.testing.assert_array_equal(a.train, raw[:cut])
    np.testing.assert_array_equal(a.validation, raw[cut:])
    np.testing.assert_array_equal(a.train, b.train)
    assert len(a.train) + len(a.validation) == len(raw)  # a partition: no byte in both, none lost
    assert a.train.ctypes.data + a.train.nbytes <= a.validation.ctypes.data


def test_train_batches_pure_in_seed_and_step_and_inside_train_split():
    corpus = text.load_corpus()
    b1 = text.train_batch(corpus.train, seed=3, step=7, batch_size=4, seq_len=16)
    b2 = text.train_batch(corpus.train, seed=3, step=7, batch_size=4, seq_len=16)
    b3 = text.train_batch(corpus.train, seed=3, step=8, batch_size=4, seq_len=16)
    np.testing.assert_array_equal(b1["inputs"], b2["inputs"])
    assert not np.array_equal(b1["inputs"], b3["inputs"])
    np.testing.assert_array_equal(b1["inputs"][:, 1:], b1["targets"][:, :-1])  # shifted by one
    joined = corpus.train.tobytes()
    for row_in, row_t in zip(b1["inputs"], b1["targets"]):
        window = bytes(row_in.astype(np.uint8)) + bytes(row_t[-1:].astype(np.uint8))
        assert window in joined


def test_eval_batches_fixed_and_from_validation():
    corpus = text.load_corpus()
    e1 = text.eval_batches(corpus.validation, 3, 2, 32)
    e2 = text.eval_batches(corpus.validation, 3, 2, 32)
    assert len(e1) == 3
    for x, y in zip(e1, e2):
        np.testing.assert_array_equal(x["inputs"], y["inputs"])
        for row in x["inputs"]:
            assert bytes(row.astype(np.uint8)) in corpus.validation.tobytes()


def test_data_dir_reads_text_files_sorted(tmp_path):
    (tmp_path / "b.txt").write_text("world " * 50)
    (tmp_path / "a.txt").write_text("hello " * 50)
    (tmp_path / "skip.bin").write_bytes(b"\x00" * 10)
    corpus = text.load_corpus(str(tmp_path))
    whole = corpus.train.tobytes() + corpus.validation.tobytes()
    assert whole == ("hello " * 50 + "\n" + "world " * 50).encode()


def test_data_dir_errors(tmp_path):
    with pytest.raises(ValueError, match="is not a directory"):
        text.load_corpus(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="holds no text files"):
        text.load_corpus(str(tmp_path))
    (tmp_path / "tiny.txt").write_text("abc")
    with pytest.raises(ValueError, match="train split has 2 bytes"):
        text.load_corpus(str(tmp_path), min_split_len=65)
