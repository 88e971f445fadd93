"""A tiny network library in plain JAX (no Flax): dense layers and the ReLU tower of them.

A tower of widths ``hidden`` = (h_1, ..., h_L) maps inputs x (B, d_in) to a scalar per row,

    f(x) = dense_out o relu o dense_L o ... o relu o dense_1 (x),      dense(x) = x W + b,

with inverted dropout after each hidden layer while training. The layers are a tuple of
`Dense` named tuples, so a model's parameters stay a plain pytree (optax, `jax.grad`,
checkpoints and saved models see arrays only). `l2` is the weight decay of a tower.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Dense(NamedTuple):
    """One layer x -> x W + b: W (d_in, d_out), b (d_out,)."""

    W: jax.Array
    b: jax.Array


def init_layers(rng_key: jax.Array, in_dim: int, hidden: tuple[int, ...]) -> tuple[Dense, ...]:
    """He-normal ReLU layers of widths ``hidden`` and a zero output layer (width 1): the
    network starts at f = 0, so a model starts at its biases (MLP) or its MF (residual)."""
    keys = jax.random.split(rng_key, len(hidden))
    layers, d = [], in_dim
    for key, width in zip(keys, hidden, strict=True):
        W = jax.random.normal(key, (d, width), jnp.float32) * np.sqrt(2.0 / d)
        layers.append(Dense(W, jnp.zeros((width,), jnp.float32)))
        d = width
    layers.append(Dense(jnp.zeros((d, 1), jnp.float32), jnp.zeros((1,), jnp.float32)))
    return tuple(layers)


def tower(
    layers: tuple[Dense, ...], x: jax.Array, *, dropout: float = 0.0, rng_key: jax.Array | None = None
) -> jax.Array:
    """f(x) (B,) for inputs x (B, d_in): ReLU hidden layers, inverted dropout at rate
    ``dropout`` after each when ``rng_key`` is given, linear output."""
    *hidden, out = layers
    for layer in hidden:
        x = jax.nn.relu(x @ layer.W + layer.b)
        if rng_key is not None and dropout > 0:
            rng_key, key = jax.random.split(rng_key)
            x = jnp.where(jax.random.bernoulli(key, 1.0 - dropout, x.shape), x / (1.0 - dropout), 0.0)
    return (x @ out.W + out.b)[:, 0]


def l2(layers: Iterable[Dense]) -> jax.Array:
    """sum |W|^2 over the layers' weights (the biases are not decayed)."""
    return sum((jnp.sum(layer.W * layer.W) for layer in layers), jnp.float32(0.0))


def as_hidden(hidden: int | Iterable[int]) -> tuple[int, ...]:
    """An int is one layer; a sequence is the widths of the layers."""
    if isinstance(hidden, (int, np.integer)):
        return (int(hidden),)
    try:
        widths = tuple(hidden)
    except TypeError:
        raise ValueError(f"hidden must be an int or a tuple of ints, got {hidden!r}") from None
    for w in widths:
        if not isinstance(w, (int, np.integer)) or w < 1:
            raise ValueError(f"hidden widths must be positive integers, got {hidden!r}")
    return tuple(int(w) for w in widths)
