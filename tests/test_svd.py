"""Truncated SVD against Eckart-Young, and the SVD baseline fitter."""

import jax
import numpy as np
import pytest
import scipy.sparse as sp

from probmf.data.ratings import Ratings
from probmf.data.synthetic import synthetic_ratings
from probmf.fitters.svd import DENSE_LIMIT, fit_svd, truncated_svd
from probmf.metrics import predict_ratings


def _best_rank_k(x: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """numpy's best rank-k approximation of x (Eckart-Young) and x's singular values."""
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    return (u[:, :rank] * s[:rank]) @ vt[:rank], s


@pytest.mark.parametrize("rank", [1, 3, 6])
def test_eckart_young_error_is_the_discarded_spectrum(rank):
    x = np.random.default_rng(0).standard_normal((12, 9))
    u, s, v = truncated_svd(x, rank)
    best, full = _best_rank_k(x, rank)
    np.testing.assert_allclose((u * s) @ v.T, best, rtol=0, atol=1e-12)
    np.testing.assert_allclose(s, full[:rank], rtol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(x - (u * s) @ v.T), np.sqrt(np.sum(full[rank:] ** 2)), rtol=1e-10)
    np.testing.assert_allclose(u.T @ u, np.eye(rank), atol=1e-12)  # orthonormal factors
    np.testing.assert_allclose(v.T @ v, np.eye(rank), atol=1e-12)


def test_sparse_path_matches_dense():
    x = sp.random(40, 30, density=0.3, random_state=3, format="csr")
    u, s, v = truncated_svd(x, 4, seed=5)
    ud, sd, vd = truncated_svd(x.toarray(), 4)
    np.testing.assert_allclose(s, sd, rtol=1e-6)
    np.testing.assert_allclose((u * s) @ v.T, (ud * sd) @ vd.T, atol=1e-8)


def test_rank_bounds():
    with pytest.raises(ValueError, match="rank"):
        truncated_svd(np.zeros((3, 2)), 3)


@pytest.mark.parametrize("dense_limit", [DENSE_LIMIT, 0])  # LAPACK and ARPACK
def test_svd_fitter_on_a_complete_matrix_is_the_best_rank_k_fit_of_the_centred_ratings(dense_limit):
    """Every cell observed: W U^T is numpy's best rank-k approximation of the bias-centred
    matrix X = R - (mu + b_i + c_j), with Frobenius error sqrt(sum of the discarded s_r^2)."""
    rng = np.random.default_rng(4)
    n, m, rank = 30, 20, 3
    R = 3.5 + rng.standard_normal((n, 4)) @ rng.standard_normal((4, m)) + 0.3 * rng.standard_normal((n, m))
    users, items = np.indices((n, m)).reshape(2, -1)
    ratings = Ratings.from_raw(users, items, R.ravel().astype(np.float32))
    res = fit_svd(jax.random.PRNGKey(0), ratings, rank=rank, dense_limit=dense_limit)
    W, U, b, c, mu = (np.asarray(a, np.float64) for a in res.params)
    centred = np.zeros((n, m))
    centred[ratings.users, ratings.items] = ratings.values - (mu + b[ratings.users] + c[ratings.items])
    best, s = _best_rank_k(centred, rank)
    np.testing.assert_allclose(res.singular_values, s[:rank], rtol=1e-5)
    np.testing.assert_allclose(W @ U.T, best, rtol=0, atol=1e-5 * np.abs(best).max())
    np.testing.assert_allclose(np.linalg.norm(centred - W @ U.T), np.sqrt(np.sum(s[rank:] ** 2)), rtol=1e-5)
    pred = predict_ratings(res.params, ratings)  # r_hat = mu + b_i + c_j + (X_k)_ij
    np.testing.assert_allclose(pred, (mu + b[:, None] + c[None, :] + best)[ratings.users, ratings.items], atol=1e-4)


def test_svd_fitter_dense_and_sparse_agree():
    ratings, _ = synthetic_ratings(num_users=80, num_items=60, num_ratings=2000, rank=3, seed=4)
    key = jax.random.PRNGKey(0)
    dense = fit_svd(key, ratings, rank=3)
    sparse = fit_svd(key, ratings, rank=3, dense_limit=0)
    np.testing.assert_allclose(sparse.singular_values, dense.singular_values, rtol=1e-5)
    p_dense, p_sparse = predict_ratings(dense.params, ratings), predict_ratings(sparse.params, ratings)
    np.testing.assert_allclose(p_sparse, p_dense, atol=1e-4)
