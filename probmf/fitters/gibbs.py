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
running moments of the predictive (`PredictiveSummary`), which never stores a draw.

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
from jax import lax

from probmf.checkpoint import fit_checkpoint, run_steps
from probmf.data.ratings import Ratings
from probmf.encoding import Encoded, encode, layout_for_rank
from probmf.fitters.als import fit_als
from probmf.fitters.rows import residual_sum_of_squares, update_rows
from probmf.linalg import IMPLS, cholesky, solve_lower
from probmf.model import MFParams, predict_with_fallback
from probmf.posterior import Posterior, PredictiveSummary, moments_init, moments_update, rounded_moments
from probmf.sharding import check_devices, device_mesh

LIKELIHOODS = ("gaussian", "rounded")


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

    def write(tiles):
        vals = jnp.zeros(tiles.vals.size, y.dtype).at[tiles.slots].set(y).reshape(tiles.vals.shape)
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

    @property
    def rank(self) -> int:
        return self.posterior.rank if self.posterior is not None else self.num_factors

    def predict(self, users, items):
        return self.predictive(users, items)[0]

    def predictive(self, users, items):
        if self.posterior is not None:
            return self.posterior.predictive(users, items)
        return self.summary.predictive(users, items)


def sample_normal_wishart(rng_key, X: jax.Array, beta0: float, nu0: float, impl: str = "lapack"):
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
    the SSE of this side's ratings at the drawn rows."""
    prior_rhs = prior_prec @ prior_mean
    noise = jax.random.normal(rng_key, (X.shape[0], X.shape[1] + 1))  # z_i, row by row

    def solve_block(block, G, h, s, x0, z):
        L = cholesky(tau * G + prior_prec, impl)
        y = solve_lower(L, tau * h + prior_rhs, impl=impl)
        x = solve_lower(L, y + z, transpose=True, impl=impl)  # L^T x = L^-1 r + z
        return x, residual_sum_of_squares(x, G, h, s)

    return update_rows(X, xb, Y, yb, mu, tiles, noise, solve_block)


def _block_prior(lam_factor, mu_factor, lam_bias):
    k = mu_factor.shape[0]
    P = jnp.zeros((k + 1, k + 1)).at[:k, :k].set(lam_factor).at[k, k].set(lam_bias)
    return P, jnp.concatenate([mu_factor, jnp.zeros((1,))])


def gibbs_sweep(
    rng_key, state: GibbsState, data: Encoded, hyper: Hyperpriors, impl: str = "lapack", latent: Latent | None = None
) -> tuple[GibbsState, GibbsInfo]:
    """One full sweep of the blocked Gibbs sampler (see the module docstring); ``impl``:
    "lapack" or "jax" linear algebra (`probmf.linalg`); ``latent``: the rounded likelihood's
    intervals (None: Gaussian likelihood)."""
    keys = jax.random.split(rng_key, 8)
    if latent is not None:
        data = _sample_latent(keys[7], state.params, state.tau, latent, data)
    W, U, b, c, mu = state.params
    k = W.shape[1]
    nu0 = k + hyper.nu0_extra
    mu_w, lam_w = sample_normal_wishart(keys[0], W, hyper.beta0, nu0, impl)
    mu_u, lam_u = sample_normal_wishart(keys[1], U, hyper.beta0, nu0, impl)
    lam_b = _sample_gamma(keys[2], hyper.a_bias + b.shape[0] / 2.0, hyper.b_bias + 0.5 * jnp.sum(b * b))
    lam_c = _sample_gamma(keys[3], hyper.a_bias + c.shape[0] / 2.0, hyper.b_bias + 0.5 * jnp.sum(c * c))
    W, b, _ = _sample_rows(keys[4], W, b, U, c, mu, data.by_user, state.tau, *_block_prior(lam_w, mu_w, lam_b), impl)
    U, c, sse = _sample_rows(keys[5], U, c, W, b, mu, data.by_item, state.tau, *_block_prior(lam_u, mu_u, lam_c), impl)
    n = jnp.sum(data.by_user.counts)
    tau = _sample_gamma(keys[6], hyper.a_tau + n / 2.0, hyper.b_tau + 0.5 * sse)
    state = GibbsState(MFParams(W, U, b, c, mu), tau, mu_w, lam_w, mu_u, lam_u, lam_b, lam_c)
    return state, GibbsInfo(tau=tau, train_rmse=jnp.sqrt(sse / n))


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
        draws = jax.tree.map(lambda a: jnp.zeros((num_samples,) + a.shape, a.dtype), Posterior(state.params, state.tau))
    moments = None if num_pairs is None else moments_init(num_pairs)
    nan = jnp.full((total,), jnp.nan, jnp.float32)
    return GibbsChain(state, draws, moments, GibbsInfo(nan, nan))


@functools.partial(jax.jit, static_argnames=("num", "num_warmup", "thin", "impl"))
def gibbs_chunk(
    rng_key, chain: GibbsChain, data: Encoded, hyper: Hyperpriors, pairs, first, latent=None, levels=None, *,
    num, num_warmup, thin, impl="lapack",
) -> GibbsChain:  # fmt: skip
    """Sweeps first, ..., first + num - 1 of a run that burns in ``num_warmup`` sweeps and
    then keeps every ``thin``-th; sweep s draws with ``fold_in(rng_key, s)``. ``pairs``:
    (users (P,), items (P,)) of the summary, or None; ``latent``, ``levels``: the rounded
    likelihood's `Latent` and rating levels (None: Gaussian)."""

    def sweep(chain: GibbsChain, s):
        state, info = gibbs_sweep(jax.random.fold_in(rng_key, s), chain.state, data, hyper, impl, latent)
        after = s - num_warmup
        kept = (after >= 0) & ((after + 1) % thin == 0)
        draws = chain.draws
        if draws is not None:
            # Sweeps between kept draws write the slot of the next kept draw, which overwrites them.
            slot = jnp.clip(after // thin, 0, draws.tau.shape[0] - 1)
            draws = jax.tree.map(
                lambda d, x: lax.dynamic_update_index_in_dim(d, x, slot, 0), draws, Posterior(state.params, state.tau)
            )
        moments = chain.moments
        if moments is not None:
            pred = predict_with_fallback(state.params, *pairs)
            noise = 1.0 / state.tau
            if levels is not None:
                pred, noise = rounded_moments(pred, state.tau, levels)
            moments = moments_update(moments, pred, noise, kept.astype(jnp.float32))
        trace = jax.tree.map(lambda t, v: t.at[s].set(v), chain.trace, info)
        return GibbsChain(state, draws, moments, trace), None

    return lax.scan(sweep, chain, first + jnp.arange(num))[0]


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
    likelihood: str = "gaussian",
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
    draws, one every ``thin`` sweeps.

    Args:
      likelihood: "gaussian", or "rounded" (ratings are rounded latent Gaussians; see the
        module docstring).
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
    pairs = None if predict_pairs is None else tuple(jnp.asarray(a, jnp.int32) for a in predict_pairs)
    mesh = device_mesh(check_devices(devices))
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
        init_state(init.params, 1.0 / max(mse, 1e-6)), total, num_samples, keep_draws,
        None if pairs is None else pairs[0].shape[0],
    )  # fmt: skip
    options = {"rank": rank, "num_warmup": num_warmup, "num_samples": num_samples, "thin": thin,
               "init_sweeps": init_sweeps, "likelihood": likelihood, "keep_draws": keep_draws,
               "linalg": linalg, "devices": devices}  # fmt: skip
    ckpt = fit_checkpoint(checkpoint, checkpoint_every, "gibbs", rng_key, train, options, *(pairs or ()))

    def run_chunk(chain, first, num):
        return gibbs_chunk(key_run, chain, data, Hyperpriors(), pairs, first, latent, levels, num=num,
                           num_warmup=num_warmup, thin=thin, impl=linalg)  # fmt: skip

    chain = run_steps(run_chunk, chain, total, ckpt)
    summary = None if pairs is None else PredictiveSummary(*pairs, *chain.moments)
    draws = None if chain.draws is None else chain.draws._replace(levels=levels)
    return GibbsResult(draws, jax.tree.map(np.asarray, chain.trace), summary, int(rank))
