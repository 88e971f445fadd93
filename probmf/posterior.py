"""Posterior draws of the MF model and their predictive distribution.

A posterior is S draws of `MFParams` (every leaf with a leading sample axis) and of the
noise precision tau. The posterior predictive of a rating is the mixture over draws of
N(r_hat_s, 1/tau_s); probmf summarises it by its mean and variance,

    E[r] = mean_s r_hat_s,   Var[r] = var_s r_hat_s + mean_s 1/tau_s,

accumulated over draws with Welford's update, so S x n predictions are never stored. A
sampler given the pairs before it runs can keep only these moments (`PredictiveSummary`)
and no draw at all.

Cold rows. A user or item with no training rating (an unknown id, -1, or an index of the id
map with no rating in the training data) has no posterior of its own: in draw s its vector
and bias are a fresh draw from that draw's prior, w ~ N(m_s, S_s), b ~ N(0, v_s) (`RowPrior`).
The predictive integrates them out in closed form: with the other side's vector u (known),

    E[r | s] = m_s . u + c + mu,   Var[r | s] = 1/tau_s + u^T S_s u + v_s,

and with both sides cold (w ~ N(m, S), u ~ N(m', S'), independent)
E[w.u] = m . m', Var[w.u] = m^T S' m + m'^T S m' + tr(S S'). So an unknown id and a
zero-count index give the same predictive, and a cold pair's interval carries the row's
prior uncertainty. (With a rounded likelihood the latent stays Gaussian given the draw when
one side is cold; with both cold its variance is matched.) With side information (the Gibbs
sampler's attributes, `probmf.fitters.gibbs.features`) a cold row of the id map has known
attributes x_i, and its prior mean in draw s is [m_s; 0] + x_i A_s: vector and bias both
shift (`RowPrior.attributes`, `Posterior.features`). An unknown id's attributes are unknown:
its mean takes the id map's average row, [m_s; 0] + xbar A_s (the spread of x_i A_s over
the rows is not added to its variance).
Time (the Gibbs sampler's ``time=True``, `probmf.fitters.gibbs.temporal`): draw s adds
c_{j,bin(t),s} + alpha_{i,s} dev_i(t) to a pair's mean (`TimeEffects`, `time_offset`); the
pair's timestamp t gives its bin and dev through the training data's `TimeClock`. Without a
timestamp a pair is predicted "now": the last training bin and dev 0 (the user's drift at
their mean training day). An unknown item's bin effect is integrated out (mean 0, variance
1/lam_bins); a user without training ratings has dev 0.
Predictions average per-draw predictions, never predictions of averaged factors (factors
are only identified up to rotation).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jax.scipy.stats
import numpy as np
from jax import lax
from jax.typing import ArrayLike

from probmf.model import MFParams


class RowPrior(NamedTuple):
    """Per-draw prior of one side's rows (users or items): vector ~ N(mean, cov), bias ~
    N(0, bias_var), independent. Leaves mean (S, k), cov (S, k, k), bias_var (S,);
    ``attributes`` (S, G, k+1): the draw's attribute vectors A, which shift row i's prior
    mean (vector and bias) by x_i A, x_i its row of the posterior's ``features`` (an unknown
    id's by the mean row's); None: none."""

    mean: jax.Array
    cov: jax.Array
    bias_var: jax.Array
    attributes: jax.Array | None = None


# timeSVD++'s exponent of the user drift dev_i(t) = sign(t - t_i) |t - t_i|^beta (t in days).
TIME_BETA = 0.4


class TimeEffects(NamedTuple):
    """Per-draw time effects: item_bins (S, M, B) c_{j,b}, drift (S, N) alpha_i and bin_var
    (S,) 1/lam_bins (the prior variance of an unknown item's bin effect)."""

    item_bins: jax.Array
    drift: jax.Array
    bin_var: jax.Array


class TimeClock(NamedTuple):
    """The map from a timestamp (seconds) to a bin and dev_i(t): bins of ``width`` days from
    day ``start`` (day = seconds / 86400), ``num_bins`` of them (times outside go to the end
    bins); user_day (N,): each user's mean training day minus ``start`` (NaN: no rating)."""

    start: jax.Array
    width: jax.Array
    user_day: jax.Array
    num_bins: int


def clock_inputs(clock: TimeClock, users: ArrayLike, times: ArrayLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(bins (P,) int32, dev (P,) float32) of pairs with dense ``users`` at timestamps
    ``times`` (seconds, (P,)); None: "now", the last bin and dev 0. dev is 0 for an unknown
    user or one without training ratings. Host-side (float64 days)."""
    users = np.asarray(users)
    num_bins = int(clock.num_bins)
    if times is None:
        return np.full(users.shape, num_bins - 1, np.int32), np.zeros(users.shape, np.float32)
    times = np.asarray(times, np.float64)
    if times.shape != users.shape:
        raise ValueError(f"times must have one timestamp per pair, shape {users.shape}, got {times.shape}")
    day = times / 86_400.0 - float(clock.start)
    bins = np.clip(np.floor(day / float(clock.width)), 0, num_bins - 1).astype(np.int32)
    user_day = np.asarray(clock.user_day, np.float64)
    inside = (users >= 0) & (users < user_day.shape[0])
    t_i = np.where(inside, user_day[np.where(inside, users, 0)], np.nan)
    gap = day - t_i
    dev = np.where(np.isfinite(gap), np.sign(gap) * np.abs(np.nan_to_num(gap)) ** TIME_BETA, 0.0)
    return bins, dev.astype(np.float32)


def draw_offsets(
    posterior: Posterior, users: jax.Array, items: jax.Array, times: ArrayLike | None = None
) -> Callable[[Any], tuple[jax.Array, jax.Array] | None]:
    """``offset(time) -> (offset (P,), variance (P,)) or None``: one draw's time terms at the
    pairs (`time_offset`, the pairs' ``times`` in seconds; None: "now"), for code that walks
    the draws itself and hands each draw's `TimeEffects` in; always None without time effects."""
    if posterior.time is None:
        return lambda time: None
    assert posterior.clock is not None, "a posterior with time effects keeps their clock"
    bins, dev = (jnp.asarray(a) for a in clock_inputs(posterior.clock, np.asarray(users), times))
    users, items = jnp.asarray(users), jnp.asarray(items)
    return lambda time: time_offset(time, users, items, bins, dev)


def time_offset(
    effects: TimeEffects, users: jax.Array, items: jax.Array, bins: jax.Array, dev: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """(offset (P,), variance (P,)) of ONE draw's time terms at the pairs: c_{j,bin} + alpha_i
    dev for known ids; an unknown item's (-1) c_{j,bin} is integrated out (0, bin_var), an
    unknown user's term is 0 (its dev is 0)."""
    M, N = effects.item_bins.shape[0], effects.drift.shape[0]
    known_i, known_u = (items >= 0) & (items < M), (users >= 0) & (users < N)
    cb = effects.item_bins[jnp.where(known_i, items, 0), bins]
    drift = effects.drift[jnp.where(known_u, users, 0)]
    offset = jnp.where(known_i, cb, 0.0) + jnp.where(known_u, drift * dev, 0.0)
    return offset, jnp.where(known_i, 0.0, effects.bin_var)


class Posterior(NamedTuple):
    """S posterior draws.

    Attributes:
      draws: `MFParams` with leaves (S, ...): W (S, N, k), U (S, M, k), b (S, N), c (S, M), mu (S,).
      tau: (S,) noise precision 1/sigma^2 of each draw.
      levels: (L,) rating levels of a rounded-Gaussian likelihood (`rounded_moments`), or
        None for the Gaussian likelihood.
      priors: (users', items') `RowPrior` of each draw, for cold rows (module docstring);
        None: cold rows fall back to biases and mu (`probmf.model.predict_with_fallback`).
      seen: (users (N,), items (M,)) bool, the rows with a training rating; the others are
        predicted as cold. None: every row in range is seen.
      features: (users', items') attribute matrices X (N, G) of the priors' ``attributes``, each
        as its nonzeros (rows, cols, values) or None; None: no attributes.
      time: the draws' `TimeEffects` (leaves (S, ...)); None: no time effects.
      clock: the `TimeClock` of ``time`` (None without it).
    """

    draws: MFParams
    tau: jax.Array
    levels: jax.Array | None = None
    priors: tuple[RowPrior, RowPrior] | None = None
    seen: tuple[jax.Array, jax.Array] | None = None
    features: tuple | None = None
    time: TimeEffects | None = None
    clock: TimeClock | None = None

    @property
    def num_samples(self) -> int:
        return self.tau.shape[0]

    @property
    def rank(self) -> int:
        return self.draws.W.shape[-1]

    def predictive(
        self, users: ArrayLike, items: ArrayLike, times: ArrayLike | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """Mean and standard deviation (n,) of the posterior predictive of r for each pair
        (dense indices; -1 or an unseen row is cold, see the module docstring). ``times``:
        the pairs' timestamps (seconds, (n,)) for a posterior with time effects; None: "now"
        (module docstring); ignored without time effects."""
        users, items = jnp.asarray(users), jnp.asarray(items)
        pair_time = None
        if self.time is not None:
            assert self.clock is not None, "a posterior with time effects keeps their clock"
            pair_time = tuple(jnp.asarray(a) for a in clock_inputs(self.clock, users, times))
        return _predictive(self._replace(clock=None), users, items, pair_time)

    def predict(self, users: ArrayLike, items: ArrayLike, times: ArrayLike | None = None) -> jax.Array:
        """Posterior predictive mean (n,)."""
        return self.predictive(users, items, times)[0]


@jax.jit
def _predictive(
    posterior: Posterior, users: jax.Array, items: jax.Array, pair_time: tuple[jax.Array, jax.Array] | None = None
) -> tuple[jax.Array, jax.Array]:
    def step(moments: tuple, draw: tuple) -> tuple[tuple, None]:
        params, tau, priors, time = draw
        offset = None if time is None or pair_time is None else time_offset(time, users, items, *pair_time)
        pred, var = draw_predictive(params, tau, users, items, priors, posterior.seen, posterior.levels,
                                    posterior.features, offset)  # fmt: skip
        return moments_update(moments, pred, var), None

    draws = (posterior.draws, posterior.tau, posterior.priors, posterior.time)
    moments, _ = lax.scan(step, moments_init(users.shape[0]), draws)
    return summarize(*moments)


def seen_rows(users: ArrayLike, items: ArrayLike, num_users: int, num_items: int) -> tuple[jax.Array, jax.Array]:
    """`Posterior.seen` of training ratings with dense ``users``/``items``: (users (N,), items
    (M,)) bool, the rows with at least one rating."""
    seen_u, seen_i = (jnp.asarray(np.bincount(np.asarray(ids), minlength=size) > 0)
                      for ids, size in ((users, num_users), (items, num_items)))  # fmt: skip
    return seen_u, seen_i


def known_rows(index: jax.Array, size: int, seen: jax.Array | None = None) -> jax.Array:
    """bool (P,): ``index`` is in [0, size) and, given ``seen`` (size,), a seen row."""
    known = (index >= 0) & (index < size)
    if seen is not None:
        known = known & seen[jnp.where(known, index, 0)]
    return known


def draw_predictive(
    params: MFParams, tau: jax.Array, users: jax.Array, items: jax.Array, priors: tuple | None = None,
    seen: tuple | None = None, levels: jax.Array | None = None, features: tuple | None = None,
    offset: tuple | None = None,
) -> tuple[jax.Array, jax.Array]:  # fmt: skip
    """Mean and variance (P,) of the rating predictive under ONE draw (``params`` unbatched,
    ``tau`` (), ``priors`` the draw's (users', items') `RowPrior` without the S axis, or None).

    Known pairs: N(w_i.u_j + b_i + c_j + mu, 1/tau). A cold row (out of range, or not in
    ``seen``) has its vector and bias integrated out under its prior (module docstring);
    with ``priors`` None it falls back to a zero vector and bias, as
    `probmf.model.predict_with_fallback` does. ``features``: `Posterior.features`, which
    with the priors' ``attributes`` shift a cold row's prior mean by x_i A (an unknown id's
    by xbar A, the mean row's). ``offset``: (mean (P,), variance (P,)) the draw adds to each
    pair (its time terms, `time_offset`); None: none.
    With ``levels`` the moments are those of the rounded latent (`rounded_moments`).
    """
    W, U, b, c, mu = params
    seen_u, seen_i = seen if seen is not None else (None, None)
    known_u, known_i = known_rows(users, W.shape[0], seen_u), known_rows(items, U.shape[0], seen_i)
    # Gather at a safe index, then replace: never rely on JAX's clamping.
    u, i = jnp.where(known_u, users, 0), jnp.where(known_i, items, 0)
    prior_u, prior_i = priors if priors is not None else (None, None)
    x_u, x_i = features if features is not None else (None, None)
    mean_u, bias_u = _cold_mean(prior_u, x_u, users, W.shape[0])
    mean_i, bias_i = _cold_mean(prior_i, x_i, items, U.shape[0])
    w = jnp.where(known_u[:, None], W[u], mean_u)
    v = jnp.where(known_i[:, None], U[i], mean_i)
    pred = jnp.sum(w * v, axis=-1) + jnp.where(known_u, b[u], bias_u) + jnp.where(known_i, c[i], bias_i) + mu
    var = 1.0 / tau
    if priors is not None:
        # Var[w.v + bias] of a cold row given the other side: v^T S v + bias variance; both
        # cold add tr(S_u S_i) (both covariances symmetric).
        cold_u = jnp.sum((v @ prior_u.cov) * v, axis=-1) + prior_u.bias_var
        cold_i = jnp.sum((w @ prior_i.cov) * w, axis=-1) + prior_i.bias_var
        both = jnp.sum(prior_u.cov * prior_i.cov)
        var = var + jnp.where(known_u, 0.0, cold_u) + jnp.where(known_i, 0.0, cold_i)
        var = var + jnp.where(known_u | known_i, 0.0, both)
    if offset is not None:
        pred, var = pred + offset[0], var + offset[1]
    if levels is None:
        return pred, jnp.broadcast_to(var, pred.shape)
    return rounded_moments(pred, 1.0 / var, levels)


def _cold_mean(
    prior: RowPrior | None, X: tuple | None, index: jax.Array, size: int
) -> tuple[jax.Array | float, jax.Array | float]:
    """(vector (k,) or (P, k), bias () or (P,)): the prior mean of the rows ``index`` (P,) were
    they cold: [m; 0], plus, with the prior's ``attributes`` A (G, k+1) and X (rows, cols,
    values) (size, G), x_i A for a row in [0, size) and xbar A (X's mean row) for an unknown
    id; zeros without a prior."""
    if prior is None:
        return 0.0, 0.0
    if prior.attributes is None or X is None:
        return prior.mean, 0.0
    rows, cols, values = X
    XA = jax.ops.segment_sum(values[:, None] * prior.attributes[cols], rows, size)  # (size, k+1)
    inside = (index >= 0) & (index < size)
    shift = jnp.where(inside[:, None], XA[jnp.where(inside, index, 0)], jnp.mean(XA, axis=0))
    return prior.mean + shift[:, :-1], shift[:, -1]


def rounded_moments(pred: jax.Array, tau: jax.Array, levels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean and variance (P,) of a rounded-Gaussian rating: level l_k is observed when a
    latent y ~ N(pred, 1/tau) falls between the midpoints around l_k (the end levels take
    the tails), so P(l_k) = Phi((c_k - pred) sqrt(tau)) - Phi((c_{k-1} - pred) sqrt(tau)).
    ``tau``: () or (P,)."""
    cuts = 0.5 * (levels[1:] + levels[:-1])
    scale = jnp.expand_dims(jnp.sqrt(tau), -1)
    cdf = jax.scipy.stats.norm.cdf((cuts[None, :] - pred[:, None]) * scale)
    cdf = jnp.concatenate([jnp.zeros_like(pred)[:, None], cdf, jnp.ones_like(pred)[:, None]], axis=1)
    p = jnp.diff(cdf, axis=1)  # (P, L)
    mean = p @ levels
    return mean, jnp.maximum(p @ (levels * levels) - mean * mean, 0.0)


def moments_init(num_pairs: int) -> tuple:
    """Empty running moments (count, mean (P,), m2 (P,), noise (P,)) of `moments_update`."""
    zeros = jnp.zeros((num_pairs,), jnp.float32)
    return jnp.float32(0.0), zeros, zeros, zeros


def moments_update(moments: tuple, pred: jax.Array, noise_var: ArrayLike, weight: ArrayLike = 1.0) -> tuple:
    """Welford's update of the predictive moments with one draw's predicted means ``pred``
    (P,) and its noise variance around them ``noise_var`` (1/tau, or (P,)), counted with
    ``weight`` (1 adds the draw, 0 leaves the moments as they are)."""
    count, mean, m2, noise = moments
    count = count + weight
    delta = pred - mean
    mean = mean + weight * delta / jnp.maximum(count, 1.0)
    m2 = m2 + weight * delta * (pred - mean)
    return count, mean, m2, noise + weight * noise_var


def summarize(count: ArrayLike, mean: ArrayLike, m2: ArrayLike, noise: ArrayLike) -> tuple[jax.Array, jax.Array]:
    """(mean, sd) of the predictive: Var[r] = var_s r_hat_s + mean_s (noise variance)_s."""
    count, mean, m2, noise = (jnp.asarray(a) for a in (count, mean, m2, noise))  # one arithmetic, saved or not
    return mean, jnp.sqrt(m2 / count + noise / count)


class PredictiveSummary(NamedTuple):
    """Running moments of the posterior predictive at P pairs fixed before sampling (the
    draws themselves are never stored).

    Attributes:
      users: (P,) dense user ids of the pairs.
      items: (P,) dense item ids of the pairs.
      count: () draws seen.
      mean: (P,) Welford mean of the per-draw predictions.
      m2: (P,) Welford sum of squared deviations of the per-draw predictions.
      noise: (P,) sum of the draws' noise variances.
    """

    users: jax.Array
    items: jax.Array
    count: jax.Array  # type: ignore[assignment]  # a field named like tuple.count, kept for saved models
    mean: jax.Array
    m2: jax.Array
    noise: jax.Array

    @property
    def num_samples(self) -> int:
        return int(self.count)

    def predictive(
        self, users: ArrayLike, items: ArrayLike, times: ArrayLike | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """(mean, sd) (P,) at exactly the summarised pairs; any other pairs are an error.
        ``times``: ignored, the moments are at the pairs' times given at fit time."""
        users, items = np.asarray(users), np.asarray(items)
        if not (np.array_equal(users, np.asarray(self.users)) and np.array_equal(items, np.asarray(self.items))):
            raise ValueError(
                f"this posterior kept predictive moments at its {len(self.users)} fit-time pairs only; "
                "refit with keep_draws=True to predict other pairs"
            )
        return summarize(self.count, self.mean, self.m2, self.noise)

    def predict(self, users: ArrayLike, items: ArrayLike, times: ArrayLike | None = None) -> jax.Array:
        return self.predictive(users, items)[0]
