"""The conjugate kernel of the Gibbs sampler: its state and one sweep of blocked draws.

One sweep draws, in turn, every block of the joint conditional:
  (mu_w, Lam_w) | W and (mu_u, Lam_u) | U           Normal-Wishart (conjugate),
  lam_b | b and lam_c | c                            Gamma,
  x_i = [w_i; b_i] | U, c, tau, hyper for all users  N(A_i^-1 r_i, A_i^-1),
  x_j = [u_j; c_j] | W, b, tau, hyper for all items  likewise,
  tau | everything                                   Gamma(a_tau + n/2, b_tau + SSE/2),
with A_i = tau G_i + P, r_i = tau h_i + P m, P = blockdiag(Lam_w, lam_b) and m = [mu_w; 0]
(G_i, h_i from `probmf.fitters.rows`, as in ALS). A row draw is x = L^-T (L^-1 r + z),
z ~ N(0, I), with A = L L^T: one batched Cholesky and two triangular solves per block.
Row i's noise z_i is row i of one (N, k+1) normal draw, so a sweep is the same whatever
the blocks or the number of devices (rows split as in ALS).

With implicit feedback (`probmf.fitters.gibbs.implicit`) or side information
(`probmf.fitters.gibbs.features`) each side's hyper-parameter block also draws its implicit
or attribute vectors and the rows' prior means change; with the rounded likelihood
(`probmf.fitters.gibbs.rounded`) a sweep first draws the latent ratings. With time effects
(`probmf.fitters.gibbs.temporal`) a sweep then draws them, given the (latent) ratings and the
rows, and the blocks above see the ratings minus the time terms.
"""

from __future__ import annotations

import functools
import operator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from probmf.encoding import Encoded, RowTiles
from probmf.fitters.gibbs.features import FeatureSide
from probmf.fitters.gibbs.implicit import ImplicitOperator, ImplicitSide, sample_implicit
from probmf.fitters.gibbs.rounded import Latent, _sample_latent, latent_values, with_values
from probmf.fitters.gibbs.temporal import TimeData, TimeState, init_time, offsets, sample_time
from probmf.fitters.rows import residual_sum_of_squares, update_rows
from probmf.linalg import cholesky, gaussian_draw, solve_lower
from probmf.model import MFParams, predict_with_fallback
from probmf.objectives import Hyperpriors
from probmf.posterior import RowPrior


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
    features: tuple | None = None  # (users', items') `FeatureSide` (or None) with side information, else None
    time: TimeState | None = None  # the time effects with ``time=True``, else None


class GibbsInfo(NamedTuple):
    """Per-sweep diagnostics: the drawn tau and the training RMSE of the drawn parameters."""

    tau: jax.Array
    train_rmse: jax.Array


def sample_normal_wishart(
    rng_key: jax.Array, X: jax.Array, beta0: float, nu0: float, linalg: str = "lapack", extra: tuple | None = None
) -> tuple[jax.Array, jax.Array]:
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
    C = cholesky(w_inv, linalg)
    chi2 = 2.0 * jax.random.gamma(key_diag, (nu - jnp.arange(k)) / 2.0)
    A = jnp.tril(jax.random.normal(key_low, (k, k)), -1) + jnp.diag(jnp.sqrt(chi2))
    BA = solve_lower(jnp.broadcast_to(C, (k, k, k)), A.T, transpose=True, linalg=linalg).T  # C^-T A, column by column
    lam = BA @ BA.T
    z = jax.random.normal(key_mu, (k,))
    mu = mu_star + C @ solve_lower(A, z, transpose=True, linalg=linalg) / jnp.sqrt(beta)
    return mu, lam


def _sample_gamma(rng_key: jax.Array, shape: ArrayLike, rate: ArrayLike) -> jax.Array:
    return jax.random.gamma(rng_key, shape) / rate


def _sample_rows(
    rng_key: jax.Array,
    X: jax.Array,
    xb: jax.Array,
    Y: jax.Array,
    yb: jax.Array,
    mu: jax.Array,
    tiles: RowTiles,
    tau: jax.Array,
    prior_prec: jax.Array,
    prior_mean: jax.Array,
    linalg: str,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Draw every row [x_i; xb_i] of one side from its Gaussian conditional; also return
    the SSE of this side's ratings at the drawn rows. ``prior_mean``: (k+1,) shared by every
    row, or (N, k+1) one per row (implicit feedback)."""
    n, k1 = X.shape[0], X.shape[1] + 1
    prior_rhs = jnp.broadcast_to(prior_mean @ prior_prec, (n, k1))  # P m_i (P symmetric)
    noise = jax.random.normal(rng_key, (n, k1))  # z_i, row by row

    def solve_block(
        block: jax.Array, G: jax.Array, h: jax.Array, s: jax.Array, x0: jax.Array, per_row: tuple[jax.Array, jax.Array]
    ) -> tuple[jax.Array, jax.Array]:
        z, rhs = per_row
        x = gaussian_draw(tau * G + prior_prec, tau * h + rhs, z, linalg)
        return x, residual_sum_of_squares(x, G, h, s)

    return update_rows(X, xb, Y, yb, mu, tiles, (noise, prior_rhs), solve_block)


def _block_prior(lam_factor: jax.Array, mu_factor: jax.Array, lam_bias: jax.Array) -> tuple[jax.Array, jax.Array]:
    k = mu_factor.shape[0]
    P = jnp.zeros((k + 1, k + 1)).at[:k, :k].set(lam_factor).at[k, k].set(lam_bias)
    return P, jnp.concatenate([mu_factor, jnp.zeros((1,))])


class _Term(NamedTuple):
    """One linear term F Z of a side's prior means: its key, operator F, parameters (Z, c) (an
    `ImplicitSide` or `FeatureSide`) and the Gamma(shape, rate) hyper-prior of c."""

    key: jax.Array
    op: ImplicitOperator
    side: tuple | None
    shape: float
    rate: float


def _side_prior(keys: Any, X: jax.Array, xb: jax.Array, terms: tuple, hyperpriors: Hyperpriors, linalg: str) -> tuple:
    """Draw one side's hyper-parameters (and the vectors of its linear terms) given its rows
    [X, xb] (N, k+1).

    Without terms: (mu, Lam) Normal-Wishart and lam_b Gamma, as in BPMF. With them (implicit
    feedback F Y, side information X A; `_Term`), row i's prior mean is m + sum_t F_t,i Z_t (m =
    [mu; 0]) and each Z_t's rows are N(0, (c_t P)^-1), P = blockdiag(Lam, lam_b): in turn
    (mu, Lam) | rows - sum_t F_t Z_t, Z (c_t Z_t^T Z_t join W*^-1, C_t more degrees of freedom);
    lam_b likewise; then for each term Z_t | rows - m - the other terms, P, c_t
    (`sample_implicit`) and c_t | Z_t, P (Gamma). ``keys``: (Normal-Wishart, lam_b).
    Returns (mu, Lam, lam_b, the rows' prior means (k+1,) or (N, k+1), the terms' new sides).
    """
    key_nw, key_bias = keys
    n, k = X.shape
    nu0 = k + hyperpriors.nu0_extra
    if not terms:
        mu, lam = sample_normal_wishart(key_nw, X, hyperpriors.beta0, nu0, linalg)
        lam_b = _sample_gamma(key_bias, hyperpriors.a_bias + n / 2.0, hyperpriors.b_bias + 0.5 * jnp.sum(xb * xb))
        return mu, lam, lam_b, _block_prior(lam, mu, lam_b)[1], ()
    T = jnp.concatenate([X, xb[:, None]], axis=1)
    offsets = [t.op.apply(t.side[0], n) for t in terms]
    num_cols = sum(t.side[0].shape[0] for t in terms)
    R = T - functools.reduce(operator.add, offsets)
    S = functools.reduce(operator.add, [t.side[1] * (t.side[0].T @ t.side[0]) for t in terms])
    mu, lam = sample_normal_wishart(key_nw, R[:, :k], hyperpriors.beta0, nu0, linalg, extra=(S[:k, :k], num_cols))
    h = hyperpriors
    lam_b = _sample_gamma(key_bias, h.a_bias + (n + num_cols) / 2.0, h.b_bias + 0.5 * (jnp.sum(R[:, k] ** 2) + S[k, k]))
    P, m = _block_prior(lam, mu, lam_b)
    sides = []
    for t, term in enumerate(terms):
        key_c, key_z = jax.random.split(term.key)
        resid = T - m
        for o, offset in enumerate(offsets):  # the other terms at their latest draws
            if o != t:
                resid = resid - offset
        # Z before c: from the start Z = 0, c | Z would be ~C(k+1)/2 and shrink Z so hard that c
        # took some 500 sweeps to come down to its posterior (implicit feedback, ML-100K).
        Z = sample_implicit(key_z, resid, P, term.side[1], term.op, linalg, x0=term.side[0])  # CG warm start
        quad = jnp.sum((Z @ P) * Z)
        c = _sample_gamma(key_c, term.shape + Z.shape[0] * (k + 1) / 2.0, term.rate + 0.5 * quad)
        offsets[t] = term.op.apply(Z, n)
        sides.append(type(term.side)(Z, c))
    return mu, lam, lam_b, m + functools.reduce(operator.add, offsets), tuple(sides)


def _terms(
    rng_key: jax.Array,
    index: int,
    implicit: ImplicitSide | None,
    implicit_op: ImplicitOperator | None,
    features: FeatureSide | None,
    feature_op: ImplicitOperator | None,
    hyperpriors: Hyperpriors,
) -> tuple:
    """One side's `_Term`s: implicit feedback's (key fold_in(rng_key, 1 + index)), then side
    information's (fold_in(rng_key, 3 + index)), each where its operator is given."""
    h = hyperpriors
    terms = []
    if implicit_op is not None:
        terms.append(_Term(jax.random.fold_in(rng_key, 1 + index), implicit_op, implicit, h.a_implicit, h.b_implicit))
    if feature_op is not None:
        terms.append(_Term(jax.random.fold_in(rng_key, 3 + index), feature_op, features, h.a_features, h.b_features))
    return tuple(terms)


def gibbs_sweep(
    rng_key: jax.Array, state: GibbsState, data: Encoded, hyperpriors: Hyperpriors, linalg: str = "lapack",
    latent: Latent | None = None, ops: tuple | None = None, feature_ops: tuple | None = None,
    time_data: TimeData | None = None,
) -> tuple[GibbsState, GibbsInfo]:  # fmt: skip
    """One full sweep of the blocked Gibbs sampler (see the module docstring); ``linalg``:
    "lapack" or "jax" linear algebra (`probmf.linalg`); ``latent``: the rounded likelihood's
    intervals (None: Gaussian likelihood); ``ops``: the (users', items') `ImplicitOperator`
    with implicit feedback (``state.implicit`` set), else None; ``feature_ops``: the
    (users', items') attribute operators (`probmf.fitters.gibbs.features`; None for a side
    without) with side information (``state.features`` set), else None; ``time_data``: the
    ratings' bins and devs with time effects (``state.time`` set; ``data`` then needs its
    tiles' slots), else None.

    Order: the latent ratings y | everything (at the current time terms); the time effects |
    y and the rows; then the blocks below on y minus the new time terms. Each block is drawn
    at the latest values of the others, so this is a Gibbs sweep of the joint model."""
    keys = jax.random.split(rng_key, 8)
    time = state.time
    if time_data is not None:
        assert time is not None, "time data comes with the time effects' state"
        if latent is not None:
            y = latent_values(keys[7], state.params, state.tau, latent, offsets(time, time_data))
        else:
            y = time_data.values
        base = y - predict_with_fallback(state.params, time_data.users, time_data.items)
        # fold_in(rng_key, 5): keys 1..4 are the implicit and attribute terms' (`_terms`).
        time = sample_time(jax.random.fold_in(rng_key, 5), time, base, time_data, state.tau, hyperpriors)
        data = with_values(data, y - offsets(time, time_data))
    elif latent is not None:
        data = _sample_latent(keys[7], state.params, state.tau, latent, data)
    W, U, b, c, mu = state.params
    side_w, side_u = state.implicit or (None, None)
    op_w, op_u = ops or (None, None)
    feat_w, feat_u = state.features or (None, None)
    fop_w, fop_u = feature_ops or (None, None)
    terms_w = _terms(rng_key, 0, side_w, op_w, feat_w, fop_w, hyperpriors)
    terms_u = _terms(rng_key, 1, side_u, op_u, feat_u, fop_u, hyperpriors)
    mu_w, lam_w, lam_b, mean_w, new_w = _side_prior((keys[0], keys[2]), W, b, terms_w, hyperpriors, linalg)
    mu_u, lam_u, lam_c, mean_u, new_u = _side_prior((keys[1], keys[3]), U, c, terms_u, hyperpriors, linalg)
    # A side's new terms come back in `_terms`' order: implicit first, then attributes.
    new_w, new_u = iter(new_w), iter(new_u)
    side_w, feat_w = (next(new_w) if op_w is not None else None), (next(new_w) if fop_w is not None else None)
    side_u, feat_u = (next(new_u) if op_u is not None else None), (next(new_u) if fop_u is not None else None)
    W, b, _ = _sample_rows(keys[4], W, b, U, c, mu, data.by_user, state.tau, _block_prior(lam_w, mu_w, lam_b)[0],
                           mean_w, linalg)  # fmt: skip
    U, c, sse = _sample_rows(keys[5], U, c, W, b, mu, data.by_item, state.tau, _block_prior(lam_u, mu_u, lam_c)[0],
                             mean_u, linalg)  # fmt: skip
    n = jnp.sum(data.by_user.counts)
    tau = _sample_gamma(keys[6], hyperpriors.a_tau + n / 2.0, hyperpriors.b_tau + 0.5 * sse)
    implicit = None if ops is None else (side_w, side_u)
    features = None if feature_ops is None else (feat_w, feat_u)
    state = GibbsState(MFParams(W, U, b, c, mu), tau, mu_w, lam_w, mu_u, lam_u, lam_b, lam_c, implicit, features,
                       time)  # fmt: skip
    return state, GibbsInfo(tau=tau, train_rmse=jnp.sqrt(sse / n))


def row_priors(state: GibbsState, linalg: str = "lapack") -> tuple[RowPrior, RowPrior]:
    """The cold-row priors of a state: users' N(mu_w, Lam_w^-1) and N(0, 1/lam_b), items'
    N(mu_u, Lam_u^-1) and N(0, 1/lam_c).

    With implicit feedback a row with no training rating still has ratings, just none we saw:
    its implicit term |N(i)|^-1/2 sum_{j in N(i)} y_j, over an unseen N(i), is integrated out
    under Y's prior N(0, (c P)^-1), which adds P^-1 / c to the row's prior covariance (for
    any |N(i)| >= 1, by the normalisation). Without it the cold prior is that of the residual
    w_i alone, which the implicit term has made too narrow (ML-100K cold pairs' 90% coverage
    0.83).

    With side information a cold row's attributes are known: its prior mean is m + X_i A, so
    each `RowPrior` also carries the draw's A (``attributes``), which
    `probmf.posterior.draw_predictive` applies to the row's X (`Posterior.features`)."""
    side_w, side_u = state.implicit or (None, None)
    feat_w, feat_u = state.features or (None, None)

    def prior(
        mu: jax.Array, lam: jax.Array, lam_b: jax.Array, side: ImplicitSide | None, feat: FeatureSide | None
    ) -> RowPrior:
        scale = 1.0 if side is None else 1.0 + 1.0 / side.c
        return RowPrior(mu, scale * _spd_inverse(lam, linalg), scale / lam_b, None if feat is None else feat.A)

    return (prior(state.mu_w, state.lam_w, state.lam_b, side_w, feat_w),
            prior(state.mu_u, state.lam_u, state.lam_c, side_u, feat_u))  # fmt: skip


def _spd_inverse(A: jax.Array, linalg: str) -> jax.Array:
    """A^-1 = L^-T L^-1 for SPD A (k, k) = L L^T."""
    k = A.shape[0]
    X = solve_lower(jnp.broadcast_to(cholesky(A, linalg), (k, k, k)), jnp.eye(k), linalg=linalg)  # rows L^-1 e_j: L^-T
    return X @ X.T


def init_state(
    params: MFParams,
    tau: ArrayLike,
    implicit: bool = False,
    features: tuple | None = None,
    time_bins: int | None = None,
) -> GibbsState:
    """Start from a point estimate (e.g. ALS's MAP) with unit hyper-precisions (and, with
    ``implicit``, zero implicit vectors with c = 1). ``features``: (users', items') number
    of attributes G (None for a side without) with side information, whose vectors start
    at zero with c_A = 1; None: none. ``time_bins``: the number of time bins with time
    effects (zero effects, unit precisions; `probmf.fitters.gibbs.temporal.init_time`), None: none."""
    n, k = params.W.shape
    m = params.U.shape[0]
    one = jnp.float32(1.0)
    sides = (ImplicitSide(jnp.zeros((m, k + 1)), one), ImplicitSide(jnp.zeros((n, k + 1)), one)) if implicit else None
    if features is not None:
        features = tuple(None if g is None else FeatureSide(jnp.zeros((g, k + 1)), one) for g in features)
    time = None if time_bins is None else init_time(n, m, time_bins)
    return GibbsState(params, jnp.float32(tau), jnp.zeros(k), jnp.eye(k), jnp.zeros(k), jnp.eye(k), one, one, sides,
                      features, time)  # fmt: skip
