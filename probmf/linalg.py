"""Batched Cholesky factorisation and triangular solves, with or without LAPACK.

``linalg="lapack"`` calls XLA's LAPACK-backed `jnp.linalg.cholesky` and
`jax.scipy.linalg.solve_triangular`. ``linalg="jax"`` has no custom call at all: some XLA-CPU
builds hang when a program holds several batched LAPACK calls or runs them on several forced
host devices, and a Gibbs sweep at rank 64 hung with LAPACK on the ML-1M-shaped preset.
Up to `_LOOP_MAX` rows it runs the textbook loops of batched vector operations; above, the
2 x 2 block recursion, which also yields the inverse factor U = L^-1, with batched matrix
products for everything but blocks of at most `_BASE` rows:

    Cholesky, column j:  v = A[:, j] - L L[j, :]^T,  L[j:, j] = v[j:] / sqrt(v[j])
    recursion:           L11 = chol(A11),  L21 = A21 U11^T,  L22 = chol(A22 - L21 L21^T),
                         U21 = -U22 L21 U11
    forward  L x = b:     x_i = (b_i - L[i, :i] x[:i]) / L_ii
    backward L^T x = b:   x_i = (b_i - L[i+1:, i] . x[i+1:]) / L_ii
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy.linalg import solve_triangular

HIGHEST = lax.Precision.HIGHEST

LINALGS = ("lapack", "jax")


def cholesky(A: jax.Array, linalg: str = "lapack") -> jax.Array:
    """Lower-triangular L with L L^T = A for SPD A (..., n, n)."""
    if linalg == "lapack":
        return jnp.linalg.cholesky(A)
    _check(linalg)
    return _cholesky_columns(A) if A.shape[-1] <= _LOOP_MAX else _factor(A)[0]


def gaussian_draw(A: jax.Array, b: jax.Array, z: jax.Array, linalg: str = "lapack") -> jax.Array:
    """x = A^-1 b + L^-T z for SPD A = L L^T (..., n, n) and b, z (..., n): with z ~ N(0, I), a
    draw from N(A^-1 b, A^-1). Computed as L^-T (L^-1 b + z): two triangular solves, or, with
    ``linalg="jax"`` above `_LOOP_MAX` rows, two products with the inverse factor."""
    if linalg == "jax" and A.shape[-1] > _LOOP_MAX:
        U = _factor(A)[1]
        y = jnp.einsum("...ij,...j->...i", U, b, precision=HIGHEST) + z
        return jnp.einsum("...ji,...j->...i", U, y, precision=HIGHEST)
    L = cholesky(A, linalg)
    return solve_lower(L, solve_lower(L, b, linalg=linalg) + z, transpose=True, linalg=linalg)


# Below _LOOP_MAX rows the column loop and loop solves are faster (2x at n = 11 with 4,096
# matrices); above it the recursion is (4x at n = 65), with leaves of _BASE rows (fastest of
# 4, 8 and 16 there).
_LOOP_MAX = 32
_BASE = 8


def _factor(A: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(L, U = L^-1) for SPD A (..., n, n), by the block recursion of the module docstring."""
    n = A.shape[-1]
    if n <= _BASE:
        return _factor_columns(A)
    m = n // 2
    L11, U11 = _factor(A[..., :m, :m])
    L21 = _mm(A[..., m:, :m], jnp.swapaxes(U11, -1, -2))
    L22, U22 = _factor(A[..., m:, m:] - _mm(L21, jnp.swapaxes(L21, -1, -2)))
    U21 = -_mm(U22, _mm(L21, U11))
    zero = jnp.zeros(A.shape[:-2] + (m, n - m), A.dtype)
    L = jnp.concatenate([jnp.concatenate([L11, zero], -1), jnp.concatenate([L21, L22], -1)], -2)
    U = jnp.concatenate([jnp.concatenate([U11, zero], -1), jnp.concatenate([U21, U22], -1)], -2)
    return L, U


def _factor_columns(A: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(L, L^-1) of a small block: `_cholesky_columns`, then the rows of L^-1 by forward
    substitution on the identity, U[i] = (e_i - L[i, :i] U[:i]) / L_ii (rows past i still zero)."""
    L = _cholesky_columns(A)
    eye = jnp.eye(A.shape[-1], dtype=A.dtype)

    def row(i: jax.Array, U: jax.Array) -> jax.Array:
        li = jnp.take(L, i, axis=-2)  # (..., n): zero past the diagonal
        done = jnp.einsum("...k,...kj->...j", li, U, precision=HIGHEST)
        return U.at[..., i, :].set((eye[i] - done) / jnp.take(li, i, axis=-1)[..., None])

    return L, lax.fori_loop(0, A.shape[-1], row, jnp.zeros_like(A))


def _cholesky_columns(A: jax.Array) -> jax.Array:
    """L column by column, v = A[:, j] - L L[j, :]^T, L[j:, j] = v[j:] / sqrt(v[j])."""
    n = A.shape[-1]
    idx = jnp.arange(n)

    def column(j: jax.Array, L: jax.Array) -> jax.Array:
        v = A[..., :, j] - jnp.einsum("...ik,...k->...i", L, L[..., j, :], precision=HIGHEST)
        d = jnp.sqrt(jnp.take(v, j, axis=-1))[..., None]
        return L.at[..., :, j].set(jnp.where(idx >= j, v / d, 0.0))

    return lax.fori_loop(0, n, column, jnp.zeros_like(A))


def _mm(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.einsum("...ij,...jk->...ik", a, b, precision=HIGHEST)


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
        done = jnp.einsum("...k,...k->...", r, x, precision=HIGHEST)  # not sum(r * x): see below
        xi = (jnp.take(b, i, axis=-1) - done) / jnp.take(diag, i, axis=-1)
        return x.at[..., i].set(xi)

    return lax.fori_loop(0, n, step, jnp.zeros_like(b))


# Products are contracted with einsum, never as sum(r * x, -1): with r broadcast against a
# batch of thousands of x, XLA-CPU (jax 0.10.2) compiled the multiply-reduce of a loop that
# also updates x into wrong results. tests/test_linalg.py checks large batches.


def _check(linalg: str) -> None:
    if linalg not in LINALGS:
        raise ValueError(f"unknown linear-algebra implementation {linalg!r}; choose one of {LINALGS}")
