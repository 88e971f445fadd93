"""Truncated SVD against Eckart-Young, and the SVD baseline fitter."""

import jax
import numpy as np
import pytest
import scipy.sparse as sp

from probmf.data.synthetic import synthetic_ratings
from probmf.fitters.svd import fit_svd, truncated_svd
from probmf.metrics import predict_ratings, rmse


@pytest.mark.parametrize("rank", [1, 3, 6])
def test_eckart_young_error_is_the_discarded_spectrum(rank):
    x = np.random.default_rng(0).standard_normal((12, 9))
    u, s, v = truncated_svd(x, rank)
    full = np.linalg.svd(x, compute_uv=False)
    err = np.sum((x - (u * s) @ v.T) ** 2)
    np.testing.assert_allclose(err, np.sum(full[rank:] ** 2), rtol=1e-10)
    # No other rank-k matrix does better: a perturbed factorisation is worse.
    u2 = u + 1e-3 * np.random.default_rng(1).standard_normal(u.shape)
    assert np.sum((x - (u2 * s) @ v.T) ** 2) > err


def test_sparse_path_matches_dense():
    x = sp.random(40, 30, density=0.3, random_state=3, format="csr")
    u, s, v = truncated_svd(x, 4, seed=5)
    ud, sd, vd = truncated_svd(x.toarray(), 4)
    np.testing.assert_allclose(s, sd, rtol=1e-6)
    np.testing.assert_allclose((u * s) @ v.T, (ud * sd) @ vd.T, atol=1e-8)


def test_rank_bounds():
    with pytest.raises(ValueError, match="rank"):
        truncated_svd(np.zeros((3, 2)), 3)


def test_svd_fitter_dense_and_sparse_agree_and_beat_the_mean():
    ratings, _ = synthetic_ratings(num_users=80, num_items=60, num_ratings=2000, rank=3, seed=4)
    key = jax.random.PRNGKey(0)
    dense = fit_svd(key, ratings, rank=3)
    sparse = fit_svd(key, ratings, rank=3, dense_limit=0)
    np.testing.assert_allclose(sparse.singular_values, dense.singular_values, rtol=1e-5)
    p_dense, p_sparse = predict_ratings(dense.params, ratings), predict_ratings(sparse.params, ratings)
    np.testing.assert_allclose(p_sparse, p_dense, atol=1e-4)
    mean_rmse = rmse(np.full(len(ratings), ratings.values.mean()), ratings.values)
    assert rmse(p_dense, ratings.values) < mean_rmse
