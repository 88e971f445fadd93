"""Time effects for the Gibbs sampler (``time=True``), as in timeSVD++ (Koren 2009) and
Bayesian timeSVD++ (Rendle et al. 2019):

    r_ij(t) = w_i.u_j + b_i + c_j + c_{j,bin(t)} + alpha_i dev_i(t) + mu + noise,
    dev_i(t) = sign(t - t_i) |t - t_i|^beta,

t in days, t_i user i's mean training rating day, beta = 0.4 (timeSVD++'s), bin(t) one of
``time_bins`` equal-width bins over the training time range (a time outside it goes to the
end bin on its side; `probmf.posterior.TimeClock`). c_{j,b} ~ N(0, 1/lam_bins), alpha_i ~
N(0, 1/lam_drift), lam_bins ~ Gamma(a_time_bins, b_time_bins), lam_drift ~ Gamma(a_drift,
b_drift) (`probmf.objectives.Hyperpriors`).

The time terms are per-rating offsets o_ij = c_{j,bin} + alpha_i dev_ij. Each sweep first
draws them given the rest (`sample_time`), then the other blocks see the ratings (or, with
the rounded likelihood, the latent ratings) minus o, written into both tile layouts
(`probmf.fitters.gibbs.rounded.with_values`). With the residuals e_ij = y_ij - (w_i.u_j +
b_i + c_j + mu), every draw is a conjugate scalar per group:

  c_{j,b} | alpha, ...   N(tau sum_g (e - alpha_i dev) / p, 1/p),  p = tau n_g + lam_bins,
  alpha_i | c_., ...     N(tau sum_i dev (e - c_{j,bin}) / p, 1/p), p = tau sum_i dev^2 + lam_drift,
  lam_bins | c_.         Gamma(a + G / 2, b + sum c_{j,b}^2 / 2) over the G groups with ratings,
                         lam_drift likewise,

the vectors before their precisions (from zero, a precision drawn first would pin them there),
and a group without ratings jointly with its precision (`_scalar_block`): it draws from the
prior, so an item of the id map with no training rating carries prior draws of its bins. Kept
draws store (c_{j,b}, alpha, 1/lam_bins) (`probmf.posterior.TimeEffects`); the posterior keeps
the clock that maps a pair's timestamp to its bin and dev (`probmf.posterior.TimeClock`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from probmf.data.ratings import Ratings
from probmf.objectives import Hyperpriors
from probmf.posterior import TIME_BETA, TimeClock, TimeEffects, clock_inputs, time_offset

DEFAULT_TIME_BINS = 30
SECONDS_PER_DAY = 86_400.0


class TimeState(NamedTuple):
    """The sampler's time parameters: item_bins (M, B) c_{j,b}; drift (N,) alpha_i; their
    prior precisions lam_bins, lam_drift ()."""

    item_bins: jax.Array
    drift: jax.Array
    lam_bins: jax.Array
    lam_drift: jax.Array

    def effects(self) -> TimeEffects:
        """The kept draw's `TimeEffects`."""
        return TimeEffects(self.item_bins, self.drift, 1.0 / self.lam_bins)


class TimeData(NamedTuple):
    """The training ratings in input order, for the time block: ids users, items (n,), each
    rating's bin (n,) int32 and dev_i(t) (n,), and its value (n,) (the ratings, which the
    Gaussian likelihood offsets each sweep; the rounded likelihood draws latent values)."""

    users: jax.Array
    items: jax.Array
    bins: jax.Array
    dev: jax.Array
    values: jax.Array


def init_time(num_users: int, num_items: int, num_bins: int) -> TimeState:
    """Zero time effects with unit precisions."""
    one = jnp.float32(1.0)
    return TimeState(jnp.zeros((num_items, num_bins)), jnp.zeros((num_users,)), one, one)


def training_clock(train: Ratings, num_bins: int) -> TimeClock:
    """The `TimeClock` of ``train``: ``num_bins`` equal-width bins over its time range (days)
    and each user's mean training day (NaN for a user without training rating); a
    ValueError naming the ratings' source when they have no timestamps."""
    if train.timestamps is None:
        raise ValueError(
            f"{train.source or 'the training ratings'} has no timestamps; time effects (time=True, "
            "--features time) need one per rating (a timestamp column)"
        )
    if len(train) == 0:
        raise ValueError("time effects need at least one training rating")
    days = np.asarray(train.timestamps, np.float64) / SECONDS_PER_DAY
    start, end = float(days.min()), float(days.max())
    width = (end - start) / num_bins if end > start else 1.0
    counts = np.bincount(train.users, minlength=train.num_users)
    total = np.bincount(train.users, days - start, minlength=train.num_users)
    with np.errstate(invalid="ignore", divide="ignore"):
        user_day = np.where(counts > 0, total / np.maximum(counts, 1), np.nan)
    return TimeClock(jnp.float32(start), jnp.float32(width), jnp.asarray(user_day, jnp.float32), num_bins)


def time_data(train: Ratings, clock: TimeClock) -> TimeData:
    """`TimeData` of ``train`` under ``clock`` (`probmf.posterior.clock_inputs`)."""
    bins, dev = clock_inputs(clock, train.users, train.timestamps)
    return TimeData(jnp.asarray(train.users), jnp.asarray(train.items), jnp.asarray(bins), jnp.asarray(dev),
                    jnp.asarray(train.values, jnp.float32))  # fmt: skip


def offsets(state: TimeState, data: TimeData) -> jax.Array:
    """o_ij = c_{j,bin} + alpha_i dev_ij (n,) of the training ratings."""
    return time_offset(state.effects(), data.users, data.items, data.bins, data.dev)[0]


def sample_time(
    rng_key: jax.Array, state: TimeState, base: jax.Array, data: TimeData, tau: jax.Array, hyperpriors: Hyperpriors
) -> TimeState:
    """One draw of the time block (module docstring) given ``base`` (n,) = y - (w.u + b + c
    + mu), the residuals of the ratings without their time terms, and the noise precision."""
    M, B = state.item_bins.shape
    N = state.drift.shape[0]
    key_bins, key_drift, key_lb, key_ld = jax.random.split(rng_key, 4)
    h = hyperpriors
    group = data.items * B + data.bins
    resid = base - state.drift[data.users] * data.dev
    count = jax.ops.segment_sum(jnp.ones_like(resid), group, M * B)
    item_bins, lam_bins = _scalar_block(
        key_bins, key_lb, tau * count, tau * jax.ops.segment_sum(resid, group, M * B), state.lam_bins,
        h.a_time_bins, h.b_time_bins,
    )  # fmt: skip
    item_bins = item_bins.reshape(M, B)
    resid = base - item_bins[data.items, data.bins]
    info = tau * jax.ops.segment_sum(data.dev * data.dev, data.users, N)
    drift, lam_drift = _scalar_block(
        key_drift, key_ld, info, tau * jax.ops.segment_sum(data.dev * resid, data.users, N), state.lam_drift,
        h.a_drift, h.b_drift,
    )  # fmt: skip
    return TimeState(item_bins, drift, lam_bins, lam_drift)


def _scalar_block(
    key_x: jax.Array, key_lam: jax.Array, info: jax.Array, rhs: jax.Array, lam: jax.Array, shape: float, rate: float
) -> tuple[jax.Array, jax.Array]:
    """x_g ~ N(rhs_g / p_g, 1/p_g), p_g = info_g + lam, for every group g (G,), then lam | x.

    A group the ratings say nothing about (info 0: no rating, or devs all 0) has x_g ~ N(0,
    1/lam) a priori and in its conditional. Drawn from it, then lam | all x, lam would move by
    ~ G^-1/2 a sweep when most groups are empty (item x bin groups are), so lam and the empty
    x_g are drawn jointly instead: lam | the informed x_g (Gamma with their count and squares:
    the empty ones integrated out), then each empty x_g | lam from the prior. A valid blocked
    draw of (lam, x_empty) | x_informed."""
    z = jax.random.normal(key_x, info.shape)
    prec = info + lam
    x = rhs / prec + z / jnp.sqrt(prec)
    informed = info > 0
    num = jnp.sum(informed)
    lam = jax.random.gamma(key_lam, shape + num / 2.0) / (rate + 0.5 * jnp.sum(jnp.where(informed, x * x, 0.0)))
    return jnp.where(informed, x, z / jnp.sqrt(lam)), lam


__all__ = [
    "DEFAULT_TIME_BINS",
    "TIME_BETA",
    "TimeData",
    "TimeState",
    "init_time",
    "offsets",
    "sample_time",
    "time_data",
    "training_clock",
]
