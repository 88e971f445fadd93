"""Rows of the rating matrix as network inputs: CSR device arrays, densified batch by batch.

A row r (``item_based``: an item's column of ratings, num_users wide; else a user's row,
num_items wide) is ``indices[indptr[r]:indptr[r+1]]`` (its rated columns) with ratings
``values`` (`rows_csr`). `densify` turns a batch of B rows into dense ratings and an
observed mask (B, width) on the device, so memory is O(batch x width), never the
num_users x num_items matrix; `pair_plan` lays out the distinct rows a set of
(row, column) pairs needs in fixed-size batches, each row once. No gather relies on JAX's
clamping: padding goes to a valid index (an extra entry or column that is cut off).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from probmf.data.ratings import Ratings


class RowsCSR(NamedTuple):
    """The input vectors as CSR device arrays: row r holds ``indices[indptr[r]:indptr[r+1]]``
    (columns, int32) with ratings ``values`` (float32)."""

    indptr: jax.Array
    indices: jax.Array
    values: jax.Array


def rows_csr(train: Ratings, *, item_based: bool) -> tuple[RowsCSR, int, int]:
    """The input vectors of ``train`` as CSR device arrays, the width and the longest row."""
    csr = train.to_csr()
    if item_based:
        csr = csr.T.tocsr()
    csr.sort_indices()
    lengths = np.diff(csr.indptr)
    max_len = max(int(lengths.max()) if lengths.size else 0, 1)
    arrays = RowsCSR(
        jnp.asarray(csr.indptr, jnp.int32),
        # One padding entry keeps every gather index valid even with no ratings.
        jnp.asarray(np.append(csr.indices, 0), jnp.int32),
        jnp.asarray(np.append(csr.data, 0.0), jnp.float32),
    )
    return arrays, csr.shape[1], max_len


def densify(csr: RowsCSR, rows: jax.Array, width: int, max_len: int) -> tuple[jax.Array, jax.Array]:
    """Dense ratings x (B, width) and observed mask (B, width) of ``rows`` (int (B,); -1: an
    empty padding row). Gathers B x max_len CSR slots, then scatters into the batch."""
    valid = rows >= 0
    r = jnp.where(valid, rows, 0)
    start = csr.indptr[r]
    length = jnp.where(valid, csr.indptr[r + 1] - start, 0)
    slot = jnp.arange(max_len)
    ok = slot[None, :] < length[:, None]
    pos = jnp.where(ok, start[:, None] + slot, 0)
    # Slots past a row's end go to an extra column that is cut off: no reliance on clamping.
    cols = jnp.where(ok, csr.indices[pos], width)
    # One scatter per row (vmapped): its batch axis stays a batch axis, so a batch split across
    # devices is densified where it lies.
    x = jax.vmap(lambda c, v: jnp.zeros(width + 1, jnp.float32).at[c].set(v))(cols, jnp.where(ok, csr.values[pos], 0.0))
    mask = jax.vmap(lambda c, v: jnp.zeros(width + 1, bool).at[c].set(v))(cols, ok)
    return x[:, :width], mask[:, :width]


def pair_plan(rows: np.ndarray, warm: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Host-side plan to reconstruct each distinct warm row once: (S, B) row batches (-1 pad),
    and for every pair its batch and position in it (batch -1: not reconstructed)."""
    uniq, inverse = np.unique(np.where(warm, rows, -1), return_inverse=True)
    if uniq.size and uniq[0] == -1:
        uniq, inverse = uniq[1:], inverse - 1
    num_batches = max(-(-uniq.size // batch_size), 1)
    batches = np.full(num_batches * batch_size, -1, np.int32)
    batches[: uniq.size] = uniq
    inverse = inverse.reshape(-1)
    pair_batch = np.where(inverse >= 0, inverse // batch_size, -1).astype(np.int32)
    pair_pos = np.where(inverse >= 0, inverse % batch_size, 0).astype(np.int32)
    return batches.reshape(num_batches, batch_size), pair_batch, pair_pos
