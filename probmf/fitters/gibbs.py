"""Bayesian MF by blocked Gibbs sampling (BPMF, Salakhutdinov & Mnih 2008), biases included.

Model: r_ij ~ N(w_i.u_j + b_i + c_j + mu, 1/tau), tau ~ Gamma(a_tau, b_tau);
w_i ~ N(mu_w, Lam_w^-1) with (mu_w, Lam_w) ~ Normal-Wishart(mu0 = 0, beta0, W0 = I, nu0 = k),
u_j likewise with its own hyper-parameters; b_i ~ N(0, 1/lam_b), c_j ~ N(0, 1/lam_c) with
lam_b, lam_c ~ Gamma(a_bias, b_bias); mu fixed at the training mean.

One sweep draws, in turn, every block of the joint conditional:
  (mu_w, Lam_w) | W and (mu_u, Lam_u) | U           Normal-Wishart (conjugate),
  lam_b | b and lam_c | c                            Gamma,
  x_i = [w_i; b_i] | U, c, tau, hyper for all users  N(A_i^-1 r_i, A_i^-1),
  x_j = [u_j; c_j] | W, b, tau, hyper for all items  likewise,
  tau | everything                                   Gamma(a_tau + n/2, b_tau + SSE/2),
with A_i = tau G_i + P, r_i = tau h_i + P m, P = blockdiag(Lam_w, lam_b) and m = [mu_w; 0]
(G_i, h_i from `probmf.fitters.rows`, as in ALS). A row draw is x = L^-T (L^-1 r + z),
z ~ N(0, I), with A = L L^T: one batched Cholesky and two triangular solves per block.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.scipy.linalg import solve_triangular

from probmf.data.ratings import Ratings
from probmf.encoding import Encoded, encode, layout_for_rank
from probmf.fitters.als import fit_als
from probmf.fitters.rows import residual_sum_of_squares, update_rows
from probmf.model import MFParams
from probmf.posterior import Posterior


class Hyperpriors(NamedTuple):
    """Fixed hyper-prior constants (BPMF's defaults: beta0 = 2, W0 = I, nu0 = k)."""

    beta0: float = 2.0
    nu0_extra: float = 0.0  # nu0 = k + nu0_extra (must keep nu0 > k - 1)
    a_tau: float = 1.0
    b_tau: float = 1.0
    a_bias: float = 1.0
    b_bias: float = 1.0


class GibbsState(NamedTuple):
    """The sampler's state: parameters, noise precision and the hyper-parameters."""

    params: MFParams
    tau: jax.Array  # ()
    mu_w: jax.Array  # (k,)
    lam_w: jax.Array  # (k, k) precision of the user factors
    mu_u: jax.Array  # (k,)
    lam_u: jax.Array  # (k, k) precision of the item factors
    lam_b: jax.Array  # () precision of the user biases
    lam_c: jax.Array  # () precision of the item biases


class GibbsInfo(NamedTuple):
    """Per-sweep diagnostics: the drawn tau and the training RMSE of the drawn parameters."""

    tau: jax.Array
    train_rmse: jax.Array


class GibbsResult(NamedTuple):
    posterior: Posterior
    trace: GibbsInfo  # (num_warmup + num_samples * thin,) per sweep

    @property
    def rank(self) -> int:
        return self.posterior.rank

    def predict(self, users, items):
        return self.posterior.predict(users, items)

    def predictive(self, users, items):
        return self.posterior.predictive(users, items)


def sample_normal_wishart(rng_key, X: jax.Array, beta0: float, nu0: float):
    """(mu, Lam) ~ p(mu, Lam | X) under the Normal-Wishart(0, beta0, I, nu0) prior on the
    mean and precision of the rows of X (n, k) (BPMF eq. 14).

    With W*^-1 = I + n S + beta0 n / (beta0 + n) xbar xbar^T = C C^T, Bartlett's
    construction gives Lam = B A A^T B^T with B = C^-T (so B B^T = W*), A lower triangular
    with A_ii^2 ~ chi2(nu* - i), A_ij ~ N(0, 1); then mu = mu* + beta*^-1/2 C A^-T z has
    covariance (beta* Lam)^-1. One Cholesky and two triangular solves.
    """
    n, k = X.shape
    key_diag, key_low, key_mu = jax.random.split(rng_key, 3)
    xbar = jnp.mean(X, axis=0)
    centred = X - xbar
    beta, nu = beta0 + n, nu0 + n
    mu_star = n * xbar / beta
    w_inv = jnp.eye(k) + centred.T @ centred + (beta0 * n / beta) * jnp.outer(xbar, xbar)
    C = jnp.linalg.cholesky(w_inv)
    chi2 = 2.0 * jax.random.gamma(key_diag, (nu - jnp.arange(k)) / 2.0)
    A = jnp.tril(jax.random.normal(key_low, (k, k)), -1) + jnp.diag(jnp.sqrt(chi2))
    BA = solve_triangular(C, A, lower=True, trans="T")  # C^-T A
    lam = BA @ BA.T
    z = jax.random.normal(key_mu, (k,))
    mu = mu_star + C @ solve_triangular(A, z, lower=True, trans="T") / jnp.sqrt(beta)
    return mu, lam


def _sample_gamma(rng_key, shape, rate):
    return jax.random.gamma(rng_key, shape) / rate


def _sample_rows(rng_key, X, xb, Y, yb, mu, tiles, tau, prior_prec, prior_mean):
    """Draw every row [x_i; xb_i] of one side from its Gaussian conditional; also return
    the SSE of this side's ratings at the drawn rows."""
    prior_rhs = prior_prec @ prior_mean

    def solve_block(block, G, h, s, x0, _):
        A = tau * G + prior_prec
        L = jnp.linalg.cholesky(A)
        y = solve_triangular(L, (tau * h + prior_rhs)[..., None], lower=True)
        z = jax.random.normal(jax.random.fold_in(rng_key, block), y.shape)
        x = solve_triangular(L, y + z, lower=True, trans="T")[..., 0]  # L^T x = L^-1 r + z
        return x, residual_sum_of_squares(x, G, h, s)

    return update_rows(X, xb, Y, yb, mu, tiles, (), solve_block)


def _block_prior(lam_factor, mu_factor, lam_bias):
    k = mu_factor.shape[0]
    P = jnp.zeros((k + 1, k + 1)).at[:k, :k].set(lam_factor).at[k, k].set(lam_bias)
    return P, jnp.concatenate([mu_factor, jnp.zeros((1,))])


def gibbs_sweep(rng_key, state: GibbsState, data: Encoded, hyper: Hyperpriors) -> tuple[GibbsState, GibbsInfo]:
    """One full sweep of the blocked Gibbs sampler (see the module docstring)."""
    keys = jax.random.split(rng_key, 7)
    W, U, b, c, mu = state.params
    k = W.shape[1]
    nu0 = k + hyper.nu0_extra
    mu_w, lam_w = sample_normal_wishart(keys[0], W, hyper.beta0, nu0)
    mu_u, lam_u = sample_normal_wishart(keys[1], U, hyper.beta0, nu0)
    lam_b = _sample_gamma(keys[2], hyper.a_bias + b.shape[0] / 2.0, hyper.b_bias + 0.5 * jnp.sum(b * b))
    lam_c = _sample_gamma(keys[3], hyper.a_bias + c.shape[0] / 2.0, hyper.b_bias + 0.5 * jnp.sum(c * c))
    W, b, _ = _sample_rows(keys[4], W, b, U, c, mu, data.by_user, state.tau, *_block_prior(lam_w, mu_w, lam_b))
    U, c, sse = _sample_rows(keys[5], U, c, W, b, mu, data.by_item, state.tau, *_block_prior(lam_u, mu_u, lam_c))
    n = jnp.sum(data.by_user.counts)
    tau = _sample_gamma(keys[6], hyper.a_tau + n / 2.0, hyper.b_tau + 0.5 * sse)
    state = GibbsState(MFParams(W, U, b, c, mu), tau, mu_w, lam_w, mu_u, lam_u, lam_b, lam_c)
    return state, GibbsInfo(tau=tau, train_rmse=jnp.sqrt(sse / n))


@functools.partial(jax.jit, static_argnames=("num_warmup", "num_samples", "thin"))
def gibbs_run(rng_key, state: GibbsState, data: Encoded, hyper: Hyperpriors, *, num_warmup, num_samples, thin=1):
    """Burn in ``num_warmup`` sweeps, then keep every ``thin``-th of ``num_samples * thin``.

    Returns (final state, kept draws as a `Posterior`, `GibbsInfo` of every sweep).
    """

    def sweep(s, key):
        return gibbs_sweep(key, s, data, hyper)

    key_warm, key_draw = jax.random.split(rng_key)
    state, warm_info = lax.scan(sweep, state, jax.random.split(key_warm, num_warmup))

    def draw(s, key):
        s, info = lax.scan(sweep, s, jax.random.split(key, thin))
        return s, ((s.params, s.tau), info)

    state, ((params, tau), info) = lax.scan(draw, state, jax.random.split(key_draw, num_samples))
    info = jax.tree.map(lambda w, d: jnp.concatenate([w, d.reshape(-1)]), warm_info, info)
    return state, Posterior(params, tau), info


def init_state(params: MFParams, tau) -> GibbsState:
    """Start from a point estimate (e.g. ALS's MAP) with unit hyper-precisions."""
    k = params.W.shape[1]
    one = jnp.float32(1.0)
    return GibbsState(params, jnp.float32(tau), jnp.zeros(k), jnp.eye(k), jnp.zeros(k), jnp.eye(k), one, one)


def fit_gibbs(
    rng_key,
    train: Ratings,
    *,
    rank: int = 10,
    num_warmup: int = 50,
    num_samples: int = 200,
    thin: int = 1,
    init_sweeps: int = 10,
) -> GibbsResult:
    """Sample the posterior of the biased MF model by blocked Gibbs (BPMF).

    The chain starts from ALS's MAP estimate (``init_sweeps`` sweeps, defaults otherwise)
    and its residual precision, burns in ``num_warmup`` sweeps and keeps ``num_samples``
    draws, one every ``thin`` sweeps.

    Returns:
      `GibbsResult(posterior, trace)`; ``predict``/``predictive`` average over the draws.
    """
    for name, v, low in (("rank", rank, 1), ("num_samples", num_samples, 1), ("thin", thin, 1),
                         ("num_warmup", num_warmup, 0), ("init_sweeps", init_sweeps, 1)):  # fmt: skip
        if int(v) != v or v < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")
    key_init, key_run = jax.random.split(rng_key)
    init = fit_als(key_init, train, rank=rank, num_sweeps=init_sweeps)
    data = encode(train, layout_for_rank(rank))
    mse = 2.0 * float(init.trace[-1]) / len(train)  # >= the MAP training MSE
    state = init_state(init.params, 1.0 / max(mse, 1e-6))
    _, posterior, info = gibbs_run(
        key_run, state, data, Hyperpriors(), num_warmup=num_warmup, num_samples=num_samples, thin=thin
    )
    return GibbsResult(posterior, jax.tree.map(np.asarray, info))
