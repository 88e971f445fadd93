"""Truncated SVD of the bias-centred, imputed ratings matrix (the Eckart-Young baseline).

The matrix X has X_ij = r_ij - (mu + b_i + c_j) on observed cells, with biases from
`fit_baseline`, and 0 (i.e. the baseline prediction imputed) elsewhere. By Eckart-Young
the rank-k truncated SVD X_k = U_k S_k V_k^T is the best rank-k approximation of X in
Frobenius norm, |X - X_k|_F^2 = sum_{r > k} s_r^2. Factors W = U_k S_k^1/2,
U = V_k S_k^1/2 plug into the biased MF model, so r_hat = mu + b_i + c_j + (X_k)_ij.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
import scipy.sparse as sp
import scipy.sparse.linalg

from probmf.data.ratings import Ratings
from probmf.fitters.baseline import fit_baseline
from probmf.model import MFParams
from probmf.program import DEFAULT_RUN, Program, RunOptions, run_program, staged_program

DENSE_LIMIT = 25_000_000  # cells; above it the sparse ARPACK solver is used


class SVDResult(NamedTuple):
    params: MFParams
    singular_values: np.ndarray  # (rank,) descending


# The named tuples a saved model of this fitter may hold (`probmf.persistence` rebuilds only these).
SAVED_TYPES = (SVDResult,)


def truncated_svd(
    matrix: sp.spmatrix | sp.sparray | np.ndarray, rank: int, *, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best rank-k factors of a dense ndarray or scipy.sparse matrix: (U_k, s_k, V_k).

    Dense input uses LAPACK's full SVD; sparse input ARPACK's `svds` started from a
    seeded vector, so the result is deterministic. Singular values come descending.
    """
    n, m = matrix.shape
    if not 0 <= rank <= min(n, m):
        raise ValueError(f"rank must be in [0, {min(n, m)}] for a {n} x {m} matrix, got {rank}")
    if rank == 0:
        return np.zeros((n, 0)), np.zeros(0), np.zeros((m, 0))
    if sp.issparse(matrix):
        if rank >= min(n, m):
            matrix = matrix.toarray()  # type: ignore[union-attr]  # sparse: sp.issparse above
        else:
            v0 = np.random.default_rng(seed).standard_normal(min(n, m))
            u, s, vt = scipy.sparse.linalg.svds(matrix.astype(np.float64), k=rank, v0=v0)
            order = np.argsort(-s)
            return u[:, order], s[order], vt[order].T
    u, s, vt = scipy.linalg.svd(np.asarray(matrix, np.float64), full_matrices=False)
    return u[:, :rank], s[:rank], vt[:rank].T


class SVDConfig(NamedTuple):
    """rank: k >= 0 singular triplets kept; lam_bias: the biases' ridge; dense_limit: the
    residual matrix is factorised dense up to this many cells (LAPACK), sparse above."""

    rank: int = 10
    lam_bias: float = 3.0
    dense_limit: int = DENSE_LIMIT

    def validate(self, run: RunOptions = DEFAULT_RUN) -> SVDConfig:
        """Self, or a ValueError naming the option out of range (before any JAX call)."""
        if int(self.rank) != self.rank or self.rank < 0:
            raise ValueError(f"rank must be a non-negative integer, got {self.rank!r}")
        if not (np.isfinite(self.lam_bias) and self.lam_bias >= 0):
            raise ValueError(f"lambda_bias must be >= 0, got {self.lam_bias!r}")
        return self


def prepare_svd(rng_key: jax.Array, train: Ratings, config: SVDConfig, run: RunOptions = DEFAULT_RUN) -> Program:
    """The SVD as a one-step `Program` (closed form: nothing to iterate or checkpoint)."""
    return staged_program(lambda: _svd(rng_key, train, config), "SVD")


def fit_svd(
    rng_key: jax.Array, train: Ratings, *, rank: int = 10, lam_bias: float = 3.0, dense_limit: int = DENSE_LIMIT
) -> SVDResult:
    """Fit biases, then the rank-k truncated SVD of the residual matrix (missing = 0)."""
    return run_program(prepare_svd(rng_key, train, SVDConfig(rank, lam_bias, dense_limit).validate()))


def _svd(rng_key: jax.Array, train: Ratings, config: SVDConfig) -> SVDResult:
    rank, lam_bias, dense_limit = config
    key_base, key_svd = jax.random.split(rng_key)
    base = fit_baseline(key_base, train, lam_bias=lam_bias).params
    resid = train.values - np.asarray(base.mu + base.b[train.users] + base.c[train.items])
    x = sp.csr_matrix((resid, (train.users, train.items)), shape=(train.num_users, train.num_items))
    if train.num_users * train.num_items <= dense_limit:
        x = x.toarray()
    seed = int(jax.random.randint(key_svd, (), 0, 2**31 - 1))
    u, s, v = truncated_svd(x, min(rank, min(x.shape)), seed=seed)
    root = np.sqrt(s)
    W = np.zeros((train.num_users, rank), np.float32)
    U = np.zeros((train.num_items, rank), np.float32)
    W[:, : s.size] = u * root
    U[:, : s.size] = v * root
    params = MFParams(jnp.asarray(W), jnp.asarray(U), base.b, base.c, base.mu)
    return SVDResult(params, s)
