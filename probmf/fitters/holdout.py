"""Held-out ratings inside a fitter: the validation split, cross-fitting folds, and seen masks.

A fitter that early-stops or chooses between models holds out part of its TRAINING ratings
(`validation_split`), or cuts them into folds for out-of-fold predictions (`folds`); each
split is seeded from a PRNG key (`key_seed`), so a fit is deterministic for a fixed key.

A model fitted on part of the rows knows only the users and items that part rated: a seen
mask (bool (num_rows,), ``np.bincount(ids, minlength=num_rows) > 0``) marks them, and
`known` (device) or `warm_pairs` (host) tells which query ids may use the fitted rows; the
others get the fitter's fallback. Neither gathers out of range (an id -1 or past the end is
not seen) nor relies on JAX's clamping.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from probmf.data.ratings import Ratings
from probmf.data.splits import random_split


def key_seed(rng_key: jax.Array) -> int:
    """A numpy seed in [0, 2^31 - 1) drawn from ``rng_key``."""
    return int(jax.random.randint(rng_key, (), 0, np.iinfo(np.int32).max))


def validation_split(rng_key: jax.Array, train: Ratings, fraction: float) -> tuple[Ratings, Ratings | None]:
    """(fit, val) with val None when nothing can be held out."""
    if fraction > 0 and len(train) >= 10:
        fit, val = random_split(train, fraction, seed=key_seed(rng_key))
        if len(fit) and len(val):
            return fit, val
    return train, None


def folds(part: Ratings, num_folds: int, *, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(fit rows, held-out rows) index pairs of a seeded ``num_folds``-fold partition."""
    fold = np.empty(len(part), np.int64)
    fold[np.random.default_rng(seed).permutation(len(part))] = np.arange(len(part)) % num_folds
    return [(np.flatnonzero(fold != f), np.flatnonzero(fold == f)) for f in range(num_folds)]


def known(ids: jax.Array, seen: np.ndarray) -> jax.Array:
    """Known (0 <= id < len(seen)) and fitted (seen[id]); never gathers out of range."""
    ids = jnp.asarray(ids)
    inside = (ids >= 0) & (ids < seen.shape[0])
    return inside & jnp.asarray(seen)[jnp.where(inside, ids, 0)]


def warm_pairs(rows: np.ndarray, cols: np.ndarray, seen_rows: np.ndarray, seen_cols: np.ndarray) -> np.ndarray:
    """bool (n,): the row and column are in range and have training ratings."""
    ok_r = (rows >= 0) & (rows < seen_rows.size)
    ok_c = (cols >= 0) & (cols < seen_cols.size)
    return ok_r & ok_c & seen_rows[np.where(ok_r, rows, 0)] & seen_cols[np.where(ok_c, cols, 0)]
