"""Token sequence tasks: copy, reverse, sort (per-token targets) and a long-range memory task."""
from __future__ import annotations

import numpy as np

from engine.data.two_d import balanced_labels

__all__ = ["TOKEN_TASKS", "token_task", "long_range"]

TOKEN_TASKS: tuple[str, ...] = ("copy", "reverse", "sort")

# Share of long_range examples whose distractor tail appears only once (see long_range).
_UNIQUE_TAILS = 0.2


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
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sequences whose binary label is set by the first token alone.

    The label is ``first_token >= vocab // 2``; every later token is a uniform random distractor
    from the same vocabulary, so a model can only succeed by carrying the first token through
    ``seq_len - 1`` steps. With the label read at the last step, a plain tanh RNN's gradient
    vanishes over that distance while an LSTM's cell state carries it.

    Most distractor tails come in pairs, one behind a low and one behind a high first token, so
    memorising tails (which a small RNN otherwise does to 100 % of a thousand examples) can fit
    at most the unpaired ``_UNIQUE_TAILS`` share: a model that cannot reach the first token stays
    near chance. Some unpaired tails are kept on purpose: with every tail paired, the loss is
    exactly symmetric in the tails and even the LSTM was seen to stall at chance.

    Returns:
        x (n, seq_len) int64 tokens, y (n,) int64 labels, and a group id per example (the two
        halves of a pair share one) so the split can keep pairs on one side.
    """
    if vocab < 2:
        raise ValueError("long_range needs a vocabulary of at least 2 tokens")
    n_pairs = int(round(n * (1.0 - _UNIQUE_TAILS) / 2.0))
    n_single = n - 2 * n_pairs
    group = np.concatenate([np.repeat(np.arange(n_pairs), 2), n_pairs + np.arange(n_single)])
    y = np.concatenate([np.tile(np.array([0, 1], dtype=np.int64), n_pairs),
                        balanced_labels(rng, n_single, 2)])
    half = vocab // 2
    first = np.where(y == 1, rng.integers(half, vocab, size=n), rng.integers(0, half, size=n))
    tails = rng.integers(0, vocab, size=(n_pairs + n_single, seq_len - 1), dtype=np.int64)
    x = np.concatenate([first[:, None], tails[group]], axis=1)
    order = rng.permutation(n)
    return x[order], y[order], group[order]
