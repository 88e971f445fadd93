"""Posterior draws of the MF model and their predictive distribution.

A posterior is S draws of `MFParams` (every leaf with a leading sample axis) and of the
noise precision tau. The posterior predictive of a rating is the mixture over draws of
N(r_hat_s, 1/tau_s); probmf summarises it by its mean and variance,

    E[r] = mean_s r_hat_s,   Var[r] = var_s r_hat_s + mean_s 1/tau_s,

accumulated over draws with Welford's update, so S x n predictions are never stored.
Predictions average per-draw predictions, never predictions of averaged factors (factors
are only identified up to rotation).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from probmf.model import MFParams, predict_with_fallback


class Posterior(NamedTuple):
    """S posterior draws.

    Attributes:
      draws: `MFParams` with leaves (S, ...): W (S, N, k), U (S, M, k), b (S, N), c (S, M), mu (S,).
      tau: (S,) noise precision 1/sigma^2 of each draw.
    """

    draws: MFParams
    tau: jax.Array

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
    def step(acc, draw):
        count, mean, m2, noise = acc
        params, tau = draw
        pred = predict_with_fallback(params, users, items)
        count = count + 1.0
        delta = pred - mean
        mean = mean + delta / count
        m2 = m2 + delta * (pred - mean)
        return (count, mean, m2, noise + 1.0 / tau), None

    zeros = jnp.zeros(users.shape, jnp.float32)
    (count, mean, m2, noise), _ = lax.scan(step, (0.0, zeros, zeros, 0.0), (posterior.draws, posterior.tau))
    return mean, jnp.sqrt(m2 / count + noise / count)
