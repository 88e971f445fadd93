"""Posterior draws of the MF model and their predictive distribution.

A posterior is S draws of `MFParams` (every leaf with a leading sample axis) and of the
noise precision tau. The posterior predictive of a rating is the mixture over draws of
N(r_hat_s, 1/tau_s); probmf summarises it by its mean and variance,

    E[r] = mean_s r_hat_s,   Var[r] = var_s r_hat_s + mean_s 1/tau_s,

accumulated over draws with Welford's update, so S x n predictions are never stored. A
sampler given the pairs before it runs can keep only these moments (`PredictiveSummary`)
and no draw at all.
Predictions average per-draw predictions, never predictions of averaged factors (factors
are only identified up to rotation).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import jax.scipy.stats
import numpy as np
from jax import lax

from probmf.model import MFParams, predict_with_fallback


class Posterior(NamedTuple):
    """S posterior draws.

    Attributes:
      draws: `MFParams` with leaves (S, ...): W (S, N, k), U (S, M, k), b (S, N), c (S, M), mu (S,).
      tau: (S,) noise precision 1/sigma^2 of each draw.
      levels: (L,) rating levels of a rounded-Gaussian likelihood (`rounded_moments`), or
        None for the Gaussian likelihood.
    """

    draws: MFParams
    tau: jax.Array
    levels: jax.Array | None = None

    @property
    def num_samples(self) -> int:
        return self.tau.shape[0]

    @property
    def rank(self) -> int:
        return self.draws.W.shape[-1]

    def predictive(self, users, items) -> tuple[jax.Array, jax.Array]:
        """Mean and standard deviation (n,) of the posterior predictive of r for each pair
        (unknown ids, -1, fall back to biases and mu in every draw)."""
        return _predictive(self, jnp.asarray(users), jnp.asarray(items))

    def predict(self, users, items) -> jax.Array:
        """Posterior predictive mean (n,)."""
        return self.predictive(users, items)[0]


@jax.jit
def _predictive(posterior: Posterior, users, items):
    def step(moments, draw):
        params, tau = draw
        pred = predict_with_fallback(params, users, items)
        if posterior.levels is None:
            return moments_update(moments, pred, 1.0 / tau), None
        return moments_update(moments, *rounded_moments(pred, tau, posterior.levels)), None

    moments, _ = lax.scan(step, moments_init(users.shape[0]), (posterior.draws, posterior.tau))
    return summarize(*moments)


def rounded_moments(pred: jax.Array, tau: jax.Array, levels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean and variance (P,) of a rounded-Gaussian rating: level l_k is observed when a
    latent y ~ N(pred, 1/tau) falls between the midpoints around l_k (the end levels take
    the tails), so P(l_k) = Phi((c_k - pred) sqrt(tau)) - Phi((c_{k-1} - pred) sqrt(tau))."""
    cuts = 0.5 * (levels[1:] + levels[:-1])
    cdf = jax.scipy.stats.norm.cdf((cuts[None, :] - pred[:, None]) * jnp.sqrt(tau))
    cdf = jnp.concatenate([jnp.zeros_like(pred)[:, None], cdf, jnp.ones_like(pred)[:, None]], axis=1)
    p = jnp.diff(cdf, axis=1)  # (P, L)
    mean = p @ levels
    return mean, jnp.maximum(p @ (levels * levels) - mean * mean, 0.0)


def moments_init(num_pairs: int) -> tuple:
    """Empty running moments (count, mean (P,), m2 (P,), noise (P,)) of `moments_update`."""
    zeros = jnp.zeros((num_pairs,), jnp.float32)
    return jnp.float32(0.0), zeros, zeros, zeros


def moments_update(moments: tuple, pred: jax.Array, noise_var, weight=1.0) -> tuple:
    """Welford's update of the predictive moments with one draw's predicted means ``pred``
    (P,) and its noise variance around them ``noise_var`` (1/tau, or (P,)), counted with
    ``weight`` (1 adds the draw, 0 leaves the moments as they are)."""
    count, mean, m2, noise = moments
    count = count + weight
    delta = pred - mean
    mean = mean + weight * delta / jnp.maximum(count, 1.0)
    m2 = m2 + weight * delta * (pred - mean)
    return count, mean, m2, noise + weight * noise_var


def summarize(count, mean, m2, noise) -> tuple[jax.Array, jax.Array]:
    """(mean, sd) of the predictive: Var[r] = var_s r_hat_s + mean_s (noise variance)_s."""
    return mean, jnp.sqrt(m2 / count + noise / count)


class PredictiveSummary(NamedTuple):
    """Running moments of the posterior predictive at P pairs fixed before sampling (the
    draws themselves are never stored).

    Attributes:
      users, items: (P,) dense ids of the pairs; count: () draws seen; mean, m2: (P,) Welford
      mean and sum of squared deviations of the per-draw predictions; noise: (P,) sum of the
      draws' noise variances.
    """

    users: jax.Array
    items: jax.Array
    count: jax.Array
    mean: jax.Array
    m2: jax.Array
    noise: jax.Array

    @property
    def num_samples(self) -> int:
        return int(self.count)

    def predictive(self, users, items) -> tuple[jax.Array, jax.Array]:
        """(mean, sd) (P,) at exactly the summarised pairs; any other pairs are an error."""
        users, items = np.asarray(users), np.asarray(items)
        if not (np.array_equal(users, np.asarray(self.users)) and np.array_equal(items, np.asarray(self.items))):
            raise ValueError(
                f"this posterior kept predictive moments at its {len(self.users)} fit-time pairs only; "
                "refit with keep_draws=True to predict other pairs"
            )
        return summarize(self.count, self.mean, self.m2, self.noise)

    def predict(self, users, items) -> jax.Array:
        return self.predictive(users, items)[0]
