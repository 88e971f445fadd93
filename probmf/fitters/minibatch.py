"""A minibatch gradient trainer for rating-level models (MF, and any model scored per rating).

An epoch is one jitted `lax.scan` over fixed-shape batches of row indices into the training
arrays, which stay on the device for the whole run:

    for each batch S:  g = grad_theta loss_fn(theta, data[S], weights_S);  theta <- optimizer(theta, g)

The shuffle is drawn on the host with numpy (seeded from the key): a device permutation of
the ratings costs more than a whole epoch of a small model. ``n`` need not divide by the batch
size: the last batch is padded with row 0 at weight 0, so every rating is seen once per epoch
and the padding contributes nothing. Since only the tail is padded, the weights never change
and the epoch compiles once.

``loss_fn(params, batch, weights) -> ()`` sees a batch (a tuple of (B,) arrays) and weights
(B,) in {0, 1}. It should return the per-rating form of the objective, e.g. for
F = sum_k l_k + P (a sum over all n ratings plus a prior term)

    loss_fn = sum_k w_k l_k / sum_k w_k + P / n,

an unbiased estimate of F / n whose gradient is that of F / n up to sampling noise. The
epoch's reported loss is the weighted mean of its batch losses, sum_S |S| loss_S / n, which
at fixed parameters is exactly F / n.

Early stopping: given validation arrays ``(inputs..., targets)`` and ``predict_fn``, the
validation RMSE is computed after every epoch; training stops after ``patience`` epochs
without improvement and the parameters of the best epoch are returned.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax


class MinibatchState(NamedTuple):
    """Trainer state: the model parameters (any pytree) and the optimiser's state."""

    params: object
    opt_state: optax.OptState


class MinibatchTrace(NamedTuple):
    """Per-epoch diagnostics (numpy, one entry per epoch run).

    Attributes:
      train_loss: (epochs,) weighted mean of the batch losses (F / n in the notation above).
      val_rmse: (epochs,) validation RMSE after the epoch; NaN without validation data.
    """

    train_loss: np.ndarray
    val_rmse: np.ndarray


class MinibatchResult(NamedTuple):
    """Returned parameters (the best epoch's when validating), final state, trace, best epoch
    (0-based; the last epoch without validation)."""

    params: object
    state: MinibatchState
    trace: MinibatchTrace
    best_epoch: int


def make_epoch(loss_fn: Callable, optimizer: optax.GradientTransformation) -> Callable:
    """The jitted epoch ``epoch(state, data, index, weights) -> (state, mean_loss)``.

    data: tuple of (n, ...) arrays; index: int32 (num_batches, B) rows of ``data``;
    weights: float32 (num_batches, B), 0 on padding. Build it once and pass it to every
    `train_minibatch` call that shares ``loss_fn`` and ``optimizer``: it then compiles
    once per shape.
    """
    grad_fn = jax.value_and_grad(loss_fn)

    def step(state: MinibatchState, batch_index, data):
        index, weights = batch_index
        batch = tuple(a[index] for a in data)
        loss, grads = grad_fn(state.params, batch, weights)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        # The batch's share of the epoch loss: |S| / n of its mean.
        return MinibatchState(params, opt_state), loss * jnp.sum(weights)

    @jax.jit
    def epoch(state: MinibatchState, data, index, weights):
        state, losses = lax.scan(lambda s, x: step(s, x, data), state, (index, weights))
        return state, jnp.sum(losses) / jnp.sum(weights)

    return epoch


def _rmse_fn(predict_fn: Callable) -> Callable:
    @jax.jit
    def val_rmse(params, val_arrays):
        *inputs, targets = val_arrays
        err = predict_fn(params, *inputs) - targets
        return jnp.sqrt(jnp.mean(err * err))

    return val_rmse


def padded_index(num_rows: int, batch_size: int) -> tuple[int, np.ndarray]:
    """(num_batches, weights): ceil(n / B) batches and float32 (num_batches, B) weights that
    are 1 on the n real rows and 0 on the padding of the last batch."""
    num_batches = -(-num_rows // batch_size)
    weights = (np.arange(num_batches * batch_size) < num_rows).astype(np.float32)
    return num_batches, weights.reshape(num_batches, batch_size)


def train_minibatch(
    rng_key,
    loss_fn: Callable,
    params,
    train_arrays: tuple,
    *,
    optimizer: optax.GradientTransformation,
    batch_size: int,
    num_epochs: int,
    val_arrays: tuple | None = None,
    predict_fn: Callable | None = None,
    patience: int | None = None,
    epoch_fn: Callable | None = None,
) -> MinibatchResult:
    """Minimise ``loss_fn`` over ``train_arrays`` by minibatch steps of ``optimizer``.

    Args:
      rng_key: PRNG key; seeds the host shuffles (one permutation per epoch).
      loss_fn: ``loss_fn(params, batch, weights) -> ()``, see the module docstring.
      params: initial parameters (a pytree).
      train_arrays: tuple of (n, ...) arrays, e.g. (users, items, ratings).
      optimizer: an optax `GradientTransformation`.
      batch_size: B >= 1 rows per step; the last partial batch is padded and masked.
      num_epochs: most epochs to run.
      val_arrays: ``(inputs..., targets)`` for the validation RMSE of
        ``predict_fn(params, *inputs)``; None skips validation.
      patience: stop after this many epochs without a better validation RMSE (None: run
        every epoch). With validation the best epoch's parameters are returned.
      epoch_fn: a prebuilt `make_epoch(loss_fn, optimizer)`, to share its compilation.
    Returns:
      `MinibatchResult(params, state, trace, best_epoch)`.
    """
    n = int(train_arrays[0].shape[0])
    if n == 0:
        raise ValueError("no training rows")
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if int(num_epochs) != num_epochs or num_epochs < 1:
        raise ValueError(f"num_epochs must be a positive integer, got {num_epochs!r}")
    if patience is not None and (int(patience) != patience or patience < 1):
        raise ValueError(f"patience must be a positive integer or None, got {patience!r}")
    if val_arrays is not None and predict_fn is None:
        raise ValueError("val_arrays needs predict_fn")
    batch_size = min(int(batch_size), n)  # a batch larger than the data would be all padding
    epoch = epoch_fn or make_epoch(loss_fn, optimizer)
    val_rmse = _rmse_fn(predict_fn) if val_arrays is not None else None

    num_batches, weights = padded_index(n, batch_size)
    weights = jnp.asarray(weights)
    data = tuple(jnp.asarray(a) for a in train_arrays)
    rng = np.random.default_rng(np.asarray(jax.random.key_data(rng_key)).ravel())
    index = np.zeros(num_batches * batch_size, np.int32)  # the tail stays 0: padding rows

    state = MinibatchState(params, optimizer.init(params))
    best = (np.inf, params, 0)
    losses, scores = [], []
    for e in range(int(num_epochs)):
        index[:n] = rng.permutation(n)
        state, loss = epoch(state, data, jnp.asarray(index.reshape(num_batches, batch_size)), weights)
        losses.append(float(loss))
        if val_rmse is None:
            scores.append(np.nan)
            continue
        score = float(val_rmse(state.params, val_arrays))
        scores.append(score)
        if score < best[0]:
            best = (score, state.params, e)
        elif patience is not None and e - best[2] >= patience:
            break
    trace = MinibatchTrace(np.asarray(losses), np.asarray(scores))
    if val_rmse is None:
        return MinibatchResult(state.params, state, trace, len(losses) - 1)
    return MinibatchResult(best[1], state, trace, best[2])
