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

Randomness depends only on (key, sweep, row): sweep s draws with ``fold_in(key, s)`` and row
i's noise z_i is row i of one (N, k+1) normal draw, so a chain is the same whatever the
blocks, the number of devices (rows split as in ALS) or the checkpoint chunks.
Kept draws are stored in full (`Posterior`) and/or, for test pairs known at fit time, as
running moments of the predictive (`PredictiveSummary`), which never stores a draw. Each
kept draw also keeps its cold-row priors, N(mu_w, Lam_w^-1) and N(0, 1/lam_b) (items
likewise), so a user or item with no training rating is predicted under that draw's prior
(`probmf.posterior.draw_predictive`), never as a zero vector.

Implicit feedback (``implicit=True``; SVD++ in both directions, Koren 2008, as in Rendle et
al. 2019): which items a user rated, and which users rated an item, in the TRAINING data.
User i's vector gains terms from the items N(i) it rated, w_i + |N(i)|^-1/2 sum_{j in N(i)} y_j,
and item j's vector terms from its raters. In law this is a per-row prior mean,
[w_i; b_i] ~ N(m + F_i Y, P^-1) with F_ij = |N(i)|^-1/2 on N(i) (Y's bias column is SVD++'s
implicit bias), so the row blocks above change only in their prior means. Y's rows are
N(0, (c P)^-1) with c ~ Gamma(a_implicit, b_implicit). Each side's hyper-parameter block
then draws, in turn: (mu_w, Lam_w) | W - F Y, Y (Normal-Wishart with c Y^T Y added to W*^-1
and C more degrees of freedom); lam_b | b - F Y, Y likewise; Y | W, b, c (matrix normal,
`sample_implicit`); and c | Y, P (Gamma). Items do the same with their raters. The kept draws
store the combined vectors, so prediction is unchanged.

Rounded likelihood (``likelihood="rounded"``): a rating is a latent y_ij ~ N(w_i.u_j + b_i +
c_j + mu, 1/tau) rounded to the nearest rating level (cuts at the midpoints between levels,
the end levels take the tails), as in ordinal probit models. Data augmentation keeps every
conditional conjugate: each sweep first draws y_ij from its normal truncated to the interval
of r_ij, then runs the blocks above on y instead of r. Predictions are E[r] over the levels.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import jax.scipy.special
import numpy as np
import scipy.sparse as sp
from jax import lax

from probmf.checkpoint import fit_checkpoint, run_steps
from probmf.data.ratings import Ratings
from probmf.encoding import Encoded, encode, layout_for_rank
from probmf.fitters.als import fit_als
from probmf.fitters.rows import residual_sum_of_squares, update_rows
from probmf.linalg import IMPLS, cholesky, solve_lower
from probmf.model import MFParams, predict_with_fallback
from probmf.objectives import Hyperpriors
from probmf.posterior import (
    Posterior,
    PredictiveSummary,
    RowPrior,
    draw_predictive,
    moments_init,
    moments_update,
    seen_rows,
)
from probmf.sharding import check_devices, device_mesh

LIKELIHOODS = ("gaussian", "rounded")


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
    implicit: tuple | None = None  # (users', items') `ImplicitSide` with implicit feedback, else None


class Latent(NamedTuple):
    """The training ratings in input order for the rounded likelihood: ids (n,) and the
    latent interval (lower, upper) (n,) of each rating's level (+-inf at the ends)."""

    users: jax.Array
    items: jax.Array
    lower: jax.Array
    upper: jax.Array


def rounding_intervals(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(levels (L,), lower (n,), upper (n,)): the distinct rating levels and, for each rating,
    the latent interval that rounds to it (midpoints between levels; +-inf at the ends)."""
    levels = np.unique(values)
    if levels.size < 2 or levels.size > 100:
        raise ValueError(f"the rounded likelihood needs 2..100 distinct rating levels, got {levels.size}")
    cuts = np.concatenate([[-np.inf], 0.5 * (levels[1:] + levels[:-1]), [np.inf]]).astype(np.float32)
    k = np.searchsorted(levels, values)
    return levels.astype(np.float32), cuts[k], cuts[k + 1]


def truncated_standard_normal(rng_key, lower: jax.Array, upper: jax.Array) -> jax.Array:
    """z ~ N(0, 1) truncated to [lower, upper] (any shape, +-inf allowed); see
    `truncated_from_uniform`."""
    return truncated_from_uniform(jax.random.uniform(rng_key, lower.shape), lower, upper)


# The open interval of probabilities whose inverse CDF is finite in float32.
_P_MIN = float(np.finfo(np.float32).tiny)
_P_MAX = float(np.nextafter(np.float32(1.0), np.float32(0.0)))


def truncated_from_uniform(u: jax.Array, lower: jax.Array, upper: jax.Array) -> jax.Array:
    """The truncated normal draw for uniform ``u`` in [0, 1): Phi^-1(Phi(a) + u (Phi(b) - Phi(a))),
    inverting the CDF on the side of zero the interval lies on, where Phi is small and exact
    in float32 (jax.random.truncated_normal returns +-3e38 for intervals far in a tail). The
    probability is kept inside (0, 1): u = 0 on (-inf, b], or a sum rounding to 1 on [a, inf),
    would otherwise give an infinite draw."""
    mirror = lower > 0  # interval right of zero: sample -z on [-upper, -lower]
    a, b = jnp.where(mirror, -upper, lower), jnp.where(mirror, -lower, upper)
    p_a, p_b = jax.scipy.special.ndtr(a), jax.scipy.special.ndtr(b)
    z = jax.scipy.special.ndtri(jnp.clip(p_a + u * (p_b - p_a), _P_MIN, _P_MAX))
    # Past ~13 sd Phi underflows: the draw is then the interval's end nearest zero.
    z = jnp.where(p_b > p_a, jnp.clip(z, a, b), jnp.where(jnp.isfinite(b), b, a))
    return jnp.where(mirror, -z, z)


def _sample_latent(rng_key, params: MFParams, tau, latent: Latent, data: Encoded) -> Encoded:
    """Draw y_ij ~ N(r_hat_ij, 1/tau) truncated to its rating's interval and write it into
    both row layouts in place of the ratings."""
    pred = predict_with_fallback(params, latent.users, latent.items)
    sd = 1.0 / jnp.sqrt(tau)
    y = pred + sd * truncated_standard_normal(rng_key, (latent.lower - pred) / sd, (latent.upper - pred) / sd)
    return with_values(data, y)


def with_values(data: Encoded, values: jax.Array) -> Encoded:
    """Both row layouts with new values (n,) for the same ratings, in input order (needs the
    layouts' ``slots``: `encode(..., with_slots=True)`)."""

    def write(tiles):
        vals = jnp.zeros(tiles.vals.size, values.dtype).at[tiles.slots].set(values).reshape(tiles.vals.shape)
        return dataclasses.replace(tiles, vals=vals)

    return Encoded(write(data.by_user), write(data.by_item))


class GibbsInfo(NamedTuple):
    """Per-sweep diagnostics: the drawn tau and the training RMSE of the drawn parameters."""

    tau: jax.Array
    train_rmse: jax.Array


class GibbsResult(NamedTuple):
    """``posterior``: the kept draws (None with ``keep_draws=False``); ``trace``: per sweep
    (num_warmup + num_samples * thin,); ``summary``: running predictive moments at the pairs
    given at fit time (None without them); ``num_factors``: the rank k (for a summary only)."""

    posterior: Posterior | None
    trace: GibbsInfo
    summary: PredictiveSummary | None = None
    num_factors: int = 0

    num_chains = 1

    @property
    def rank(self) -> int:
        return self.posterior.rank if self.posterior is not None else self.num_factors

    @property
    def num_samples(self) -> int:
        return int((self.posterior if self.posterior is not None else self.summary).num_samples)

    def predict(self, users, items):
        return self.predictive(users, items)[0]

    def predictive(self, users, items):
        if self.posterior is not None:
            return self.posterior.predictive(users, items)
        return self.summary.predictive(users, items)


# The named tuples a saved model of this fitter may hold (`probmf.persistence` rebuilds only these).
SAVED_TYPES = (GibbsResult, GibbsInfo)


def sample_normal_wishart(
    rng_key, X: jax.Array, beta0: float, nu0: float, impl: str = "lapack", extra: tuple | None = None
):
    """(mu, Lam) ~ p(mu, Lam | X) under the Normal-Wishart(0, beta0, I, nu0) prior on the
    mean and precision of the rows of X (n, k) (BPMF eq. 14). ``extra = (S, m)``: m more
    zero-mean vectors y_j ~ N(0, (c Lam)^-1) with c sum_j y_j y_j^T = S, which inform Lam
    only (W*^-1 gains S, nu* gains m); None: none.

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
    if extra is not None:
        w_inv, nu = w_inv + extra[0], nu + extra[1]
    C = cholesky(w_inv, impl)
    chi2 = 2.0 * jax.random.gamma(key_diag, (nu - jnp.arange(k)) / 2.0)
    A = jnp.tril(jax.random.normal(key_low, (k, k)), -1) + jnp.diag(jnp.sqrt(chi2))
    BA = solve_lower(jnp.broadcast_to(C, (k, k, k)), A.T, transpose=True, impl=impl).T  # C^-T A, column by column
    lam = BA @ BA.T
    z = jax.random.normal(key_mu, (k,))
    mu = mu_star + C @ solve_lower(A, z, transpose=True, impl=impl) / jnp.sqrt(beta)
    return mu, lam


def _sample_gamma(rng_key, shape, rate):
    return jax.random.gamma(rng_key, shape) / rate


def _sample_rows(rng_key, X, xb, Y, yb, mu, tiles, tau, prior_prec, prior_mean, impl):
    """Draw every row [x_i; xb_i] of one side from its Gaussian conditional; also return
    the SSE of this side's ratings at the drawn rows. ``prior_mean``: (k+1,) shared by every
    row, or (N, k+1) one per row (implicit feedback)."""
    n, k1 = X.shape[0], X.shape[1] + 1
    prior_rhs = jnp.broadcast_to(prior_mean @ prior_prec, (n, k1))  # P m_i (P symmetric)
    noise = jax.random.normal(rng_key, (n, k1))  # z_i, row by row

    def solve_block(block, G, h, s, x0, per_row):
        z, rhs = per_row
        L = cholesky(tau * G + prior_prec, impl)
        y = solve_lower(L, tau * h + rhs, impl=impl)
        x = solve_lower(L, y + z, transpose=True, impl=impl)  # L^T x = L^-1 r + z
        return x, residual_sum_of_squares(x, G, h, s)

    return update_rows(X, xb, Y, yb, mu, tiles, (noise, prior_rhs), solve_block)


def _block_prior(lam_factor, mu_factor, lam_bias):
    k = mu_factor.shape[0]
    P = jnp.zeros((k + 1, k + 1)).at[:k, :k].set(lam_factor).at[k, k].set(lam_bias)
    return P, jnp.concatenate([mu_factor, jnp.zeros((1,))])


# ---- implicit feedback -----------------------------------------------------------------------


class ImplicitOperator(NamedTuple):
    """F (N, C) with F_ij = |N(i)|^-1/2 for the columns j in row i's training set N(i), as
    its nonzeros (rows, cols, weights (n,)), and the eigendecomposition F^T F = V diag(D) V^T
    (V (C, C), D (C,)) that makes the implicit draw exact for any c."""

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


def implicit_operator(rows: np.ndarray, cols: np.ndarray, num_rows: int, num_cols: int) -> ImplicitOperator:
    """The `ImplicitOperator` of the training pairs (rows[t], cols[t]) (one per rating)."""
    if num_cols > MAX_IMPLICIT_COLUMNS:
        raise ValueError(
            f"implicit feedback draws exactly through a {num_cols} x {num_cols} eigendecomposition; "
            f"it supports at most {MAX_IMPLICIT_COLUMNS} users and items"
        )
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


def sample_implicit(rng_key, T, P, c, op: ImplicitOperator, impl: str = "lapack") -> jax.Array:
    """Y ~ p(Y | T) when the rows of T (N, d) are N(F_i Y, P^-1) and those of Y (C, d) are
    N(0, (c P)^-1): matrix normal with row covariance (F^T F + c I)^-1 and column covariance
    P^-1, drawn by perturbation, Y = (F^T F + c I)^-1 (F^T (T + E1) + sqrt(c) E2) with the
    rows of E1, E2 ~ N(0, P^-1) (its mean is the posterior mean and its covariance
    (F^T F + c I)^-1 (F^T F + c I)(F^T F + c I)^-1 (x) P^-1); the inverse runs through F^T F's
    eigenvectors, so the draw is exact."""
    key_1, key_2 = jax.random.split(rng_key)
    d = P.shape[0]
    L = cholesky(P, impl)
    L_inv_t = solve_lower(jnp.broadcast_to(L, (d, d, d)), jnp.eye(d), transpose=True, impl=impl).T  # L^-T
    e1 = jax.random.normal(key_1, T.shape) @ L_inv_t.T  # rows L^-T z ~ N(0, P^-1)
    e2 = jax.random.normal(key_2, (op.vals.shape[0], d)) @ L_inv_t.T
    rhs = op.apply_t(T + e1) + jnp.sqrt(c) * e2
    hi = lax.Precision.HIGHEST
    return jnp.matmul(op.vecs, jnp.matmul(op.vecs.T, rhs, precision=hi) / (op.vals + c)[:, None], precision=hi)


def _side_prior(keys, X, xb, side: ImplicitSide | None, op: ImplicitOperator | None, hyper: Hyperpriors, impl):
    """Draw one side's hyper-parameters (and implicit vectors) given its rows [X, xb] (N, k+1).

    Without implicit feedback: (mu, Lam) Normal-Wishart and lam_b Gamma, as in BPMF. With it,
    row i's prior mean is m + F_i Y (m = [mu; 0]) and Y's rows are N(0, (c P)^-1), P =
    blockdiag(Lam, lam_b): in turn (mu, Lam) | rows - F Y, Y; lam_b likewise; Y | rows, m,
    P, c (`sample_implicit`); c | Y, P (Gamma). ``keys``: (Normal-Wishart, lam_b, implicit).
    Returns (mu, Lam, lam_b, the rows' prior means (k+1,) or (N, k+1), new side).
    """
    key_nw, key_bias, key_implicit = keys
    n, k = X.shape
    nu0 = k + hyper.nu0_extra
    if side is None:
        mu, lam = sample_normal_wishart(key_nw, X, hyper.beta0, nu0, impl)
        lam_b = _sample_gamma(key_bias, hyper.a_bias + n / 2.0, hyper.b_bias + 0.5 * jnp.sum(xb * xb))
        return mu, lam, lam_b, _block_prior(lam, mu, lam_b)[1], None
    key_c, key_y = jax.random.split(key_implicit)
    T = jnp.concatenate([X, xb[:, None]], axis=1)
    num_cols = side.Y.shape[0]
    R = T - op.apply(side.Y, n)
    S = side.c * (side.Y.T @ side.Y)
    mu, lam = sample_normal_wishart(key_nw, R[:, :k], hyper.beta0, nu0, impl, extra=(S[:k, :k], num_cols))
    lam_b = _sample_gamma(
        key_bias, hyper.a_bias + (n + num_cols) / 2.0, hyper.b_bias + 0.5 * (jnp.sum(R[:, k] ** 2) + S[k, k])
    )
    P, m = _block_prior(lam, mu, lam_b)
    # Y before c: from the start Y = 0, c | Y would be ~C(k+1)/2 and shrink Y so hard that c
    # took some 500 sweeps to come down to its posterior (ML-100K).
    Y = sample_implicit(key_y, T - m, P, side.c, op, impl)
    quad = jnp.sum((Y @ P) * Y)
    c = _sample_gamma(key_c, hyper.a_implicit + num_cols * (k + 1) / 2.0, hyper.b_implicit + 0.5 * quad)
    return mu, lam, lam_b, m + op.apply(Y, n), ImplicitSide(Y, c)


def gibbs_sweep(
    rng_key, state: GibbsState, data: Encoded, hyper: Hyperpriors, impl: str = "lapack", latent: Latent | None = None,
    ops: tuple | None = None,
) -> tuple[GibbsState, GibbsInfo]:  # fmt: skip
    """One full sweep of the blocked Gibbs sampler (see the module docstring); ``impl``:
    "lapack" or "jax" linear algebra (`probmf.linalg`); ``latent``: the rounded likelihood's
    intervals (None: Gaussian likelihood); ``ops``: the (users', items') `ImplicitOperator`
    with implicit feedback (``state.implicit`` set), else None."""
    keys = jax.random.split(rng_key, 8)
    if latent is not None:
        data = _sample_latent(keys[7], state.params, state.tau, latent, data)
    W, U, b, c, mu = state.params
    side_w, side_u = state.implicit or (None, None)
    op_w, op_u = ops or (None, None)
    mu_w, lam_w, lam_b, mean_w, side_w = _side_prior(
        (keys[0], keys[2], jax.random.fold_in(rng_key, 1)), W, b, side_w, op_w, hyper, impl
    )
    mu_u, lam_u, lam_c, mean_u, side_u = _side_prior(
        (keys[1], keys[3], jax.random.fold_in(rng_key, 2)), U, c, side_u, op_u, hyper, impl
    )
    W, b, _ = _sample_rows(keys[4], W, b, U, c, mu, data.by_user, state.tau, _block_prior(lam_w, mu_w, lam_b)[0],
                           mean_w, impl)  # fmt: skip
    U, c, sse = _sample_rows(keys[5], U, c, W, b, mu, data.by_item, state.tau, _block_prior(lam_u, mu_u, lam_c)[0],
                             mean_u, impl)  # fmt: skip
    n = jnp.sum(data.by_user.counts)
    tau = _sample_gamma(keys[6], hyper.a_tau + n / 2.0, hyper.b_tau + 0.5 * sse)
    implicit = None if ops is None else (side_w, side_u)
    state = GibbsState(MFParams(W, U, b, c, mu), tau, mu_w, lam_w, mu_u, lam_u, lam_b, lam_c, implicit)
    return state, GibbsInfo(tau=tau, train_rmse=jnp.sqrt(sse / n))


def row_priors(state: GibbsState, impl: str = "lapack") -> tuple[RowPrior, RowPrior]:
    """The cold-row priors of a state: users' N(mu_w, Lam_w^-1) and N(0, 1/lam_b), items'
    N(mu_u, Lam_u^-1) and N(0, 1/lam_c).

    With implicit feedback a row with no training rating still has ratings, just none we saw:
    its implicit term |N(i)|^-1/2 sum_{j in N(i)} y_j, over an unseen N(i), is integrated out
    under Y's prior N(0, (c P)^-1), which adds P^-1 / c to the row's prior covariance (for
    any |N(i)| >= 1, by the normalisation). Without it the cold prior is that of the residual
    w_i alone, which the implicit term has made too narrow (ML-100K cold pairs' 90% coverage
    0.83)."""
    side_w, side_u = state.implicit or (None, None)

    def prior(mu, lam, lam_b, side):
        scale = 1.0 if side is None else 1.0 + 1.0 / side.c
        return RowPrior(mu, scale * _spd_inverse(lam, impl), scale / lam_b)

    return prior(state.mu_w, state.lam_w, state.lam_b, side_w), prior(state.mu_u, state.lam_u, state.lam_c, side_u)


def _spd_inverse(A: jax.Array, impl: str) -> jax.Array:
    """A^-1 = L^-T L^-1 for SPD A (k, k) = L L^T."""
    k = A.shape[0]
    X = solve_lower(jnp.broadcast_to(cholesky(A, impl), (k, k, k)), jnp.eye(k), impl=impl)  # rows L^-1 e_j: L^-T
    return X @ X.T


class GibbsChain(NamedTuple):
    """Everything a run carries between sweeps (and saves in a checkpoint): the sampler's
    state, the kept draws so far (slot d holds kept draw d), the predictive moments at the
    summary pairs, and the per-sweep trace."""

    state: GibbsState
    draws: Posterior | None  # (num_samples, ...) leaves
    moments: tuple | None  # (count, mean (P,), m2 (P,), noise) as in `probmf.posterior.moments_update`
    trace: GibbsInfo  # (total sweeps,)


def init_chain(state: GibbsState, total: int, num_samples: int, keep_draws: bool, num_pairs: int | None) -> GibbsChain:
    """An empty `GibbsChain` for ``total`` sweeps keeping ``num_samples`` draws."""
    draws = None
    if keep_draws:
        like = Posterior(state.params, state.tau, priors=row_priors(state))
        draws = jax.tree.map(lambda a: jnp.zeros((num_samples,) + a.shape, a.dtype), like)
    moments = None if num_pairs is None else moments_init(num_pairs)
    nan = jnp.full((total,), jnp.nan, jnp.float32)
    return GibbsChain(state, draws, moments, GibbsInfo(nan, nan))


@functools.partial(jax.jit, static_argnames=("num", "num_warmup", "thin", "impl"))
def gibbs_chunk(
    rng_key, chain: GibbsChain, data: Encoded, hyper: Hyperpriors, pairs, first, latent=None, levels=None, ops=None,
    seen=None, *, num, num_warmup, thin, impl="lapack",
) -> GibbsChain:  # fmt: skip
    """Sweeps first, ..., first + num - 1 of a run that burns in ``num_warmup`` sweeps and
    then keeps every ``thin``-th; sweep s draws with ``fold_in(rng_key, s)``. ``pairs``:
    (users (P,), items (P,)) of the summary, or None; ``latent``, ``levels``: the rounded
    likelihood's `Latent` and rating levels (None: Gaussian); ``seen``: (users (N,), items
    (M,)) bool rows with training ratings (the others are cold in the summary)."""

    def sweep(chain: GibbsChain, s):
        state, info = gibbs_sweep(jax.random.fold_in(rng_key, s), chain.state, data, hyper, impl, latent, ops)
        after = s - num_warmup
        kept = (after >= 0) & ((after + 1) % thin == 0)
        draws, moments = chain.draws, chain.moments
        priors = row_priors(state, impl) if draws is not None or moments is not None else None
        if draws is not None:
            # Sweeps between kept draws write the slot of the next kept draw, which overwrites them.
            slot = jnp.clip(after // thin, 0, draws.tau.shape[0] - 1)
            draw = Posterior(state.params, state.tau, priors=priors)
            draws = jax.tree.map(lambda d, x: lax.dynamic_update_index_in_dim(d, x, slot, 0), draws, draw)
        if moments is not None:
            pred, var = draw_predictive(state.params, state.tau, *pairs, priors, seen, levels)
            moments = moments_update(moments, pred, var, kept.astype(jnp.float32))
        trace = jax.tree.map(lambda t, v: t.at[s].set(v), chain.trace, info)
        return GibbsChain(state, draws, moments, trace), None

    return lax.scan(sweep, chain, first + jnp.arange(num))[0]


def init_state(params: MFParams, tau, implicit: bool = False) -> GibbsState:
    """Start from a point estimate (e.g. ALS's MAP) with unit hyper-precisions (and, with
    ``implicit``, zero implicit vectors with c = 1)."""
    n, k = params.W.shape
    m = params.U.shape[0]
    one = jnp.float32(1.0)
    sides = (ImplicitSide(jnp.zeros((m, k + 1)), one), ImplicitSide(jnp.zeros((n, k + 1)), one)) if implicit else None
    return GibbsState(params, jnp.float32(tau), jnp.zeros(k), jnp.eye(k), jnp.zeros(k), jnp.eye(k), one, one, sides)


def fit_gibbs(
    rng_key,
    train: Ratings,
    *,
    rank: int = 10,
    num_warmup: int | None = None,
    num_samples: int | None = None,
    thin: int = 1,
    init_sweeps: int = 10,
    likelihood: str = "gaussian",
    implicit: bool = False,
    keep_draws: bool = True,
    predict_pairs: tuple | None = None,
    linalg: str = "lapack",
    devices: int = 1,
    checkpoint: str | None = None,
    checkpoint_every: int = 50,
) -> GibbsResult:
    """Sample the posterior of the biased MF model by blocked Gibbs (BPMF).

    The chain starts from ALS's MAP estimate (``init_sweeps`` sweeps, defaults otherwise)
    and its residual precision, burns in ``num_warmup`` sweeps and keeps ``num_samples``
    draws, one every ``thin`` sweeps (None: 50 and 200, or 200 and 800 with ``implicit``, whose
    predictions mix more slowly).

    Args:
      likelihood: "gaussian", or "rounded" (ratings are rounded latent Gaussians; see the
        module docstring).
      implicit: implicit feedback in both directions (SVD++-like; see the module docstring):
        which items each user rated, and which users rated each item, in ``train``. Needs
        at most `MAX_IMPLICIT_COLUMNS` users and items.
      keep_draws: store every kept draw (S x (N + M)(k + 1) floats); False keeps only the
        running predictive moments at ``predict_pairs``, for data whose draws would not fit.
      predict_pairs: (users (P,), items (P,)) dense ids (-1 unknown) whose predictive mean
        and variance are accumulated during sampling (`PredictiveSummary`).
      linalg: "lapack" or "jax" (no LAPACK calls; `probmf.linalg`).
      devices: split the rows of each half-sweep across this many devices (`probmf.sharding`).
      checkpoint: folder to save the chain in every ``checkpoint_every`` sweeps and resume
        from (`probmf.checkpoint`); None: no checkpoints.
    Returns:
      `GibbsResult(posterior, trace, summary, num_factors)`; ``predict``/``predictive``
      average over the draws (or read the summary).
    """
    if num_warmup is None:
        num_warmup = 200 if implicit else 50
    if num_samples is None:
        num_samples = 800 if implicit else 200
    for name, v, low in (("rank", rank, 1), ("num_samples", num_samples, 1), ("thin", thin, 1),
                         ("num_warmup", num_warmup, 0), ("init_sweeps", init_sweeps, 1),
                         ("checkpoint_every", checkpoint_every, 1)):  # fmt: skip
        if int(v) != v or v < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
    if likelihood == "rounded" and devices != 1:
        raise ValueError("the rounded likelihood runs on one device (devices=1)")
    if linalg not in IMPLS:
        raise ValueError(f"linalg must be one of {IMPLS}, got {linalg!r}")
    if not keep_draws and predict_pairs is None:
        raise ValueError("keep_draws=False needs predict_pairs: there would be nothing to predict from")
    if not isinstance(implicit, bool):
        raise ValueError(f"implicit must be True or False, got {implicit!r}")
    pairs = None if predict_pairs is None else tuple(jnp.asarray(a, jnp.int32) for a in predict_pairs)
    mesh = device_mesh(check_devices(devices))
    # Host-side set-up, before anything compiles: refuses sides too large for the exact draw.
    ops = implicit_operators(train) if implicit else None
    key_init, key_run = jax.random.split(rng_key)
    # linalg="jax" is the no-LAPACK path: the ALS start then uses CG too.
    solver = "cg" if linalg == "jax" else "auto"
    init = fit_als(key_init, train, rank=rank, num_sweeps=init_sweeps, solver=solver, devices=devices)
    # The rounded likelihood writes each sweep's latent ratings through the tiles' slots.
    data = encode(train, layout_for_rank(rank), mesh=mesh, with_slots=likelihood == "rounded")
    latent = levels = None
    if likelihood == "rounded":
        levels, lower, upper = (jnp.asarray(a) for a in rounding_intervals(train.values))
        latent = Latent(jnp.asarray(train.users), jnp.asarray(train.items), lower, upper)
    mse = 2.0 * float(init.trace[-1]) / len(train)  # >= the MAP training MSE
    total = num_warmup + num_samples * thin
    chain = init_chain(
        init_state(init.params, 1.0 / max(mse, 1e-6), implicit), total, num_samples, keep_draws,
        None if pairs is None else pairs[0].shape[0],
    )  # fmt: skip
    options = {"rank": rank, "num_warmup": num_warmup, "num_samples": num_samples, "thin": thin,
               "init_sweeps": init_sweeps, "likelihood": likelihood, "implicit": implicit, "keep_draws": keep_draws,
               "linalg": linalg, "devices": devices}  # fmt: skip
    ckpt = fit_checkpoint(checkpoint, checkpoint_every, "gibbs", rng_key, train, options, *(pairs or ()))

    seen = seen_rows(train.users, train.items, train.num_users, train.num_items)

    def run_chunk(chain, first, num):
        return gibbs_chunk(key_run, chain, data, Hyperpriors(), pairs, first, latent, levels, ops, seen, num=num,
                           num_warmup=num_warmup, thin=thin, impl=linalg)  # fmt: skip

    chain = run_steps(run_chunk, chain, total, ckpt, desc="Gibbs sweeps")
    summary = None if pairs is None else PredictiveSummary(*pairs, *chain.moments)
    draws = None if chain.draws is None else chain.draws._replace(levels=levels, seen=seen)
    return GibbsResult(draws, jax.tree.map(np.asarray, chain.trace), summary, int(rank))
