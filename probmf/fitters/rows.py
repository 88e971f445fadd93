"""Row-wise normal equations over the tiled layout: the engine of ALS and Gibbs sweeps.

With the other side fixed, each row i of one side (a user, or an item) sees its ratings
y_ij = r_ij - mu - (other side's bias)_j against features a_j = [other_j; 1]; everything a
closed-form or conjugate row update needs is

    G_i = sum_j a_j a_j^T  (k+1, k+1),   h_i = sum_j y_ij a_j  (k+1,),   s_i = sum_j y_ij^2,

and, for any new row x_i, sum_j (y_ij - a_j.x_i)^2 = s_i - 2 x_i.h_i + x_i^T G_i x_i.
`update_rows` loops over blocks of rows (`probmf.encoding`): each block accumulates its
(G, h, s) from fixed-length tiles of ratings and hands them to a block solver, so memory is
block_rows x (k+1)^2 floats whatever the number of rows.

With tiles split across devices (`probmf.encoding.sharded_row_tiles`), each device runs the
same loop over its own range of rows against the other side's full (replicated) table, in
one `shard_map`; the new rows come back split across devices and JAX all-gathers them where
the next half-sweep needs the whole table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

from probmf.encoding import RowTiles
from probmf.sharding import AXIS


def _gram(x: jax.Array) -> jax.Array:
    """(C, T, k) -> (C, k, k) sum over T of outer products x x^T."""
    if x.shape[-1] <= 16:
        # Small k: a fused multiply-reduce beats the batched GEMM of tiny matrices on CPU.
        return jnp.sum(x[..., :, None] * x[..., None, :], axis=1)
    return jnp.einsum("ctk,ctl->ckl", x, x, precision=lax.Precision.HIGHEST)


def normal_equations(
    a: jax.Array, offset: jax.Array, tiles: RowTiles, block: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(G, h, s) of the rows of one block; see the module docstring.

    a: (M + 1, k+1) rows [other_j; 1] and a zero padding row; offset: (M + 1,) the other
    side's bias + mu, 0 on padding. Returns G (R, k+1, k+1), h (R, k+1), s (R,), R = block_rows.
    """
    k1 = a.shape[1]
    r = tiles.block_rows

    def body(c: jax.Array, acc: tuple[jax.Array, jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array, jax.Array]:
        G, h, s = acc
        rows, cols, vals = tiles.rows[c], tiles.cols[c], tiles.vals[c]
        x = a[cols]  # (C, T, k+1)
        y = vals - offset[cols]  # (C, T); zero on padding
        G = G.at[rows].add(_gram(x))
        h = h.at[rows].add(jnp.einsum("ctk,ct->ck", x, y, precision=lax.Precision.HIGHEST))
        s = s.at[rows].add(jnp.sum(y * y, axis=1))
        return G, h, s

    init = (jnp.zeros((r, k1, k1)), jnp.zeros((r, k1)), jnp.zeros((r,)))
    return lax.fori_loop(tiles.starts[block], tiles.starts[block + 1], body, init)


def residual_sum_of_squares(x: jax.Array, G: jax.Array, h: jax.Array, s: jax.Array) -> jax.Array:
    """sum_i sum_j (y_ij - a_j.x_i)^2 = sum_i max(s_i - 2 x_i.h_i + x_i^T G_i x_i, 0).

    The expansion cancels when a row is fitted almost exactly (float32 rounding can then make
    it negative, which would give a Gibbs noise precision a negative rate): each row's term is
    clamped at its true lower bound, 0."""
    quad = jnp.einsum("nk,nkl,nl->n", x, G, x, precision=lax.Precision.HIGHEST)
    return jnp.sum(jnp.maximum(s - 2.0 * jnp.sum(x * h, -1) + quad, 0.0))


BlockSolver = Callable[..., tuple[jax.Array, jax.Array]]


def update_rows(
    X: jax.Array,
    xb: jax.Array,
    Y: jax.Array,
    yb: jax.Array,
    mu: jax.Array,
    tiles: RowTiles,
    per_row: Any,
    solve_block: BlockSolver,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """New rows [X, xb] of one side given the other side (Y, yb).

    Args:
      X: (N, k) factors and xb: (N,) biases of the side being updated (also handed to the
        solver as the current rows ``x0``, e.g. a warm start).
      Y: (M, k), yb: (M,) the other side; mu: the global offset.
      tiles: this side's `RowTiles`.
      per_row: a pytree of (N, ...) arrays the solver needs per row (e.g. ridge strengths).
      solve_block: ``solve_block(block, G, h, s, x0, per_row) -> (x, value)`` for one block
        of R rows: x (R, k+1) new rows, value a scalar summed over blocks (e.g. the SSE).
        Padding rows (past N) have G = 0, h = 0, s = 0 and zero per-row inputs.
    Returns:
      (X_new (N, k), xb_new (N,), sum of the blocks' values).
    """
    if tiles.mesh is not None:
        return _update_sharded(X, xb, Y, yb, mu, tiles, per_row, solve_block)
    n, m = X.shape[0], Y.shape[0]
    blocks, r = tiles.num_blocks, tiles.block_rows
    # Row m is the padding column: zero in both tables, so padded entries add nothing.
    a = jnp.concatenate([jnp.concatenate([Y, jnp.ones((m, 1), Y.dtype)], 1), jnp.zeros((1, Y.shape[1] + 1))], 0)
    offset = jnp.concatenate([yb + mu, jnp.zeros((1,))])

    def per_block(v: jax.Array) -> jax.Array:  # (n, ...) -> (blocks, r, ...), padding rows zero
        v = jnp.pad(v, [(0, blocks * r - n)] + [(0, 0)] * (v.ndim - 1))
        return v.reshape((blocks, r) + v.shape[1:])

    x0 = per_block(jnp.concatenate([X, xb[:, None]], axis=1))

    def body(total: jax.Array, inputs: tuple) -> tuple[jax.Array, jax.Array]:
        block, x0_b, per_row_b = inputs
        G, h, s = normal_equations(a, offset, tiles, block)
        x, value = solve_block(block, G, h, s, x0_b, per_row_b)
        return total + value, x

    total, x = lax.scan(body, jnp.float32(0), (jnp.arange(blocks), x0, jax.tree.map(per_block, per_row)))
    x = x.reshape(blocks * r, -1)[:n]
    return x[:, :-1], x[:, -1], total


def _update_sharded(
    X: jax.Array,
    xb: jax.Array,
    Y: jax.Array,
    yb: jax.Array,
    mu: jax.Array,
    tiles: RowTiles,
    per_row: Any,
    solve_block: BlockSolver,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`update_rows` with device d solving rows [d n_local, (d + 1) n_local), n_local = ceil(N / D)."""
    mesh, n = tiles.mesh, X.shape[0]
    assert mesh is not None, "called for tiles split across a mesh"
    d = mesh.size
    n_local = -(-n // d)

    def by_device(v: jax.Array) -> jax.Array:  # (n, ...) -> (D, n_local, ...), padding rows zero
        v = jnp.pad(v, [(0, d * n_local - n)] + [(0, 0)] * (v.ndim - 1))
        return v.reshape((d, n_local) + v.shape[1:])

    def local(
        X: jax.Array,
        xb: jax.Array,
        per_row: Any,
        rows: jax.Array,
        cols: jax.Array,
        vals: jax.Array,
        starts: jax.Array,
        Y: jax.Array,
        yb: jax.Array,
        mu: jax.Array,
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        squeeze = lambda v: v[0]  # noqa: E731 - this device's slice of the leading axis
        X, xb, per_row, rows, cols, vals, starts = jax.tree.map(squeeze, (X, xb, per_row, rows, cols, vals, starts))
        counts = jnp.zeros((n_local,), jnp.float32)  # unused by the solve
        tiles_local = dataclasses.replace(
            tiles, rows=rows, cols=cols, vals=vals, starts=starts, counts=counts, mesh=None, slots=None
        )
        X, xb, total = update_rows(X, xb, Y, yb, mu, tiles_local, per_row, solve_block)
        return X[None], xb[None], lax.psum(total, AXIS)

    sharded = P(AXIS)
    X, xb, total = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(sharded,) * 7 + (P(),) * 3,
        out_specs=(sharded, sharded, P()),
        check_vma=False,  # the engine's loops start from replicated zeros; every output is explicit above
    )(by_device(X), by_device(xb), jax.tree.map(by_device, per_row), tiles.rows, tiles.cols, tiles.vals,
      tiles.starts, Y, yb, mu)  # fmt: skip
    return X.reshape(d * n_local, -1)[:n], xb.reshape(-1)[:n], total


def row_sums(tiles: RowTiles, Z: jax.Array) -> jax.Array:
    """S Z (N, d) for Z (M, d), S (N, M) the 0/1 pattern of the tiles' entries: row i's sum of
    Z[j] over the columns j it rated (implicit feedback's F Y, up to row weights). One pass
    over the tiles, chunk by chunk as in `normal_equations`; split across devices like
    `update_rows`, each device summing its own rows."""
    if tiles.mesh is not None:
        return _row_sums_sharded(tiles, Z)
    r = tiles.block_rows
    Zp = jnp.concatenate([Z, jnp.zeros((1, Z.shape[1]), Z.dtype)])  # padded entries read the zero row
    # Chunk c belongs to block b with starts[b] <= c < starts[b + 1]; its rows are relative to b.
    base = (jnp.searchsorted(tiles.starts, jnp.arange(tiles.rows.shape[0]), side="right") - 1) * r

    def body(c: jax.Array, out: jax.Array) -> jax.Array:
        return out.at[base[c] + tiles.rows[c]].add(jnp.sum(Zp[tiles.cols[c]], axis=1))

    out = lax.fori_loop(0, tiles.starts[-1], body, jnp.zeros((tiles.num_blocks * r, Z.shape[1]), Z.dtype))
    return out[: tiles.num_rows]


def _row_sums_sharded(tiles: RowTiles, Z: jax.Array) -> jax.Array:
    """`row_sums` with device d summing rows [d n_local, (d + 1) n_local), n_local = ceil(N / D)."""
    mesh, n = tiles.mesh, tiles.num_rows
    assert mesh is not None, "called for tiles split across a mesh"
    d = mesh.size
    n_local = -(-n // d)

    def local(rows: jax.Array, cols: jax.Array, starts: jax.Array, Z: jax.Array) -> jax.Array:
        rows, cols, starts = rows[0], cols[0], starts[0]
        counts = jnp.zeros((n_local,), jnp.float32)  # only its length is read
        tiles_local = dataclasses.replace(
            tiles, rows=rows, cols=cols, vals=jnp.zeros(cols.shape), starts=starts, counts=counts, mesh=None,
            slots=None,
        )  # fmt: skip
        return row_sums(tiles_local, Z)[None]

    out = jax.shard_map(local, mesh=mesh, in_specs=(P(AXIS),) * 3 + (P(),), out_specs=P(AXIS), check_vma=False)(
        tiles.rows, tiles.cols, tiles.starts, Z
    )
    return out.reshape(d * n_local, -1)[:n]
