"""Objectives of the biased MF model: Gaussian log-likelihood, MLE and MAP losses.

With noise r_ij ~ N(r_hat_ij, sigma^2) and priors w_i ~ N(0, I/lam), u_j ~ N(0, I/lam),
b_i ~ N(0, 1/lam_bias), c_j ~ N(0, 1/lam_bias):

    mle_loss = -log p(R | theta)
    map_loss = -log p(R | theta) - log p(theta)          (the negative log posterior + const)

and, for sigma = 1,

    map_loss = 1/2 sum_obs (r - r_hat)^2 + lam/2 (|W|_F^2 + |U|_F^2)
               + lam_bias/2 (|b|^2 + |c|^2) + const,

i.e. L2 (Frobenius) regularised least squares, the objective ALS minimises. For another
sigma the MAP point is the same as for sigma = 1 with ridge strength lam * sigma^2, so the
fitters work with sigma = 1 and ridge units throughout. ``lam`` and ``lam_bias`` may be
scalars or per-row arrays (e.g. ALS-WR's lam * n_i), given separately per side as
`Priors`. The Bayesian fitters' hyper-prior constants are `Hyperpriors`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from probmf.model import MFParams, predict

_LOG_2PI = math.log(2.0 * math.pi)


class Priors(NamedTuple):
    """Prior precisions (ridge strengths); each a scalar or a per-row array.

    Attributes:
      lam_w: precision of user factors w_i, scalar or (num_users,).
      lam_u: precision of item factors u_j, scalar or (num_items,).
      lam_b: precision of user biases, scalar or (num_users,).
      lam_c: precision of item biases, scalar or (num_items,).
    """

    lam_w: jax.Array | float
    lam_u: jax.Array | float
    lam_b: jax.Array | float
    lam_c: jax.Array | float

    @classmethod
    def uniform(cls, lam: float, lam_bias: float) -> Priors:
        return cls(lam, lam, lam_bias, lam_bias)


class Hyperpriors(NamedTuple):
    """The constants of the Bayesian model's priors: one set for every Bayesian fitter (the
    Gibbs sampler, NUTS, SVI), defaults BPMF's (Salakhutdinov and Mnih, 2008).

    beta0, nu0_extra: (mu, Lam) ~ Normal-Wishart(0, beta0, W0 = I, nu0 = k + nu0_extra) for
      the factor rows (Gibbs; NUTS/SVI's "wishart"); nu0 must stay > k - 1.
    a_tau, b_tau: tau ~ Gamma(shape, rate), the noise precision.
    a_bias, b_bias: each side's bias precision ~ Gamma(shape, rate).
    a_implicit, b_implicit: the implicit-feedback scale c ~ Gamma(shape, rate) (Gibbs).
    a_features, b_features: the scale c_A of each side's attribute vectors ~ Gamma(shape,
      rate) (Gibbs with side information).
    a_lam, b_lam: each factor dimension's precision ~ Gamma(shape, rate) (NUTS/SVI's "gamma", ARD).
    lam, lam_bias: the fixed factor and bias precisions of NUTS/SVI's "fixed" (= `Priors.uniform`).
    a_time_bins, b_time_bins: the precision lam_bins of the item-by-time-bin biases c_{j,b}
      ~ Gamma(shape, rate) (Gibbs with time effects).
    a_drift, b_drift: the precision lam_drift of the user drifts alpha_i ~ Gamma(shape, rate)
      (Gibbs with time effects).
    """

    beta0: float = 2.0
    nu0_extra: float = 0.0
    a_tau: float = 1.0
    b_tau: float = 1.0
    a_bias: float = 1.0
    b_bias: float = 1.0
    a_implicit: float = 1.0
    b_implicit: float = 1.0
    a_features: float = 1.0
    b_features: float = 1.0
    a_lam: float = 1.0
    b_lam: float = 1.0
    lam: float = 2.0
    lam_bias: float = 2.0
    a_time_bins: float = 1.0
    b_time_bins: float = 1.0
    a_drift: float = 1.0
    b_drift: float = 1.0


def sum_squared_error(params: MFParams, users: jax.Array, items: jax.Array, ratings: jax.Array) -> jax.Array:
    """sum_k (r_k - r_hat_k)^2 over the given observations."""
    err = ratings - predict(params, users, items)
    return jnp.sum(err * err)


def log_likelihood(
    params: MFParams, users: jax.Array, items: jax.Array, ratings: jax.Array, *, sigma: ArrayLike = 1.0
) -> jax.Array:
    """sum_k log N(r_k | r_hat_k, sigma^2)."""
    n = ratings.shape[0]
    sse = sum_squared_error(params, users, items, ratings)
    return -0.5 * sse / sigma**2 - n * jnp.log(sigma) - 0.5 * n * _LOG_2PI


def _gaussian_log_prior(x: jax.Array, lam: ArrayLike) -> jax.Array:
    """sum log N(x | 0, 1/lam) over all entries of x; lam broadcasts over x's rows."""
    lam = jnp.asarray(lam, jnp.float32)
    lam_rows = jnp.broadcast_to(lam, x.shape[:1])
    d = x[0].size if x.ndim > 1 else 1
    sq = jnp.sum(jnp.reshape(x * x, (x.shape[0], -1)), axis=1)
    return jnp.sum(-0.5 * lam_rows * sq + 0.5 * d * (jnp.log(lam_rows) - _LOG_2PI))


def log_prior(params: MFParams, priors: Priors) -> jax.Array:
    """log p(W) + log p(U) + log p(b) + log p(c) under the zero-mean Gaussian priors."""
    return (
        _gaussian_log_prior(params.W, priors.lam_w)
        + _gaussian_log_prior(params.U, priors.lam_u)
        + _gaussian_log_prior(params.b, priors.lam_b)
        + _gaussian_log_prior(params.c, priors.lam_c)
    )


def mle_loss(
    params: MFParams, users: jax.Array, items: jax.Array, ratings: jax.Array, *, sigma: ArrayLike = 1.0
) -> jax.Array:
    """Negative Gaussian log-likelihood -log p(R | theta)."""
    return -log_likelihood(params, users, items, ratings, sigma=sigma)


def map_loss(
    params: MFParams, users: jax.Array, items: jax.Array, ratings: jax.Array, priors: Priors, *, sigma: ArrayLike = 1.0
) -> jax.Array:
    """Negative log posterior -log p(R | theta) - log p(theta) (up to log p(R))."""
    return mle_loss(params, users, items, ratings, sigma=sigma) - log_prior(params, priors)


def penalty(params: MFParams, priors: Priors) -> jax.Array:
    """The L2 term 1/2 sum lam ||row||^2 of every parameter block (no constants)."""

    def block(x: jax.Array, lam: ArrayLike) -> jax.Array:
        sq = jnp.sum(jnp.reshape(x * x, (x.shape[0], -1)), axis=1)
        return 0.5 * jnp.sum(jnp.asarray(lam, jnp.float32) * sq)

    return (
        block(params.W, priors.lam_w)
        + block(params.U, priors.lam_u)
        + block(params.b, priors.lam_b)
        + block(params.c, priors.lam_c)
    )


def regularized_loss(
    params: MFParams, users: jax.Array, items: jax.Array, ratings: jax.Array, priors: Priors
) -> jax.Array:
    """1/2 SSE + 1/2 sum lam ||row||^2: `map_loss` at sigma = 1 without its constants.

    This is the objective ALS minimises and reports per sweep.
    """
    return 0.5 * sum_squared_error(params, users, items, ratings) + penalty(params, priors)
