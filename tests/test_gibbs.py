"""The blocked Gibbs sampler against its conjugate conditionals and calibration on synthetic data."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from probmf.data.synthetic import synthetic_ratings
from probmf.encoding import encode
from probmf.fitters.gibbs import _block_prior, _sample_rows, fit_gibbs, sample_normal_wishart
from probmf.metrics import interval_scores
from probmf.model import init_params


@pytest.fixture(scope="module")
def small():
    ratings, _ = synthetic_ratings(num_users=30, num_items=20, num_ratings=300, rank=2, noise=0.5, seed=7)
    return ratings


def test_row_draws_have_the_conjugate_mean_and_covariance(small):
    """With the items fixed, user row x_i = [w_i; b_i] ~ N(A^-1 r, A^-1), A = tau G + P, r = tau h + P m."""
    ratings = small
    enc = encode(ratings)
    p = init_params(jax.random.PRNGKey(1), ratings.num_users, ratings.num_items, 2, scale=0.7, mu=3.5)
    p = p._replace(c=0.3 * jax.random.normal(jax.random.PRNGKey(2), (ratings.num_items,)))
    tau = 2.5
    lam_w = jnp.array([[2.0, 0.3], [0.3, 1.5]])
    prior_prec, prior_mean = _block_prior(lam_w, jnp.array([0.2, -0.1]), 4.0)

    def draw(key):
        W, b, _ = _sample_rows(key, p.W, p.b, p.U, p.c, p.mu, enc.by_user, tau, prior_prec, prior_mean)
        return jnp.concatenate([W, b[:, None]], axis=1)

    num = 20_000
    x = np.asarray(jax.jit(jax.vmap(draw))(jax.random.split(jax.random.PRNGKey(3), num)), np.float64)
    U, c, mu = (np.asarray(a, np.float64) for a in (p.U, p.c, p.mu))
    P, m = np.asarray(prior_prec, np.float64), np.asarray(prior_mean, np.float64)
    for user in (0, 5, 17):
        sel = ratings.users == user
        a = np.hstack([U[ratings.items[sel]], np.ones((sel.sum(), 1))])
        y = ratings.values[sel] - mu - c[ratings.items[sel]]
        A = tau * a.T @ a + P
        cov = np.linalg.inv(A)
        mean = cov @ (tau * a.T @ y + P @ m)
        se = np.sqrt(np.diag(cov) / num)
        np.testing.assert_array_less(np.abs(x[:, user].mean(0) - mean), 5 * se)
        np.testing.assert_allclose(np.cov(x[:, user].T), cov, atol=5 * np.sqrt(2.0 / num) * np.max(np.diag(cov)))


def test_normal_wishart_draws_match_the_posterior_moments():
    """E[Lam] = nu* W* and E[mu] = mu* for the conjugate Normal-Wishart update."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 3)) @ np.diag([1.0, 0.5, 2.0]) + 0.4
    beta0, nu0 = 2.0, 3.0
    n, k = X.shape
    xbar = X.mean(0)
    S = (X - xbar).T @ (X - xbar)
    w_star = np.linalg.inv(np.eye(k) + S + beta0 * n / (beta0 + n) * np.outer(xbar, xbar))
    draws = jax.jit(jax.vmap(lambda key: sample_normal_wishart(key, jnp.asarray(X, jnp.float32), beta0, nu0)))(
        jax.random.split(jax.random.PRNGKey(0), 20_000)
    )
    mu, lam = (np.asarray(d, np.float64) for d in draws)
    np.testing.assert_allclose(lam.mean(0), (nu0 + n) * w_star, rtol=0.03, atol=0.02)
    np.testing.assert_allclose(mu.mean(0), n * xbar / (beta0 + n), atol=0.02)


def test_intervals_are_calibrated_on_data_from_the_model():
    ratings, _ = synthetic_ratings(num_users=200, num_items=150, num_ratings=12_000, rank=3, noise=0.5, seed=11)
    test_mask = np.random.default_rng(1).random(len(ratings)) < 0.2
    train, test = ratings.take(~test_mask), ratings.take(test_mask)
    res = fit_gibbs(jax.random.PRNGKey(0), train, rank=3, num_warmup=30, num_samples=60)
    mean, sd = res.predictive(jnp.asarray(test.users), jnp.asarray(test.items))
    scores = interval_scores(mean, sd, test.values)
    assert 0.85 <= scores["coverage_90"] <= 0.95, scores
    assert 0.44 <= scores["coverage_50"] <= 0.56, scores
    # The noise precision is recovered: 1/tau ~ 0.5^2.
    assert abs(1.0 / np.sqrt(np.mean(res.trace.tau[-60:])) - 0.5) < 0.05


def test_deterministic_for_a_fixed_key(small):
    a = fit_gibbs(jax.random.PRNGKey(4), small, rank=2, num_warmup=3, num_samples=4)
    b = fit_gibbs(jax.random.PRNGKey(4), small, rank=2, num_warmup=3, num_samples=4)
    for x, y in zip(jax.tree.leaves(a.posterior), jax.tree.leaves(b.posterior), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert a.posterior.num_samples == 4 and a.posterior.draws.W.shape == (4, 30, 2)


@pytest.mark.parametrize("kwargs", [dict(rank=0), dict(num_samples=0), dict(thin=0), dict(num_warmup=-1)])
def test_bad_options_fail_before_sampling(small, kwargs):
    with pytest.raises(ValueError):
        fit_gibbs(jax.random.PRNGKey(0), small, **kwargs)
