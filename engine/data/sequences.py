"""Token sequence tasks: copy, reverse, sort (per-token targets) and a long-range memory task."""
from __future__ import annotations

import numpy as np

from engine.data.two_d import balanced_labels

__all__ = ["TOKEN_TASKS", "token_task", "long_range"]

TOKEN_TASKS: tuple[str, ...] = ("copy", "reverse", "sort")


def token_task(
    rng: np.random.Generator, name: str, n: int, seq_len: int, vocab: int
) -> tuple[np.ndarray, np.ndarray]:
    """Random (n, seq_len) int64 tokens in [0, vocab) and the target sequence of each.

    ``copy`` repeats the input, ``reverse`` reverses it and ``sort`` sorts it ascending.
    """
    x = rng.integers(0, vocab, size=(n, seq_len), dtype=np.int64)
    if name == "copy":
        y = x.copy()
    elif name == "reverse":
        y = x[:, ::-1].copy()
    elif name == "sort":
        y = np.sort(x, axis=1)
    else:
        raise ValueError(f"unknown token task {name!r}; expected one of {TOKEN_TASKS}")
    return x, y


def long_range(
    rng: np.random.Generator, n: int, seq_len: int, vocab: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sequences whose binary label is set by the first token alone.

    The label is ``first_token >= vocab // 2``; every later token is a uniform random distractor
    from the same vocabulary, so a model can only succeed by carrying the first token through
    ``seq_len - 1`` steps. With the label read at the last step, a plain tanh RNN's gradient
    vanishes over that distance while an LSTM's cell state carries it.

    Distractor tails come in pairs, one behind a low and one behind a high first token, so
    memorising the distractors (which a small net otherwise does with a thousand examples)
    explains nothing: the first token is the only route to a low loss.
    """
    if vocab < 2:
        raise ValueError("long_range needs a vocabulary of at least 2 tokens")
    pairs = (n + 1) // 2
    half = vocab // 2
    tails = rng.integers(0, vocab, size=(pairs, seq_len - 1), dtype=np.int64)
    y = np.tile(np.array([0, 1], dtype=np.int64), pairs)
    first = np.where(y == 1, rng.integers(half, vocab, size=2 * pairs), rng.integers(0, half, size=2 * pairs))
    x = np.concatenate([first[:, None], np.repeat(tails, 2, axis=0)], axis=1)
    order = rng.permutation(2 * pairs)[:n]
    return x[order], y[order]
