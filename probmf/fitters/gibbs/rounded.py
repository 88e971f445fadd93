"""The rounded (ordered-probit) likelihood of the Gibbs sampler (``likelihood="rounded"``).

A rating is a latent y_ij ~ N(w_i.u_j + b_i + c_j + mu, 1/tau) rounded to the nearest rating
level (cuts at the midpoints between levels, the end levels take the tails), as in ordinal
probit models. Data augmentation keeps every conditional conjugate: each sweep first draws
y_ij from its normal truncated to the interval of r_ij, then runs the blocks of
`probmf.fitters.gibbs.kernel` on y instead of r. Predictions are E[r] over the levels.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import jax.scipy.special
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from probmf.encoding import Encoded, RowTiles
from probmf.model import MFParams, predict_with_fallback
from probmf.sharding import AXIS


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


def truncated_standard_normal(rng_key: jax.Array, lower: jax.Array, upper: jax.Array) -> jax.Array:
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


def _sample_latent(rng_key: jax.Array, params: MFParams, tau: jax.Array, latent: Latent, data: Encoded) -> Encoded:
    """Draw y_ij ~ N(r_hat_ij, 1/tau) truncated to its rating's interval and write it into
    both row layouts in place of the ratings."""
    return with_values(data, latent_values(rng_key, params, tau, latent))


def latent_values(
    rng_key: jax.Array, params: MFParams, tau: jax.Array, latent: Latent, offset: jax.Array | None = None
) -> jax.Array:
    """y_ij ~ N(r_hat_ij + o_ij, 1/tau) truncated to its rating's interval (n,), in input
    order; ``offset`` o (n,): per-rating terms outside the factors (the time effects of
    `probmf.fitters.gibbs.temporal`), None: none."""
    pred = predict_with_fallback(params, latent.users, latent.items)
    if offset is not None:
        pred = pred + offset
    sd = 1.0 / jnp.sqrt(tau)
    return pred + sd * truncated_standard_normal(rng_key, (latent.lower - pred) / sd, (latent.upper - pred) / sd)


def with_values(data: Encoded, values: jax.Array) -> Encoded:
    """Both row layouts with new values (n,) for the same ratings, in input order (needs the
    layouts' ``slots``: `encode(..., with_slots=True)`)."""

    def write(tiles: RowTiles) -> RowTiles:
        vals = jnp.zeros(tiles.vals.size, values.dtype).at[tiles.slots].set(values).reshape(tiles.vals.shape)
        if tiles.mesh is not None:  # keep each device's tiles on it (the stacked axis 0 is split)
            vals = jax.lax.with_sharding_constraint(vals, NamedSharding(tiles.mesh, P(AXIS)))
        return dataclasses.replace(tiles, vals=vals)

    return Encoded(write(data.by_user), write(data.by_item))
