"""The forward pass and the objectives, checked against hand computations and autodiff."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from probmf.model import MFParams, init_params, predict, predict_with_fallback
from probmf.objectives import (
    Priors,
    log_likelihood,
    log_prior,
    map_loss,
    mle_loss,
    regularized_loss,
)


def _tiny():
    """3 users x 3 items, rank 2, and 5 observed ratings."""
    params = MFParams(
        W=jnp.array([[1.0, 0.0], [0.5, -1.0], [0.0, 2.0]]),
        U=jnp.array([[1.0, 1.0], [-1.0, 0.5], [0.0, 1.0]]),
        b=jnp.array([0.1, -0.2, 0.3]),
        c=jnp.array([0.0, 0.5, -0.5]),
        mu=jnp.float32(3.0),
    )
    users = jnp.array([0, 0, 1, 2, 2])
    items = jnp.array([0, 1, 1, 0, 2])
    ratings = jnp.array([4.0, 2.0, 3.0, 5.0, 4.5])
    return params, users, items, ratings


def test_predict_by_hand():
    params, users, items, _ = _tiny()
    # w_0.u_0 + b_0 + c_0 + mu = 1 + 0.1 + 0 + 3
    np.testing.assert_allclose(predict(params, users, items)[0], 4.1, rtol=1e-6)
    # w_1.u_1 = -0.5 - 0.5 = -1; + b_1 - 0.2 + c_1 0.5 + 3
    np.testing.assert_allclose(predict(params, users, items)[2], 2.3, rtol=1e-6)


def test_fallback_for_unknown_ids_uses_biases_and_mean():
    params, *_ = _tiny()
    users = jnp.array([-1, 0, -1, 7, 1])
    items = jnp.array([1, -1, -1, 0, 99])
    got = np.asarray(predict_with_fallback(params, users, items))
    np.testing.assert_allclose(got, [3.0 + 0.5, 3.0 + 0.1, 3.0, 3.0 + 0.0, 3.0 - 0.2], rtol=1e-6)
    # Known pairs agree with predict.
    u, i = jnp.array([0, 2]), jnp.array([1, 2])
    np.testing.assert_allclose(predict_with_fallback(params, u, i), predict(params, u, i), rtol=1e-6)


def test_map_equals_mle_plus_prior_by_hand():
    params, users, items, ratings = _tiny()
    lam, lam_b, sigma = 2.0, 0.5, 0.8
    pred = np.asarray(predict(params, users, items), np.float64)
    sse = np.sum((np.asarray(ratings) - pred) ** 2)
    n = 5
    nll = 0.5 * sse / sigma**2 + n * math.log(sigma) + 0.5 * n * math.log(2 * math.pi)
    np.testing.assert_allclose(mle_loss(params, users, items, ratings, sigma=sigma), nll, rtol=1e-5)

    def lp(x, prec):  # sum log N(x | 0, 1/prec)
        x = np.asarray(x, np.float64).ravel()
        return np.sum(-0.5 * prec * x**2 + 0.5 * math.log(prec / (2 * math.pi)))

    prior = lp(params.W, lam) + lp(params.U, lam) + lp(params.b, lam_b) + lp(params.c, lam_b)
    priors = Priors.uniform(lam, lam_b)
    np.testing.assert_allclose(log_prior(params, priors), prior, rtol=1e-5)
    np.testing.assert_allclose(map_loss(params, users, items, ratings, priors, sigma=sigma), nll - prior, rtol=1e-5)


def test_map_is_l2_regularised_least_squares_up_to_a_constant():
    """At sigma = 1, map_loss - (1/2 SSE + lam/2 |W|^2 + ...) does not depend on the parameters."""
    _, users, items, ratings = _tiny()
    priors = Priors(1.5, 0.7, jnp.array([0.2, 0.3, 0.4]), 2.0)  # per-row precisions allowed
    gaps = []
    for seed in range(4):
        p = init_params(jax.random.PRNGKey(seed), 3, 3, 2, scale=1.0, mu=2.0)
        p = p._replace(b=jax.random.normal(jax.random.PRNGKey(10 + seed), (3,)))
        gaps.append(
            float(map_loss(p, users, items, ratings, priors) - regularized_loss(p, users, items, ratings, priors))
        )
    np.testing.assert_allclose(gaps, gaps[0], rtol=1e-5)


def test_objectives_gradients_match_finite_differences():
    params, users, items, ratings = _tiny()
    priors = Priors.uniform(0.3, 0.1)
    check_grads(
        lambda p: mle_loss(p, users, items, ratings, sigma=0.9),
        (params,),
        order=1,
        modes=["rev"],
        atol=2e-2,
        rtol=2e-2,
    )
    check_grads(
        lambda p: map_loss(p, users, items, ratings, priors),
        (params,),
        order=1,
        modes=["rev"],
        atol=2e-2,
        rtol=2e-2,
    )
    check_grads(
        lambda s: log_likelihood(params, users, items, ratings, sigma=s),
        (0.7,),
        order=1,
        atol=2e-2,
        rtol=2e-2,
    )


@pytest.mark.parametrize("rank", [0, 3])
def test_init_params_shapes(rank):
    p = init_params(jax.random.PRNGKey(0), 4, 5, rank, mu=3.5)
    assert p.W.shape == (4, rank) and p.U.shape == (5, rank)
    assert p.b.shape == (4,) and p.c.shape == (5,) and float(p.mu) == 3.5
    assert p.num_users == 4 and p.num_items == 5 and p.rank == rank
