"""The biased matrix-factorization model: parameters and the forward pass.

    r_ij ~ N(w_i . u_j + b_i + c_j + mu, sigma^2)

Every fitter returns `MFParams`; prediction and metrics never depend on which fitter ran.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike


class MFParams(NamedTuple):
    """Parameters of the biased MF model (a pytree).

    Attributes:
      W: (num_users, rank) user factors w_i.
      U: (num_items, rank) item factors u_j.
      b: (num_users,) user biases.
      c: (num_items,) item biases.
      mu: () global offset.
    """

    W: jax.Array
    U: jax.Array
    b: jax.Array
    c: jax.Array
    mu: jax.Array

    @property
    def num_users(self) -> int:
        return self.W.shape[0]

    @property
    def num_items(self) -> int:
        return self.U.shape[0]

    @property
    def rank(self) -> int:
        return self.W.shape[1]

    def predict(self, users: jax.Array, items: jax.Array) -> jax.Array:
        """`predict_with_fallback`: every fitted model answers ``predict(users, items)``, so
        callers never ask whether they hold parameters or a fitter's result."""
        return predict_with_fallback(self, users, items)


def init_params(
    rng_key: jax.Array, num_users: int, num_items: int, rank: int, *, scale: float = 0.1, mu: ArrayLike = 0.0
) -> MFParams:
    """Factors ~ N(0, scale^2), biases 0, offset ``mu``."""
    key_w, key_u = jax.random.split(rng_key)
    return MFParams(
        W=scale * jax.random.normal(key_w, (num_users, rank), jnp.float32),
        U=scale * jax.random.normal(key_u, (num_items, rank), jnp.float32),
        b=jnp.zeros((num_users,), jnp.float32),
        c=jnp.zeros((num_items,), jnp.float32),
        mu=jnp.asarray(mu, jnp.float32),
    )


def predict(params: MFParams, users: jax.Array, items: jax.Array) -> jax.Array:
    """Mean rating r_hat = w_i . u_j + b_i + c_j + mu for each (users[k], items[k]).

    ``users``/``items`` are int (n,) dense indices that must be in range: JAX clamps an
    out-of-range gather silently. Use `predict_with_fallback` for ids that may be unknown.
    """
    W, U, b, c, mu = params
    return jnp.sum(W[users] * U[items], axis=-1) + b[users] + c[items] + mu


def predict_with_fallback(params: MFParams, users: jax.Array, items: jax.Array) -> jax.Array:
    """`predict` where an index outside the fitted range (e.g. -1, an unknown id) falls back
    to what is known: an unknown user contributes w_i = 0, b_i = 0, an unknown item
    u_j = 0, c_j = 0, so r_hat = c_j + mu, b_i + mu, or mu.
    """
    W, U, b, c, mu = params
    known_u = (users >= 0) & (users < W.shape[0])
    known_i = (items >= 0) & (items < U.shape[0])
    # Gather at a safe index, then zero out: never rely on JAX's clamping.
    u = jnp.where(known_u, users, 0)
    i = jnp.where(known_i, items, 0)
    dot = jnp.sum(W[u] * U[i], axis=-1)
    return jnp.where(known_u & known_i, dot, 0.0) + jnp.where(known_u, b[u], 0.0) + jnp.where(known_i, c[i], 0.0) + mu
