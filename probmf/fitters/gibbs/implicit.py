"""Implicit feedback for the Gibbs sampler (``implicit=True``; SVD++ in both directions,
Koren 2008, as in Rendle et al. 2019): which items a user rated, and which users rated an
item, in the TRAINING data.

User i's vector gains terms from the items N(i) it rated, w_i + |N(i)|^-1/2 sum_{j in N(i)} y_j,
and item j's vector terms from its raters. In law this is a per-row prior mean,
[w_i; b_i] ~ N(m + F_i Y, P^-1) with F_ij = |N(i)|^-1/2 on N(i) (Y's bias column is SVD++'s
implicit bias), so the row blocks of the sweep change only in their prior means. Y's rows are
N(0, (c P)^-1) with c ~ Gamma(a_implicit, b_implicit). Each side's hyper-parameter block
then draws, in turn: (mu_w, Lam_w) | W - F Y, Y (Normal-Wishart with c Y^T Y added to W*^-1
and C more degrees of freedom); lam_b | b - F Y, Y likewise; Y | W, b, c (matrix normal,
`sample_implicit`); and c | Y, P (Gamma) (`probmf.fitters.gibbs.kernel`'s side block). Items
do the same with their raters. The kept draws store the combined vectors, so prediction is
unchanged.

This module holds F (`ImplicitOperator`, built on the host), each side's implicit
parameters (`ImplicitSide`) and the exact draw of Y. Side information
(`probmf.fitters.gibbs.features`) is a second term of the same form, X A, whose operator
and draw are these.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
from jax import lax

from probmf.data.ratings import Ratings
from probmf.linalg import cholesky, solve_lower


class ImplicitOperator(NamedTuple):
    """A sparse F (N, C) as its nonzeros (rows, cols, weights (n,)), with the
    eigendecomposition F^T F = V diag(D) V^T (V (C, C), D (C,)) that makes the draw of the
    vectors it weighs exact for any c (`sample_implicit`). For implicit feedback F_ij =
    |N(i)|^-1/2 on row i's training set N(i); for side information F is an attribute matrix X
    (`probmf.fitters.gibbs.features`)."""

    rows: jax.Array
    cols: jax.Array
    weights: jax.Array
    vecs: jax.Array
    vals: jax.Array

    def apply(self, Y: jax.Array, num_rows: int) -> jax.Array:
        """F Y: (C, d) -> (N, d)."""
        return jax.ops.segment_sum(Y[self.cols] * self.weights[:, None], self.rows, num_rows)

    def apply_t(self, T: jax.Array) -> jax.Array:
        """F^T T: (N, d) -> (C, d)."""
        return jax.ops.segment_sum(T[self.rows] * self.weights[:, None], self.cols, self.vals.shape[0])


# The exact draw eigendecomposes a C x C Gram on the host (C^3 flops, C^2 floats).
MAX_IMPLICIT_COLUMNS = 12_000


def implicit_operator(
    rows: np.ndarray, cols: np.ndarray, num_rows: int, num_cols: int, weights: np.ndarray | None = None
) -> ImplicitOperator:
    """The `ImplicitOperator` of F with nonzeros F[rows[t], cols[t]] = weights[t] (distinct
    pairs); ``weights`` None: implicit feedback's |N(i)|^-1/2, for the training pairs (one per
    rating)."""
    if num_cols > MAX_IMPLICIT_COLUMNS:
        raise ValueError(
            f"implicit feedback draws exactly through a {num_cols} x {num_cols} eigendecomposition; "
            f"it supports at most {MAX_IMPLICIT_COLUMNS} users and items"
        )
    if weights is None:
        counts = np.bincount(rows, minlength=num_rows).astype(np.float64)
        weights = 1.0 / np.sqrt(counts[rows])
    F = sp.csr_matrix((weights, (rows, cols)), shape=(num_rows, num_cols))
    vals, vecs = np.linalg.eigh((F.T @ F).toarray())
    return ImplicitOperator(
        jnp.asarray(rows, jnp.int32), jnp.asarray(cols, jnp.int32), jnp.asarray(weights, jnp.float32),
        jnp.asarray(vecs, jnp.float32), jnp.asarray(np.maximum(vals, 0.0), jnp.float32),
    )  # fmt: skip


def implicit_operators(train: Ratings) -> tuple[ImplicitOperator, ImplicitOperator]:
    """(users', items') `ImplicitOperator`: the items each user rated, the users who rated each item."""
    return (implicit_operator(train.users, train.items, train.num_users, train.num_items),
            implicit_operator(train.items, train.users, train.num_items, train.num_users))  # fmt: skip


class ImplicitSide(NamedTuple):
    """One side's implicit-feedback parameters: Y (C, k+1), one vector [y_j; a_j] per column
    of F (per item, for the users' side), and c (), the scale of their prior precision."""

    Y: jax.Array
    c: jax.Array


def sample_implicit(rng_key, T, P, c, op: ImplicitOperator, linalg: str = "lapack") -> jax.Array:
    """Y ~ p(Y | T) when the rows of T (N, d) are N(F_i Y, P^-1) and those of Y (C, d) are
    N(0, (c P)^-1): matrix normal with row covariance (F^T F + c I)^-1 and column covariance
    P^-1, drawn by perturbation, Y = (F^T F + c I)^-1 (F^T (T + E1) + sqrt(c) E2) with the
    rows of E1, E2 ~ N(0, P^-1) (its mean is the posterior mean and its covariance
    (F^T F + c I)^-1 (F^T F + c I)(F^T F + c I)^-1 (x) P^-1); the inverse runs through F^T F's
    eigenvectors, so the draw is exact."""
    key_1, key_2 = jax.random.split(rng_key)
    d = P.shape[0]
    L = cholesky(P, linalg)
    L_inv_t = solve_lower(jnp.broadcast_to(L, (d, d, d)), jnp.eye(d), transpose=True, linalg=linalg).T  # L^-T
    e1 = jax.random.normal(key_1, T.shape) @ L_inv_t.T  # rows L^-T z ~ N(0, P^-1)
    e2 = jax.random.normal(key_2, (op.vals.shape[0], d)) @ L_inv_t.T
    rhs = op.apply_t(T + e1) + jnp.sqrt(c) * e2
    hi = lax.Precision.HIGHEST
    return jnp.matmul(op.vecs, jnp.matmul(op.vecs.T, rhs, precision=hi) / (op.vals + c)[:, None], precision=hi)
