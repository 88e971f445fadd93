"""Batched Cholesky factorisation and triangular solves, with or without LAPACK.

``linalg="lapack"`` calls XLA's LAPACK-backed `jnp.linalg.cholesky` and
`jax.scipy.linalg.solve_triangular`. ``linalg="jax"`` runs the textbook algorithms as loops of
batched vector operations, with no custom call at all: some XLA-CPU builds can hang when a
program holds several batched LAPACK calls or runs them on several forced host devices, and
for small k the loops are not slower (LAPACK is called once per matrix).

    Cholesky, column j:  v = A[:, j] - L L[j, :]^T,  L[j:, j] = v[j:] / sqrt(v[j])
    forward  L x = b:     x_i = (b_i - L[i, :i] x[:i]) / L_ii
    backward L^T x = b:   x_i = (b_i - L[i+1:, i] . x[i+1:]) / L_ii
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy.linalg import solve_triangular

LINALGS = ("lapack", "jax")


def cholesky(A: jax.Array, linalg: str = "lapack") -> jax.Array:
    """Lower-triangular L with L L^T = A for SPD A (..., n, n)."""
    if linalg == "lapack":
        return jnp.linalg.cholesky(A)
    _check(linalg)
    n = A.shape[-1]
    idx = jnp.arange(n)

    def column(j: jax.Array, L: jax.Array) -> jax.Array:
        v = A[..., :, j] - jnp.einsum("...ik,...k->...i", L, L[..., j, :], precision=lax.Precision.HIGHEST)
        d = jnp.sqrt(jnp.take(v, j, axis=-1))[..., None]
        return L.at[..., :, j].set(jnp.where(idx >= j, v / d, 0.0))

    return lax.fori_loop(0, n, column, jnp.zeros_like(A))


def solve_lower(L: jax.Array, b: jax.Array, *, transpose: bool = False, linalg: str = "lapack") -> jax.Array:
    """x with L x = b (``transpose``: L^T x = b); L (..., n, n) lower triangular, b (..., n)."""
    if linalg == "lapack":
        return solve_triangular(L, b[..., None], lower=True, trans="T" if transpose else "N")[..., 0]
    _check(linalg)
    n = L.shape[-1]
    diag = jnp.diagonal(L, axis1=-2, axis2=-1)
    # L^T x = b reads L's columns where L x = b reads its rows; both go one unknown at a time.
    rows = jnp.swapaxes(L, -1, -2) if transpose else L

    def step(t: jax.Array, x: jax.Array) -> jax.Array:
        i = n - 1 - t if transpose else t
        r = jnp.take(rows, i, axis=-2)  # (..., n): zero past the unknowns already solved
        done = jnp.einsum("...k,...k->...", r, x, precision=lax.Precision.HIGHEST)  # not sum(r * x): see below
        xi = (jnp.take(b, i, axis=-1) - done) / jnp.take(diag, i, axis=-1)
        return x.at[..., i].set(xi)

    return lax.fori_loop(0, n, step, jnp.zeros_like(b))


# Products are contracted with einsum, never as sum(r * x, -1): with r broadcast against a
# batch of thousands of x, XLA-CPU (jax 0.10.2) compiled the multiply-reduce of a loop that
# also updates x into wrong results. tests/test_linalg.py checks large batches.


def _check(linalg: str) -> None:
    if linalg not in LINALGS:
        raise ValueError(f"unknown linear-algebra implementation {linalg!r}; choose one of {LINALGS}")
